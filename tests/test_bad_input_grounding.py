"""`corpus grounding` fed the worst inputs together in one run, beside good RefCOCO-style refs.
`test_grounding.py` covers the box and phrase rules on well-formed region sets and, for GRIT,
`test_grit_run_prunes_and_counts_every_bad_record` (missing/corrupt images, bad spans and
boxes, a malformed line); this module mixes broken files and images into one region-set run:
corrupt, 0-byte and bomb images, `/dev/zero` named as an image, invalid UTF-8, a 1 MB phrase,
malformed and non-object JSON Lines, 0-byte and truncated JSON, a truncated Parquet file, a
truncated tar with `../` and absolute member names. Each ref fans out into one unit per
expression in each of the two tasks; a file or record that cannot be read is one errored unit
in each task. The run's peak memory is measured."""
from __future__ import annotations

import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bad_input import add_member, check_rejects_match_report, kept_samples, reason_of, \
    rejects_table, run_measured
from corpus.samples.grounding import draw_scene
from corpus.samples.pairs import last_member_middle, png_bomb

SQUARE = draw_scene(96, 64, [((10, 10, 60, 50), (200, 60, 60))])
MEGABYTE_PHRASE = "the red square in the corner " * 36_000
TASKS = ("ref_grounding", "grounded_captioning")


def ref(ref_id: int, image: str, *sentences: str) -> dict:
    return {"ref_id": ref_id, "file_name": image, "bbox": [10, 10, 50, 40],
            "sentences": [{"sent": s} for s in sentences]}


def line(record) -> bytes:
    return json.dumps(record).encode() + b"\n"


def write_inputs(folder) -> None:
    images = folder / "images"
    images.mkdir(parents=True)
    (images / "good.png").write_bytes(SQUARE)
    (images / "garbage.jpg").write_bytes(b"not an image at all")
    (images / "empty.jpg").write_bytes(b"")
    (images / "bomb.png").write_bytes(png_bomb(12_000, 12_000))
    (folder / "a-refs.jsonl").write_bytes(
        line(ref(0, "good.png", "red square"))
        + line(ref(1, "good.png", "the red one", "square on the left"))
        + line(ref(2, "garbage.jpg", "red square")) + line(ref(3, "empty.jpg", "red square"))
        + line(ref(4, "bomb.png", "red square")) + line(ref(5, "/dev/zero", "red square"))
        + line(ref(6, "nowhere.jpg", "red square"))
        + line(ref(7, "good.png", MEGABYTE_PHRASE))
        + line(ref(8, "good.png", "caf\xe9 sign")).replace(b"caf\\u00e9", b"caf\xe9")
        + b'{"ref_id": 9, "file_name": "good.png", "bbox": [1, 2\n'
        + b"[]\n")
    (folder / "b-empty.json").write_bytes(b"")
    (folder / "c-cut.json").write_bytes(json.dumps([ref(20, "good.png", "red")]).encode()[:30])
    pq.write_table(pa.Table.from_pylist([ref(30, "good.png", "red square")]),
                   folder / "d-cut.parquet")
    data = (folder / "d-cut.parquet").read_bytes()
    (folder / "d-cut.parquet").write_bytes(data[: len(data) // 2])
    with tarfile.open(folder / "e-refs.tar", "w") as tar:
        add_member(tar, "../escape.json", json.dumps(ref(40, "good.png", "red")).encode())
        add_member(tar, "/abs/olute.json", json.dumps(ref(41, "good.png", "red")).encode())
        add_member(tar, "t0.json", json.dumps(ref(42, "t0.png", "red square")).encode())
        add_member(tar, "t0.png", SQUARE)
        add_member(tar, "t1.json", json.dumps(ref(43, "t1.png", "red square")).encode())
        add_member(tar, "t1.png", SQUARE)
    cut = last_member_middle(str(folder / "e-refs.tar"))
    data = (folder / "e-refs.tar").read_bytes()
    (folder / "e-refs.tar").write_bytes(data[:cut])


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = tmp_path_factory.mktemp("grounding")
    write_inputs(root / "in")
    measured = run_measured("""
        from conftest import IN_MEMORY
        from pipelines import grounding
    """, f"""
        report = grounding.run([{str(root / "in")!r}], {str(root / "out")!r}, "bad",
                               grounding.GroundingConfig(), IN_MEMORY,
                               images={str(root / "in" / "images")!r})
    """, root)
    return root / "out", measured


def test_every_bad_input_is_counted_under_its_reason(outcome):
    for task in TASKS:
        report = outcome[1].report["tasks"][task]
        assert report["kept"] == 6  # refs 0, 1 (two expressions), 7 (1 MB), 8 (Latin-1); tar t0
        assert report["dropped"] == {}  # every bad input here is broken input: errored
        assert report["errored"] == {"malformed_json": 3, "malformed_record": 1,
                                     "truncated_tar": 1, "unreadable_file": 1,
                                     "unsafe_member_name": 2, "missing_image": 1,
                                     "corrupt_image": 1, "empty_image": 1,
                                     "decompression_bomb": 1, "image_too_large": 1}
        assert report["input"] == 6 + 5 + 8


def test_the_rejects_table_names_each_bad_input(outcome):
    out, measured = outcome
    for task in TASKS:
        rows = rejects_table(out / task)
        check_rejects_match_report(measured.report["tasks"][task], rows)
        assert reason_of(rows) == {
            f"a-refs.jsonl#2/{task}": "corrupt_image", f"a-refs.jsonl#3/{task}": "empty_image",
            f"a-refs.jsonl#4/{task}": "decompression_bomb",
            f"a-refs.jsonl#5/{task}": "image_too_large",
            f"a-refs.jsonl#6/{task}": "missing_image",
            "a-refs.jsonl#9": "malformed_json", "a-refs.jsonl#10": "malformed_record",
            "b-empty.json#file": "malformed_json", "c-cut.json#file": "malformed_json",
            "d-cut.parquet#file": "unreadable_file",
            "e-refs.tar#../escape.json": "unsafe_member_name",
            "e-refs.tar#/abs/olute.json": "unsafe_member_name", "e-refs.tar#t1": "truncated_tar"}


def test_the_good_refs_are_written(outcome):
    out, measured = outcome
    for task in TASKS:
        kept = kept_samples(out / task, measured.report["tasks"][task])
        assert sorted(kept) == [f"{key}/{task}" for key in (
            "a-refs.jsonl#0", "a-refs.jsonl#1#0", "a-refs.jsonl#1#1", "a-refs.jsonl#7",
            "a-refs.jsonl#8", "e-refs.tar#t0")]
        assert kept[f"a-refs.jsonl#8/{task}"].text == "caf\ufffd sign"
        assert MEGABYTE_PHRASE.strip() in kept[f"a-refs.jsonl#7/{task}"].text


def test_memory_stays_bounded(outcome):
    # /dev/zero is read up to the 64 MiB image limit once; reading it whole never ends, and
    # decoding the 144 Mpx bomb would take 144 MiB (greyscale) or more.
    assert outcome[1].growth_mib < 200, outcome[1]
