"""Shard files: WebDataset tars and Parquet, written reproducibly and read back safely.

A tar holds, per sample, `KEY.json` (the record without image bytes, compact UTF-8 JSON with
sorted keys), `KEY.txt` (its text) and
`KEY.jpg|png|webp` (`KEY.1.jpg`… for further images), consecutive, as the `webdataset` library
expects. Members carry a fixed mtime, owner and mode, so the same samples in the same order give
the same bytes. Parquet holds the same record with image bytes in a binary column.

Writers take an open binary file; where it lives and the temp-then-rename step belong to the
caller (`pipelines.sinks` for Beam, `atomic_write` here for local files).
"""
from __future__ import annotations

import itertools
import os
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from corpus.schema import SAMPLE_SCHEMA, Sample, from_json_record, from_row, image_member_name, \
    to_json_record, to_row

SHARD_FORMATS = {"webdataset": "tar", "parquet": "parquet"}  # format -> file extension
FIXED_MTIME = 946684800  # 2000-01-01: any constant makes tars reproducible


@dataclass
class ShardInfo:
    path: str
    samples: int
    bytes: int


def tar_members(sample: Sample) -> list[tuple[str, bytes]]:
    """The (member name, bytes) a sample becomes in a WebDataset tar, in writing order."""
    # orjson: a page's few hundred word and line boxes encode 17x faster than with `json`;
    # numpy numbers (a box computed with numpy) are written as the numbers they are
    record = orjson.dumps(to_json_record(sample),
                          option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
                          | orjson.OPT_NON_STR_KEYS)
    members = [(f"{sample.id}.json", record),
               (f"{sample.id}.txt", sample.text.encode("utf-8"))]
    for index, image in enumerate(sample.images):
        members.append((f"{sample.id}.{image_member_name(index, image)}", image.data))
    return members


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, FIXED_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _member_header(name: str, size: int) -> bytes:
    """The header tarfile writes for a member, PAX format; `tarfile.TarInfo.tobuf`."""
    return _member_info(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


_USTAR_TEMPLATE = _member_header("", 0)
_SIZE, _CHECKSUM = slice(124, 136), slice(148, 155)  # the header fields that vary


def _fast_member_header(name: str, size: int) -> bytes:
    """The same bytes as `_member_header`, built from a template: for a short ASCII name (every
    name a sample's id gives) the PAX header is a plain ustar block, and `tobuf` takes a third
    of a page's tar-writing time to make it."""
    encoded = name.encode("ascii") if name.isascii() else b""
    if not encoded or len(encoded) > 100 or size >= 8 ** 11:
        return _member_header(name, size)  # PAX records for the name or the size
    header = bytearray(_USTAR_TEMPLATE)
    header[:len(encoded)] = encoded
    header[_SIZE] = b"%011o\0" % size
    header[_CHECKSUM] = b" " * 7
    header[_CHECKSUM] = b"%06o\0" % sum(header)  # the checksum counts its own field as spaces
    return bytes(header)


def write_tar_members(members: Iterable[list[tuple[str, bytes]]], fileobj: BinaryIO) -> int:
    """Write samples, each given as its `tar_members`, as a tar stream; returns the sample
    count. The bytes are those of `tarfile` in PAX format with fixed metadata, written directly.
    For callers that already hold the members (the shard sink digests them first)."""
    count, offset = 0, 0
    for sample_members in members:
        for name, data in sample_members:
            header = _fast_member_header(name, len(data))
            padding = -len(data) % tarfile.BLOCKSIZE
            fileobj.write(header)
            fileobj.write(data)
            fileobj.write(tarfile.NUL * padding)
            offset += len(header) + len(data) + padding
        count += 1
    end = 2 * tarfile.BLOCKSIZE  # two empty blocks, then zeros to a whole record, as tarfile
    fileobj.write(tarfile.NUL * (end + -(offset + end) % tarfile.RECORDSIZE))
    return count


def write_tar(samples: Iterable[Sample], fileobj: BinaryIO) -> int:
    """Write samples to a tar stream; returns the sample count."""
    return write_tar_members((tar_members(sample) for sample in samples), fileobj)


def write_parquet(samples: Iterable[Sample], fileobj: BinaryIO, rows_per_group: int = 256) -> int:
    """Write samples to Parquet in row groups (bounded memory); returns the sample count."""
    count = 0
    with pq.ParquetWriter(fileobj, SAMPLE_SCHEMA, compression="zstd") as writer:
        batch = []
        for sample in samples:
            batch.append(to_row(sample))
            if len(batch) == rows_per_group:
                writer.write_table(pa.Table.from_pylist(batch, schema=SAMPLE_SCHEMA))
                count += len(batch)
                batch = []
        if batch or count == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=SAMPLE_SCHEMA))
            count += len(batch)
    return count


WRITERS = {"webdataset": write_tar, "parquet": write_parquet}


@contextmanager
def atomic_write(path: str):
    """Open `path` for writing under a temporary name; rename into place only on success."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---- reading ------------------------------------------------------------------------------

@dataclass
class TarGroup:
    """The members of one key in a tar, or the reason the tar could not be read further."""

    key: str
    members: dict[str, bytes]  # extension -> bytes ("jpg", "json", "1.jpg", …)
    error: str | None = None
    oversized: dict[str, int] = field(default_factory=dict)  # extension -> size, left unread
    wanted: bool = True  # False: passed over at the caller's asking, its members not extracted


def is_unsafe_member(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is everything up to the first dot of the base name. The
    extension is taken in lower case (`KEY.JPG` is a jpg)."""
    directory, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


class _TailRecorder:
    """Passes a file's reads (and seeks) through and remembers the last bytes read since the last
    seek, so that the end of a tar can be checked for its end-of-archive block (tarfile ends
    silently at a truncated header)."""

    KEEP = 64 * 1024

    def __init__(self, fileobj: BinaryIO, seekable: bool):
        self.fileobj, self.tail = fileobj, b""
        self.position = fileobj.tell() if seekable else 0  # where the tail ends

    def read(self, size: int = -1) -> bytes:
        data = self.fileobj.read(size)
        self.position += len(data)
        self.tail = data[-self.KEEP:] if len(data) >= self.KEEP else \
            (self.tail + data)[-self.KEEP:]
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.position, self.tail = self.fileobj.seek(offset, whence), b""
        return self.position

    def tell(self) -> int:
        return self.position

    def has_end_block(self, offset: int) -> bool:
        tail_start = self.position - len(self.tail)
        block = self.tail[offset - tail_start:offset - tail_start + tarfile.BLOCKSIZE]
        return offset >= tail_start and len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


def iter_tar_groups(fileobj: BinaryIO, max_bytes: dict[str, int] | None = None,
                    wanted: Callable[[int], bool] | None = None) -> Iterator[TarGroup]:
    """Group consecutive members by key. Unsafe names and truncation become error groups.

    `max_bytes` maps an extension (or `"*"` for any other) to the largest member read; a larger
    one is skipped unread and listed in the group's `oversized`, so memory stays bounded.
    `wanted` is asked of each group's index (error groups aside); a group it refuses comes with
    `wanted` False and no members, none of them extracted."""
    max_bytes = max_bytes or {}
    current: TarGroup | None = None
    groups = 0
    # a seekable file is read in tarfile's random-access mode, which seeks past what is not
    # extracted where its stream mode reads it through in 10 KB pieces: half the time to read
    # a shard whole, 0.4 of it to pass over 15 samples in 16 (measured on local files)
    seekable = getattr(fileobj, "seekable", lambda: False)()
    recorder = _TailRecorder(fileobj, seekable)
    try:
        with tarfile.open(fileobj=recorder, mode="r:" if seekable else "r|") as tar:
            for member in tar:
                if is_unsafe_member(member.name):
                    yield TarGroup(member.name, {}, "unsafe_member_name")
                    continue
                if not member.isfile():
                    continue
                key, extension = split_member_name(member.name)
                if current is not None and key != current.key:
                    yield current
                    current = None
                if current is None:
                    current = TarGroup(key, {}, wanted=wanted is None or wanted(groups))
                    groups += 1
                if not current.wanted:
                    continue
                limit = max_bytes.get(extension, max_bytes.get("*"))
                if limit is not None and member.size > limit:
                    current.oversized[extension] = member.size
                    continue
                data = tar.extractfile(member).read()
                if len(data) != member.size:  # stream mode returns short reads at EOF
                    raise EOFError(f"{member.name}: {len(data)} of {member.size} bytes")
                current.members[extension] = data
            if not recorder.has_end_block(tar.offset):
                raise EOFError(f"no end-of-archive block at byte {tar.offset}")
    except (tarfile.TarError, EOFError, OSError) as error:
        if current is not None:
            current.error = f"truncated_tar: {error}"
            yield current
            current = None
        else:
            yield TarGroup("", {}, f"truncated_tar: {error}")
    if current is not None:
        yield current


def read_tar(path: str, wanted: Callable[[int], bool]) -> Iterator[Sample | None]:
    with fsspec.open(path, "rb") as f:
        yield from tar_samples(f, wanted, path)


def tar_samples(fileobj: BinaryIO, wanted: Callable[[int], bool],
                name: str) -> Iterator[Sample | None]:
    """Samples of a tar written by this project (`name` for messages), None for each one
    `wanted` refuses. Unreadable content raises ValueError."""
    for group in iter_tar_groups(fileobj, wanted=wanted):
        if group.error:
            raise ValueError(f"{name}: {group.key}: {group.error}")
        if not group.wanted:
            yield None
            continue
        record = orjson.loads(group.members["json"])
        yield from_json_record(record, group.members)


def read_parquet(path: str, wanted: Callable[[int], bool]) -> Iterator[Sample | None]:
    with fsspec.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        start = 0
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if not any(wanted(index) for index in range(start, start + rows)):
                yield from itertools.repeat(None, rows)  # the row group is not read at all
                start += rows
                continue
            for batch in parquet.iter_batches(batch_size=256, row_groups=[group]):
                chosen = [i for i in range(batch.num_rows) if wanted(start + i)]
                records = dict(zip(chosen, batch.take(chosen).to_pylist()))
                for i in range(batch.num_rows):
                    yield from_row(records[i]) if i in records else None
                start += batch.num_rows


def scan_shard(path: str, wanted: Callable[[int], bool]) -> Iterator[Sample | None]:
    """A shard's samples in order, None in place of each one whose index `wanted` refuses: its
    bytes are passed over unparsed (a tar's members not extracted, a Parquet file's row groups
    with no wanted row not read), so a reader that keeps some of the samples pays little for the
    others."""
    if path.endswith(".parquet"):
        return read_parquet(path, wanted)
    if path.endswith(".tar"):
        return read_tar(path, wanted)
    raise ValueError(f"not a shard (.tar or .parquet): {path}")


def read_shard(path: str) -> Iterator[Sample]:
    """Every sample of a shard, in order."""
    return scan_shard(path, every_one)  # so never None


def every_one(index: int) -> bool:
    """Wants every sample (`scan_shard`, `tar_samples`)."""
    return True
