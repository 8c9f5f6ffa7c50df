"""`corpus pairs` fed the worst inputs together in one run, beside a few good pairs.
`test_pairs.py::test_demo_inputs_every_rule_with_clip` already runs the demo's bad pairs (corrupt,
empty and half images, a PNG bomb, Latin-1 and missing captions, a truncated tar) through the
rules and CLIP; this module adds what the demo lacks, all in one run: unsafe tar member names,
0-byte and garbage input files of every format, a truncated Parquet file, a 1 MB caption in a
tar and in a table, a table row naming an absolute path, and the peak memory of the run."""
from __future__ import annotations

import tarfile

import pytest

from bad_input import add_member, check_rejects_match_report, kept_samples, reason_of, \
    rejects_table, run_measured
from corpus.samples.pairs import (Pair, last_member_middle, make_photo, png_bomb,
                                  write_img2dataset_parquet, write_img2dataset_tar)

MEGABYTE_CAPTION = "a caption that goes on " * 45_000  # ~1 MB


def photo(seed: int) -> bytes:
    return make_photo(240, 240, seed)


def write_inputs(root) -> None:
    web = root / "web"
    web.mkdir()
    write_img2dataset_tar(str(web / "00000.tar"), [
        Pair("good0", photo(1), "a red kite flying over a green field", "kept"),
        Pair("good1", photo(2), "sunset over the harbour with sailing boats", "kept"),
        Pair("garbage", b"\x00\x01 not an image at all", "a broken file", "corrupt_image"),
        Pair("halfjpeg", photo(3)[:1300], "half a JPEG body", "corrupt_image"),
        Pair("empty", b"", "an empty image file", "empty_image"),
        Pair("bomb", png_bomb(), "a decompression bomb", "decompression_bomb"),
        Pair("latin1", photo(4), b"caf\xe9 au lait", "caption_not_utf8"),
        Pair("huge", photo(5), MEGABYTE_CAPTION, "caption_too_large"),
        Pair("nocaption", photo(6), None, "missing_caption"),
    ])
    # Members that would land outside an extraction folder: never read as samples.
    with tarfile.open(web / "00001.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        add_member(tar, "../escape.jpg", photo(7))
        add_member(tar, "/etc/absolute.txt", b"an absolute member name")
        add_member(tar, "good2.jpg", photo(8))
        add_member(tar, "good2.txt", b"a bowl of ramen with egg and spring onions")
    cut = str(web / "00002.tar")
    three = [Pair(f"cut{i}", photo(10 + i), f"a photo of object number {i}", "kept")
             for i in range(3)]
    write_img2dataset_tar(cut, three)
    write_img2dataset_tar(cut, three, truncate_at=last_member_middle(cut))
    (web / "00003.tar").write_bytes(b"")  # 0 bytes
    (web / "00004.tar").write_bytes(b"garbage, not a tar" * 100)
    write_img2dataset_parquet(str(web / "00005.parquet"), [
        Pair("pq0", photo(20), "a cat asleep on a sunny window sill", "kept"),
        Pair("pq1", photo(21), MEGABYTE_CAPTION, "caption_too_large")])
    data = (web / "00005.parquet").read_bytes()
    (web / "00006.parquet").write_bytes(data[: len(data) // 2])  # truncated
    (web / "00007.parquet").write_bytes(b"")
    tables = root / "tables"
    tables.mkdir()
    (tables / "a.jpg").write_bytes(photo(30))
    (tables / "pairs.jsonl").write_bytes(
        b'{"image": "a.jpg", "caption": "a wooden bridge over a quiet river"}\n'
        b'{"image": "/etc/hostname", "caption": "an absolute path to something else"}\n'
        b'{"image": "a.jpg", "caption": "' + b"long " * 220_000 + b'"}\n'
        b'\xff\xfe\x00garbage line\n')
    (tables / "empty.jsonl").write_bytes(b"")
    (tables / "empty.tsv").write_bytes(b"")


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_inputs(root)
    measured = run_measured("""
        from conftest import IN_MEMORY
        from pipelines import pairs
    """, f"""
        report = pairs.run([{str(root / "web")!r}, {str(root / "tables")!r}],
                           {str(root / "out")!r}, "bad", beam_argv=IN_MEMORY,
                           shard_formats=["webdataset", "parquet"])
    """, root)
    return root / "out", measured.report, measured


def test_every_bad_pair_is_counted_under_its_reason(outcome):
    out, report, _ = outcome
    assert report["errored"] == {
        "caption_not_utf8": 1, "caption_too_large": 3, "corrupt_image": 3,
        "decompression_bomb": 1, "empty_image": 1, "malformed_record": 1, "missing_caption": 1,
        "truncated_tar": 3, "unreadable_file": 2, "unsafe_member_name": 2}
    assert report["dropped"] == {}
    assert report["kept"] == 7
    assert report["input"] == 7 + 18


def test_the_rejects_table_names_each_bad_input(outcome):
    out, report, _ = outcome
    rows = rejects_table(out)
    check_rejects_match_report(report, rows)
    reasons = reason_of(rows)
    assert {k: v for k, v in reasons.items() if k.startswith("00000.tar")} == {
        "00000.tar#garbage": "corrupt_image", "00000.tar#halfjpeg": "corrupt_image",
        "00000.tar#empty": "empty_image", "00000.tar#bomb": "decompression_bomb",
        "00000.tar#latin1": "caption_not_utf8", "00000.tar#huge": "caption_too_large",
        "00000.tar#nocaption": "missing_caption"}
    assert reasons["00001.tar#../escape.jpg"] == "unsafe_member_name"
    assert reasons["00001.tar#/etc/absolute.txt"] == "unsafe_member_name"
    assert reasons["00002.tar#cut2"] == "truncated_tar"
    assert reasons["00003.tar#<end>"] == "truncated_tar"
    assert reasons["00004.tar#<end>"] == "truncated_tar"
    assert reasons["00005.parquet#pq1"] == "caption_too_large"
    assert reasons["00006.parquet#<file>"] == "unreadable_file"
    assert reasons["00007.parquet#<file>"] == "unreadable_file"
    assert reasons["pairs.jsonl#1"] == "corrupt_image"
    assert reasons["pairs.jsonl#2"] == "caption_too_large"
    assert reasons["pairs.jsonl#3"] == "malformed_record"  # bytes that are not JSON


def test_only_the_good_pairs_are_written(outcome):
    out, report, _ = outcome
    kept = sorted(kept_samples(out, report))
    assert kept == ["00000.tar#good0", "00000.tar#good1", "00001.tar#good2", "00002.tar#cut0",
                    "00002.tar#cut1", "00005.parquet#pq0", "pairs.jsonl#0"]


def test_memory_stays_bounded(outcome):
    # The inputs are a few MB: a copy of each per step fits, a leak or a decoded bomb
    # (900 Mpx, 900 MB as greyscale) does not.
    assert outcome[2].growth_mib < 150, outcome[2]


def test_a_huge_tar_member_is_not_read_whole(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    with tarfile.open(web / "00000.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        add_member(tar, "good.jpg", photo(1))
        add_member(tar, "good.txt", b"a red kite flying over a green field")
        add_member(tar, "huge.jpg", photo(2))
        add_member(tar, "huge.txt", b"word " * (16 << 20))  # 80 MiB on one line
    measured = run_measured("""
        from conftest import IN_MEMORY
        from pipelines import pairs
    """, f"""
        report = pairs.run([{str(web)!r}], {str(tmp_path / "out")!r}, "bad",
                           beam_argv=IN_MEMORY)
    """, tmp_path)
    assert measured.report["errored"] == {"caption_too_large": 1}
    # A run on small inputs grows the process by ~60 MiB; reading the member whole, by 250.
    assert measured.growth_mib < 120, measured
