"""The text SynthDoG writes: one or more UTF-8 files read as one endless stream of characters.

As in SynthDoG, a document starts at a random place in the stream and each text box takes the
next characters that fit; line breaks of the files are not kept (whitespace runs become one
space), so boxes cut the text wherever they fill up.
"""
from __future__ import annotations

import os
import re
import unicodedata
from collections import Counter
from importlib import resources

_WHITESPACE = re.compile(r"\s+")


class CorpusError(ValueError):
    """A corpus that cannot be used: missing, not UTF-8, or without any text."""


def default_corpus(language: str) -> str:
    """Path of the small corpus shipped for `language` (`corpus/data/synthdog/LANG.txt`)."""
    return str(resources.files("corpus") / "data" / "synthdog" / f"{language}.txt")


def normalize(text: str) -> str:
    """Printable characters only, whitespace runs collapsed to one space."""
    kept = "".join(c for c in text if c.isspace() or unicodedata.category(c)[0] != "C")
    return _WHITESPACE.sub(" ", kept).strip()


class TextStream:
    def __init__(self, paths: list[str]):
        if not paths:
            raise CorpusError("no corpus file given")
        parts = []
        for path in paths:
            if not os.path.isfile(path):
                raise CorpusError(f"corpus file not found: {path}")
            try:
                with open(path, encoding="utf-8") as f:
                    parts.append(normalize(f.read()))
            except UnicodeDecodeError as error:
                raise CorpusError(f"corpus file is not UTF-8: {path} ({error})") from error
        self.text = " ".join(p for p in parts if p)
        if not self.text:
            raise CorpusError(f"corpus has no text: {paths}")
        self.paths = list(paths)
        # Joined end to start so a box can run past the end of the files without a seam.
        self._ring = self.text + " "

    def __len__(self) -> int:
        return len(self._ring)

    def chars(self) -> Counter:
        """How often each character occurs (spaces aside)."""
        counts = Counter(self.text)
        counts.pop(" ", None)
        return counts

    def read(self, start: int, count: int) -> str:
        """`count` characters from `start`, wrapping around the end of the corpus."""
        start %= len(self._ring)
        out = self._ring[start:start + count]
        while len(out) < count:
            out += self._ring[:count - len(out)]
        return out
