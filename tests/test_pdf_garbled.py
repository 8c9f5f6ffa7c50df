"""Broken font maps (ToUnicode CMaps): byte-swapped UTF-16 is swapped back when that is certain
and drops the page otherwise; text mapped to code points its font has no glyph for drops the
page; English, Chinese, Japanese and Korean text keeps its labels. The PDFs are made here, their
fonts cut down to the few glyphs drawn."""
import functools
import io
import os
import subprocess
from typing import Callable

import pymupdf
import pytest
from fontTools import subset
from fontTools.ttLib import TTFont

from corpus.inputs import InputFile
from corpus.samples import pdf as samples
from filters.base import Reject
from pipelines.pdf import REASON_ORDER, PdfConfig, RenderDocuments
from pipelines.sinks import Counts
from renderers.pdf import (DocumentPolicy, PdfProblem, RenderOptions, has_unicode_cmap,
                           open_pdf, reads_byte_swapped, render_page, repair_byte_swapped)

# real text rich in code points whose low byte is 0 (一 U+4E00, 最 U+6700, 开 U+5F00, 怀 U+6000,
# 가 U+AC00, 대 U+B300), which byte-swapped Latin also is
CHINESE = ["一个最开放的开始，我们怀念过去。", "每一行都有自己的位置，最后一行也一样。"]
JAPANESE = ["堀さんは紀元前の一番最初の記録を調べた。"]
KOREAN = ["대한민국의 가장 큰 도시는 서울입니다.", "가나다 대가 최대 가격"]


def swap(text: str) -> str:
    return "".join(chr(((ord(c) & 0xFF) << 8) | (ord(c) >> 8)) for c in text)


@functools.lru_cache(maxsize=None)
def cut_font(path: str, text: str) -> bytes:
    """The font at `path` with only the glyphs of `text`; its character map stays."""
    font = TTFont(path, fontNumber=0)
    options = subset.Options()
    options.drop_tables += ["FFTM"]  # FontForge's timestamps, which the subsetter cannot cut
    options.retain_gids = "CFF " in font  # a CID-keyed CFF font is drawn by its glyph numbers
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=text)
    subsetter.subset(font)
    out = io.BytesIO()
    font.save(out)
    return out.getvalue()


@functools.lru_cache(maxsize=None)
def installed_chinese_fonts() -> tuple[str, ...]:
    """The fonts for Chinese that fontconfig lists (WenQuanYi, Noto CJK)."""
    try:
        listed = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True,
                                timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    files = sorted(line.split(":")[0] for line in listed.splitlines() if line.strip())
    files = [path for path in files if path.endswith((".ttf", ".ttc", ".otf"))]
    if not files and os.path.exists(samples.CJK_FONT):
        files = [samples.CJK_FONT]
    return tuple(files)


def chinese_fonts() -> tuple[str, ...]:
    if not installed_chinese_fonts():
        pytest.skip("no font for Chinese installed")
    return installed_chinese_fonts()


def chinese_font() -> str:
    return chinese_fonts()[-1]


def to_unicode_cmap(pairs: dict[int, str], code_bytes: int) -> bytes:
    """A ToUnicode CMap sending each code to its text."""
    width = 2 * code_bytes
    entries = "\n".join(f"<{code:0{width}X}> <{text.encode('utf-16-be').hex().upper()}>"
                        for code, text in sorted(pairs.items()))
    return (f"/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /Test def "
            f"1 begincodespacerange <{'00' * code_bytes}> <{'FF' * code_bytes}> "
            f"endcodespacerange {len(pairs)} beginbfchar\n{entries}\nendbfchar endcmap "
            f"CMapName currentdict /CMap defineresource pop end end").encode()


def set_to_unicode(doc: pymupdf.Document, page: pymupdf.Page, fontname: str,
                   cmap: bytes) -> None:
    stream = doc.get_new_xref()
    doc.update_object(stream, "<<>>")
    doc.update_stream(stream, cmap)
    [xref] = [font[0] for font in page.get_fonts() if font[4] == fontname]
    doc.xref_set_key(xref, "ToUnicode", f"{stream} 0 R")


def write(page: pymupdf.Page, lines: list[str], fontname: str, top: float = 60) -> None:
    for number, line in enumerate(lines):
        page.insert_text((30, top + 28 * number), line, fontsize=18, fontname=fontname)


def byte_swapped_pdf(lines: list[str], other: list[str] = (), other_font: bytes | None = None,
                     remap: dict[str, str] | None = None) -> bytes:
    """`lines` in Helvetica, whose ToUnicode map sends each character to its byte-swapped code
    point (or to `remap`'s), as in a PDF found in the wild ('Multicolor Black' read back as
    '䴀甀氀琀椀挀漀氀漀爀 䈀氀愀挀欀'); `other` below in `other_font`, mapped right."""
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=300)
    write(page, lines, "helv")
    if other:
        page.insert_font(fontname="other", fontbuffer=other_font)
        write(page, other, "other", top=60 + 28 * len(lines))
    chars = set("".join(lines))
    set_to_unicode(doc, page, "helv", to_unicode_cmap(
        {ord(c): (remap or {}).get(c, swap(c)) for c in chars}, 1))
    return doc.tobytes(garbage=3, deflate=True)


def mismapped_pdf(text: str, to: Callable[[str], str], other: str = "") -> bytes:
    """`text` in a Latin font (DejaVu Sans, cut down, with its character map) whose ToUnicode
    map sends each glyph to `to(character)`; `other`, mapped right, in Helvetica."""
    font_file = cut_font(samples.LATIN_FONT, text)
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=300)
    page.insert_font(fontname="latin", fontbuffer=font_file)
    write(page, [text], "latin")
    if other:
        write(page, [other], "helv", top=120)
    glyphs = pymupdf.Font(fontbuffer=font_file)
    set_to_unicode(doc, page, "latin", to_unicode_cmap(
        {glyphs.has_glyph(ord(c)): to(c) for c in set(text)}, 2))  # Identity-H: code = glyph
    return doc.tobytes(garbage=3, deflate=True)


def chinese_pdf(lines: list[str], swapped_heading: str = "", font: str | None = None) -> bytes:
    """A page of Chinese (and Korean, Japanese) text in a CJK font with its character map,
    written right; with a byte-swapped heading in Helvetica above it if asked."""
    doc = pymupdf.open()
    page = doc.new_page(width=500, height=400)
    if swapped_heading:
        write(page, [swapped_heading], "helv", top=50)
        set_to_unicode(doc, page, "helv", to_unicode_cmap(
            {ord(c): swap(c) for c in set(swapped_heading)}, 1))
    page.insert_font(fontname="cjk", fontbuffer=cut_font(font or chinese_font(), "".join(lines)))
    write(page, lines, "cjk", top=100)
    return doc.tobytes(garbage=3, deflate=True)


def render(data: bytes, **options):
    return render_page(open_pdf(data, DocumentPolicy()), 0, RenderOptions(**options))


def test_the_fixture_reads_back_as_the_pdf_found_in_the_wild():
    data = byte_swapped_pdf(["Multicolor Black"])
    text = pymupdf.open("pdf", data)[0].get_text()
    assert text.strip() == "䴀甀氀琀椀挀漀氀漀爀\u2000䈀氀愀挀欀"


def test_byte_swapped_text_is_swapped_back_and_counted():
    page = render(byte_swapped_pdf(["Multicolor Black", "Invoice 2024, total: 10.50"]))
    assert page.text == "Multicolor Black\nInvoice 2024, total: 10.50"
    assert page.byte_swapped_lines == 2
    # MuPDF splits words at spaces only: a swapped space (U+2000) stays inside its word
    assert [word.text for word in page.words] == ["Multicolor Black",
                                                  "Invoice 2024, total: 10.50"]
    assert [line.text for line in page.lines] == page.text.split("\n")


def test_a_lone_short_swapped_line_is_swapped_back_on_a_page_shown_byte_swapped():
    page = render(byte_swapped_pdf(["Multicolor Black", "7"]))
    assert page.text == "Multicolor Black\n7" and page.byte_swapped_lines == 2


def test_swapped_text_that_does_not_swap_back_to_latin_drops_the_page():
    # 'k' mapped to U+6B01, whose low byte is not 0: the map is broken, but not only swapped
    with pytest.raises(PdfProblem) as caught:
        render(byte_swapped_pdf(["Multicolor Black"], remap={"k": "\u6b01"}))
    problem = caught.value
    assert (problem.reason, problem.status) == ("garbled_text", "dropped")
    assert problem.detail.startswith("14 of 15 characters of line 1 are byte-swapped UTF-16, "
                                     "the rest not Latin-1: '䴀甀氀")


def test_swapped_text_on_a_page_with_cjk_text_that_could_be_either_drops_the_page():
    cjk = cut_font(chinese_font(), "".join(CHINESE))
    with pytest.raises(PdfProblem) as caught:  # is 㜀 (U+3700) a swapped '7' here? Unsure.
        render(byte_swapped_pdf(["Multicolor Black", "7"], other=["最后"], other_font=cjk))
    assert caught.value.reason == "garbled_text"
    assert "line 2 are byte-swapped UTF-16 or CJK, and the page has both" in caught.value.detail
    with pytest.raises(PdfProblem, match="garbled_text"):  # a Chinese line with 一 and 最
        render(chinese_pdf(CHINESE, swapped_heading="Multicolor Black"))


def test_a_swapped_heading_over_chinese_text_is_swapped_back_and_the_chinese_kept():
    lines = ["页面中的文字和边框应当对齐。"]  # no code point with a low byte of 0
    page = render(chinese_pdf(lines, swapped_heading="Multicolor Black"))
    assert page.text == "\n".join(["Multicolor Black", *lines])
    assert page.byte_swapped_lines == 1


def test_text_mapped_to_code_points_its_font_has_no_glyph_for_drops_the_page():
    """A Latin font whose map sends its glyphs into CJK: the text is no label of the ink."""
    for data in (mismapped_pdf("Multicolor Black", lambda c: chr(0x4E00 + ord(c))),
                 mismapped_pdf("Multicolor Black", lambda c: chr(0x4E00 + ord(c)),
                               other="A second line, mapped right, in Helvetica")):
        with pytest.raises(PdfProblem) as caught:
            render(data)
        problem = caught.value
        assert (problem.reason, problem.status) == ("garbled_text", "dropped")
        assert problem.detail.startswith("16 of 16 characters drawn in font DejaVuSans are code "
                                         "points it has no glyph for")


def test_the_same_font_mapped_right_keeps_its_text():
    page = render(mismapped_pdf("Multicolor Black", lambda c: c, other="Plain Helvetica"))
    assert page.text == "Multicolor Black\nPlain Helvetica" and page.byte_swapped_lines == 0


def test_a_byte_swapped_map_of_a_font_with_a_character_map_is_swapped_back():
    page = render(mismapped_pdf("Multicolor Black", swap))
    assert page.text == "Multicolor Black" and page.byte_swapped_lines == 1


def test_english_and_chinese_pages_keep_their_labels():
    english = render(samples.english_pdf())
    assert english.text.startswith("Page 1 of a short English report\nThe quick brown fox")
    assert english.byte_swapped_lines == 0
    lines = CHINESE + JAPANESE + KOREAN
    by_outlines = {"CFF " in TTFont(path, fontNumber=0): path for path in chinese_fonts()}
    for font in by_outlines.values():  # a TrueType and an OpenType (CFF) font, if installed
        page = render(chinese_pdf(lines, font=font))
        assert page.text == "\n".join(lines) and page.byte_swapped_lines == 0, font


def test_real_cjk_lines_never_read_as_byte_swapped():
    for line in CHINESE + JAPANESE + KOREAN + ["一一", "一 最", "가 대", "最初一", "大一 一二三"]:
        assert not reads_byte_swapped(line), line
    assert reads_byte_swapped(swap("Multicolor Black")) and reads_byte_swapped(swap("Total 42"))
    assert not reads_byte_swapped(swap("..."))  # not text
    words = [(0.0, 0.0, 9.0, 9.0, "一个最开放的开始", 0, 0, 0), (0.0, 9.0, 9.0, 18.0, "一一", 0, 1, 0)]
    assert repair_byte_swapped(words) == (words, 0)
    swapped = [(0.0, 0.0, 9.0, 9.0, swap(word), 0, 0, n) for n, word in enumerate(["Total", "42"])]
    repaired, count = repair_byte_swapped(swapped)
    assert [word[4] for word in repaired] == ["Total", "42"] and count == 1


def test_only_fonts_with_a_unicode_character_map_are_held_to_it():
    with open(samples.LATIN_FONT, "rb") as f:
        assert has_unicode_cmap(f.read())
    assert not has_unicode_cmap(b"\x00\x01\x00\x00\x00\x00")
    assert not has_unicode_cmap(b"%!PS-AdobeFont-1.0: CMR10")


def test_the_pipeline_counts_repairs_and_rejects_garbled_pages(tmp_path):
    """Through the render process: the repair count crosses the pipe into the sample, the
    garbled page becomes a reject with its reason and detail."""
    good = tmp_path / "swapped.pdf"
    good.write_bytes(byte_swapped_pdf(["Multicolor Black", "Invoice 2024, total: 10.50"]))
    bad = tmp_path / "mismapped.pdf"
    bad.write_bytes(mismapped_pdf("Multicolor Black", lambda c: chr(0x4E00 + ord(c))))
    work = RenderDocuments(PdfConfig(isolate=True), "unit")
    try:
        work.setup(0)
        results = [item for path in (good, bad) for item in work(InputFile(str(path), path.name))
                   if not isinstance(item, Counts)]
    finally:
        work.close()
    sample, reject = results
    assert sample.text == "Multicolor Black\nInvoice 2024, total: 10.50"
    assert sample.extra["byte_swapped_lines"] == 2
    assert isinstance(reject, Reject)
    assert (reject.reason, reject.status) == ("garbled_text", "dropped")
    assert "font DejaVuSans" in reject.detail
    assert "garbled_text" in REASON_ORDER
