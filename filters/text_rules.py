"""Caption rules of Appendix A.1, steps 4-8, and the academic-set tag rule.

Drops (a reason string): characters outside English and Chinese (`non_en_zh_characters`), emoji
(`emoji`), length (`text_too_short`, `text_too_long`), CC12M/SBU placeholder tags
(`academic_special_tag`). Cleaners (a cleaned `Sample`, a drop only when nothing is left): HTML
(`empty_after_html_cleaning`) and irregular patterns (`empty_after_pattern_cleaning`).

`clean_html` and `normalize_whitespace` are plain string functions, shared with the text pipeline.
"""
from __future__ import annotations

import dataclasses
import html
import re
from dataclasses import dataclass, field

import emoji

from corpus.schema import Sample
from filters.base import Reason, character_detail

# ---- step 4: which characters count as English or Chinese ---------------------------------------
# English: printable ASCII. Chinese: CJK Unified Ideographs (U+4E00-U+9FFF) and Extension A
# (U+3400-U+4DBF). Punctuation both use: CJK Symbols and Punctuation (U+3000-U+303F), full-width
# and half-width forms (U+FF00-U+FFEF), typographic dashes, quotes, bullet and ellipsis
# (U+2010-U+2027), and the middle dot, degree, multiplication and division signs. Symbols that
# belong to no script and fill product and recipe captions in both languages are allowed too:
# currency (¢ £ ¥, U+20A0-U+20CF with €), ± µ ½ ¼ ¾ ¹ ² ³ § ¶, ℃ ℉ №, number forms (⅓, Ⅱ),
# arrows, mathematical operators, geometric shapes and ★ ☆. Accented Latin ("Café") is outside
# English by this definition; `allow_accented_latin` admits the letters of Latin-1 Supplement
# (U+00C0-U+00FF except × and ÷, which are always allowed).
_ENGLISH = r"\x20-\x7e"
_CHINESE = r"\u3400-\u4dbf\u4e00-\u9fff"
_SHARED_PUNCTUATION = (r"\u3000-\u303f\uff00-\uffef\u2010-\u2027"
                       r"\u00b7\u00b0\u00d7\u00f7\u00a9\u00ae\u2122")
_SHARED_SYMBOLS = (r"\u00a2-\u00a5\u20a0-\u20cf\u00b1\u00b5\u00bc-\u00be\u00b9\u00b2\u00b3"
                   r"\u00a7\u00b6\u2103\u2109\u2116\u2150-\u218f\u2190-\u21ff\u2200-\u22ff"
                   r"\u25a0-\u25ff\u2605\u2606")
_ACCENTED_LATIN = r"\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff"
_WHITESPACE = r"\t\n\r\u00a0"
CJK_IDEOGRAPH = re.compile(f"[{_CHINESE}]")


def _allowed_pattern(accented_latin: bool) -> re.Pattern:
    extra = _ACCENTED_LATIN if accented_latin else ""
    return re.compile(
        f"[{_ENGLISH}{_CHINESE}{_SHARED_PUNCTUATION}{_SHARED_SYMBOLS}{_WHITESPACE}{extra}]*")


# ©, ®, ™ (and two CJK marks) are emoji to the `emoji` package, but in captions they are
# typography ("Nike®"). Bare, they are text; with the emoji variation selector U+FE0F they
# are emoji.
TEXT_PRESENTATION_SYMBOLS = frozenset("©®™〰〽")


def emoji_in(text: str) -> list[str]:
    """The emoji of `text`, leaving out bare ©, ®, ™ (see TEXT_PRESENTATION_SYMBOLS)."""
    if text.isascii():  # every emoji, keycaps included, has a non-ASCII code point
        return []
    return [e["emoji"] for e in emoji.emoji_list(text)
            if e["emoji"] not in TEXT_PRESENTATION_SYMBOLS]


class EnglishChineseOnly:
    """Step 4: drop text with a character outside English and Chinese. Emoji are left to step 5,
    so each step's count says what it caught."""

    name = "non_en_zh_characters"
    reasons = (name,)

    def __init__(self, allow_accented_latin: bool = False):
        self.allow_accented_latin = allow_accented_latin
        self._allowed = _allowed_pattern(allow_accented_latin)

    def __call__(self, sample: Sample):
        text = sample.text
        if self._allowed.fullmatch(text):
            return None
        without_emoji = emoji.replace_emoji(text, "")
        allowed = self._allowed.match(without_emoji)
        if allowed.end() == len(without_emoji):
            return None
        return Reason(self.name, character_detail(without_emoji, allowed.end()))

    def __getstate__(self):  # compiled patterns are rebuilt, not pickled
        return {"allow_accented_latin": self.allow_accented_latin}

    def __setstate__(self, state):
        self.__init__(**state)


def no_emoji(sample: Sample):
    """Step 5: drop text containing emoji."""
    found = emoji_in(sample.text)
    return Reason("emoji", " ".join(found[:5])) if found else None


no_emoji.reasons = ("emoji",)


# ---- step 6: length -----------------------------------------------------------------------------

def word_count(text: str) -> int:
    """Whitespace-separated words, with each Chinese character counted as one word."""
    ideographs = len(CJK_IDEOGRAPH.findall(text))
    return ideographs + len(CJK_IDEOGRAPH.sub(" ", text).split())


class TextLength:
    """Step 6: characters (a Chinese character is one character), words optionally."""

    name = "text_length"

    def __init__(self, min_chars: int, max_chars: int, min_words: int | None = None,
                 max_words: int | None = None, suffix: str = ""):
        self.min_chars, self.max_chars = min_chars, max_chars
        self.min_words, self.max_words = min_words, max_words
        self.suffix = suffix
        self.reasons = ("text_too_short" + suffix, "text_too_long" + suffix)

    def __call__(self, sample: Sample):
        short, long = self.reasons
        length = len(sample.text.strip())
        if length < self.min_chars:
            return Reason(short, f"{length} characters, under {self.min_chars}")
        if length > self.max_chars:
            return Reason(long, f"{length} characters, over {self.max_chars}")
        if self.min_words is not None or self.max_words is not None:
            words = word_count(sample.text)
            if self.min_words is not None and words < self.min_words:
                return Reason(short, f"{words} words, under {self.min_words}")
            if self.max_words is not None and words > self.max_words:
                return Reason(long, f"{words} words, over {self.max_words}")
        return None


# ---- step 7: HTML -------------------------------------------------------------------------------

# Only real HTML element names are tags; `<PERSON>` (CC12M) or `<3` are text, not markup.
HTML_ELEMENTS = (
    "a abbr address area article aside audio b base bdi bdo blockquote body br button canvas "
    "caption center cite code col colgroup data dd del details dfn dialog div dl dt em embed "
    "fieldset figcaption figure font footer form h1 h2 h3 h4 h5 h6 head header hr html i iframe "
    "img input ins kbd label legend li link main map mark meta meter nav noscript object ol "
    "optgroup option output p param picture pre progress q rp rt ruby s samp section select "
    "small source span strike strong sub summary sup table tbody td template textarea tfoot th "
    "thead time title tr track tt u ul var video wbr").split()
_BLOCK_ELEMENTS = {"br", "p", "div", "li", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6",
                   "hr", "ul", "ol", "table", "section", "article", "header", "footer",
                   "blockquote", "pre", "dd", "dt", "figcaption", "caption", "title"}
_HIDDEN_BLOCK = re.compile(r"<(script|style|noscript|template)\b[^>]*>.*?</\1\s*>",
                           re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?(-->|$)|<!\[CDATA\[.*?(\]\]>|$)|<![a-zA-Z][^>]*>", re.DOTALL)
_TAG = re.compile(r"</?(" + "|".join(sorted(HTML_ELEMENTS, key=len, reverse=True)) +
                  r")\b(?:[^>\"']|\"[^\"]*\"|'[^']*')*/?>", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
# Characters that draw nothing: soft hyphen, zero-width space and joiners, direction marks,
# embeddings and isolates, word joiner, byte-order mark. Web captions carry them unseen, and a
# caption file saved by Windows Notepad starts with the last.
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]")


def remove_invisible(text: str) -> str:
    return _INVISIBLE.sub("", text)


def normalize_whitespace(text: str) -> str:
    """Characters that draw nothing removed; runs of whitespace (NBSP, tabs, newlines
    included) become one space; ends trimmed."""
    return _SPACES.sub(" ", remove_invisible(text)).strip()


def clean_html(text: str, keep_newlines: bool = False) -> str:
    """Remove HTML comments, script/style blocks and tags; decode entities (twice, for the
    `&amp;amp;` of double-escaped pages); normalise whitespace. Block tags become line breaks
    when `keep_newlines` (documents), spaces otherwise (captions)."""
    if "<" not in text and "&" not in text:
        return text if keep_newlines else normalize_whitespace(text)
    text = _HIDDEN_BLOCK.sub(" ", text)
    text = _COMMENT.sub(" ", text)
    text = _TAG.sub(lambda m: "\n" if keep_newlines and m.group(1).lower() in _BLOCK_ELEMENTS
                    else " ", text)
    for _ in range(2):
        if "&" not in text:
            break
        text = html.unescape(text)
    if keep_newlines:
        lines = (normalize_whitespace(line) for line in text.split("\n"))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return normalize_whitespace(text)


def has_content(text: str) -> bool:
    """At least one letter, digit or Chinese character."""
    return any(c.isalnum() for c in text)


def _with_text(sample: Sample, text: str, decision: str) -> Sample:
    return dataclasses.replace(sample, text=text, decisions=sample.decisions + [decision])


def html_cleaner(sample: Sample):
    """Step 7: a cleaner; drops only when no content is left."""
    cleaned = clean_html(sample.text)
    if cleaned == sample.text:
        return None
    if not has_content(cleaned):
        return Reason("empty_after_html_cleaning", f"no letter or digit left: {cleaned[:80]!r}")
    return _with_text(sample, cleaned, "html_cleaned")


html_cleaner.reasons = ("empty_after_html_cleaning",)


# ---- step 8: irregular patterns -----------------------------------------------------------------

_IMAGE_EXTENSIONS = r"(?:jpe?g|png|gif|webp|bmp|tiff?|heic|avif)"


@dataclass
class Pattern:
    """A named regular expression and what replaces a match."""

    name: str
    regex: str
    replace: str = " "
    flags: str = "i"  # "i" ignore case

    def compile(self) -> re.Pattern:
        return re.compile(self.regex, re.IGNORECASE if "i" in self.flags else 0)


# The built-in list, in the order applied. A config names which to run and may add its own.
BUILTIN_PATTERNS = {
    "url": Pattern("url", r"\b(?:https?|ftp)://\S+|\bwww\.[^\s/]+\.\S+"),
    "email": Pattern("email", r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),
    # A file name with an image extension: "IMG_0001.JPG", "my-photo (2).jpeg".
    "file_name": Pattern("file_name", r"[\w\-()\[\]]+(?: \(\d+\))?\." + _IMAGE_EXTENSIONS + r"\b"),
    # Camera file stems without an extension: IMG_0001, DSC_2481, DSC02481, PXL_20230101_123456.
    "camera_file_name": Pattern(
        "camera_file_name",
        r"\b(?:IMG|DSC|DSCN|DSCF|DCIM|PXL|MVI|GOPR|GOPRO|VID|WP|SAM|PIC|P\d{3})[_\-]?\d{3,}"
        r"(?:[_\-]\w+)*\b"),
    "repeated_punctuation": Pattern("repeated_punctuation",
                                    r"([!?,;:~*=_#|/\\\-+<>^])\1{2,}", r"\1", ""),
    "long_ellipsis": Pattern("long_ellipsis", r"\.{4,}|…{2,}", "...", ""),
    # Separators left dangling at either end once the rest is cleaned: "| photo -".
    "dangling_separators": Pattern(
        "dangling_separators",
        r"^\s*[|\-–—:;,/\\·•][\s|\-–—:;,/\\·•]*|[\s|\-–—:;,/\\·•]*[|\-–—:;,/\\·•]\s*$", "", ""),
}
DEFAULT_PATTERNS = list(BUILTIN_PATTERNS)


class PatternCleaner:
    """Step 8: apply the named patterns in order; drop only when no content is left."""

    name = "pattern_cleaner"
    reasons = ("empty_after_pattern_cleaning",)

    def __init__(self, patterns: list[Pattern]):
        self.patterns = patterns
        self._compiled = [(p.name, p.compile(), p.replace) for p in patterns]

    @classmethod
    def from_names(cls, names: list[str], custom: list[dict] | None = None) -> "PatternCleaner":
        unknown = sorted(set(names) - set(BUILTIN_PATTERNS))
        if unknown:
            raise ValueError(f"unknown pattern(s) {unknown}; built in: {DEFAULT_PATTERNS}")
        custom_patterns = [Pattern(**p) for p in custom or []]
        # Custom patterns run before the dangling-separator trim, which tidies what they leave.
        builtin = [BUILTIN_PATTERNS[n] for n in names]
        tail = [p for p in builtin if p.name == "dangling_separators"]
        head = [p for p in builtin if p.name != "dangling_separators"]
        return cls(head + custom_patterns + tail)

    def clean(self, text: str) -> tuple[str, list[str]]:
        applied = []
        for name, regex, replace in self._compiled:
            new = regex.sub(replace, text)
            if new != text:
                applied.append(name)
                text = new
        return normalize_whitespace(text), applied

    def __call__(self, sample: Sample):
        cleaned, applied = self.clean(sample.text)
        if cleaned == sample.text:
            return None
        if not has_content(cleaned):
            return Reason("empty_after_pattern_cleaning",
                        f"no letter or digit left after {', '.join(applied)}: {cleaned[:80]!r}")
        return dataclasses.replace(sample, text=cleaned,
                                   decisions=sample.decisions + [f"removed_{n}" for n in applied])

    def __getstate__(self):
        return {"patterns": self.patterns}

    def __setstate__(self, state):
        self.__init__(**state)


# ---- academic sets ------------------------------------------------------------------------------

# CC12M replaced person names with `<PERSON>`; SBU-style dumps carry other all-caps placeholders.
DEFAULT_ACADEMIC_TAGS = [r"<\s*PERSON\s*>", r"<\s*[A-Z][A-Z_]{2,}\s*>"]


class AcademicTags:
    name = "academic_special_tag"
    reasons = (name,)

    def __init__(self, patterns: list[str]):
        self.patterns = patterns
        self._regex = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None

    def __call__(self, sample: Sample):
        found = self._regex.search(sample.text) if self._regex is not None else None
        return Reason(self.name, f"tag {found.group()!r}") if found else None

    def __getstate__(self):
        return {"patterns": self.patterns}

    def __setstate__(self, state):
        self.__init__(**state)


@dataclass
class TextRulesConfig:
    """Caption rules; each can be switched off. The paper names no values: these are ours."""

    allowed_scripts: bool = True  # step 4
    allow_accented_latin: bool = False  # "Café" is dropped by step 4 unless this is on
    tag_language: bool = True  # fastText lid.176 tag on every kept sample
    languages: list[str] | None = None  # e.g. [en, zh]: require these; None: tag only
    min_language_score: float = 0.0
    drop_emoji: bool = True  # step 5
    min_chars: int = 5  # step 6: "a dog" is the shortest caption we call a caption
    max_chars: int = 512  # fits the 512-token stage-1 sequence with room for the image
    min_words: int | None = None
    max_words: int | None = None
    clean_html: bool = True  # step 7
    patterns: list[str] = field(default_factory=lambda: list(DEFAULT_PATTERNS))  # step 8
    custom_patterns: list[dict] = field(default_factory=list)  # [{name, regex, replace, flags}]
    recheck_length_after_cleaning: bool = True  # cleaning may leave "a" of "<b>a</b>"
    academic_tags: list[str] = field(default_factory=lambda: list(DEFAULT_ACADEMIC_TAGS))

    def validate(self) -> None:
        if not 0 <= self.min_chars <= self.max_chars:
            raise ValueError(f"need 0 <= min_chars <= max_chars, got {self.min_chars}, "
                             f"{self.max_chars}")
        PatternCleaner.from_names(self.patterns, self.custom_patterns)
        for pattern in self.academic_tags:
            re.compile(pattern)
