"""Input expansion shared by every pipeline: `--input` patterns -> a sorted list of files, each
with a relative key that becomes part of its samples' ids.

A pattern is a local path or a URI (any scheme Beam's FileSystems knows, else fsspec's):
- a folder (remote: a prefix with files below it, or one written with a trailing `/`):
  searched recursively for files with one of the pipeline's extensions;
- a glob (`*`, `?`, `[`; `**` crosses folders): the matching files with those extensions;
- a file: taken whatever its extension, since it was named.
Below a folder or a glob's fixed part, hidden files and folders (`.name`) are skipped, as a
shell glob skips them. Every other file found there that the pipeline does not read is not left
out silently: `find_inputs` lists it as an `UnreadFile`, which the run counts as an errored
input (`unsupported_file`), unless it is a companion the pipeline reads beside its inputs (the
images a record names, img2dataset's metadata).

The relative key is the path below the pattern's fixed part: the folder itself, the folder
before a glob's first wildcard, or a named file's folder (so a file's key is its base name).
Keys do not depend on where the data sits, so moving a dataset keeps its sample ids.
"""
from __future__ import annotations

import glob
import os
import posixpath
from dataclasses import dataclass
from typing import NamedTuple

import fsspec
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from corpus.config import ConfigError

GLOB_CHARS = "*?["
UNSUPPORTED_FILE = "unsupported_file"  # the reject reason of an UnreadFile
# Image files that records or captions name, read beside the inputs by the pipelines that take
# images that way.
IMAGE_FILES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
# Suffixes that name a compression rather than a format: `a.json.gz` has the extension .json.gz.
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute local path or URI, as opened
    relative: str  # path below `root`, `/`-separated: the sample-key prefix
    root: str = ""  # the pattern's fixed part the key is taken from (a folder or URI prefix)

    @property
    def uri(self) -> str:
        return self.path


@dataclass(frozen=True)
class UnreadFile:
    """A file below an input folder or glob that the pipeline does not read: one errored input
    (`UNSUPPORTED_FILE`) of its run. It has a `uri` and no `path`, so a task's fingerprint does
    not ask for its size (a task may hold very many)."""

    uri: str
    relative: str
    detail: str  # what is not read, and what the command reads instead


class Inputs(NamedTuple):
    files: list[InputFile]  # what the pipeline reads, sorted by key
    unread: list[UnreadFile]  # the other files below the folders and globs, sorted by key


def expand_inputs(patterns: list[str], extensions: tuple[str, ...]) -> list[InputFile]:
    """Every file the patterns name, once (the first pattern naming it gives its key), sorted
    by relative key. Raises FileNotFoundError for a pattern that matches nothing, and
    ConfigError (a ValueError) when two different files would get the same key (their ids would
    collide) or a file system cannot be listed."""
    return _find(patterns, extensions)[0]


def find_inputs(patterns: list[str], extensions: tuple[str, ...], command: str,
                reads: str = "", companions: tuple[str, ...] = ()) -> Inputs:
    """`expand_inputs`, and every other visible file below the folders and globs as an
    `UnreadFile` of `command` (e.g. "corpus text"), which reads `reads` (by default: files of
    the extensions). Files of the `companions` extensions are read beside the inputs, so they
    are neither inputs nor unread."""
    files, others = _find(patterns, extensions)
    reads = reads or ", ".join(extensions) + " files"
    read_beside = tuple(e.lower() for e in companions)
    unread = [UnreadFile(f.path, f.relative, not_read_detail(f.relative, command, reads))
              for f in others if not _wanted(f.path, read_beside)]
    return Inputs(files, unread)


def not_read_detail(name: str, command: str, reads: str) -> str:
    """`extension .docx is not read by corpus text (it reads …)`."""
    extension = extension_of(name)
    what = f"extension {extension}" if extension else "a file without an extension"
    return f"{what} is not read by {command} (it reads {reads})"


def extension_of(name: str) -> str:
    """A file name's extension, with the one before a compression suffix (`a.json.gz` ->
    `.json.gz`); "" when it has none."""
    parts = posixpath.basename(name).split(".")[1:]
    if not parts:
        return ""
    if len(parts) > 1 and "." + parts[-1].lower() in COMPRESSION_SUFFIXES:
        return "." + ".".join(parts[-2:])
    return "." + parts[-1]


def fixed_prefix(pattern: str) -> str:
    """The folder part of a glob before its first wildcard (`data/a*/*.tar` -> `data`)."""
    cut = min((i for i, c in enumerate(pattern) if c in GLOB_CHARS), default=len(pattern))
    head = pattern[:cut]
    return (head.rstrip("/") or "/") if head.endswith("/") else posixpath.dirname(head)


def _find(patterns: list[str], extensions: tuple[str, ...]) -> tuple[list[InputFile],
                                                                       list[InputFile]]:
    """The files the patterns name (as `expand_inputs`), and the other files found below the
    folders and globs (not named by any pattern), both sorted by key."""
    suffixes = tuple(e.lower() for e in extensions)
    found: dict[str, InputFile] = {}
    by_key: dict[str, str] = {}
    others: dict[str, InputFile] = {}
    for pattern in patterns:
        listed, named = _listed(pattern)
        matches = listed if named else [f for f in listed if _wanted(f.path, suffixes)]
        if not matches:
            raise FileNotFoundError(_nothing_matched(pattern, extensions, listed))
        for item in matches:
            if item.path in found:
                continue
            other = by_key.setdefault(item.relative, item.path)
            if other != item.path:
                raise ConfigError(f"inputs {other} and {item.path} both have the key "
                                  f"{item.relative!r}, so their samples' ids would collide; "
                                  "give their common folder as --input instead")
            found[item.path] = item
        if not named:
            for item in listed:
                others.setdefault(item.path, item)
    unread = [f for path, f in others.items() if path not in found]
    return (sorted(found.values(), key=lambda f: f.relative),
            sorted(unread, key=lambda f: f.relative))


def _nothing_matched(pattern: str, extensions: tuple[str, ...], listed: list[InputFile]) -> str:
    message = f"no input matched {pattern!r} (looked for {', '.join(extensions)} files"
    if listed:
        names = ", ".join(f.relative for f in listed[:3]) + (", ..." if len(listed) > 3 else "")
        message += f"; found only {len(listed)} other file(s): {names}"
    return message + ")"


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in GLOB_CHARS)


def _wanted(path: str, suffixes: tuple[str, ...]) -> bool:
    return path.lower().endswith(suffixes)


def _visible(files: list[InputFile]) -> list[InputFile]:
    return [f for f in files if not any(part.startswith(".") for part in f.relative.split("/"))]


# Each expander returns (the files it found, whether the pattern named one file): a named file
# is taken whatever its extension, the files below a folder or glob are sorted by extension.

def _expand_local(pattern: str) -> tuple[list[InputFile], bool]:
    if os.path.isfile(pattern):  # before the glob test: a file name may hold `[`
        path = os.path.abspath(pattern)
        return [InputFile(path, os.path.basename(path), os.path.dirname(path))], True
    if os.path.isdir(pattern):
        root = os.path.abspath(pattern)
        paths = glob.glob(os.path.join(glob.escape(root), "**", "*"), recursive=True)
    elif _is_glob(pattern):
        root = os.path.abspath(fixed_prefix(pattern) or ".")
        paths = glob.glob(pattern, recursive=True)
    else:
        return [], False
    return _visible([InputFile(path, os.path.relpath(path, root).replace(os.sep, "/"), root)
                     for path in map(os.path.abspath, paths) if os.path.isfile(path)]), False


def _listed(pattern: str) -> tuple[list[InputFile], bool]:
    """The files below a pattern, and whether it names a file; a file system that cannot be
    reached (no network, no credentials) is a ConfigError in one line."""
    if "://" not in pattern:
        return _expand_local(pattern)
    try:
        return _expand_uri(pattern)
    except Exception as error:  # each file system raises its own kinds
        first_line = (str(error).splitlines() or [""])[0][:300]
        raise ConfigError(f"cannot list --input {pattern}: {type(error).__name__}: "
                          f"{first_line}") from None


def _expand_uri(pattern: str) -> tuple[list[InputFile], bool]:
    try:
        FileSystems.get_filesystem(pattern)
    except ValueError:  # a scheme Beam has no filesystem for (memory://, hf://, ...)
        return _expand_fsspec(pattern)
    return _expand_beam(pattern)


def _beam_match(pattern: str) -> list[str]:
    try:
        return [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    except BeamIOError:  # what some filesystems raise for a prefix that does not exist
        return []


def _expand_beam(pattern: str) -> tuple[list[InputFile], bool]:
    if _is_glob(pattern):
        root = fixed_prefix(pattern)
        paths = _beam_match(pattern)
    else:  # a folder when anything lies below it (Beam has no `isdir`), else a file
        root = pattern.rstrip("/")
        paths = _beam_match(root + "/**")
        if not paths and not pattern.endswith("/") and _beam_match(pattern) == [pattern]:
            return [InputFile(pattern, posixpath.basename(pattern),
                              posixpath.dirname(pattern))], True
    return _visible([InputFile(p, _below(p, root), root) for p in paths]), False


def _expand_fsspec(pattern: str) -> tuple[list[InputFile], bool]:
    fs, path = fsspec.core.url_to_fs(pattern)
    if _is_glob(path):
        root = fixed_prefix(path)
        paths = [p for p, info in fs.glob(path, detail=True).items()
                 if info.get("type") == "file"]
    elif fs.isfile(path):
        return [InputFile(fs.unstrip_protocol(path), posixpath.basename(path),
                          fs.unstrip_protocol(posixpath.dirname(path)))], True
    elif fs.isdir(path):
        root = path.rstrip("/")
        paths = fs.find(root)
    else:
        return [], False
    return _visible([InputFile(fs.unstrip_protocol(p), _below(p, root), fs.unstrip_protocol(root))
                     for p in paths]), False


def _below(path: str, root: str) -> str:
    """`path` relative to the `/`-separated prefix `root`."""
    if root and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1:]
    return posixpath.basename(path)
