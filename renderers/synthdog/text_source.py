"""The text SynthDoG writes: UTF-8 files read as one endless stream of characters.

As SynthDoG's `TextReader` does, each file is read once at start-up in blocks of about a
megabyte, keeping only where each block starts; text is then read a block at a time (a few
blocks cached), so a corpus as large as a Wikipedia dump's text costs one pass over the file and
a few megabytes of memory. That pass also rejects a file that is not UTF-8 or holds no text, and
counts the characters of blocks spread over the corpus, which the fonts are checked against.

A document starts at a random place in the stream and each text box takes the next characters
that fit. The stream is the files' raw characters, each file followed by one space; the text
box turns whitespace (line breaks too) into single spaces and leaves control characters out.
"""
from __future__ import annotations

import bisect
import codecs
import os
import re
import unicodedata
from collections import Counter, OrderedDict
from dataclasses import dataclass
from importlib import resources

BLOCK_BYTES = 1 << 20
CACHE_BLOCKS = 8
SAMPLE_BYTES = 4 << 20  # about how much text, spread over the corpus, characters are counted in
# Anything but whitespace and C0/C1 controls: a block with one of these holds some text.
_TEXT = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]")


class CorpusError(ValueError):
    """A corpus that cannot be used: missing, not UTF-8, or without any text."""


def default_corpus(language: str) -> str:
    """Path of the small corpus shipped for `language` (`corpus/data/synthdog/LANG.txt`)."""
    return str(resources.files("corpus") / "data" / "synthdog" / f"{language}.txt")


def is_text_char(char: str) -> bool:
    """False for control, format and unassigned characters, which a text box leaves out."""
    return unicodedata.category(char)[0] != "C"


@dataclass(frozen=True)
class Block:
    """`chars` characters of `path` decoded from `size` bytes at byte `offset`; `path` None is
    the space that ends a file."""

    path: str | None
    offset: int
    size: int
    chars: int


def _check_file(path: str) -> None:
    if os.path.isdir(path):
        raise CorpusError(f"corpus is a folder, not a text file: {path}")
    if not os.path.isfile(path):
        raise CorpusError(f"corpus file not found: {path}")


def _opened(path: str):
    try:
        return open(path, "rb")
    except OSError as error:
        raise CorpusError(f"cannot read corpus file {path}: {error.strerror}") from error


def _decoded_blocks(path: str):
    """(Block, its text) for each block of a file, cut on whole UTF-8 characters."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    start = read = 0
    with _opened(path) as f:
        while True:
            chunk = f.read(BLOCK_BYTES)
            held = len(decoder.getstate()[0])  # bytes of a character cut by the last chunk
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                at = read - held + error.start
                raise CorpusError(f"corpus file is not UTF-8: {path} (byte {at}: "
                                  f"{error.reason})") from error
            read += len(chunk)
            end = read - len(decoder.getstate()[0])
            if text:
                yield Block(path, start, end - start, len(text)), text
                start = end
            if not chunk:
                return


class TextStream:
    def __init__(self, paths: list[str]):
        if not paths:
            raise CorpusError("no corpus file given")
        for path in paths:
            _check_file(path)
        total_bytes = sum(os.path.getsize(path) for path in paths)
        sample_every = max(1, total_bytes // SAMPLE_BYTES)  # count one block in this many
        self.paths = list(paths)
        self._blocks: list[Block] = []
        self._counts = Counter()
        has_text = False
        for path in paths:
            for block, text in _decoded_blocks(path):
                if len(self._blocks) % sample_every == 0:
                    self._counts.update(text)
                has_text = has_text or _TEXT.search(text) is not None
                self._blocks.append(block)
            self._blocks.append(Block(None, 0, 0, 1))
        if not has_text:
            raise CorpusError(f"corpus has no text: {paths}")
        self._starts = [0]
        for block in self._blocks:
            self._starts.append(self._starts[-1] + block.chars)
        self._cache: OrderedDict[int, str] = OrderedDict()

    def __len__(self) -> int:
        return self._starts[-1]

    def chars(self) -> Counter:
        """How often each character occurs (whitespace and control characters aside), counted
        over the whole corpus when it is small, else over blocks spread evenly through it."""
        return Counter({c: n for c, n in self._counts.items()
                        if not c.isspace() and is_text_char(c)})

    def read(self, start: int, count: int) -> str:
        """`count` characters from `start`, wrapping around the end of the corpus."""
        start %= len(self)
        pieces = []
        while count > 0:
            index = bisect.bisect_right(self._starts, start) - 1
            skip = start - self._starts[index]
            piece = self._block_text(index)[skip:skip + count]
            pieces.append(piece)
            count -= len(piece)
            start = (start + len(piece)) % len(self)
        return "".join(pieces)

    def _block_text(self, index: int) -> str:
        block = self._blocks[index]
        if block.path is None:
            return " "
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        with open(block.path, "rb") as f:  # opened per read: forked workers share no offset
            f.seek(block.offset)
            text = f.read(block.size).decode("utf-8")
        self._cache[index] = text
        if len(self._cache) > CACHE_BLOCKS:
            self._cache.popitem(last=False)
        return text
