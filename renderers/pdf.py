"""PDF documents and pages with PyMuPDF: open and vet a document, render one page to an image,
and extract its words and lines with boxes in that image's pixels.

Geometry. PyMuPDF reports text in the coordinates of the *unrotated* page, relative to the
top-left corner of the CropBox. The rendered pixmap shows the *rotated* CropBox. A text box
therefore goes through `page.rotation_matrix` (unrotated -> rotated page) and then the zoom
(points -> pixels), minus the pixmap origin. The page is dropped when the pixmap's size does not
match the rotated CropBox times the zoom (`page_geometry_mismatch`), since boxes would then be off.
The page's content is read once, into a display list that gives both the image and, for a page
without /Rotate, the text (`page.get_pixmap` and `page.get_textpage` would each read it again;
the same words and boxes). A rotated page's text is extracted from the unrotated page: MuPDF's
text of the rotated display list puts upside-down glyph boxes off their ink.

A line that does not run left to right on the image also gets a quad, its corners in reading
order (`axis_line_quad`, `tilted_line_quad`): the writing direction comes from MuPDF's line
`dir`, read from its structured text directly (`line_directions`).

Ligatures are expanded (ﬁ -> fi): the label should read as a person reads the page, and the
tokenizer should see ordinary letters. MuPDF splits the ligature glyph's box among its letters.
Lines whose box shows no ink (hidden or clipped text, white on white) are left out of the
labels and the page text (`drop_inkless_lines`). Characters MuPDF cannot map to Unicode come
out as U+FFFD. A word made of nothing else is a symbol without a text form (TeX's large
delimiters, radicals and sums in its CMEX font, on most pages with display maths) and is left
out of the labels; so is such a glyph inside a word when every one on the page is drawn in a
TeX math extension or symbol font (a large bracket set tight against its content). Any other
page with one inside a word is dropped (`unmapped_glyphs`), because that text no longer says
what its pixels show (`unmapped_glyphs: drop_page` drops the page for a lone symbol too).

A broken font map (ToUnicode CMap) gives text that does not say what the glyphs show. Text read
as UTF-16 with its bytes swapped ('M', U+004D, as U+4D00) is swapped back when that is certain,
else the page is dropped (`repair_byte_swapped`, `garbled_text`). Text whose characters the
drawing font's own character map lacks altogether (a Latin font labelled with CJK) drops the
page too (`mismapped_font`, `garbled_text`).

`serve_socket(fd)` runs the loop of a separate render process: a page that takes too long or
crashes MuPDF is then lost alone, and the caller restarts the process (pipelines/pdf.py).
"""
from __future__ import annotations

import hashlib
import io
import math
import re
import socket
import struct
from collections import Counter
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import pymupdf
from PIL import Image as PILImage

from corpus.schema import IMAGE_FORMATS, Image

pymupdf.TOOLS.mupdf_display_errors(False)  # broken PDFs are counted, not printed
pymupdf.TOOLS.mupdf_display_warnings(False)

POINTS_PER_INCH = 72
LIGATURE_FORMS = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
                  "\ufb05": "st", "\ufb06": "st"}
LIGATURES = str.maketrans(LIGATURE_FORMS)
UNMAPPED = "\ufffd"
# TeX's math extension and symbol fonts (Computer Modern, Euler, Latin Modern, AMS, txfonts,
# pxfonts, STIX size variants, esint), with or without a subset prefix
MATH_SYMBOL_FONT = re.compile(r"(?:[A-Z]{6}\+)?(?:CMEX|EUEX|LMEX|MSAM|MSBM|TXEX|PXEX|STIXSize|"
                              r"ESINT)", re.IGNORECASE)
SIZE_TOLERANCE_PX = 2  # MuPDF rounds the pixmap outward to whole pixels on each side
MIN_INSIDE_FRACTION = 0.5  # a word mostly outside the visible page is not on the image
READY = "ready"
READ_CHUNK_BYTES = 16 << 20
# what MuPDF raises through PyMuPDF: its own error classes, or RuntimeError/ValueError wrappers
MUPDF_ERRORS = (RuntimeError, ValueError, pymupdf.mupdf.FzErrorBase)
# Printable ASCII and Latin-1 read as UTF-16 with the bytes swapped: 'M' U+004D as U+4D00, and
# the space as U+2000. Real text has such code points (CJK, Hangul, Yi) about once in 256.
SWAP_BACK = {chr(code << 8): chr(code) for code in (*range(0x20, 0x7F), *range(0xA0, 0x100))}
SWAP_TABLE = str.maketrans(SWAP_BACK)
WITHOUT_BYTE_SWAPPED = str.maketrans(dict.fromkeys(SWAP_BACK, ""))
# what shows a line byte-swapped: all but a swapped '0', whose U+3000 is also the ideographic
# space of real CJK text (it is swapped back with the rest of its line)
BYTE_SWAPPED = re.compile("[%s]" % "".join(char for char in SWAP_BACK if char != "\u3000"))
# the scripts byte-swapped code points fall in: CJK, kana, Hangul, Yi, full-width forms
WIDE_SCRIPTS = re.compile("[\u2e80-\u9fff\ua000-\ua4ff\uac00-\ud7ff\uf900-\ufaff\uff00-\uffef]")
MIN_SWAPPED_CHARS = 3  # a line judged byte-swapped on its own has at least this many
# fonts whose own Unicode character map can vouch for the text: Type 1 and bare CFF maps are
# guessed from glyph names by FreeType, Type 3 fonts have none
CMAP_FONT_FILES = ("ttf", "otf")
UNICODE_CMAPS = {(0, encoding) for encoding in range(7)} | {(3, 1), (3, 10)}  # (platform, encoding)
SUBSET_PREFIX = re.compile(r"[A-Z]{6}\+")
MUPDF_FONT_NAME_CHARS = 31  # MuPDF keeps this much of a font's name, subset prefix included
DRAWN = pymupdf.mupdf.FZ_STEXT_FILLED | pymupdf.mupdf.FZ_STEXT_STROKED  # not invisible (Tr 3)
MIN_MISMAPPED_CHARS = 2  # distinct characters, before a font's map is judged wrong
# blocks of 256 code points every text font draws some of: Basic Latin and Latin-1, General
# Punctuation. A map sending glyphs into them cannot be found wrong by the blocks alone.
COMMON_BLOCKS = (0x00, 0x20)

Box = tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels of the rendered image
Quad = tuple[float, ...]  # (x, y) * 4: start-top, end-top, end-bottom, start-bottom, in pixels
AXIS_TOLERANCE = 1e-3  # a writing direction this close to an axis is along it


@dataclass
class RenderOptions:
    dpi: float = 80.0  # A4 -> 662x936 px, Letter -> 680x880: the 448 px stage-2 input with margin
    long_side: int | None = None  # if set, scale every page so its long side has this many pixels
    image_format: str = "jpeg"  # jpeg | png | webp
    quality: int = 90  # JPEG / WebP quality
    png_compress_level: int = 6  # zlib level 0-9: 1 is about twice as fast, files ~10% larger
    webp_method: int = 4  # 0 (fast) - 6 (small); 4 is Pillow's default and ~4x slower than 0
    max_page_pixels: int = 25_000_000  # a page that would render larger is dropped unrendered
    ligatures: str = "expand"  # expand (ﬁ -> fi) | keep
    accurate_boxes: bool = False  # glyph-outline boxes (MuPDF TEXT_ACCURATE_BBOXES); slower
    min_ink_contrast: int = 48  # a line whose box varies less than this (0-255) is left out; 0: off
    unmapped_glyphs: str = "drop_symbols"  # drop_symbols (lone ones; see above) | drop_page

    def validate(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}")
        if self.ligatures not in ("expand", "keep"):
            raise ValueError("ligatures must be 'expand' or 'keep'")
        if self.dpi <= 0 or (self.long_side is not None and self.long_side <= 0):
            raise ValueError("dpi and long_side must be positive")
        if not 1 <= self.quality <= 100:
            raise ValueError("quality must be within 1..100")
        if not 0 <= self.min_ink_contrast <= 255:
            raise ValueError("min_ink_contrast must be within 0..255")
        if self.unmapped_glyphs not in ("drop_symbols", "drop_page"):
            raise ValueError("unmapped_glyphs must be 'drop_symbols' or 'drop_page'")
        if not 0 <= self.png_compress_level <= 9 or not 0 <= self.webp_method <= 6:
            raise ValueError("png_compress_level must be within 0..9, webp_method within 0..6")

    def zoom(self, rect: pymupdf.Rect) -> float:
        if self.long_side is not None:
            return self.long_side / max(rect.width, rect.height)
        return self.dpi / POINTS_PER_INCH

    def text_flags(self) -> int:
        flags = pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP
        if self.ligatures == "keep":
            flags |= pymupdf.TEXT_PRESERVE_LIGATURES
        if self.accurate_boxes:
            flags |= pymupdf.TEXT_ACCURATE_BBOXES
        return flags


@dataclass
class DocumentPolicy:
    reject_encrypted: bool = False  # True: also drop PDFs encrypted with an empty user password
    reject_javascript: bool = True  # forms and scripts: the static page may not be the content
    reject_embedded_files: bool = True  # portfolios: the real content is in the attachments


class PdfProblem(Exception):
    """A document or page that cannot become a sample; `reason` is the stable reject reason."""

    def __init__(self, reason: str, status: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.status, self.detail = reason, status, detail

    def __reduce__(self):  # crosses the pipe from the render process
        return PdfProblem, (self.reason, self.status, self.detail)


# Document-level reasons, in the order they are checked.
DOCUMENT_REASONS = ["empty_file", "not_a_pdf", "malformed_pdf", "password_protected_pdf",
                    "encrypted_pdf", "truncated_pdf", "zero_pages", "javascript_pdf",
                    "embedded_files_pdf", "open_timeout", "open_crashed"]
# Page-level reasons the renderer itself gives (before the A.4 rules see the page).
PAGE_REASONS = ["page_too_large", "page_geometry_mismatch", "unmapped_glyphs", "garbled_text",
                "page_render_failed", "out_of_memory", "render_timeout", "render_crashed"]


def open_pdf(data: bytes, policy: DocumentPolicy | None) -> pymupdf.Document:
    """Open and vet a PDF; raises PdfProblem with the first reason it fails. `policy=None`
    only opens it: for a PDF already vetted (the same bytes, by sha256) earlier in the run."""
    if not data:
        raise PdfProblem("empty_file", "errored", "0 bytes")
    if b"%PDF-" not in data[:1024]:
        raise PdfProblem("not_a_pdf", "errored", repr(data[:16]))
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
        if policy is not None:
            _vet(doc, data, policy)
    except MUPDF_ERRORS as error:
        raise PdfProblem("malformed_pdf", "errored", str(error)[:300]) from error
    except MemoryError as error:  # over the render process's memory limit
        raise PdfProblem("out_of_memory", "errored", "over the render process's memory limit") \
            from error
    return doc


def _vet(doc: pymupdf.Document, data: bytes, policy: DocumentPolicy) -> None:
    if doc.needs_pass:
        raise PdfProblem("password_protected_pdf", "errored", "opening it needs a password")
    if policy.reject_encrypted and doc.metadata.get("encryption"):
        raise PdfProblem("encrypted_pdf", "errored", doc.metadata["encryption"])
    # MuPDF quietly rebuilds a cut-off file from what is left; without the end marker the
    # pages it finds are a guess, so the document is refused as a whole.
    if doc.is_repaired and b"%%EOF" not in data[-2048:]:
        raise PdfProblem("truncated_pdf", "errored",
                         f"no %%EOF in the last 2 KiB of {len(data):,} bytes; MuPDF had to repair it")
    if doc.page_count == 0:
        raise PdfProblem("zero_pages", "dropped", "the document has no page")
    if policy.reject_javascript and has_javascript(doc):
        raise PdfProblem("javascript_pdf", "dropped", "a JavaScript action or /JS script")
    if policy.reject_embedded_files and doc.embfile_count() > 0:
        raise PdfProblem("embedded_files_pdf", "dropped", f"{doc.embfile_count()} file(s)")


# an action of type JavaScript, a /JS key holding a script (string, stream or reference), or a
# /JavaScript name tree in the catalog's /Names
_JAVASCRIPT = re.compile(r"/S\s*/JavaScript\b|/JS\s*[(<0-9]|/JavaScript\s*[<\[0-9]")


def has_javascript(doc: pymupdf.Document) -> bool:
    """Any object holding or naming a script."""
    for xref in range(1, doc.xref_length()):
        try:
            if _JAVASCRIPT.search(doc.xref_object(xref, compressed=True)):
                return True
        except MUPDF_ERRORS:  # a broken object is not a script
            continue
    return False


class Word(NamedTuple):
    text: str
    box: Box
    line: tuple[int, int]  # (block, line) number from MuPDF, to group words into lines


class Line(NamedTuple):
    text: str
    box: Box
    quad: Quad | None  # corners in reading order, when that is not the box's TL, TR, BR, BL


@dataclass
class RenderedPage:
    """One rendered page. Its words are kept as columns, the numbers packed: hundreds of words
    per page cross the pipe from the render process, and a list of strings and two byte strings
    pickle far faster than as many objects."""

    index: int  # 0-based
    image: Image
    word_texts: list[str]
    word_box_data: bytes  # float64 x1, y1, x2, y2 per word, in pixels
    word_line_data: bytes  # int32 (block, line) number from MuPDF per word
    lines: list[Line]
    text: str
    width_pt: float
    height_pt: float
    rotation: int
    zoom: float
    inkless_lines: int = 0  # lines left out because their box shows no ink
    unmapped_symbols: int = 0  # words of glyphs without Unicode left out (`unmapped_glyphs`)
    byte_swapped_lines: int = 0  # lines whose byte-swapped UTF-16 text was swapped back

    @property
    def word_boxes(self) -> list[Box]:
        return list(struct.iter_unpack("<4d", self.word_box_data))

    @property
    def word_lines(self) -> list[tuple[int, int]]:
        return list(struct.iter_unpack("<2i", self.word_line_data))

    @property
    def words(self) -> list[Word]:
        return list(map(Word, self.word_texts, self.word_boxes, self.word_lines))

    def __reduce__(self):  # plain tuples pickle ~3x faster than NamedTuples
        return _rebuild_page, (self.index, self.image, self.word_texts, self.word_box_data,
                               self.word_line_data, [tuple(line) for line in self.lines],
                               self.text, self.width_pt, self.height_pt, self.rotation,
                               self.zoom, self.inkless_lines, self.unmapped_symbols,
                               self.byte_swapped_lines)


def _rebuild_page(index, image, texts, boxes, word_lines, lines, *rest) -> "RenderedPage":
    return RenderedPage(index, image, texts, boxes, word_lines, [Line(*line) for line in lines],
                        *rest)


def render_page(doc: pymupdf.Document, index: int, options: RenderOptions,
                font_maps: FontMaps | None = None) -> RenderedPage:
    """Render one page and extract its text geometry; raises PdfProblem for a page reason.
    `font_maps` holds the document's fonts across its pages (one is made for this page alone
    if not given)."""
    try:
        page = doc.load_page(index)
        rect = page.rect
        zoom = options.zoom(rect)
        width, height = rect.width * zoom, rect.height * zoom
        if width * height > options.max_page_pixels:
            raise PdfProblem("page_too_large", "dropped", f"{width:.0f}x{height:.0f} px")
        if width < 1 or height < 1:
            raise PdfProblem("page_geometry_mismatch", "dropped", f"empty page rect {rect}")
        scale = pymupdf.Matrix(zoom, zoom)
        # Annotations (form values, stamps, notes) are drawn by a viewer but are not in the
        # page's content: left off the image and the text, so that every text the image
        # shows is labelled.
        content = page.get_displaylist(annots=False)
        pixmap = content.get_pixmap(matrix=scale, colorspace=pymupdf.csRGB, alpha=False)
        if (abs(pixmap.width - width) > SIZE_TOLERANCE_PX
                or abs(pixmap.height - height) > SIZE_TOLERANCE_PX):
            raise PdfProblem("page_geometry_mismatch", "dropped",
                             f"pixmap {pixmap.width}x{pixmap.height} vs page {width:.1f}x"
                             f"{height:.1f}")
        # rotation, then zoom, then the pixmap's origin (MuPDF rounds it outward)
        a, b, c, d, e, f = page.rotation_matrix
        to_pixels = (a * zoom, b * zoom, c * zoom, d * zoom, e * zoom - pixmap.x,
                     f * zoom - pixmap.y)
        textpage = page_text(page, content, options.text_flags())
        raw_words, unmapped_symbols = page.get_text("words", textpage=textpage), 0
        if options.unmapped_glyphs == "drop_symbols":
            raw_words, unmapped_symbols = without_unmapped_symbols(raw_words)
            if any(UNMAPPED in word[4] for word in raw_words) and \
                    unmapped_are_math_symbols(textpage):
                raw_words, stripped = without_unmapped_glyphs(raw_words)
                unmapped_symbols += stripped
        # before the words are stripped: a swapped '0' is U+3000, a space to str.strip
        raw_words, swapped_lines = repair_byte_swapped(raw_words)
        directions = line_directions(textpage)
    except PdfProblem:
        raise
    except MUPDF_ERRORS as error:  # MuPDF's own errors while drawing the page
        raise PdfProblem("page_render_failed", "errored", str(error)[:300]) from error
    words = place_words(raw_words, to_pixels, pixmap.width, pixmap.height,
                        expand_ligatures=options.ligatures == "expand")
    runs, line_boxes = line_runs(words)
    inkless = 0
    if options.min_ink_contrast > 0 and runs:
        kept_runs, line_boxes = drop_inkless_lines(runs, line_boxes, pixmap,
                                                   options.min_ink_contrast)
        inkless = len(runs) - len(kept_runs)
        if inkless:
            words, runs = words.of_runs(kept_runs)
    if UNMAPPED in "".join(words.texts):  # only text the image shows matters
        raise PdfProblem("unmapped_glyphs", "dropped",
                         "characters MuPDF cannot map to Unicode in text the image shows")
    try:
        mismapped = mismapped_font(page, textpage, font_maps or FontMaps(doc),
                                   set("".join(words.texts)), swapped_lines > 0)
        if mismapped:
            raise PdfProblem("garbled_text", "dropped", mismapped)
        lines = group_lines(words, runs, line_boxes, directions, textpage, to_pixels,
                            pixmap.width, pixmap.height)
    except MUPDF_ERRORS as error:
        raise PdfProblem("page_render_failed", "errored", str(error)[:300]) from error
    return RenderedPage(index=index, image=encode(pixmap, options), word_texts=words.texts,
                        word_box_data=np.ascontiguousarray(words.boxes, "<f8").tobytes(),
                        word_line_data=np.array(words.lines, "<i4").reshape(-1, 2).tobytes(),
                        lines=lines,
                        text="\n".join(line.text for line in lines), width_pt=rect.width,
                        height_pt=rect.height, rotation=page.rotation, zoom=zoom,
                        inkless_lines=inkless, unmapped_symbols=unmapped_symbols,
                        byte_swapped_lines=swapped_lines)


def page_text(page: pymupdf.Page, content: pymupdf.DisplayList, flags: int) -> pymupdf.TextPage:
    """The page's structured text, as `page.get_textpage(flags)` gives it: read from the display
    list `content` when the page has no /Rotate (see Geometry above)."""
    if page.rotation:
        return page.get_textpage(flags=flags)
    textpage = pymupdf.TextPage(content.get_textpage(flags=flags))
    textpage.parent = page  # what `page.get_text` checks
    return textpage


def without_unmapped_symbols(raw_words: list) -> tuple[list, int]:
    """MuPDF's words less those made only of glyphs it cannot map to Unicode; and how many."""
    kept = [word for word in raw_words if word[4].replace(UNMAPPED, "").strip()]
    return kept, len(raw_words) - len(kept)


def without_unmapped_glyphs(raw_words: list) -> tuple[list, int]:
    """MuPDF's words with the glyphs it cannot map to Unicode taken out of their text (the
    box stays that of the whole word); and how many were taken out."""
    stripped = [word[:4] + (word[4].replace(UNMAPPED, ""),) + tuple(word[5:])
                for word in raw_words]
    return stripped, sum(word[4].count(UNMAPPED) for word in raw_words)


def unmapped_are_math_symbols(textpage) -> bool:
    """Whether every glyph without Unicode on the page is drawn in a TeX math extension or
    symbol font (large delimiters, radicals, sums set tight against their content). Only then
    are they taken out of words of text; elsewhere (a text font without a map, an unmapped
    ligature) the words would no longer read as drawn."""
    for block in textpage.extractRAWDICT()["blocks"]:
        for line in block.get("lines", ()):
            for span in line["spans"]:
                if not MATH_SYMBOL_FONT.match(span["font"]) and \
                        any(char["c"] == UNMAPPED for char in span["chars"]):
                    return False
    return True


def repair_byte_swapped(raw_words: list) -> tuple[list, int]:
    """MuPDF's words with byte-swapped UTF-16 swapped back, and how many lines were; raises
    PdfProblem (`garbled_text`) where that is not certain.

    A line is byte-swapped on its own when most of its characters, and at least
    MIN_SWAPPED_CHARS, swap back to printable ASCII or Latin-1 that reads as text (letters and
    digits). Real CJK or Hangul text has such code points about once in 256, so its lines are
    not. A page with such a line has a broken font map; then every line with any byte-swapped
    code point is swapped back when all its other characters are Latin-1 already and it is
    byte-swapped on its own or the page has no other CJK, Hangul or Yi text (where such a code
    point may be real); any other such line drops the page."""
    if not BYTE_SWAPPED.search("".join(word[4] for word in raw_words)):  # nearly every page
        return raw_words, 0
    keys = [word[5:7] for word in raw_words]  # (block, line): a line's words are consecutive
    starts = [0] + [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    runs = list(zip(starts, starts[1:] + [len(keys)]))
    lines = [" ".join(word[4] for word in raw_words[start:end]) for start, end in runs]
    garbled = [reads_byte_swapped(line) for line in lines]
    if not any(garbled):
        return raw_words, 0
    other_wide_text = WIDE_SCRIPTS.search("".join(lines).translate(WITHOUT_BYTE_SWAPPED))
    repaired, count = list(raw_words), 0
    for number, ((start, end), line, own) in enumerate(zip(runs, lines, garbled), 1):
        if not BYTE_SWAPPED.search(line):
            continue
        if not own and other_wide_text:
            raise PdfProblem("garbled_text", "dropped", byte_swapped_detail(
                line, number, "are byte-swapped UTF-16 or CJK, and the page has both"))
        if not swaps_to_latin(line):
            raise PdfProblem("garbled_text", "dropped", byte_swapped_detail(
                line, number, "are byte-swapped UTF-16, the rest not Latin-1"))
        for i in range(start, end):
            word = raw_words[i]
            repaired[i] = word[:4] + (word[4].translate(SWAP_TABLE),) + tuple(word[5:])
        count += 1
    return repaired, count


def reads_byte_swapped(line: str) -> bool:
    """Whether most characters of a line, and at least MIN_SWAPPED_CHARS, are byte-swapped
    UTF-16 of ASCII or Latin-1, which swapped back is mostly letters and digits of more than
    one kind."""
    swapped = [SWAP_BACK[char] for char in BYTE_SWAPPED.findall(line)]
    swapped = [char for char in swapped if char != " "]
    if len(swapped) < MIN_SWAPPED_CHARS or 2 * len(swapped) <= len("".join(line.split())):
        return False
    text_like = sum(char.isalpha() or char.isdigit() and char.isascii() for char in swapped)
    return 2 * text_like > len(swapped) and len(set(swapped)) > 1


def swaps_to_latin(line: str) -> bool:
    """Whether every character of a line is Latin-1 once byte-swapped ones are swapped back."""
    return all(ord(char) < 0x100 for char in line.translate(SWAP_TABLE))


def byte_swapped_detail(line: str, number: int, finding: str) -> str:
    swapped = sum(SWAP_BACK[char] != " " for char in BYTE_SWAPPED.findall(line))
    shown = line if len(line) <= 24 else line[:24] + "…"
    return f"{swapped} of {len(''.join(line.split()))} characters of line {number} {finding}: " \
           f"{shown!r}"


class PlacedWords(NamedTuple):
    """A page's words as columns, in MuPDF's order."""

    texts: list[str]
    boxes: np.ndarray  # (n, 4) float64: x1, y1, x2, y2 in pixels
    lines: list[tuple[int, int]]  # (block, line) number from MuPDF

    def of_runs(self, runs: list[tuple[int, int]]) -> tuple["PlacedWords", list[tuple[int, int]]]:
        """Only the words of `runs`, and the runs renumbered over them."""
        kept, renumbered = [], []
        for start, end in runs:
            renumbered.append((len(kept), len(kept) + end - start))
            kept.extend(range(start, end))
        return PlacedWords([self.texts[i] for i in kept], self.boxes[kept],
                           [self.lines[i] for i in kept]), renumbered


def place_words(raw_words, to_pixels: tuple, width: int, height: int,
                expand_ligatures: bool) -> PlacedWords:
    """Words in pixels, clipped to the image. Words mostly off the image are left out, and a
    word drawn twice in the same place (fake bold) is kept once. Computed for all words of the
    page at once: per word, even plain float arithmetic costs more than the rendering on
    text-heavy pages."""
    if not raw_words:
        return PlacedWords([], np.zeros((0, 4)), [])
    x0, y0, x1, y1, texts, blocks, lines, _ = zip(*raw_words)
    xs, ys = np.array((x0, x1), dtype=np.float64), np.array((y0, y1), dtype=np.float64)
    a, b, c, d, e, f = to_pixels
    # /Rotate is a multiple of 90 degrees: two opposite corners still span the box
    if b == 0 and c == 0:
        us, vs = a * xs + e, d * ys + f
    else:
        us, vs = a * xs + c * ys + e, b * xs + d * ys + f
    us.sort(axis=0)  # rows: left, right
    vs.sort(axis=0)  # rows: top, bottom
    area = (us[1] - us[0]) * (vs[1] - vs[0])
    np.clip(us, 0.0, float(width), out=us)
    np.clip(vs, 0.0, float(height), out=vs)
    across, down = us[1] - us[0], vs[1] - vs[0]
    inside = (across > 0) & (down > 0) & (across * down >= MIN_INSIDE_FRACTION * area)
    kept = np.flatnonzero(inside)
    boxes = np.array((us[0], vs[0], us[1], vs[1])).T[kept]
    kept = kept.tolist()
    if expand_ligatures:
        texts = [t.strip() if t.isascii() else t.translate(LIGATURES).strip()
                 for t in map(texts.__getitem__, kept)]
    else:
        texts = [texts[i].strip() for i in kept]
    keys = list(zip(texts, *np.rint(boxes).astype(np.int64).T.tolist()))
    if "" in texts or len(set(keys)) < len(keys):  # empty words, or one drawn twice
        seen: set = set()
        unique = [i for i, key in enumerate(keys)
                  if key[0] and key not in seen and not seen.add(key)]
        texts, boxes, kept = [texts[i] for i in unique], boxes[unique], [kept[i] for i in unique]
    return PlacedWords(texts, boxes, [(blocks[i], lines[i]) for i in kept])


def line_runs(words: PlacedWords) -> tuple[list[tuple[int, int]], list[Box]]:
    """MuPDF's lines as (start, end) runs of `words`, and the union of each run's boxes. MuPDF
    lists words line by line, so the words of a line are consecutive."""
    keys = words.lines
    if not keys:
        return [], []
    starts = [0] + [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    low = np.minimum.reduceat(words.boxes[:, :2], starts, axis=0)
    high = np.maximum.reduceat(words.boxes[:, 2:], starts, axis=0)
    return (list(zip(starts, starts[1:] + [len(keys)])),
            list(map(tuple, np.hstack([low, high]).tolist())))


def line_directions(textpage: pymupdf.TextPage) -> dict[tuple[int, int], tuple[float, float]]:
    """The writing direction (page space) of every line that does not run along +x, keyed by
    (block, line) as the words number them. Read from MuPDF's structured text directly: its
    dict export builds every span of the page, which costs more than the page's words."""
    directions = {}
    block, block_number = textpage.this.m_internal.first_block, 0
    while block is not None:  # MuPDF's linked lists: its Python iterators cost ~3x more
        if block.type == pymupdf.mupdf.FZ_STEXT_BLOCK_TEXT:
            lines = pymupdf.mupdf.FzStextBlock(block)
            first = lines.begin()
            line = first.__ref__().m_internal if first != lines.end() else None
            line_number = 0
            while line is not None:
                direction = line.dir
                dx, dy = direction.x, direction.y
                if dx != 1 or dy != 0:
                    directions[block_number, line_number] = (dx, dy)
                line, line_number = line.next, line_number + 1
        block, block_number = block.next, block_number + 1
    return directions


def group_lines(words: PlacedWords, runs: list[tuple[int, int]], line_boxes: list[Box],
                directions: dict, textpage: pymupdf.TextPage, to_pixels: tuple, width: int,
                height: int) -> list[Line]:
    """MuPDF's lines, in its reading order: words joined by a space, the union of their boxes,
    and a quad for a line that does not run left to right on the image (rotated pages, vertical
    labels, a diagonal watermark), so its corners say where the text starts."""
    lines, spans = [], None
    # most lines run along the page's x axis, whose direction on the image is settled once
    page_x = image_direction((1.0, 0.0), to_pixels)
    for (start, end), box in zip(runs, line_boxes):
        key = words.lines[start]
        page_direction = directions.get(key)
        dx, dy = page_x if page_direction is None else image_direction(page_direction,
                                                                       to_pixels)
        if dx > 1 - AXIS_TOLERANCE:
            quad = None  # left to right: the box's own corners
        elif abs(dx) < AXIS_TOLERANCE or abs(dy) < AXIS_TOLERANCE:
            quad = axis_line_quad((dx, dy), box, width, height)
        else:  # at an angle: its fonts and spans are needed, from MuPDF's dict export
            if spans is None:
                # numbered as the words number them: blocks by MuPDF's own count
                spans = {(block["number"], n): line
                         for block in textpage.extractDICT()["blocks"]
                         for n, line in enumerate(block["lines"])}
            line = spans.get(key)
            quad = None if line is None else tilted_line_quad(line, to_pixels)
        lines.append(Line(" ".join(words.texts[start:end]), box, quad))
    return lines


def image_direction(direction: tuple[float, float], to_pixels: tuple) -> tuple[float, float]:
    """A writing direction in page space as a unit vector on the image."""
    a, b, c, d, _, _ = to_pixels
    dx, dy = direction
    dx, dy = a * dx + c * dy, b * dx + d * dy
    norm = math.hypot(dx, dy) or 1.0
    return dx / norm, dy / norm


def axis_line_quad(direction: tuple[float, float], box: Box, width: int, height: int) -> Quad:
    """The box's corners, starting where the text starts, for a line along an axis of the image.
    Glyphs point "up" along (dy, -dx) in image coordinates (y down)."""
    dx, dy = direction
    x0, y0, x1, y1 = box
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]

    def along_up(corner):
        x, y = corner
        return x * dx + y * dy, x * dy - y * dx

    start_top = min(corners, key=lambda p: along_up(p)[0] - along_up(p)[1])
    end_top = max(corners, key=lambda p: along_up(p)[0] + along_up(p)[1])
    end_bottom = max(corners, key=lambda p: along_up(p)[0] - along_up(p)[1])
    start_bottom = min(corners, key=lambda p: along_up(p)[0] + along_up(p)[1])
    points = [start_top, end_top, end_bottom, start_bottom]
    return tuple(v for x, y in points
                 for v in (min(max(x, 0.0), width), min(max(y, 0.0), height)))


def tilted_line_quad(line: dict, to_pixels: tuple) -> Quad:
    """Not clipped to the image, which would bend the quad (the formatter clamps)."""
    a, b, c, d, e, f = to_pixels
    return tuple(v for x, y in tilted_line_corners(line)
                 for v in (a * x + c * y + e, b * x + d * y + f))


def tilted_line_corners(line: dict) -> list[tuple[float, float]]:
    """Start-top, end-top, end-bottom, start-bottom of a line written at an angle, in page
    space. Across the text it spans the fonts' descender to ascender around the baseline
    through the first span's origin; along it, the extent is solved from MuPDF's upright
    bounding box of the line, which is that rectangle's bounding box."""
    dx, dy = line["dir"]
    ux, uy = dy, -dx  # glyph "up", with y pointing down
    spans = line["spans"]
    ox, oy = spans[0]["origin"]
    ascent = max(s["ascender"] * s["size"] for s in spans)
    descent = min(s["descender"] * s["size"] for s in spans)
    x0, y0, x1, y1 = line["bbox"]
    # the box's low edge is the rectangle's lowest point: t0 or t1 along, ascent or descent up
    if abs(dx) >= abs(dy):
        low_u, high_u = sorted((ascent * ux, descent * ux))
        ends = ((x0 - ox - low_u) / dx, (x1 - ox - high_u) / dx)
    else:
        low_u, high_u = sorted((ascent * uy, descent * uy))
        ends = ((y0 - oy - low_u) / dy, (y1 - oy - high_u) / dy)
    start, end = min(ends), max(ends)

    def at(t: float, u: float) -> tuple[float, float]:
        return ox + t * dx + u * ux, oy + t * dy + u * uy

    return [at(start, ascent), at(end, ascent), at(end, descent), at(start, descent)]


def drop_inkless_lines(runs: list[tuple[int, int]], line_boxes: list[Box],
                       pixmap: pymupdf.Pixmap, min_contrast: int):
    """Leave out every line whose box shows no ink: hidden text, white on white, text clipped
    away or under a flat fill. Its label would name something the image does not show. Contrast
    is measured on the darkest channel of each pixel, so coloured text counts and a flat
    coloured patch does not; checked per line, as hiding applies to whole runs of text and one
    check per line costs far less than one per word. Returns the runs and boxes kept.

    The contrast of a box is at least (darkest channel of a corner pixel, usually background)
    minus (lowest value of any channel in one row), so a line is settled by its corners,
    taken for all lines at once, and its middle row, which crosses the strokes of its
    letters; only a line that is not gets the whole box measured."""
    if not line_boxes:
        return [], []
    samples = np.frombuffer(pixmap.samples_mv, np.uint8).reshape(
        pixmap.height, pixmap.stride)[:, :pixmap.width * 3].reshape(
        pixmap.height, pixmap.width, 3)
    boxes = np.array(line_boxes).astype(np.int64)  # truncated like int(): boxes are >= 0
    left, top = boxes[:, 0], boxes[:, 1]
    right = np.minimum(boxes[:, 2], pixmap.width - 1)
    bottom = np.minimum(boxes[:, 3], pixmap.height - 1)
    corners = samples[[top, top, bottom, bottom], [left, right, left, right]]
    backgrounds = corners.min(axis=2).max(axis=0).tolist()
    kept_runs, kept_boxes = [], []
    for run, box, x0, y0, x1, y1, background in zip(
            runs, line_boxes, left.tolist(), top.tolist(), right.tolist(), bottom.tolist(),
            backgrounds):
        if x0 > x1 or y0 > y1:
            continue  # no pixel
        middle = samples[(y0 + y1) // 2, x0:x1 + 1]
        if (background - int(middle.min()) >= min_contrast
                or has_ink(samples[y0:y1 + 1, x0:x1 + 1], min_contrast)):
            kept_runs.append(run)
            kept_boxes.append(box)
    return kept_runs, kept_boxes


def has_ink(crop: np.ndarray, min_contrast: int) -> bool:
    """Whether the darkest channel of an RGB crop varies by `min_contrast` or more."""
    if not crop.size:
        return False
    darkest = np.minimum(np.minimum(crop[..., 0], crop[..., 1]), crop[..., 2])
    return int(darkest.max()) - int(darkest.min()) >= min_contrast


class FontMaps:
    """The Unicode character maps of a document's embedded TrueType and OpenType fonts, each
    read once for all its pages, and which code points each can draw."""

    def __init__(self, doc: pymupdf.Document):
        self.doc = doc
        self.fonts: dict[int, pymupdf.Font | None] = {}  # by xref; None: cannot vouch
        self.names: dict[int, list[str]] = {}  # by xref: the names MuPDF gives its text
        self.blocks: dict[tuple[int, int], bool] = {}  # (xref, code point >> 8): any glyph

    def of_page(self, page: pymupdf.Page) -> dict[str, tuple[int, ...] | None]:
        """The page's fonts by the name MuPDF gives their text: the xrefs of the fonts of that
        name, or None when one of them cannot vouch for its text (or the name is ambiguous)."""
        by_name: dict[str, tuple[int, ...] | None] = {}
        for xref, file_type, subtype, *_ in page.get_fonts(full=True):
            font = self.font(xref, file_type)
            for name in self.font_names(xref, subtype):
                known = by_name.get(name, ())
                by_name[name] = None if font is None or known is None else known + (xref,)
        return by_name

    def font(self, xref: int, file_type: str) -> pymupdf.Font | None:
        if xref not in self.fonts:
            self.fonts[xref] = self._load(xref) if file_type in CMAP_FONT_FILES else None
        return self.fonts[xref]

    def _load(self, xref: int) -> pymupdf.Font | None:
        try:
            data = self.doc.extract_font(xref)[3]
            if not data or not has_unicode_cmap(data):
                return None
            font = pymupdf.Font(fontbuffer=data)
        except MUPDF_ERRORS:  # a font MuPDF cannot read vouches for nothing
            return None
        # a map that gives control codes glyphs was made up from glyph or character codes, not
        # from the text the glyphs show
        return None if any(font.has_glyph(code) for code in range(1, 9)) else font

    def font_names(self, xref: int, subtype: str) -> list[str]:
        """The BaseFont names of a font (and of a Type0 font's descendant, whose name MuPDF
        gives its text), cut as MuPDF cuts them and without a subset prefix."""
        if xref not in self.names:
            xrefs = [xref]
            if subtype == "Type0":
                value_type, value = self.doc.xref_get_key(xref, "DescendantFonts")
                xrefs += [int(ref) for ref in re.findall(r"(\d+) 0 R", value)] \
                    if value_type in ("array", "xref") else []
            names = []
            for font_xref in xrefs:
                value_type, value = self.doc.xref_get_key(font_xref, "BaseFont")
                if value_type == "name":
                    names.append(SUBSET_PREFIX.sub("", value[1:MUPDF_FONT_NAME_CHARS + 1], 1))
            self.names[xref] = names
        return self.names[xref]

    def maps(self, xrefs: tuple[int, ...], char: str) -> bool:
        """Whether one of the fonts maps `char` to a glyph."""
        return any(self.fonts[xref].has_glyph(ord(char)) for xref in xrefs)

    def draws(self, xrefs: tuple[int, ...], char: str) -> bool:
        """Whether one of the fonts maps `char`, or any code point of its block of 256: a
        subset font may keep only the shaped forms of a letter (Arabic, Indic) and lose the
        letter's own entry. A block is probed once per font (256 look-ups)."""
        if self.maps(xrefs, char):
            return True
        code = ord(char)
        for xref in xrefs:
            key = (xref, code >> 8)
            if key not in self.blocks:
                has_glyph, first = self.fonts[xref].has_glyph, code & ~0xFF
                self.blocks[key] = any(has_glyph(first + low) for low in range(256))
            if self.blocks[key]:
                return True
        return False


def has_unicode_cmap(font_file: bytes) -> bool:
    """Whether a TrueType or OpenType font file has a Unicode subtable in its 'cmap' table (a
    subset font may have none, or only a symbol or Macintosh one)."""
    try:
        table_count = struct.unpack_from(">H", font_file, 4)[0]
        for table in range(table_count):
            tag, _, offset, _ = struct.unpack_from(">4sIII", font_file, 12 + 16 * table)
            if tag == b"cmap":
                subtables = struct.unpack_from(">H", font_file, offset + 2)[0]
                return any(struct.unpack_from(">HH", font_file, offset + 4 + 8 * i)
                           in UNICODE_CMAPS for i in range(subtables))
    except struct.error:  # not an sfnt, or cut short
        pass
    return False


def mismapped_font(page: pymupdf.Page, textpage: pymupdf.TextPage, font_maps: FontMaps,
                   page_chars: set[str], swapped_back: bool) -> str | None:
    """Why the page's text mislabels its glyphs, if a font's ToUnicode map sends them to code
    points the font itself cannot draw: of the characters drawn (not invisible) in an embedded
    font with a Unicode character map, at least half, and MIN_MISMAPPED_CHARS distinct ones,
    lie in blocks of 256 code points the font has no glyph in. A page whose text lies in
    COMMON_BLOCKS is not looked at (most pages in Latin script); the page's spans are read only
    when some character is mapped by none of its fonts (MuPDF's dict export costs more than the
    rest of this). Byte-swapped code points count as what they swap back to on a page where
    that was done."""
    if all(ord(char) >> 8 in COMMON_BLOCKS for char in page_chars):
        return None
    fonts = font_maps.of_page(page)
    checked = {xref for xrefs in fonts.values() if xrefs for xref in xrefs}
    if not checked:
        return None
    every_font = tuple(checked)
    if all(font_maps.maps(every_font, char) for char in page_chars if is_checked(char)):
        return None
    drawn, missing = Counter(), {}
    for block in textpage.extractDICT()["blocks"]:
        for line in block.get("lines", ()):
            for span in line["spans"]:
                xrefs = fonts.get(span["font"])
                if not xrefs or not (span["char_flags"] & DRAWN or span["alpha"]):
                    continue
                for char in filter(is_checked, span["text"]):
                    drawn[span["font"]] += 1
                    if swapped_back and char in SWAP_BACK:
                        char = SWAP_BACK[char]
                    if not font_maps.draws(xrefs, char):
                        missing.setdefault(span["font"], []).append(char)
    for name, chars in missing.items():
        if len(set(chars)) >= MIN_MISMAPPED_CHARS and 2 * len(chars) >= drawn[name]:
            shown = "".join(chars[:12]) + ("…" if len(chars) > 12 else "")
            return (f"{len(chars)} of {drawn[name]} characters drawn in font {name} are code "
                    f"points it has no glyph for (a wrong ToUnicode map): {shown!r}")
    return None


def is_checked(char: str) -> bool:
    """Characters a font's map is held to: not spaces, glyphs without Unicode or ligatures
    (often mapped to their presentation form, which the font's map may lack)."""
    return not char.isspace() and char != UNMAPPED and char not in LIGATURE_FORMS


def encode(pixmap: pymupdf.Pixmap, options: RenderOptions) -> Image:
    """Encode with Pillow: its libjpeg-turbo JPEG is about 5x faster than MuPDF's own encoder,
    and encoding is the largest cost per page."""
    picture = PILImage.frombuffer("RGB", (pixmap.width, pixmap.height), pixmap.samples_mv,
                                  "raw", "RGB", pixmap.stride, 1)
    buffer = io.BytesIO()
    if options.image_format == "jpeg":
        picture.save(buffer, format="JPEG", quality=options.quality)
    elif options.image_format == "png":
        picture.save(buffer, format="PNG", compress_level=options.png_compress_level)
    else:
        picture.save(buffer, format="WEBP", quality=options.quality, method=options.webp_method)
    return Image(buffer.getvalue(), options.image_format, pixmap.width, pixmap.height)


@dataclass
class VetRequest:
    """Open and vet a PDF: its bytes, or (data None) a local file the process reads itself, so
    that the bytes cross no pipe. The answer is a Vetted or a PdfProblem; the process keeps the
    vetted PDF open, so that its pages render without it being read and opened again."""

    data: bytes | None
    policy: DocumentPolicy
    path: str | None = None
    max_bytes: int = 1 << 62  # for `path`: larger files are refused unread (pdf_too_large)


class Vetted(NamedTuple):
    page_count: int
    sha256: str  # of the bytes vetted


@dataclass
class PageRequest:
    """Render `pages` of the (already vetted) PDF whose bytes hash to `sha256`. `data` is None
    when the render process already holds that PDF open, or when it is to read the local file
    `path` itself (and check its hash)."""

    sha256: str
    data: bytes | None
    pages: list[int]
    options: RenderOptions
    path: str | None = None
    max_bytes: int = 1 << 62


def read_at_most(f, limit: int) -> bytes:
    """Up to `limit` bytes of a file, read in chunks: f.read(limit) would allocate `limit` bytes
    up front."""
    parts, size = [], 0
    while size < limit:
        part = f.read(min(READ_CHUNK_BYTES, limit - size))
        if not part:
            break
        parts.append(part)
        size += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_pdf_file(path: str, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = read_at_most(f, max_bytes + 1)
    except OSError as error:
        raise PdfProblem("unreadable_input", "errored", str(error)[:300]) from error
    if len(data) > max_bytes:
        raise PdfProblem("pdf_too_large", "errored", f"over {max_bytes} bytes")
    return data


def render_pages(doc: pymupdf.Document, pages: list[int], options: RenderOptions):
    """Yield a RenderedPage or a PdfProblem for each page, in order."""
    font_maps = FontMaps(doc)
    for index in pages:
        try:
            result = render_page(doc, index, options, font_maps)
        except PdfProblem as problem:
            result = problem
        except MemoryError:  # over the render process's memory limit: MuPDF, Pillow or numpy
            result = PdfProblem("out_of_memory", "errored", "over the render process's memory limit")
        yield result


def send_message(conn, message, payload: bytes | bytearray | None = None) -> None:
    """A message, then its payload (a PDF, or a page's encoded image) straight over the socket.
    Pickling megabytes costs a copy on each side, and multiprocessing's receive allocates a
    buffer of the remaining size for every chunk the socket hands over."""
    conn.send((message, None if payload is None else len(payload)))
    if payload is not None:
        sock = socket.socket(fileno=conn.fileno())
        try:
            sock.sendall(payload)
        finally:
            sock.detach()  # the connection still owns the descriptor


def receive_message(conn) -> tuple[object, bytes | None]:
    message, size = conn.recv()
    if size is None:
        return message, None
    parts, received = [], 0
    sock = socket.socket(fileno=conn.fileno())
    try:
        while received < size:  # one part, unless a signal cuts the wait short
            part = sock.recv(size - received, socket.MSG_WAITALL)
            if not part:
                raise EOFError("the connection closed within a message")
            parts.append(part)
            received += len(part)
    finally:
        sock.detach()
    return message, parts[0] if len(parts) == 1 else b"".join(parts)


def send_request(conn, request: VetRequest | PageRequest) -> None:
    send_message(conn, replace(request, data=None), request.data)


def receive_request(conn) -> VetRequest | PageRequest:
    request, data = receive_message(conn)
    request.data = data
    return request


def send_result(conn, result) -> None:
    """A Vetted, a PdfProblem or a RenderedPage, whose image travels as the payload."""
    if isinstance(result, RenderedPage):
        send_message(conn, replace(result, image=replace(result.image, data=b"")),
                     result.image.data)
    else:
        send_message(conn, result)


def receive_result(conn):
    result, image = receive_message(conn)
    if image is not None:
        result.image = replace(result.image, data=image)
    return result


def let_go(doc: pymupdf.Document | None) -> None:
    """Close a PDF and empty MuPDF's resource store: its fonts and images are of no use for the
    next PDF, and a process rendering thousands of PDFs would otherwise grow by about a
    megabyte per PDF until the store's cap (256 MB)."""
    if doc is not None:
        doc.close()
    pymupdf.TOOLS.store_shrink(100)


def serve(conn) -> None:
    """Loop of the render process: answer a VetRequest with a Vetted or a problem, and a
    PageRequest with one result per page, in order. It holds one PDF open: the last one vetted
    or rendered. Ends when the connection closes."""
    held_sha, held_doc = None, None
    conn.send(READY)  # imports are done: time limits count from here
    while True:
        try:
            request = receive_request(conn)
        except EOFError:
            return
        if isinstance(request, VetRequest):
            let_go(held_doc)
            held_sha, held_doc = None, None
            try:
                data = request.data
                if data is None:
                    data = read_pdf_file(request.path, request.max_bytes)
                sha256 = hashlib.sha256(data).hexdigest()
                doc = open_pdf(data, request.policy)
            except PdfProblem as problem:
                send_result(conn, problem)
                continue
            except MemoryError:  # reading it took more than the process's memory limit
                send_result(conn, PdfProblem("out_of_memory", "errored", "over the render process's memory limit"))
                continue
            held_sha, held_doc = sha256, doc
            send_result(conn, Vetted(doc.page_count, sha256))
            continue
        if request.data is not None or request.sha256 != held_sha:
            let_go(held_doc)
            held_sha, held_doc = None, None
            try:
                data = request.data
                if data is None and request.path is not None:
                    data = read_pdf_file(request.path, request.max_bytes)
                    if hashlib.sha256(data).hexdigest() != request.sha256:
                        raise PdfProblem("input_changed", "errored",
                                         "the file changed during the run")
                held_doc = open_pdf(data or b"", None)
                held_sha = request.sha256
            except (PdfProblem, MemoryError) as error:
                problem = error if isinstance(error, PdfProblem) else PdfProblem(
                    "out_of_memory", "errored")
                held_sha, held_doc = None, None
                for _ in request.pages:
                    send_result(conn, problem)
                continue
        for result in render_pages(held_doc, request.pages, request.options):
            send_result(conn, result)


def serve_socket(fd: int, memory_limit_mb: int = 0) -> None:
    """Entry of the render process: cap its address space (MuPDF then fails an allocation with
    MemoryError, which becomes `out_of_memory`, instead of the machine running out), and serve
    over the inherited socket `fd`."""
    import resource
    from multiprocessing.connection import Connection

    if memory_limit_mb > 0:
        limit = memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    serve(Connection(socket.socket(fileno=fd).detach()))
