"""The PDF renderer: boxes sit on the ink (rotation, CropBox, CJK, OCR layers), ligatures,
document vetting and page reasons."""
import io
import math

import numpy as np
import pymupdf
import pytest
from PIL import Image as PILImage
from PIL import ImageDraw

import renderers.pdf as renderers_pdf
from corpus.samples import pdf as samples
from renderers.pdf import (DocumentPolicy, PdfProblem, RenderOptions, has_javascript, open_pdf,
                           page_text, render_page)

INK = 128  # a pixel darker than this is ink
SLACK = 2  # pixels: JPEG ringing and anti-aliasing around the glyph box


def pixels(page) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(page.image.data)).convert("L"))


def single_word_pdf(word="Fidelity", rotation=0, cropbox=None, fontname="dv") -> bytes:
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=300)
    page.insert_font(fontname="dv", fontfile=samples.LATIN_FONT)
    page.insert_font(fontname="cjk", fontfile=samples.CJK_FONT)
    page.insert_text((150, 120), word, fontsize=24, fontname=fontname)
    if cropbox:
        page.set_cropbox(pymupdf.Rect(cropbox))
    page.set_rotation(rotation)
    return doc.tobytes()


def render(data: bytes, index=0, **options):
    return render_page(open_pdf(data, DocumentPolicy()), index, RenderOptions(**options))


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("cropbox", [None, (100, 60, 380, 260)])
def test_the_ink_of_a_word_falls_inside_its_box(rotation, cropbox):
    page = render(single_word_pdf(rotation=rotation, cropbox=cropbox), dpi=144,
                  image_format="png")
    [word] = page.words
    assert word.text == "Fidelity"
    ys, xs = np.nonzero(pixels(page) < INK)
    x0, y0, x1, y1 = word.box
    assert xs.min() >= x0 - SLACK and xs.max() <= x1 + SLACK
    assert ys.min() >= y0 - SLACK and ys.max() <= y1 + SLACK
    # and the box is not a loose frame around the page: the ink spans most of it
    assert (xs.max() - xs.min()) > 0.6 * min(x1 - x0, y1 - y0)


@pytest.mark.parametrize("rotation", [0, 90, 180])
@pytest.mark.parametrize("cropbox", [None, (40, 60, 380, 260)])
def test_the_text_read_with_the_image_is_the_pages_own(rotation, cropbox):
    """The text comes from the display list the image is drawn from (not from a second reading
    of the page): the same words, boxes and line numbers as `page.get_text`."""
    doc = pymupdf.open("pdf", single_word_pdf("Fidelity ﬁrst, two words", rotation, cropbox))
    page, flags = doc[0], RenderOptions().text_flags()
    textpage = page_text(page, page.get_displaylist(annots=False), flags)
    words = page.get_text("words", textpage=textpage)
    assert len(words) == 4
    assert words == page.get_text("words", flags=flags)


@pytest.mark.parametrize("mediabox,cropbox", [((100, 200, 500, 500), None),
                                              ((-300, -300, 100, 0), None),
                                              ((100, 200, 500, 500), (150, 250, 450, 480))])
@pytest.mark.parametrize("rotation", [0, 90])
def test_boxes_follow_a_mediabox_off_the_origin(mediabox, cropbox, rotation):
    doc = pymupdf.open("pdf", single_word_pdf(rotation=rotation))
    page = doc[0]
    doc.xref_set_key(page.xref, "MediaBox", "[%g %g %g %g]" % mediabox)
    if cropbox:
        doc.xref_set_key(page.xref, "CropBox", "[%g %g %g %g]" % cropbox)
    content = page.get_contents()[0]  # move the drawing along with the box
    doc.update_stream(content, b"q 1 0 0 1 %g %g cm\n" % mediabox[:2]
                      + doc.xref_stream(content) + b"\nQ")
    rendered = render(doc.tobytes(), dpi=144, image_format="png")
    [word] = rendered.words
    ys, xs = np.nonzero(pixels(rendered) < INK)
    x0, y0, x1, y1 = word.box
    assert x0 - SLACK <= xs.min() and xs.max() <= x1 + SLACK
    assert y0 - SLACK <= ys.min() and ys.max() <= y1 + SLACK


def test_rotated_page_swaps_the_image_sides():
    upright = render(single_word_pdf())
    turned = render(single_word_pdf(rotation=90))
    assert (turned.image.width, turned.image.height) == (upright.image.height,
                                                         upright.image.width)
    assert turned.rotation == 90
    box = turned.words[0].box
    assert box[3] - box[1] > box[2] - box[0]  # the word now runs down the image


def test_cropped_page_keeps_only_visible_text():
    page = render(samples.cropped_pdf())
    assert "Inside the crop box." in page.text
    assert "Outside" not in page.text
    assert (page.image.width, page.image.height) == (math.ceil(460 * 80 / 72),
                                                     math.ceil(550 * 80 / 72))


@pytest.mark.parametrize("make,index", [(samples.english_pdf, 0), (samples.chinese_pdf, 0),
                                        (samples.two_column_pdf, 0), (samples.math_pdf, 0),
                                        (samples.scanned_pdf, 1), (samples.rotated_pdf, 2)])
def test_every_word_box_holds_ink(make, index):
    page = render(make(), index)
    image = pixels(page)
    assert page.words
    for word in page.words:
        x0, y0, x1, y1 = (int(v) for v in word.box)
        crop = image[y0:y1 + 1, x0:x1 + 1]
        assert crop.size and crop.min() < INK, word


def test_lines_group_words_and_make_the_page_text():
    page = render(samples.chinese_pdf())
    assert [line.text for line in page.lines] == samples.CHINESE + ["Mixed 中文 and English text."]
    assert page.text == "\n".join(line.text for line in page.lines)
    mixed_words = [w for w in page.words if w.line == page.words[-1].line]
    x0, y0, x1, y1 = page.lines[-1].box
    assert all(line.quad is None for line in page.lines)  # left to right: the box is enough
    assert [w.text for w in mixed_words] == ["Mixed", "中文", "and", "English", "text."]
    assert x0 == mixed_words[0].box[0] and x1 == mixed_words[-1].box[2]


def test_ligatures_are_expanded_by_default_and_kept_on_request():
    data = single_word_pdf("\ufb01nance o\ufb03ce")
    assert [w.text for w in render(data).words] == ["finance", "office"]
    assert [w.text for w in render(data, ligatures="keep").words] == ["\ufb01nance",
                                                                      "o\ufb03ce"]


def test_scanned_page_without_text_layer_has_no_words():
    assert render(samples.scanned_pdf(), 0).words == []


def test_dpi_long_side_and_format_are_configurable():
    data = single_word_pdf()
    assert render(data, dpi=144).image.width == 800
    page = render(data, long_side=500, image_format="webp")
    assert (page.image.width, page.image.height, page.image.format) == (500, 375, "webp")
    assert page.image.data[8:12] == b"WEBP"


@pytest.mark.parametrize("name,reason,status", [
    ("bad/encrypted.pdf", "password_protected_pdf", "errored"),
    ("bad/truncated.pdf", "truncated_pdf", "errored"),
    ("bad/empty.pdf", "empty_file", "errored"),
    ("bad/zero-pages.pdf", "zero_pages", "dropped"),
    ("bad/javascript.pdf", "javascript_pdf", "dropped"),
    ("bad/embedded-files.pdf", "embedded_files_pdf", "dropped"),
    ("bad/not-a-pdf.pdf", "not_a_pdf", "errored"),
])
def test_bad_documents_get_their_reason(name, reason, status):
    with pytest.raises(PdfProblem) as caught:
        open_pdf(samples.BAD[name](), DocumentPolicy())
    assert (caught.value.reason, caught.value.status) == (reason, status)


def test_malformed_pdf():
    with pytest.raises(PdfProblem) as caught:
        open_pdf(b"%PDF-1.7\n" + bytes(range(256)) * 4, DocumentPolicy())
    assert (caught.value.reason, caught.value.status) == ("malformed_pdf", "errored")


def test_policy_switches():
    open_pdf(samples.javascript_pdf(), DocumentPolicy(reject_javascript=False))
    open_pdf(samples.embedded_files_pdf(), DocumentPolicy(reject_embedded_files=False))
    doc = pymupdf.open("pdf", samples.english_pdf())
    owner_only = doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_128, owner_pw="owner")
    assert open_pdf(owner_only, DocumentPolicy()).page_count == 2
    with pytest.raises(PdfProblem, match="encrypted_pdf"):
        open_pdf(owner_only, DocumentPolicy(reject_encrypted=True))


def test_giant_page_is_dropped_before_rendering():
    with pytest.raises(PdfProblem, match="page_too_large"):
        render(single_word_pdf(), max_page_pixels=10_000)


def test_a_lone_unmapped_glyph_is_left_out_and_one_inside_text_drops_the_page():
    # DejaVu has no glyph at U+E000: MuPDF reads it back as U+FFFD
    page = render(single_word_pdf("icon \ue000 here"))  # a symbol of its own, like TeX's CMEX
    assert [w.text for w in page.words] == ["icon", "here"] and page.unmapped_symbols == 1
    assert "\ufffd" not in page.text
    with pytest.raises(PdfProblem, match="unmapped_glyphs"):
        render(single_word_pdf("icon \ue000 here"), unmapped_glyphs="drop_page")
    with pytest.raises(PdfProblem, match="unmapped_glyphs"):
        render(single_word_pdf("ic\ue000on here"))  # text that no longer reads as drawn
    with pytest.raises(ValueError):
        RenderOptions(unmapped_glyphs="keep").validate()


def test_unmapped_glyphs_of_tex_math_fonts_come_out_of_words_of_text():
    """A large bracket of TeX's CMEX font set tight against its content ("xD" + bracket): the
    glyph leaves the word's text when every unmapped glyph on the page is from such a font; an
    unmapped glyph of a text font (a ligature without a map) keeps the page's fate."""
    from renderers.pdf import unmapped_are_math_symbols, without_unmapped_glyphs

    class Page:  # the part of a MuPDF text page these read
        def __init__(self, *spans):
            self.spans = spans

        def extractRAWDICT(self):
            return {"blocks": [{"lines": [{"spans": [
                {"font": font, "chars": [{"c": c} for c in text]} for font, text in self.spans]}]},
                {"type": 1}]}

    assert unmapped_are_math_symbols(Page(("CMR10", "x"), ("CMEX10", "\ufffd"),
                                          ("ABCDEF+MSBM10", "\ufffd")))
    assert not unmapped_are_math_symbols(Page(("CMEX10", "\ufffd"), ("SFRM1000", "e\ufffdcient")))
    words = [(1.0, 2.0, 3.0, 4.0, "xD\ufffd", 0, 1, 2), (5.0, 6.0, 7.0, 8.0, "mod", 0, 1, 3)]
    stripped, count = without_unmapped_glyphs(words)
    assert stripped == [(1.0, 2.0, 3.0, 4.0, "xD", 0, 1, 2), words[1]] and count == 1


def test_private_use_text_comes_through_for_the_rule():
    page = render(samples.rule_pages_pdf(), 4)
    assert "\ue000" in page.text


def test_options_are_validated():
    with pytest.raises(ValueError):
        RenderOptions(image_format="gif").validate()
    with pytest.raises(ValueError):
        RenderOptions(ligatures="drop").validate()


def test_accurate_boxes_are_tighter_around_the_glyphs():
    data = single_word_pdf()
    loose = render(data, dpi=144, image_format="png")
    tight = render(data, dpi=144, image_format="png", accurate_boxes=True)
    (_, ly0, _, ly1), (_, ty0, _, ty1) = loose.words[0].box, tight.words[0].box
    assert ly0 < ty0 and ty1 <= ly1  # font ascender/descender box vs the glyph outlines
    ys, _ = np.nonzero(pixels(tight) < INK)
    assert ty0 - SLACK <= ys.min() and ys.max() <= ty1 + SLACK


def test_lines_without_ink_are_left_out():
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=300)
    page.insert_font(fontname="dv", fontfile=samples.LATIN_FONT)
    page.insert_text((40, 60), "visible words", fontsize=18, fontname="dv")
    page.insert_text((40, 120), "hidden layer", fontsize=18, fontname="dv", render_mode=3)
    page.insert_text((40, 180), "white on white", fontsize=18, fontname="dv", color=(1, 1, 1))
    page.draw_rect(pymupdf.Rect(30, 200, 300, 260), color=None, fill=(0.9, 0.2, 0.2))
    page.insert_text((40, 240), "red on red", fontsize=18, fontname="dv", color=(0.9, 0.2, 0.2))
    page.insert_text((40, 280), "colored ink", fontsize=18, fontname="dv", color=(0, 0.7, 0))
    rendered = render(doc.tobytes())
    assert rendered.text == "visible words\ncolored ink"
    assert [w.text for w in rendered.words] == ["visible", "words", "colored", "ink"]
    assert rendered.inkless_lines == 3
    everything = render(doc.tobytes(), min_ink_contrast=0)
    assert everything.inkless_lines == 0 and len(everything.lines) == 5


def test_annotations_are_not_drawn_since_their_text_is_not_extracted():
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=300)
    page.insert_font(fontname="dv", fontfile=samples.LATIN_FONT)
    page.insert_text((40, 60), "page text", fontsize=18, fontname="dv")
    page.add_freetext_annot(pymupdf.Rect(40, 150, 360, 250), "A sticky note", fontsize=20)
    rendered = render(doc.tobytes(), dpi=72, image_format="png")
    assert rendered.text == "page text"
    assert pixels(rendered)[140:260, :].min() > 200  # nothing drawn where the note is


def test_javascript_detection_looks_for_scripts_not_for_names_alike():
    doc = pymupdf.open("pdf", samples.english_pdf())
    lookalike = doc.get_new_xref()
    doc.update_object(lookalike, "<< /Type /Font /BaseFont /JS-Bold /Name /JavaScriptish >>")
    assert not has_javascript(doc)
    names = doc.get_new_xref()
    doc.update_object(names, "<< /JavaScript << /Names [(init) 3 0 R] >> >>")
    assert has_javascript(doc)


@pytest.mark.parametrize("rotation,start", [(90, "top right"), (180, "bottom right"),
                                            (270, "bottom left")])
def test_line_quads_start_where_the_text_starts(rotation, start):
    page = render(single_word_pdf(rotation=rotation), dpi=144, image_format="png")
    [line] = page.lines
    x0, y0, x1, y1 = line.box
    corner = {"top right": (x1, y0), "bottom right": (x1, y1), "bottom left": (x0, y1)}[start]
    assert line.quad[:2] == pytest.approx(corner)
    assert sorted(zip(line.quad[0::2], line.quad[1::2])) == sorted(
        [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def test_text_at_an_angle_gets_a_tight_quad_around_its_ink():
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=300)
    page.insert_font(fontname="dv", fontfile=samples.LATIN_FONT)
    origin = pymupdf.Point(60, 80)
    page.insert_text(origin, "Diagonal watermark", fontsize=24, fontname="dv",
                     morph=(origin, pymupdf.Matrix(-30)))  # turned 30 degrees, running down
    rendered = render(doc.tobytes(), dpi=144, image_format="png")
    [line] = rendered.lines
    mask = PILImage.new("L", (rendered.image.width, rendered.image.height), 0)
    ImageDraw.Draw(mask).polygon(list(zip(line.quad[0::2], line.quad[1::2])), fill=255,
                                 outline=255, width=2 * SLACK)
    inside = np.asarray(mask) > 0
    ink = pixels(rendered) < INK
    assert (ink & inside).sum() >= 0.98 * ink.sum()
    x0, y0, x1, y1 = line.box
    assert inside.sum() < 0.6 * (x1 - x0) * (y1 - y0)  # far tighter than the upright box
    assert line.text == "Diagonal watermark"
    start_x, start_y, end_x, end_y = line.quad[:4]
    assert start_x < end_x and start_y < end_y  # starts top left, runs down to the right


def test_a_rendered_page_survives_the_pipe():
    import pickle

    page = render(samples.rotated_pdf(), 1)
    copy = pickle.loads(pickle.dumps(page))
    assert copy == page and type(copy.words[0]).__name__ == "Word"
    assert copy.lines[0].quad == page.lines[0].quad is not None


def test_the_ink_check_decides_as_the_whole_box_measured_would():
    """The corner and middle-row shortcuts only ever settle a line that the full measure (the
    spread of the darkest channel over the whole box) also calls inked."""
    rng = np.random.default_rng(1)
    height, width, min_contrast = 60, 90, 48
    for trial in range(40):
        image = np.full((height, width, 3), rng.integers(0, 256, 3), np.uint8)  # background
        for _ in range(rng.integers(0, 4)):  # patches: ink, faint marks, coloured fills
            y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
            h, w = rng.integers(1, 12), rng.integers(1, 30)
            image[y:y + h, x:x + w] = rng.integers(0, 256, 3)
        pixmap = pymupdf.Pixmap(pymupdf.csRGB, width, height, image.tobytes(), False)
        boxes = []
        for _ in range(8):
            x0, y0 = rng.uniform(0, width - 1), rng.uniform(0, height - 1)
            boxes.append((x0, y0, min(x0 + rng.uniform(0.5, 40), width),
                          min(y0 + rng.uniform(0.5, 15), height)))
        runs = [(i, i + 1) for i in range(len(boxes))]
        kept, _ = renderers_pdf.drop_inkless_lines(runs, boxes, pixmap, min_contrast)
        expected = []
        for run, (x0, y0, x1, y1) in zip(runs, boxes):
            darkest = image[int(y0):int(y1) + 1, int(x0):int(x1) + 1].min(axis=2)
            if darkest.size and int(darkest.max()) - int(darkest.min()) >= min_contrast:
                expected.append(run)
        assert kept == expected, trial


def turned_text_pdf() -> bytes:
    """Text along x, up the page (a chart's axis label), down it, and at an angle."""
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=400)
    page.insert_font(fontname="dv", fontfile=samples.LATIN_FONT)
    page.insert_text((60, 60), "Along the page", fontsize=14, fontname="dv")
    page.insert_text((40, 300), "Axis label up", fontsize=12, fontname="dv", rotate=90)
    page.insert_text((360, 100), "Label down", fontsize=12, fontname="dv", rotate=270)
    origin = pymupdf.Point(120, 150)
    page.insert_text(origin, "Slanted words", fontsize=16, fontname="dv",
                     morph=(origin, pymupdf.Matrix(-25)))
    return doc.tobytes()


@pytest.mark.parametrize("make", [turned_text_pdf, samples.rotated_pdf, samples.math_pdf,
                                  samples.chinese_pdf])
def test_line_directions_are_mupdfs_own(make):
    """Read from MuPDF's structured text directly, numbered as the words number their lines;
    the same directions its dict export gives."""
    doc = open_pdf(make(), DocumentPolicy())
    for page in doc:
        textpage = page.get_textpage(flags=RenderOptions().text_flags())
        exported = {(block["number"], n): tuple(line["dir"])
                    for block in textpage.extractDICT()["blocks"]
                    for n, line in enumerate(block["lines"])}
        directions = renderers_pdf.line_directions(textpage)
        assert directions == {key: d for key, d in exported.items() if d != (1.0, 0.0)}
        if make is turned_text_pdf:
            assert len(directions) == 3
        word_lines = {(w[5], w[6]) for w in page.get_text("words", textpage=textpage)}
        assert word_lines <= set(exported)


def test_letting_a_pdf_go_empties_mupdfs_store():
    """A render process goes through thousands of PDFs: closing each one and emptying MuPDF's
    resource store keeps its memory flat (without it, ~2 MB more per PDF of photos here, up to
    the store's 256 MB cap)."""
    from corpus.samples.pairs import make_photo
    from renderers.pdf import let_go

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2 ** 20

    sizes = []
    for seed in range(24):
        doc = pymupdf.open()
        for i in range(2):
            page = doc.new_page()
            page.insert_image(pymupdf.Rect(50, 50, 550, 450),
                              stream=make_photo(1200, 900, seed * 10 + i))
        rendered = pymupdf.open(stream=doc.tobytes(), filetype="pdf")
        for page in rendered:
            page.get_pixmap(dpi=80)
        let_go(rendered)
        sizes.append(rss_mb())
    assert sizes[-1] - sizes[4] < 10
