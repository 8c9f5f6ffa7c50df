"""Font faces for SynthDoG: found in files or folders, with the characters each face can draw.

A font entry is a file (`.ttf`, `.otf`, `.ttc`, `.otc`), a folder searched recursively, or a
collection face written `path.ttc#N`. A collection without `#N` contributes every face.
A face's charset comes from synthtiger's charset file (`NAME.txt` beside the font: the
characters it may draw, one file per font) when there is one, else from the font's own cmap.
Faces that cannot be read are left out and counted, never retried.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Mapping

from fontTools.ttLib import TTCollection, TTFont, TTLibError
from PIL import ImageFont

FONT_EXTENSIONS = (".ttf", ".otf", ".ttc", ".otc")
COLLECTION_EXTENSIONS = (".ttc", ".otc")


class FontError(ValueError):
    """No usable font for a language: the message names the entries and why."""


@dataclass(frozen=True)
class FontFace:
    path: str
    index: int = 0

    @property
    def name(self) -> str:
        return f"{self.path}#{self.index}" if self.path.lower().endswith(COLLECTION_EXTENSIONS) \
            else self.path


@dataclass
class FontInventory:
    """The usable faces of one language and what was left out on the way (for the report)."""

    faces: list[FontFace]
    charsets: dict[FontFace, frozenset[str]]
    unreadable: list[str] = field(default_factory=list)
    low_coverage: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"faces": len(self.faces), "unreadable": len(self.unreadable),
                "low_coverage": len(self.low_coverage),
                "unreadable_names": self.unreadable[:20],
                "low_coverage_names": self.low_coverage[:20]}


def _split_face(entry: str) -> tuple[str, int | None]:
    path, sep, index = entry.rpartition("#")
    if sep and index.isdigit():
        return path, int(index)
    return entry, None


def _font_files(path: str) -> list[str]:
    if os.path.isdir(path):
        found = []
        for root, _, names in os.walk(path):
            found += [os.path.join(root, n) for n in names if n.lower().endswith(FONT_EXTENSIONS)]
        return sorted(found)
    return [path]


def _read_cmap(font: TTFont) -> frozenset[str]:
    cmap = font.getBestCmap() or {}
    return frozenset(chr(code) for code in cmap if code > 0x1F)


def _charset_file(path: str) -> frozenset[str] | None:
    """synthtiger's convention: the characters a font may draw, in `NAME.txt` beside it."""
    txt = os.path.splitext(path)[0] + ".txt"
    if not os.path.isfile(txt):
        return None
    with open(txt, encoding="utf-8") as f:
        return frozenset(f.read()) - {"\n", "\r"}


def read_faces(path: str, index: int | None) -> list[tuple[FontFace, frozenset[str]]]:
    """Faces of one font file with their charsets; raises OSError/TTLibError if unreadable."""
    declared = _charset_file(path)
    if path.lower().endswith(COLLECTION_EXTENSIONS):
        collection = TTCollection(path, lazy=True)
        indices = range(len(collection.fonts)) if index is None else [index]
        faces = []
        for i in indices:
            if i >= len(collection.fonts):
                raise TTLibError(f"{path} has {len(collection.fonts)} faces, no face {i}")
            faces.append((FontFace(path, i), declared or _read_cmap(collection.fonts[i])))
        return faces
    with TTFont(path, lazy=True) as font:
        return [(FontFace(path, 0), declared or _read_cmap(font))]


def discover_fonts(entries: list[str], text_chars: Mapping[str, int], min_coverage: float,
                   language: str) -> FontInventory:
    """Every readable face in `entries` that draws at least `min_coverage` of the corpus's
    text, counted by occurrence (`text_chars`: character -> count), so a few rare symbols do not
    rule a face out. Raises FontError when no face is left."""
    total = sum(text_chars.values())
    inventory = FontInventory(faces=[], charsets={})
    missing_entries = []
    for entry in entries:
        path, index = _split_face(entry)
        if not os.path.exists(path):
            missing_entries.append(path)
            continue
        for file in _font_files(path):
            try:
                faces = read_faces(file, index)
                for face, _ in faces:
                    load_font(face, 12)  # FreeType must read it too, not just fontTools
            except (OSError, TTLibError, ValueError, AssertionError) as error:
                inventory.unreadable.append(f"{file}: {type(error).__name__}")
                continue
            for face, charset in faces:
                drawable = sum(n for c, n in text_chars.items() if c in charset or c.isspace())
                coverage = drawable / total if total else 1.0
                if coverage < min_coverage:
                    inventory.low_coverage.append(f"{face.name}: {coverage:.2f}")
                    continue
                inventory.faces.append(face)
                inventory.charsets[face] = charset
    if not inventory.faces:
        raise FontError(
            f"no usable {language} font in {entries}: "
            + "; ".join(filter(None, [
                f"missing {missing_entries}" if missing_entries else "",
                f"unreadable {inventory.unreadable}" if inventory.unreadable else "",
                f"covering under {min_coverage:.0%} of the corpus's characters "
                f"{inventory.low_coverage}" if inventory.low_coverage else "",
            ])) or f"no font files found in {entries}")
    return inventory


@functools.lru_cache(maxsize=256)
def load_font(face: FontFace, size: int) -> ImageFont.FreeTypeFont:
    """A FreeType font at one size, cached: opening a 20 MB CJK collection per line is what makes
    a naive renderer slow."""
    return ImageFont.truetype(face.path, size=size, index=face.index)
