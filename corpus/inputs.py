"""Input expansion shared by every pipeline: `--input` patterns -> a sorted list of files, each
with a relative key that becomes part of its samples' ids.

A pattern is a local path or a URI (any scheme Beam's FileSystems knows, else fsspec's):
- a folder (remote: a prefix with files below it, or one written with a trailing `/`):
  searched recursively for files with one of the pipeline's extensions;
- a glob (`*`, `?`, `[`; `**` crosses folders): the matching files with those extensions;
- a file: taken whatever its extension, since it was named.
Below a folder or a glob's fixed part, hidden files and folders (`.name`) are skipped, as a
shell glob skips them.

The relative key is the path below the pattern's fixed part: the folder itself, the folder
before a glob's first wildcard, or a named file's folder (so a file's key is its base name).
Keys do not depend on where the data sits, so moving a dataset keeps its sample ids.
"""
from __future__ import annotations

import glob
import os
import posixpath
from dataclasses import dataclass

import fsspec
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute local path or URI, as opened
    relative: str  # path below `root`, `/`-separated: the sample-key prefix
    root: str = ""  # the pattern's fixed part the key is taken from (a folder or URI prefix)

    @property
    def uri(self) -> str:
        return self.path


def expand_inputs(patterns: list[str], extensions: tuple[str, ...]) -> list[InputFile]:
    """Every file the patterns name, once (the first pattern naming it gives its key), sorted
    by relative key. Raises FileNotFoundError for a pattern that matches nothing, and
    ValueError when two different files would get the same key (their ids would collide)."""
    suffixes = tuple(e.lower() for e in extensions)
    found: dict[str, InputFile] = {}
    by_key: dict[str, str] = {}
    for pattern in patterns:
        matches = _expand_uri(pattern, suffixes) if "://" in pattern else \
            _expand_local(pattern, suffixes)
        if not matches:
            raise FileNotFoundError(
                f"no input matched {pattern!r} (looked for {', '.join(extensions)} files)")
        for item in matches:
            if item.path in found:
                continue
            other = by_key.setdefault(item.relative, item.path)
            if other != item.path:
                raise ValueError(f"inputs {other!r} and {item.path!r} both have the key "
                                 f"{item.relative!r}; name their common folder instead")
            found[item.path] = item
    return sorted(found.values(), key=lambda f: f.relative)


def fixed_prefix(pattern: str) -> str:
    """The folder part of a glob before its first wildcard (`data/a*/*.tar` -> `data`)."""
    cut = min((i for i, c in enumerate(pattern) if c in GLOB_CHARS), default=len(pattern))
    head = pattern[:cut]
    return (head.rstrip("/") or "/") if head.endswith("/") else posixpath.dirname(head)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in GLOB_CHARS)


def _wanted(path: str, suffixes: tuple[str, ...]) -> bool:
    return path.lower().endswith(suffixes)


def _visible(files: list[InputFile]) -> list[InputFile]:
    return [f for f in files if not any(part.startswith(".") for part in f.relative.split("/"))]


def _expand_local(pattern: str, suffixes: tuple[str, ...]) -> list[InputFile]:
    if os.path.isfile(pattern):  # before the glob test: a file name may hold `[`
        path = os.path.abspath(pattern)
        return [InputFile(path, os.path.basename(path), os.path.dirname(path))]
    if os.path.isdir(pattern):
        root = os.path.abspath(pattern)
        paths = glob.glob(os.path.join(glob.escape(root), "**", "*"), recursive=True)
    elif _is_glob(pattern):
        root = os.path.abspath(fixed_prefix(pattern) or ".")
        paths = glob.glob(pattern, recursive=True)
    else:
        return []
    return _visible([InputFile(path, os.path.relpath(path, root).replace(os.sep, "/"), root)
                     for path in map(os.path.abspath, paths)
                     if _wanted(path, suffixes) and os.path.isfile(path)])


def _expand_uri(pattern: str, suffixes: tuple[str, ...]) -> list[InputFile]:
    try:
        FileSystems.get_filesystem(pattern)
    except ValueError:  # a scheme Beam has no filesystem for (memory://, hf://, ...)
        return _expand_fsspec(pattern, suffixes)
    return _expand_beam(pattern, suffixes)


def _beam_match(pattern: str) -> list[str]:
    try:
        return [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    except BeamIOError:  # what some filesystems raise for a prefix that does not exist
        return []


def _expand_beam(pattern: str, suffixes: tuple[str, ...]) -> list[InputFile]:
    if _is_glob(pattern):
        root = fixed_prefix(pattern)
        paths = [p for p in _beam_match(pattern) if _wanted(p, suffixes)]
    else:  # a folder when anything lies below it (Beam has no `isdir`), else a file
        root = pattern.rstrip("/")
        below = _beam_match(root + "/**")
        if not below and not pattern.endswith("/") and _beam_match(pattern) == [pattern]:
            return [InputFile(pattern, posixpath.basename(pattern), posixpath.dirname(pattern))]
        paths = [p for p in below if _wanted(p, suffixes)]
    return _visible([InputFile(p, _below(p, root), root) for p in paths])


def _expand_fsspec(pattern: str, suffixes: tuple[str, ...]) -> list[InputFile]:
    fs, path = fsspec.core.url_to_fs(pattern)
    if _is_glob(path):
        root = fixed_prefix(path)
        paths = [p for p, info in fs.glob(path, detail=True).items()
                 if info.get("type") == "file" and _wanted(p, suffixes)]
    elif fs.isfile(path):
        return [InputFile(fs.unstrip_protocol(path), posixpath.basename(path),
                          fs.unstrip_protocol(posixpath.dirname(path)))]
    elif fs.isdir(path):
        root = path.rstrip("/")
        paths = [p for p in fs.find(root) if _wanted(p, suffixes)]
    else:
        return []
    return _visible([InputFile(fs.unstrip_protocol(p), _below(p, root), fs.unstrip_protocol(root))
                     for p in paths])


def _below(path: str, root: str) -> str:
    """`path` relative to the `/`-separated prefix `root`."""
    if root and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1:]
    return posixpath.basename(path)
