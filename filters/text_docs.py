"""Rules for pure-text documents (stage 2 and 3 text data) and their chunking.

Cleaners: control characters removed (tab and newline stay), HTML remnants cleaned with the
caption cleaner (`filters.text_rules.clean_html`, keeping paragraph breaks). Drops:
`empty_document`, `text_too_short`, `text_too_long` (characters; a Chinese character is one),
and the language rule shared with the pair pipeline (`filters.language`). Exact duplicates are
found by `normalized_hash`. `chunk_text` splits a long document into pieces that fit a token
budget, on paragraph, line, sentence or word boundaries, in that order of preference.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable

from corpus.schema import Sample
from filters.base import Reason
from filters.text_rules import clean_html

# C0/C1 controls and DEL, except tab and newline; carriage returns become newlines first.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def remove_control_characters(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def control_characters(sample: Sample):
    cleaned = remove_control_characters(sample.text)
    if cleaned == sample.text:
        return None
    return dataclasses.replace(sample, text=cleaned,
                               decisions=sample.decisions + ["control_characters_removed"])


def document_html(sample: Sample):
    """HTML remnants cleaned, paragraph breaks kept; only when the text looks like it has any."""
    cleaned = clean_html(sample.text, keep_newlines=True)
    if cleaned == sample.text:
        return None
    decisions = sample.decisions
    if "<" in sample.text or "&" in sample.text:
        decisions = decisions + ["html_cleaned"]
    return dataclasses.replace(sample, text=cleaned, decisions=decisions)


def empty_document(sample: Sample):
    if any(c.isalnum() for c in sample.text):
        return None
    return Reason("empty_document", f"no letter or digit in {len(sample.text)} characters")


def normalized_hash(text: str) -> str:
    """Hash of the text with case, Unicode form and whitespace normalised: what "exact
    duplicate" means here."""
    normal = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.blake2b(normal.encode("utf-8"), digest_size=16).hexdigest()


# ---- chunking -----------------------------------------------------------------------------------

_PARAGRAPH = re.compile(r"(\n\s*\n)")
_LINE = re.compile(r"(\n)")
# After . ! ? (and their full-width forms, which need no following space), or an ellipsis.
_SENTENCE = re.compile(r"((?<=[.!?…])\s+|(?<=[。！？；]))")
_WORD = re.compile(r"(\s+)")


def _split_keeping(pattern: re.Pattern, text: str) -> list[str]:
    """Pieces that concatenate back to `text`; each separator stays with the piece before it."""
    parts = pattern.split(text)
    pieces = [parts[i] + (parts[i + 1] if i + 1 < len(parts) else "")
              for i in range(0, len(parts), 2)]
    return [p for p in pieces if p]


def _split_characters(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


SPLITTERS: list[Callable[[str], list[str]]] = [
    lambda t: _split_keeping(_PARAGRAPH, t),
    lambda t: _split_keeping(_LINE, t),
    lambda t: _split_keeping(_SENTENCE, t),
    lambda t: _split_keeping(_WORD, t),
]


def chunk_text(text: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    """Split `text` into stripped chunks of at most `max_tokens` tokens each (by `count`).

    The text is cut into pieces that each fit, using the coarsest boundary that works for each
    part (paragraph, then line, sentence, word; a single word longer than the budget is cut by
    characters), and the pieces are packed greedily in order."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    chunks, current, current_tokens = [], "", 0
    for piece, tokens in _pieces(text, max_tokens, count, 0):
        # Summed piece counts estimate the joined count; _fit checks the real one.
        if current and current_tokens + tokens > max_tokens:
            chunks.extend(_fit(current, max_tokens, count))
            current, current_tokens = "", 0
        current += piece
        current_tokens += tokens
    if current:
        chunks.extend(_fit(current, max_tokens, count))
    return [c.strip() for c in chunks if c.strip()]


def _pieces(text: str, budget: int, count, level: int):
    """(piece, tokens) in order, each piece within the budget."""
    tokens = count(text)
    if tokens <= budget:
        yield text, tokens
        return
    if level == len(SPLITTERS):
        size = max(1, len(text) // (tokens // budget + 1))
        for part in _split_characters(text, size):
            yield from _pieces(part, budget, count, level)
        return
    parts = SPLITTERS[level](text)
    if len(parts) <= 1:
        yield from _pieces(text, budget, count, level + 1)
        return
    for part in parts:
        yield from _pieces(part, budget, count, level + 1) if count(part) > budget else \
            [(part, count(part))]


def _fit(chunk: str, budget: int, count) -> list[str]:
    """A packed chunk whose real count is over budget (a merge across a piece boundary, rare)
    is split again."""
    if count(chunk) <= budget:
        return [chunk]
    return [piece for piece, _ in _pieces(chunk, budget, count, 0)]


@dataclass
class TextDocsConfig:
    """Rules for `corpus text`. The paper names no values: these are ours."""

    split: str = "blank_lines"  # .txt files: "blank_lines" (a document per block) or "file"
    text_field: str = "text"  # JSONL key / Parquet column
    max_document_bytes: int = 8 << 20  # larger documents are not read (document_too_large)
    remove_control_characters: bool = True
    clean_html: bool = True
    min_chars: int = 20  # a sentence, not a fragment
    max_chars: int = 2_000_000  # past this a "document" is usually a dump, not prose
    languages: list[str] | None = field(default_factory=lambda: ["en", "zh"])
    min_language_score: float = 0.0
    language_sample_chars: int = 4000  # fastText reads the first this many characters
    deduplicate: bool = True  # exact duplicates by normalized_hash; the smallest id is kept
    max_tokens: int = 2048  # stage 2/3 sequence length; a chunk holds max_tokens - 1 plus EOS
    tokenizer: str | None = None  # tokenizer.json or HF folder; None: TextTokenizer.default()

    def validate(self) -> None:
        if self.split not in ("blank_lines", "file"):
            raise ValueError(f"split must be blank_lines or file, got {self.split!r}")
        if not 0 <= self.min_chars <= self.max_chars:
            raise ValueError(f"need 0 <= min_chars <= max_chars, got {self.min_chars}, "
                             f"{self.max_chars}")
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {self.max_tokens}")
