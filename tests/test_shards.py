"""Shard IO: records round-trip, tars are reproducible, and other tools open our shards."""
import io
import itertools
import json
import pickle
import tarfile

import duckdb
import pytest
import pyarrow.parquet as pq
import webdataset as wds

from conftest import make_image, make_sample
from corpus.schema import Region, Turn
from corpus.shards import (FIXED_MTIME, atomic_write, is_unsafe_member, iter_tar_groups,
                           read_shard, scan_shard, write_parquet, write_tar, write_tar_members)


def _samples():
    return [
        make_sample("a", "a red square", language="en", clip_score=0.31,
                    regions=[Region("ref", "red", (1.5, 2, 30, 40), None, 2, 5, 0.9)]),
        make_sample("b", "两只猫", task="ocr", images=[make_image(fmt="png")],
                    regions=[Region("line", "两只猫", quad=(0, 0, 10, 0, 10, 5, 0, 5))]),
        make_sample("c", "", task="sft", images=[make_image(), make_image(fmt="webp")],
                    turns=[Turn("user", "<image>hi <image>"), Turn("assistant", "hello")]),
        make_sample("d", "pure text", task="text", images=[], extra={"chunk": 1}),
    ]


def test_tar_and_parquet_round_trip(tmp_path):
    samples = _samples()
    with open(tmp_path / "s.tar", "wb") as f:
        assert write_tar(samples, f) == 4
    with open(tmp_path / "s.parquet", "wb") as f:
        assert write_parquet(samples, f) == 4
    assert list(read_shard(str(tmp_path / "s.tar"))) == samples
    assert list(read_shard(str(tmp_path / "s.parquet"))) == samples


def test_a_scan_gives_the_wanted_samples_and_none_for_the_others_whose_bytes_stay_unread(
        tmp_path, monkeypatch):
    samples = _samples() * 3
    with open(tmp_path / "s.tar", "wb") as f:
        write_tar(samples, f)
    with open(tmp_path / "s.parquet", "wb") as f:
        write_parquet(samples, f, rows_per_group=4)
    groups_read = []
    read_row_groups = pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", lambda self, **kw: (
        groups_read.extend(kw["row_groups"]), read_row_groups(self, **kw))[1])
    wanted = {1, 2, 9}.__contains__  # of the row groups of 4, the second holds none of them
    expected = [sample if wanted(i) else None for i, sample in enumerate(samples)]
    assert list(scan_shard(str(tmp_path / "s.tar"), wanted)) == expected
    assert list(scan_shard(str(tmp_path / "s.parquet"), wanted)) == expected
    assert groups_read == [0, 2]
    buffer = io.BytesIO((tmp_path / "s.tar").read_bytes())
    groups = list(iter_tar_groups(buffer, wanted=wanted))
    assert [g.key for g in groups] == [s.id for s in samples]
    assert [bool(g.members) for g in groups] == [g.wanted for g in groups] == [
        wanted(i) for i in range(len(samples))]


def test_samples_pickle_back_equal():
    """Samples cross spill files and shuffles pickled, their regions packed as tuples."""
    for sample in _samples():
        copy = pickle.loads(pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL))
        assert copy == sample
        assert all(type(region) is Region for region in copy.regions)


def test_tars_are_byte_identical_across_writes(tmp_path):
    first, second = io.BytesIO(), io.BytesIO()
    write_tar(_samples(), first)
    write_tar(_samples(), second)
    assert first.getvalue() == second.getvalue()


def _tarfile_bytes(members) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for sample_members in members:
            for name, data in sample_members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_tars_are_the_bytes_tarfile_writes():
    """Headers are built from a template for short ASCII names; every case, PAX records for
    long and non-ASCII names included, gives tarfile's own bytes."""
    names = ["k.json", "k.1.jpg", "x" * 100, "x" * 101, "两只猫.txt", "a/" + "k" * 140 + ".jpg"]
    sizes = [0, 1, 511, 512, 513, 10_000]
    for count in range(4):
        members = [[(names[(i + j) % len(names)], bytes([i]) * sizes[(i * 3 + j) % len(sizes)])
                    for j in range(3)] for i in range(count)]
        out = io.BytesIO()
        assert write_tar_members(members, out) == count
        assert out.getvalue() == _tarfile_bytes(members)


def test_webdataset_library_reads_our_tars(tmp_path):
    path = tmp_path / "s.tar"
    with open(path, "wb") as f:
        write_tar(_samples(), f)
    records = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [r["__key__"] for r in records] == [s.id for s in _samples()]
    first = records[0]
    assert first["txt"].decode() == "a red square"
    assert json.loads(first["json"])["clip_score"] == 0.31
    assert first["jpg"][:2] == b"\xff\xd8"
    assert set(records[2]) >= {"jpg", "1.webp", "json", "txt"}
    assert "jpg" not in records[3]  # text-only samples carry no image member


def test_pyarrow_and_duckdb_read_our_parquet(tmp_path):
    path = tmp_path / "s.parquet"
    with open(path, "wb") as f:
        write_parquet(_samples(), f)
    table = pq.read_table(path)
    assert table.num_rows == 4 and table.column("task").to_pylist()[1] == "ocr"
    rows = duckdb.sql(f"SELECT id, task, images[1].width AS w, len(regions) AS n "
                      f"FROM '{path}' ORDER BY id").fetchall()
    assert len(rows) == 4
    assert {r[1] for r in rows} == {"captioning", "ocr", "sft", "text"}
    assert all(r[2] in (64, None) for r in rows)


def test_unsafe_member_names_are_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("../evil.txt", "/etc/passwd.txt", "ok.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    buffer.seek(0)
    groups = list(iter_tar_groups(buffer))
    assert [(g.key, g.error) for g in groups] == [
        ("../evil.txt", "unsafe_member_name"), ("/etc/passwd.txt", "unsafe_member_name"),
        ("ok", None)]
    assert is_unsafe_member("a/../../b") and not is_unsafe_member("a/b..c.jpg")


def test_truncated_tar_yields_an_error_group(tmp_path):
    buffer = io.BytesIO()
    write_tar(_samples(), buffer)
    truncated = io.BytesIO(buffer.getvalue()[:3000])
    groups = list(iter_tar_groups(truncated))
    assert groups[-1].error.startswith("truncated_tar")


class _Pipe(io.RawIOBase):
    """A file that can only be read through, as a pipe or a stream over the network."""

    def __init__(self, data: bytes):
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self.data.readinto(buffer)


@pytest.mark.parametrize("opened", [io.BytesIO, _Pipe], ids=["seekable", "read-through"])
def test_a_tar_cut_anywhere_ends_in_an_error_group_seekable_or_not(opened):
    buffer = io.BytesIO()
    samples = _samples()
    write_tar(samples, buffer)
    whole = buffer.getvalue()
    every_other = {0, 2}.__contains__
    for wanted in (None, every_other):
        groups = list(iter_tar_groups(opened(whole), wanted=wanted))
        assert [g.key for g in groups] == [s.id for s in samples]
        assert not any(g.error for g in groups)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        members = tar.getmembers()
        end = tar.offset  # where the end-of-archive blocks begin
    second = members[3]  # the first member of the second sample, which every_other passes over
    assert second.name.startswith(samples[1].id)
    # no end block, a part of one, a cut header, cut data (of a sample read, of one passed over)
    ends = [end, end + 100, 700, members[1].offset_data + 5, second.offset + 100,
            second.offset_data + 100]
    for cut, wanted in itertools.product(ends, (None, every_other)):
        groups = list(iter_tar_groups(opened(whole[:cut]), wanted=wanted))
        assert groups[-1].error.startswith("truncated_tar"), (cut, wanted)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "x.tar"
    try:
        with atomic_write(str(path)) as f:
            f.write(b"half")
            raise RuntimeError("crash")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []
    with atomic_write(str(path)) as f:
        f.write(b"whole")
    assert path.read_bytes() == b"whole"


def test_rows_carry_every_schema_column_in_order():
    from corpus.schema import SAMPLE_SCHEMA, to_row

    for sample in _samples():
        assert list(to_row(sample)) == SAMPLE_SCHEMA.names


def test_members_over_their_limit_are_left_unread():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, size in (("a.txt", 10), ("a.jpg", 5000), ("b.txt", 900), ("b.jpg", 10)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"x" * size))
    buffer.seek(0)
    groups = list(iter_tar_groups(buffer, {"txt": 100, "*": 1000}))
    assert [(g.key, sorted(g.members), g.oversized) for g in groups] == [
        ("a", ["txt"], {"jpg": 5000}), ("b", ["jpg"], {"txt": 900})]
