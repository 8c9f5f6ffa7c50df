"""`corpus pdf` fed the worst inputs together in one run, beside a good two-page PDF.
`test_pdf_pipeline.py::test_demo_report_counts_every_page_and_document` runs every sample PDF
(the bad ones too) through the rules; other tests there cover oversized zip members, a page
over the time limit and one over the memory limit. This module puts the bad files of
`corpus.samples.pdf.BAD` (encrypted, truncated, 0-byte, zero pages, JavaScript, embedded files,
not a PDF) in one isolated run with what the demo lacks: a page too large to render, a PDF whose
cross-reference table points nowhere (repaired), a zip with `../` and absolute member names, a
0-byte and a truncated zip; and it measures the driver's and the render processes' memory."""
from __future__ import annotations

import zipfile

import pytest

from bad_input import check_rejects_match_report, kept_samples, reason_of, rejects_table, \
    run_measured
from corpus.samples import pdf as samples


def huge_page_pdf() -> bytes:
    import pymupdf
    doc = pymupdf.open()
    page = doc.new_page(width=14400, height=14400)  # 200 in square: 256 Mpx at 80 dpi
    page.insert_text((72, 72), "a page far too large to render", fontsize=12)
    return doc.tobytes()


def broken_xref_pdf() -> bytes:
    data = samples.english_pdf()
    at = data.rindex(b"startxref") + len(b"startxref\n")
    return data[:at] + b"999999999" + data[at:].split(b"\n", 1)[1].join([b"\n", b""]) \
        + b"\ntrailing garbage \x00\xff"


def write_inputs(folder) -> None:
    folder.mkdir()
    (folder / "good.pdf").write_bytes(samples.english_pdf())
    for name, make in samples.BAD.items():
        (folder / name.replace("bad/", "bad-")).write_bytes(make())
    (folder / "huge-page.pdf").write_bytes(huge_page_pdf())
    (folder / "broken-xref.pdf").write_bytes(broken_xref_pdf())
    with zipfile.ZipFile(folder / "names.zip", "w") as z:
        z.writestr("../escape.pdf", samples.math_pdf())
        z.writestr("/abs/olute.pdf", samples.math_pdf())
        z.writestr("dir/not-a-pdf.pdf", b"%PDF-1.7 and then nothing")
    (folder / "empty.zip").write_bytes(b"")
    data = (folder / "names.zip").read_bytes()
    (folder / "cut.zip").write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = tmp_path_factory.mktemp("pdf")
    write_inputs(root / "in")
    measured = run_measured("""
        from conftest import IN_MEMORY
        from pipelines import pdf
    """, f"""
        report = pdf.run([{str(root / "in")!r}], {str(root / "out")!r}, "bad", pdf.PdfConfig(),
                         IN_MEMORY)
    """, root)
    return root / "out", measured


def test_every_bad_input_is_counted_under_its_reason(outcome):
    report = outcome[1].report
    assert report["kept"] == 6  # good and broken-xref: 2 pages each; the 2 oddly named members
    assert report["dropped"] == {"zero_pages": 1, "javascript_pdf": 1, "embedded_files_pdf": 1,
                                 "page_too_large": 1}
    assert report["errored"] == {"corrupt_zip": 2, "empty_file": 1, "malformed_pdf": 1,
                                 "not_a_pdf": 1, "password_protected_pdf": 1,
                                 "truncated_pdf": 1}
    assert report["input"] == 6 + 4 + 7


def test_the_rejects_table_names_each_bad_input(outcome):
    out, measured = outcome
    rows = rejects_table(out)
    check_rejects_match_report(measured.report, rows)
    assert reason_of(rows) == {
        "bad-encrypted.pdf": "password_protected_pdf", "bad-truncated.pdf": "truncated_pdf",
        "bad-empty.pdf": "empty_file", "bad-zero-pages.pdf": "zero_pages",
        "bad-javascript.pdf": "javascript_pdf", "bad-embedded-files.pdf": "embedded_files_pdf",
        "bad-not-a-pdf.pdf": "not_a_pdf", "huge-page.pdf#page=1": "page_too_large",
        "names.zip#dir/not-a-pdf.pdf": "malformed_pdf", "empty.zip": "corrupt_zip",
        "cut.zip": "corrupt_zip"}


def test_odd_member_names_are_keys_and_broken_xrefs_are_repaired(outcome):
    out, measured = outcome
    kept = sorted(kept_samples(out, measured.report))
    assert kept == ["broken-xref.pdf#page=1", "broken-xref.pdf#page=2", "good.pdf#page=1",
                    "good.pdf#page=2", "names.zip#../escape.pdf#page=1",
                    "names.zip#/abs/olute.pdf#page=1"]
    # Zip members are read in memory, never extracted: nothing lands beside the inputs.
    assert not (out.parent / "escape.pdf").exists()


def test_memory_stays_bounded(outcome):
    # Measured: the driver grows by ~55 MiB, a render process peaks near 220 MiB (each runs
    # under the 4 GiB address-space cap of memory_limit_mb); rendering the 256 Mpx page would
    # take 768 MiB.
    assert outcome[1].growth_mib < 150, outcome[1]
    assert outcome[1].children_mib < 500, outcome[1]
