"""`corpus pdf` end to end on generated PDFs: exact reports, fan-out, zips, the render process
with its time limit, OCR text formatting and the config file."""
import hashlib
import os
import zipfile

import pymupdf
import pytest

from corpus.config import load_config
from corpus.formats import OCR_PROMPT, format_sample, render
from corpus.inputs import expand_inputs
from corpus.samples import pdf as samples
from corpus.shards import read_shard
from filters.pages import PageRulesConfig
import pipelines.pdf as pdf_pipeline
import renderers.pdf as renderers_pdf
from pipelines.pdf import (INPUT_EXTENSIONS, DocumentRef, ListDocuments, PdfConfig, PlanPageRanges,
                           RenderPages, RenderProcess, run, run_demo)
from renderers.pdf import DocumentPolicy, PageRequest, RenderOptions, VetRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def pdf_inputs(patterns: list[str]):
    return expand_inputs(patterns, INPUT_EXTENSIONS)

def kept_samples(output_dir):
    shards = sorted(os.listdir(os.path.join(output_dir, "shards")))
    return [s for name in shards for s in read_shard(os.path.join(output_dir, "shards", name))]


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def test_demo_report_counts_every_page_and_document(tmp_path, beam_argv):
    report = run_demo(str(tmp_path), beam_argv)
    # pages: english 2 (+2 in the zip), chinese 1 (+1), two-column 1, rotated 3, cropped 1,
    # math 1, scanned 2, rule pages 5 = 19; unreadable or refused documents: 8 (one in the zip)
    assert report["input"] == 27
    assert report["kept"] == 13
    assert report["dropped"] == {"zero_pages": 1, "javascript_pdf": 1, "embedded_files_pdf": 1,
                                 "image_too_small": 1, "too_few_characters": 2,
                                 "too_many_characters": 1, "latin_extended": 1,
                                 "private_use_area": 1}
    assert report["errored"] == {"empty_file": 1, "not_a_pdf": 1, "password_protected_pdf": 1,
                                 "truncated_pdf": 2}
    assert report["stats"]["rule_failures_any_order"] == {
        "image_too_small": 1, "too_few_characters": 2, "too_many_characters": 1,
        "latin_extended": 1, "private_use_area": 1}
    kept = kept_samples(str(tmp_path))
    assert len(kept) == 13
    uris = {s.source.uri for s in kept}
    assert any(u.endswith("archive.zip#crawl/english.pdf") for u in uris)


def test_samples_carry_source_geometry_and_ocr_text(tmp_path, beam_argv):
    data = samples.english_pdf()
    report = run([write(tmp_path / "in" / "doc.pdf", data)], str(tmp_path / "out"), "unit",
                 PdfConfig(isolate=False), beam_argv)
    assert (report["input"], report["kept"]) == (2, 2)
    first = min(kept_samples(str(tmp_path / "out")), key=lambda s: s.source.page)
    assert first.task == "ocr" and first.source.page == 1
    assert first.source.key == "doc.pdf#page=1"
    assert first.source.sha256 == hashlib.sha256(data).hexdigest()
    assert first.images[0].format == "jpeg" and first.images[0].width == 680
    lines = [r for r in first.regions if r.kind == "line"]
    words = [r for r in first.regions if r.kind == "word"]
    assert lines[0].text == "Page 1 of a short English report"
    assert len(words) == sum(len(line.text.split()) for line in lines)
    assert "finance, office, floor." in first.text
    text = render(format_sample(first))
    assert f"{OCR_PROMPT} <ref>Page 1 of a short English report</ref> <quad>(" in text
    assert text.count("<quad>") == len(lines)


def test_fan_out_into_single_page_ranges_keeps_the_count(tmp_path, beam_argv):
    write(tmp_path / "in" / "rotated.pdf", samples.rotated_pdf())
    write(tmp_path / "in" / "english.pdf", samples.english_pdf())
    config = PdfConfig(pages_per_range=1, isolate=False)
    report = run([str(tmp_path / "in")], str(tmp_path / "out"), "unit", config, beam_argv)
    assert (report["input"], report["kept"], report["dropped_total"]) == (5, 5, 0)
    pages = sorted((s.source.key, s.source.page) for s in kept_samples(str(tmp_path / "out")))
    assert pages[0] == ("english.pdf#page=1", 1) and pages[-1] == ("rotated.pdf#page=3", 3)


def test_reruns_give_byte_identical_shards_whatever_the_range_size(tmp_path, beam_argv):
    write(tmp_path / "in" / "rotated.pdf", samples.rotated_pdf())
    shards = []
    for run_name, per_range in (("a", 1), ("b", 8)):
        out = tmp_path / run_name
        run([str(tmp_path / "in")], str(out), "unit",
            PdfConfig(pages_per_range=per_range, isolate=False), beam_argv)
        shards.append((out / "shards" / "ocr-00000-of-00001.tar").read_bytes())
    assert shards[0] == shards[1]


def test_plan_page_ranges(tmp_path):
    path = write(tmp_path / "r.pdf", samples.rotated_pdf())
    ranges = PlanPageRanges(PdfConfig(pages_per_range=2), "unit")(DocumentRef(path, "r.pdf"))
    assert [r.pages for r in ranges] == [(0, 1), (2,)]
    assert {r.page_count for r in ranges} == {3}
    assert ranges[1].key == "r.pdf#pages=3-3"


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zip_members_are_listed_and_bad_archives_rejected(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("x/one.pdf", samples.math_pdf())
        z.writestr("x/", b"")
    refs = ListDocuments("unit")(pdf_inputs([str(archive)])[0])
    assert [(r.member, r.key) for r in refs] == [("x/one.pdf", "a.zip#x/one.pdf")]
    with zipfile.ZipFile(tmp_path / "twice.zip", "w") as z:
        z.writestr("same.pdf", samples.math_pdf())
        z.writestr("same.pdf", samples.math_pdf())
    first, second = ListDocuments("unit")(pdf_inputs([str(tmp_path / "twice.zip")])[0])
    assert first.member == "same.pdf" and second.reason == "duplicate_zip_member"
    broken = write(tmp_path / "broken.zip", b"PK\x03\x04 not really a zip")
    [reject] = ListDocuments("unit")(pdf_inputs([broken])[0])
    assert (reject.reason, reject.status) == ("corrupt_zip", "errored")


def test_oversized_members_are_not_read(tmp_path, beam_argv):
    archive = tmp_path / "in" / "a.zip"
    os.makedirs(archive.parent)
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("big.pdf", samples.english_pdf())
    report = run([str(archive)], str(tmp_path / "out"), "unit",
                 PdfConfig(max_pdf_bytes=1000, isolate=False), beam_argv)
    assert report["errored"] == {"pdf_too_large": 1} and report["input"] == 1


def test_local_files_too_large_or_gone_are_refused_by_the_render_process(tmp_path, monkeypatch):
    big = write(tmp_path / "big.pdf", samples.english_pdf())
    plan = PlanPageRanges(PdfConfig(max_pdf_bytes=1000), "unit")
    [reject] = plan(DocumentRef(big, "big.pdf"))
    assert (reject.reason, reject.status) == ("pdf_too_large", "errored")
    [reject] = plan(DocumentRef(str(tmp_path / "gone.pdf"), "gone.pdf"))
    assert reject.reason == "unreadable_input"
    monkeypatch.setattr(renderers_pdf, "READ_CHUNK_BYTES", 7)  # read in many chunks
    with open(big, "rb") as f:
        assert renderers_pdf.read_pdf_file(big, 1 << 20) == f.read()


def test_expand_inputs_files_folders_and_globs(tmp_path):
    write(tmp_path / "a" / "one.pdf", b"%PDF-")
    write(tmp_path / "a" / "deep" / "two.PDF", b"%PDF-")
    write(tmp_path / "a" / "notes.txt", b"not an input")
    folder = [f.relative for f in pdf_inputs([str(tmp_path / "a")])]
    assert folder == ["deep/two.PDF", "one.pdf"]
    assert [f.relative for f in pdf_inputs([str(tmp_path / "a") + "/"])] == folder
    assert [f.relative for f in pdf_inputs([str(tmp_path / "a" / "*.pdf")])] == ["one.pdf"]
    with pytest.raises(FileNotFoundError):
        pdf_inputs([str(tmp_path / "nothing*.pdf")])


def slow_pdf() -> bytes:
    """Page 1 draws a great many vectors (seconds to render); page 2 is ordinary."""
    doc = pymupdf.open()
    heavy = doc.new_page()
    shape = heavy.new_shape()
    for i in range(5000):
        shape.draw_line((i % 600, (i * 7) % 800), ((i * 13) % 600, (i * 3) % 800))
    shape.finish(width=0.3)
    shape.commit()
    light = doc.new_page()
    light.insert_text((72, 72), "A quick page after a slow one.", fontsize=14)
    return doc.tobytes()


def test_a_page_over_the_time_limit_is_ended_and_the_rest_renders():
    data = slow_pdf()
    worker = RenderProcess()
    try:
        request = PageRequest("sha", None, [0, 1], RenderOptions(dpi=144))
        results = list(worker.render(request, lambda: data, time_limit=0.3))
    finally:
        worker.stop()
    assert [index for index, _ in results] == [0, 1]
    assert results[0][1].reason == "render_timeout"
    assert "A quick page" in results[1][1].text


def test_isolated_rendering_in_the_pipeline(tmp_path, beam_argv):
    write(tmp_path / "in" / "math.pdf", samples.math_pdf())
    report = run([str(tmp_path / "in")], str(tmp_path / "out"), "unit", PdfConfig(), beam_argv)
    assert (report["input"], report["kept"]) == (1, 1)


def test_render_pages_step_turns_problems_into_rejects(tmp_path):
    path = write(tmp_path / "rules.pdf", samples.rule_pages_pdf())
    config = PdfConfig(isolate=False, render=RenderOptions(max_page_pixels=400_000))
    [page_range] = PlanPageRanges(config, "unit")(DocumentRef(path, "rules.pdf"))
    results = RenderPages(config, "unit")(page_range)
    assert len(results) == 5
    dense = results[2]  # 612x792 pt at 80 dpi is 680x880 = 598,400 px
    assert (dense.reason, dense.key) == ("page_too_large", "rules.pdf#page=3")


def test_example_config_loads(tmp_path):
    config = load_config(PdfConfig, os.path.join(ROOT, "pipelines/configs/pdf.yaml"))
    assert config == PdfConfig()
    hires = load_config(PdfConfig, os.path.join(ROOT, "pipelines/configs/pdf.yaml"),
                        "cc-pdf-hires")
    assert hires.render.dpi == 144 and hires.rules == PageRulesConfig()


@pytest.mark.parametrize("isolate, expected_reads", [(False, 2), (True, 0)])
def test_consecutive_ranges_of_one_pdf_read_it_once(tmp_path, monkeypatch, isolate,
                                                    expected_reads):
    """Without isolation the PDF is read to plan and once more for all its ranges; isolated,
    the render process reads a local file itself to vet it and holds it open for the ranges."""
    path = write(tmp_path / "rotated.pdf", samples.rotated_pdf())
    reads = []
    real_read = pdf_pipeline.read_document
    monkeypatch.setattr(pdf_pipeline, "read_document", lambda *a: reads.append(a) or real_read(*a))
    config = PdfConfig(pages_per_range=1, isolate=isolate)
    ranges = PlanPageRanges(config, "unit")(DocumentRef(path, "rotated.pdf"))
    step = RenderPages(config, "unit")
    pages = [result for page_range in ranges for result in step(page_range)]
    assert [p.source.page for p in pages] == [1, 2, 3] and len(reads) == expected_reads


def test_ranges_rendered_after_another_pdf_was_vetted_read_it_again(tmp_path):
    rotated = write(tmp_path / "rotated.pdf", samples.rotated_pdf())
    english = write(tmp_path / "english.pdf", samples.english_pdf())
    config = PdfConfig(pages_per_range=2)
    plan, render = PlanPageRanges(config, "unit"), RenderPages(config, "unit")
    first, second = plan(DocumentRef(rotated, "rotated.pdf"))
    plan(DocumentRef(english, "english.pdf"))  # the render process now holds this one
    pages = render(first) + render(second)
    assert [p.source.page for p in pages] == [1, 2, 3]
    with open(rotated, "rb") as f:
        assert {p.source.sha256 for p in pages} == {hashlib.sha256(f.read()).hexdigest()}


@pytest.mark.parametrize("zipped", [False, True])
def test_a_file_changed_after_planning_is_refused_by_the_render_process(tmp_path, zipped):
    """The render process reads a local file again itself, a zip member is sent to it: either
    way a PDF whose bytes no longer match the planned hash is not rendered."""
    path = tmp_path / "docs.zip" if zipped else tmp_path / "doc.pdf"
    doc = (DocumentRef(str(path), "docs.zip", "doc.pdf") if zipped
           else DocumentRef(str(path), "doc.pdf"))

    def put(data):
        if zipped:
            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("doc.pdf", data)
        else:
            write(path, data)

    put(samples.english_pdf())
    config = PdfConfig()
    [page_range] = PlanPageRanges(config, "unit")(doc)
    PlanPageRanges(config, "unit")(DocumentRef(write(tmp_path / "other.pdf",
                                                     samples.math_pdf()), "other.pdf"))
    put(samples.math_pdf())
    rejects = RenderPages(config, "unit")(page_range)
    assert [r.reason for r in rejects] == ["input_changed", "input_changed"]


def test_render_processes_are_shared_and_one_per_concurrent_caller():
    pool = pdf_pipeline.RenderProcesses()
    with pool.borrow(0) as first:
        with pool.borrow(0) as second:
            assert first is not second
    first.held_sha = "a"
    with pool.borrow(0, "a") as again:
        assert again is first
    with pool.borrow(700) as other:
        assert other not in (first, second)
    assert len(pool.started) == 3


def test_a_file_changed_after_planning_is_refused(tmp_path):
    path = write(tmp_path / "doc.pdf", samples.english_pdf())
    config = PdfConfig(isolate=False)
    [page_range] = PlanPageRanges(config, "unit")(DocumentRef(path, "doc.pdf"))
    write(tmp_path / "doc.pdf", samples.math_pdf())
    rejects = RenderPages(config, "unit")(page_range)
    assert [r.reason for r in rejects] == ["input_changed", "input_changed"]


def test_vetting_in_the_render_process():
    worker = RenderProcess()
    try:
        data = samples.rotated_pdf()
        assert worker.vet(VetRequest(data, DocumentPolicy()), 30) == (
            3, hashlib.sha256(data).hexdigest())
        problem = worker.vet(VetRequest(samples.javascript_pdf(), DocumentPolicy()), 30)
        assert problem.reason == "javascript_pdf"
        worker.process.kill()  # a process that died between requests
        worker.process.wait()
        crashed = worker.vet(VetRequest(samples.math_pdf(), DocumentPolicy()), 30)
        assert crashed.reason == "open_crashed" and worker.process is None
        assert worker.vet(VetRequest(samples.math_pdf(), DocumentPolicy()), 30).page_count == 1
    finally:
        worker.stop()


def test_command_line(tmp_path, beam_argv, capsys):
    from corpus.cli import main

    write(tmp_path / "in" / "math.pdf", samples.math_pdf())
    write(tmp_path / "in" / "bad" / "empty.pdf", b"")
    out = tmp_path / "out"
    assert main(["pdf", "--input", str(tmp_path / "in"), "--output", str(out), "--dataset", "cli",
                 "--dpi", "72", "--image-format", "png", *beam_argv]) == 0
    printed = capsys.readouterr().out
    assert "pdf cli: input 2, kept 1, dropped 0, errored 1" in printed
    assert "errored empty_file: 1" in printed
    [sample] = kept_samples(str(out))
    assert (sample.images[0].format, sample.images[0].width) == ("png", 612)


def test_a_page_over_the_memory_limit_is_refused_and_the_process_goes_on():
    worker = RenderProcess(memory_limit_mb=700)  # an idle render process takes ~400 MB
    data = samples.math_pdf()
    huge = RenderOptions(dpi=1000, max_page_pixels=10**9)  # a 280 MB pixmap
    try:
        [(_, problem)] = worker.render(PageRequest("m", None, [0], huge), lambda: data, 60)
        [(_, page)] = worker.render(PageRequest("m", None, [0], RenderOptions()), lambda: data, 60)
    finally:
        worker.stop()
    assert problem.reason == "out_of_memory"
    assert page.image.width == 680
