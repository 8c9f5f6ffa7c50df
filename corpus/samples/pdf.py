"""Small PDFs made with PyMuPDF for the demo and the tests: English, Chinese, two columns,
rotated, cropped, math-like, a scanned page (image only, and with an invisible OCR layer), pages
that trip each A.4 rule, and bad files (encrypted, truncated, empty, zero pages, JavaScript,
embedded files, not a PDF), plus a zip holding some of them.

Text is placed at known positions, so tests can check that extracted boxes sit on the ink.
"""
from __future__ import annotations

import os
import zipfile

import pymupdf

LATIN_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
CJK_FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"

ENGLISH = ("The quick brown fox jumps over the lazy dog. Office workers find the final "
           "figures of the fiscal year in the shared report.")
CHINESE = ["中文文本渲染测试：每一行都有自己的位置。", "页面中的文字和边框应当对齐。"]
MATH = ["∫₀¹ x² dx = 1/3", "α + β ≤ γ", "∑ᵢ aᵢ bᵢ = ⟨a, b⟩", "f(x) = eˣ − 1"]


def _page(doc: pymupdf.Document, width: float = 612, height: float = 792) -> pymupdf.Page:
    page = doc.new_page(width=width, height=height)
    page.insert_font(fontname="dv", fontfile=LATIN_FONT)
    return page


def write_lines(page: pymupdf.Page, lines: list[str], origin=(72, 96), size: float = 14,
                fontname: str = "dv", leading: float = 1.6, render_mode: int = 0) -> None:
    x, y = origin
    for index, line in enumerate(lines):
        page.insert_text((x, y + index * size * leading), line, fontsize=size,
                         fontname=fontname, render_mode=render_mode)


def english_pdf() -> bytes:
    doc = pymupdf.open()
    for number in (1, 2):
        page = _page(doc)
        write_lines(page, [f"Page {number} of a short English report", "",
                           *_wrap(ENGLISH, 60),
                           "Ligatures drawn as one glyph: \ufb01nance, o\ufb03ce, \ufb02oor."])
    return doc.tobytes()


def chinese_pdf() -> bytes:
    doc = pymupdf.open()
    page = _page(doc)
    page.insert_font(fontname="cjk", fontfile=CJK_FONT)
    write_lines(page, CHINESE + ["Mixed 中文 and English text."], size=18, fontname="cjk")
    return doc.tobytes()


def two_column_pdf() -> bytes:
    doc = pymupdf.open()
    page = _page(doc)
    text = " ".join([ENGLISH] * 4)
    for left in (54, 318):
        page.insert_textbox(pymupdf.Rect(left, 72, left + 240, 720), text, fontsize=11,
                            fontname="dv")
    return doc.tobytes()


def rotated_pdf() -> bytes:
    doc = pymupdf.open()
    for rotation in (90, 180, 270):
        page = _page(doc)
        write_lines(page, [f"This page carries /Rotate {rotation}.", *_wrap(ENGLISH, 60)])
        page.set_rotation(rotation)
    return doc.tobytes()


def cropped_pdf() -> bytes:
    """CropBox inside the MediaBox, with text outside the crop that must not be labelled."""
    doc = pymupdf.open()
    page = _page(doc)
    write_lines(page, ["Outside the crop: never shown."], origin=(72, 40))
    write_lines(page, ["Inside the crop box.", *_wrap(ENGLISH, 50)], origin=(120, 200))
    page.set_cropbox(pymupdf.Rect(100, 150, 560, 700))
    return doc.tobytes()


def math_pdf() -> bytes:
    doc = pymupdf.open()
    page = _page(doc)
    write_lines(page, ["Some formulas:", *MATH], size=16)
    return doc.tobytes()


def scanned_pdf() -> bytes:
    """Page 1: a picture of text only (no text layer). Page 2: the same picture under an
    invisible OCR text layer, as scanners write it."""
    source = pymupdf.open()
    page = _page(source)
    write_lines(page, _wrap(ENGLISH, 50), size=16)
    picture = page.get_pixmap(dpi=100, colorspace=pymupdf.csGRAY).tobytes("png")
    doc = pymupdf.open()
    for with_ocr_layer in (False, True):
        scan = _page(doc)
        scan.insert_image(scan.rect, stream=picture)
        if with_ocr_layer:
            write_lines(scan, _wrap(ENGLISH, 50), size=16, render_mode=3)
    return doc.tobytes()


def rule_pages_pdf() -> bytes:
    """One page per A.4 rule: too small, too few characters, too many, Latin Extended, PUA."""
    doc = pymupdf.open()
    small = _page(doc, 100, 100)
    write_lines(small, ["tiny page text"], origin=(5, 20), size=8)
    _page(doc)  # blank
    dense = _page(doc)
    dense.insert_textbox(dense.rect + (10, 10, -10, -10), "dense text " * 1100, fontsize=4,
                         fontname="dv")
    latin = _page(doc)
    write_lines(latin, ["Łódź and Dvořák are written with Latin Extended-A letters."])
    pua = _page(doc)
    write_lines(pua, ["An icon font maps this glyph to the Private Use Area: A"], fontname="helv")
    _map_to_private_use(doc, pua)
    return doc.tobytes()


def _map_to_private_use(doc: pymupdf.Document, page: pymupdf.Page) -> None:
    """Give the page's Helvetica a ToUnicode map sending 'A' to U+E000, as icon fonts do."""
    cmap = (b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /PUA def "
            b"1 begincodespacerange <00> <FF> endcodespacerange "
            b"1 beginbfchar <41> <E000> endbfchar endcmap CMapName currentdict /CMap "
            b"defineresource pop end end")
    stream_xref = doc.get_new_xref()
    doc.update_object(stream_xref, "<<>>")
    doc.update_stream(stream_xref, cmap)
    for font in page.get_fonts():
        if font[3] == "Helvetica":
            doc.xref_set_key(font[0], "ToUnicode", f"{stream_xref} 0 R")


def encrypted_pdf() -> bytes:
    doc = pymupdf.open()
    write_lines(_page(doc), ["A secret page."])
    return doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="user", owner_pw="owner")


def truncated_pdf() -> bytes:
    data = english_pdf()
    return data[: len(data) // 2]


def zero_pages_pdf() -> bytes:
    """A well-formed PDF whose page tree is empty (PyMuPDF refuses to save one)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def javascript_pdf() -> bytes:
    doc = pymupdf.open()
    write_lines(_page(doc), ["This document runs a script when opened."])
    doc.xref_set_key(doc.pdf_catalog(), "OpenAction", "<< /S /JavaScript /JS (app.alert(1)) >>")
    return doc.tobytes()


def embedded_files_pdf() -> bytes:
    doc = pymupdf.open()
    write_lines(_page(doc), ["This portfolio carries an attachment."])
    doc.embfile_add("data.csv", b"a,b\n1,2\n")
    return doc.tobytes()


def _wrap(text: str, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return lines + ([current] if current else [])


GOOD = {"english.pdf": english_pdf, "chinese.pdf": chinese_pdf,
        "two-column.pdf": two_column_pdf, "rotated.pdf": rotated_pdf, "cropped.pdf": cropped_pdf,
        "math.pdf": math_pdf, "scanned.pdf": scanned_pdf, "rule-pages.pdf": rule_pages_pdf}
BAD = {"bad/encrypted.pdf": encrypted_pdf, "bad/truncated.pdf": truncated_pdf,
       "bad/empty.pdf": lambda: b"", "bad/zero-pages.pdf": zero_pages_pdf,
       "bad/javascript.pdf": javascript_pdf, "bad/embedded-files.pdf": embedded_files_pdf,
       "bad/not-a-pdf.pdf": lambda: b"<html>this is not a PDF</html>"}
ZIPPED = ["english.pdf", "chinese.pdf", "bad/truncated.pdf"]


def write_sample_pdfs(directory: str) -> list[str]:
    """Write every sample PDF and `archive.zip` (some of them again, as members) under
    `directory`; returns the paths written."""
    paths, made = [], {}
    for name, make in {**GOOD, **BAD}.items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        made[name] = make()
        with open(path, "wb") as f:
            f.write(made[name])
        paths.append(path)
    archive = os.path.join(directory, "archive.zip")
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in ZIPPED:
            z.writestr(f"crawl/{os.path.basename(name)}", made[name])
    return paths + [archive]
