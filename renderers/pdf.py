"""PDF documents and pages with PyMuPDF: open and vet a document, render one page to an image,
and extract its words and lines with boxes in that image's pixels.

Geometry. PyMuPDF reports text in the coordinates of the *unrotated* page, relative to the
top-left corner of the CropBox. The rendered pixmap shows the *rotated* CropBox. A text box
therefore goes through `page.rotation_matrix` (unrotated -> rotated page) and then the zoom
(points -> pixels), minus the pixmap origin. The page is dropped when the pixmap's size does not
match the rotated CropBox times the zoom (`page_geometry_mismatch`), since boxes would then be off.

A line that does not run left to right on the image also gets a quad, its corners in reading
order (`line_quad`): the writing direction comes from MuPDF's line `dir`.

Ligatures are expanded (ﬁ -> fi): the label should read as a person reads the page, and the
tokenizer should see ordinary letters. MuPDF splits the ligature glyph's box among its letters.
Lines whose box shows no ink (hidden or clipped text, white on white) are left out of the
labels and the page text (`drop_inkless_lines`). Characters MuPDF cannot map to Unicode come
out as U+FFFD; a page with any of them is dropped (`unmapped_glyphs`), because its text no
longer says what its pixels show.

`serve_socket(fd)` runs the loop of a separate render process: a page that takes too long or
crashes MuPDF is then lost alone, and the caller restarts the process (pipelines/pdf.py).
"""
from __future__ import annotations

import io
import math
import re
import socket
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pymupdf
from PIL import Image as PILImage

from corpus.schema import IMAGE_FORMATS, Image

pymupdf.TOOLS.mupdf_display_errors(False)  # broken PDFs are counted, not printed
pymupdf.TOOLS.mupdf_display_warnings(False)

POINTS_PER_INCH = 72
LIGATURES = str.maketrans({"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi",
                           "\ufb04": "ffl", "\ufb05": "st", "\ufb06": "st"})
UNMAPPED = "\ufffd"
SIZE_TOLERANCE_PX = 2  # MuPDF rounds the pixmap outward to whole pixels on each side
MIN_INSIDE_FRACTION = 0.5  # a word mostly outside the visible page is not on the image
READY = "ready"
# what MuPDF raises through PyMuPDF: its own error classes, or RuntimeError/ValueError wrappers
MUPDF_ERRORS = (RuntimeError, ValueError, pymupdf.mupdf.FzErrorBase)

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
PAGE_REASONS = ["page_too_large", "page_geometry_mismatch", "unmapped_glyphs",
                "page_render_failed", "out_of_memory", "render_timeout", "render_crashed"]


def open_pdf(data: bytes, policy: DocumentPolicy | None) -> pymupdf.Document:
    """Open and vet a PDF; raises PdfProblem with the first reason it fails. `policy=None`
    only opens it: for a PDF already vetted (the same bytes, by sha256) earlier in the run."""
    if not data:
        raise PdfProblem("empty_file", "errored")
    if b"%PDF-" not in data[:1024]:
        raise PdfProblem("not_a_pdf", "errored", repr(data[:16]))
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
        if policy is not None:
            _vet(doc, data, policy)
    except MUPDF_ERRORS as error:
        raise PdfProblem("malformed_pdf", "errored", str(error)[:300]) from error
    except MemoryError as error:  # over the render process's memory limit
        raise PdfProblem("out_of_memory", "errored") from error
    return doc


def _vet(doc: pymupdf.Document, data: bytes, policy: DocumentPolicy) -> None:
    if doc.needs_pass:
        raise PdfProblem("password_protected_pdf", "errored")
    if policy.reject_encrypted and doc.metadata.get("encryption"):
        raise PdfProblem("encrypted_pdf", "errored", doc.metadata["encryption"])
    # MuPDF quietly rebuilds a cut-off file from what is left; without the end marker the
    # pages it finds are a guess, so the document is refused as a whole.
    if doc.is_repaired and b"%%EOF" not in data[-2048:]:
        raise PdfProblem("truncated_pdf", "errored")
    if doc.page_count == 0:
        raise PdfProblem("zero_pages", "dropped")
    if policy.reject_javascript and has_javascript(doc):
        raise PdfProblem("javascript_pdf", "dropped")
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


class Word(NamedTuple):  # a tuple: hundreds per page cross the pipe from the render process
    text: str
    box: Box
    line: tuple[int, int]  # (block, line) number from MuPDF, to group words into lines


@dataclass
class RenderedPage:
    index: int  # 0-based
    image: Image
    words: list[Word]
    lines: list[Line]
    text: str
    width_pt: float
    height_pt: float
    rotation: int
    zoom: float
    inkless_lines: int = 0  # lines left out because their box shows no ink

    def __reduce__(self):  # crosses the pipe: plain tuples pickle ~3x faster than NamedTuples
        return _rebuild_page, (self.index, self.image, [tuple(w) for w in self.words],
                               [tuple(line) for line in self.lines], self.text, self.width_pt,
                               self.height_pt, self.rotation, self.zoom, self.inkless_lines)


def _rebuild_page(index, image, words, lines, *rest) -> "RenderedPage":
    return RenderedPage(index, image, [Word(*w) for w in words], [Line(*line) for line in lines],
                        *rest)


def render_page(doc: pymupdf.Document, index: int, options: RenderOptions) -> RenderedPage:
    """Render one page and extract its text geometry; raises PdfProblem for a page reason."""
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
        # page's text: left off the image, so that every text the image shows is labelled.
        pixmap = page.get_pixmap(matrix=scale, colorspace=pymupdf.csRGB, alpha=False,
                                 annots=False)
        if (abs(pixmap.width - width) > SIZE_TOLERANCE_PX
                or abs(pixmap.height - height) > SIZE_TOLERANCE_PX):
            raise PdfProblem("page_geometry_mismatch", "dropped",
                             f"pixmap {pixmap.width}x{pixmap.height} vs page {width:.1f}x"
                             f"{height:.1f}")
        to_pixels = page.rotation_matrix * scale * pymupdf.Matrix(1, 0, 0, 1, -pixmap.x,
                                                                   -pixmap.y)
        textpage = page.get_textpage(flags=options.text_flags())
        raw_words = page.get_text("words", textpage=textpage)
        line_dicts = {(b, n): line for b, block in enumerate(textpage.extractDICT()["blocks"])
                      for n, line in enumerate(block["lines"])}
    except PdfProblem:
        raise
    except MUPDF_ERRORS as error:  # MuPDF's own errors while drawing the page
        raise PdfProblem("page_render_failed", "errored", str(error)[:300]) from error
    words = place_words(raw_words, to_pixels, pixmap.width, pixmap.height,
                        expand_ligatures=options.ligatures == "expand")
    inkless = 0
    if options.min_ink_contrast > 0 and words:
        words, inkless = drop_inkless_lines(words, pixmap, options.min_ink_contrast)
    if any(UNMAPPED in w.text for w in words):  # only text the image shows matters
        raise PdfProblem("unmapped_glyphs", "dropped")
    lines = group_lines(words, line_dicts, to_pixels, pixmap.width, pixmap.height)
    return RenderedPage(index=index, image=encode(pixmap, options), words=words, lines=lines,
                        text="\n".join(line.text for line in lines), width_pt=rect.width,
                        height_pt=rect.height, rotation=page.rotation, zoom=zoom,
                        inkless_lines=inkless)


def place_words(raw_words, to_pixels: pymupdf.Matrix, width: int, height: int,
                expand_ligatures: bool) -> list[Word]:
    """Words in pixels, clipped to the image. Words mostly off the image are left out, and a word
    drawn twice in the same place (fake bold) is kept once. Plain float arithmetic: PyMuPDF's
    Rect objects cost more than the rendering on text-heavy pages."""
    a, b, c, d, e, f = to_pixels
    words, seen = [], set()
    for x0, y0, x1, y1, text, block, line, _ in raw_words:
        if expand_ligatures:
            text = text.translate(LIGATURES)
        text = text.strip()
        if not text:
            continue
        # /Rotate is a multiple of 90 degrees: two opposite corners still span the box
        u0, v0 = a * x0 + c * y0 + e, b * x0 + d * y0 + f
        u1, v1 = a * x1 + c * y1 + e, b * x1 + d * y1 + f
        left, right = (u0, u1) if u0 <= u1 else (u1, u0)
        top, bottom = (v0, v1) if v0 <= v1 else (v1, v0)
        area = (right - left) * (bottom - top)
        left, top = max(left, 0.0), max(top, 0.0)
        right, bottom = min(right, float(width)), min(bottom, float(height))
        if right <= left or bottom <= top or (right - left) * (bottom - top) < (
                MIN_INSIDE_FRACTION * area):
            continue
        rounded = (text, round(left), round(top), round(right), round(bottom))
        if rounded in seen:
            continue
        seen.add(rounded)
        words.append(Word(text, (left, top, right, bottom), (block, line)))
    return words


def _by_line(words: list[Word]) -> dict[tuple[int, int], list[Word]]:
    grouped: dict[tuple[int, int], list[Word]] = {}
    for word in words:
        grouped.setdefault(word.line, []).append(word)
    return grouped


def _union(words: list[Word]) -> Box:
    return (min(w.box[0] for w in words), min(w.box[1] for w in words),
            max(w.box[2] for w in words), max(w.box[3] for w in words))


class Line(NamedTuple):
    text: str
    box: Box
    quad: Quad | None  # corners in reading order, when that is not the box's TL, TR, BR, BL


def group_lines(words: list[Word], line_dicts: dict, to_pixels: pymupdf.Matrix, width: int,
                height: int) -> list[Line]:
    """MuPDF's lines, in its reading order: words joined by a space, the union of their boxes,
    and a quad for a line that does not run left to right on the image (rotated pages, vertical
    labels, a diagonal watermark), so its corners say where the text starts."""
    lines = []
    for key, members in _by_line(words).items():
        box = _union(members)
        line = line_dicts.get(key)
        quad = None if line is None else line_quad(line, box, to_pixels, width, height)
        lines.append(Line(" ".join(w.text for w in members), box, quad))
    return lines


def line_quad(line: dict, box: Box, to_pixels: pymupdf.Matrix, width: int,
              height: int) -> Quad | None:
    a, b, c, d, _, _ = to_pixels
    dx, dy = line["dir"]
    dx, dy = a * dx + c * dy, b * dx + d * dy  # the writing direction on the image
    norm = math.hypot(dx, dy) or 1.0
    dx, dy = dx / norm, dy / norm
    if dx > 1 - AXIS_TOLERANCE:
        return None  # left to right: the box's own corners
    if abs(dx) < AXIS_TOLERANCE or abs(dy) < AXIS_TOLERANCE:
        # along an axis: the box's corners, starting where the text starts. Glyphs point
        # "up" along (dy, -dx) in image coordinates (y down).
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
    # at an angle; not clipped to the image, which would bend the quad (the formatter clamps)
    points = [pymupdf.Point(p) * to_pixels for p in tilted_line_corners(line)]
    return tuple(v for point in points for v in (point.x, point.y))


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


def drop_inkless_lines(words: list[Word], pixmap: pymupdf.Pixmap,
                       min_contrast: int) -> tuple[list[Word], int]:
    """Leave out the words of every line whose box shows no ink: hidden text, white on white,
    text clipped away or under a flat fill. Its label would name something the image does not
    show. Contrast is measured on the darkest channel of each pixel, so coloured text counts and
    a flat coloured patch does not; checked per line, as hiding applies to whole runs of text
    and one check per line costs far less than one per word."""
    samples = np.frombuffer(pixmap.samples_mv, np.uint8).reshape(
        pixmap.height, pixmap.stride)[:, :pixmap.width * 3].reshape(
        pixmap.height, pixmap.width, 3)
    inkless = set()
    for line, members in _by_line(words).items():
        x0, y0, x1, y1 = _union(members)
        crop = samples[int(y0):int(y1) + 1, int(x0):int(x1) + 1]
        darkest = np.minimum(np.minimum(crop[..., 0], crop[..., 1]), crop[..., 2])
        if not darkest.size or int(darkest.max()) - int(darkest.min()) < min_contrast:
            inkless.add(line)
    return [w for w in words if w.line not in inkless], len(inkless)


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
    """Open and vet a PDF; the answer is its page count or a PdfProblem."""

    data: bytes
    policy: DocumentPolicy


@dataclass
class PageRequest:
    """Render `pages` of the (already vetted) PDF whose bytes hash to `sha256`; `data` is None
    when the render process already holds that PDF open from the previous request."""

    sha256: str
    data: bytes | None
    pages: list[int]
    options: RenderOptions


def render_pages(doc: pymupdf.Document, pages: list[int], options: RenderOptions):
    """Yield a RenderedPage or a PdfProblem for each page, in order."""
    for index in pages:
        try:
            result = render_page(doc, index, options)
        except PdfProblem as problem:
            result = problem
        except MemoryError:  # over the render process's memory limit: MuPDF, Pillow or numpy
            result = PdfProblem("out_of_memory", "errored")
        yield result


def serve(conn) -> None:
    """Loop of the render process: answer a VetRequest with a page count or a problem, and a
    PageRequest with one result per page, in order."""
    held_sha, held_doc = None, None
    conn.send(READY)  # imports are done: time limits count from here
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        if isinstance(request, VetRequest):
            try:
                conn.send(open_pdf(request.data, request.policy).page_count)
            except PdfProblem as problem:
                conn.send(problem)
            continue
        if request.data is not None or request.sha256 != held_sha:
            try:
                held_doc = open_pdf(request.data or b"", None)
                held_sha = request.sha256
            except PdfProblem as problem:
                held_sha, held_doc = None, None
                for _ in request.pages:
                    conn.send(problem)
                continue
        for result in render_pages(held_doc, request.pages, request.options):
            conn.send(result)


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
