"""`corpus pdf` end to end on generated PDFs: exact reports, tasks, zips, the render process
with its time limit and its end with its worker, OCR text formatting and the config file."""
import hashlib
import multiprocessing
import os
import zipfile

import psutil
import pymupdf
import pytest

from corpus.config import load_config
from corpus.formats import OCR_PROMPT, format_sample, render
from corpus.inputs import InputFile, expand_inputs
from corpus.samples import pdf as samples
from corpus.shards import read_shard
from filters.pages import PageRulesConfig
import pipelines.pdf as pdf_pipeline
import renderers.pdf as renderers_pdf
from pipelines.pdf import (INPUT_EXTENSIONS, ListDocuments, PdfConfig, RenderDocuments,
                           RenderProcess, plan_pdf_tasks, run, run_demo)
from pipelines.sinks import Counts, RunSpec
from pipelines.tasks import RunTasks, TaskJob, plan_tasks
from renderers.pdf import DocumentPolicy, PageRequest, RenderOptions, VetRequest, send_request

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


def work_results(config, *paths):
    """What the work of a task yields for these input files, set up as a worker sets it up."""
    work = RenderDocuments(config, "unit")
    try:
        work.setup(0)
        return [item for path in paths
                for item in work(InputFile(str(path), os.path.basename(str(path))))]
    finally:
        work.close()


def without_counts(items):
    return [item for item in items if not isinstance(item, Counts)]


def still_running(pids):
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            continue
    return running


def record_render_processes(monkeypatch, pid_file):
    """Every render process started from now on, forked workers' included, noted in a file."""
    real_start = RenderProcess.start

    def start(self):
        real_start(self)
        with open(pid_file, "a") as f:
            f.write(f"{self.process.pid}\n")

    monkeypatch.setattr(RenderProcess, "start", start)


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


def test_a_task_per_document_keeps_the_count_and_the_page_order(tmp_path, beam_argv):
    write(tmp_path / "in" / "rotated.pdf", samples.rotated_pdf())
    write(tmp_path / "in" / "english.pdf", samples.english_pdf())
    config = PdfConfig(documents_per_task=1, isolate=False)
    report = run([str(tmp_path / "in")], str(tmp_path / "out"), "unit", config, beam_argv)
    assert (report["input"], report["kept"], report["dropped_total"]) == (5, 5, 0)
    assert [s["path"] for s in report["shards"]] == ["shards/ocr-00000-of-00002.tar",
                                                      "shards/ocr-00001-of-00002.tar"]
    pages = [(s.source.key, s.source.page) for s in kept_samples(str(tmp_path / "out"))]
    assert pages == [("english.pdf#page=1", 1), ("english.pdf#page=2", 2),
                     ("rotated.pdf#page=1", 1), ("rotated.pdf#page=2", 2),
                     ("rotated.pdf#page=3", 3)]


def test_the_same_bytes_whatever_the_workers_and_no_render_process_left(tmp_path, beam_argv,
                                                                         monkeypatch):
    """Tasks do not depend on the number of workers; the render processes of the run end with
    it, in this process (one worker) and in forked pool workers (two)."""
    write(tmp_path / "in" / "rotated.pdf", samples.rotated_pdf())
    write(tmp_path / "in" / "english.pdf", samples.english_pdf())
    write(tmp_path / "in" / "math.pdf", samples.math_pdf())
    pid_file = tmp_path / "render-processes"
    record_render_processes(monkeypatch, pid_file)
    outputs = []
    for name, argv in (("one", beam_argv), ("two", ["--workers=2"])):
        out = tmp_path / name
        run([str(tmp_path / "in")], str(out), "unit", PdfConfig(documents_per_task=2), argv)
        pids = [int(line) for line in pid_file.read_text().split()]
        assert pids and not still_running(pids)
        written = [f"{folder}/{n}" for folder in ("shards", "rejects")
                   if (out / folder).is_dir() for n in sorted(os.listdir(out / folder))]
        outputs.append({file: (out / file).read_bytes() for file in written})
    assert list(outputs[0]) == ["shards/ocr-00000-of-00002.tar", "shards/ocr-00001-of-00002.tar"]
    assert outputs[0] == outputs[1]


def test_a_worker_that_exits_ends_its_busy_render_process(tmp_path):
    """A forked pool worker leaves through os._exit, without atexit handlers: a render process
    still busy on a slow page when its worker ends is ended with it."""
    pid_file = tmp_path / "pid"
    data = slow_pdf()
    held = []  # as a pool worker's job holds its work: alive until the process ends

    def worker():
        process = RenderProcess()
        held.append(process)
        process.start()
        pid_file.write_text(str(process.process.pid))
        send_request(process.conn, PageRequest("sha", data, [0], RenderOptions(dpi=288)))

    child = multiprocessing.get_context("fork").Process(target=worker)
    child.start()
    child.join(120)
    assert child.exitcode == 0
    assert not still_running([int(pid_file.read_text())])


def test_tasks_are_a_zip_each_and_loose_pdfs_in_groups():
    # names only: none of these files exists, and none is opened
    files = [InputFile(f"/nowhere/{name}", name) for name in
             ("a.pdf", "b.pdf", "c.zip", "d.pdf", "e.PDF", "f.ZIP", "g.pdf")]
    tasks = plan_pdf_tasks(files, 2)
    assert [[f.relative for f in task.units] for task in tasks] == [
        ["a.pdf", "b.pdf"], ["c.zip"], ["d.pdf", "e.PDF"], ["f.ZIP"], ["g.pdf"]]
    assert [task.index for task in tasks] == [0, 1, 2, 3, 4]
    assert len(plan_pdf_tasks(files, 32)) == 3


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
    too_large, gone = work_results(PdfConfig(max_pdf_bytes=1000), big, tmp_path / "gone.pdf")
    assert (too_large.reason, too_large.status, too_large.key) == ("pdf_too_large", "errored",
                                                                   "big.pdf")
    assert (gone.reason, gone.key) == ("unreadable_input", "gone.pdf")
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


@pytest.mark.parametrize("isolate", [False, True])
def test_the_work_turns_problems_into_rejects_in_page_order(tmp_path, isolate):
    path = write(tmp_path / "rules.pdf", samples.rule_pages_pdf())
    config = PdfConfig(isolate=isolate, render=RenderOptions(max_page_pixels=400_000))
    *pages, counts = work_results(config, path)
    # 612x792 pt at 80 dpi is 680x880 = 598,400 px; the first page is a small one
    assert [(p.reason, p.status, p.key) for p in pages] == [
        ("image_too_small", "dropped", "rules.pdf#page=1")] + [
        ("page_too_large", "dropped", f"rules.pdf#page={n}") for n in range(2, 6)]
    assert counts == Counts({"rule_failures_any_order": {"image_too_small": 1}})


def test_an_unexpected_failure_costs_its_pdf_only(tmp_path, monkeypatch):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("one.pdf", samples.english_pdf())
        z.writestr("two.pdf", samples.math_pdf())
    real_sample = RenderDocuments._sample

    def failing_on_a_page(self, document, page):
        if document.doc.member == "one.pdf" and page.index == 1:
            raise ValueError("a bug")
        return real_sample(self, document, page)

    monkeypatch.setattr(RenderDocuments, "_sample", failing_on_a_page)
    items = without_counts(work_results(PdfConfig(isolate=False), archive))
    assert [(getattr(item, "reason", "kept"), getattr(item, "key", None) or item.source.key)
            for item in items] == [("kept", "a.zip#one.pdf#page=1"),
                                   ("ValueError", "a.zip#one.pdf"),
                                   ("kept", "a.zip#two.pdf#page=1")]
    assert (items[1].status, items[1].detail) == ("errored", "a bug")


def test_example_config_loads(tmp_path):
    config = load_config(PdfConfig, os.path.join(ROOT, "pipelines/configs/pdf.yaml"))
    assert config == PdfConfig()
    hires = load_config(PdfConfig, os.path.join(ROOT, "pipelines/configs/pdf.yaml"),
                        "cc-pdf-hires")
    assert hires.render.dpi == 144 and hires.rules == PageRulesConfig()


@pytest.mark.parametrize("isolate, expected_reads", [(False, 1), (True, 0)])
def test_a_pdf_is_read_once_for_all_its_pages(tmp_path, monkeypatch, isolate, expected_reads):
    """Without isolation the worker reads the PDF once, to vet and render it; isolated, the
    render process reads a local file itself to vet it and holds it open for every page."""
    path = write(tmp_path / "rotated.pdf", samples.rotated_pdf())
    reads = []
    real_read = pdf_pipeline.read_document
    monkeypatch.setattr(pdf_pipeline, "read_document", lambda *a: reads.append(a) or real_read(*a))
    pages = without_counts(work_results(PdfConfig(isolate=isolate), path))
    assert [p.source.page for p in pages] == [1, 2, 3] and len(reads) == expected_reads
    with open(path, "rb") as f:
        assert {p.source.sha256 for p in pages} == {hashlib.sha256(f.read()).hexdigest()}


@pytest.mark.parametrize("zipped", [False, True])
@pytest.mark.parametrize("changed", [False, True])
def test_after_a_page_over_the_time_limit_the_rest_of_the_pdf_renders(tmp_path, monkeypatch,
                                                                     zipped, changed):
    """The render process killed on a slow page is restarted and reads the PDF again (a local
    file itself, a zip member sent to it), so the next page renders; a PDF whose bytes no
    longer match the vetted hash by then is not rendered."""
    path = tmp_path / "docs.zip" if zipped else tmp_path / "doc.pdf"

    def put(data):
        if zipped:
            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("doc.pdf", data)
        else:
            write(path, data)

    put(slow_pdf())
    real_vet, real_start = RenderProcess.vet, RenderProcess.start

    def vet_then_change_on_restart(self, *args):
        result = real_vet(self, *args)
        monkeypatch.setattr(RenderProcess, "start", lambda process: (
            put(samples.math_pdf()), real_start(process)))
        return result

    if changed:
        monkeypatch.setattr(RenderProcess, "vet", vet_then_change_on_restart)
    config = PdfConfig(page_time_limit_s=0.5, render=RenderOptions(dpi=144))
    first, second = without_counts(work_results(config, path))
    prefix = "docs.zip#doc.pdf" if zipped else "doc.pdf"
    assert (first.reason, first.key) == ("render_timeout", f"{prefix}#page=1")
    if changed:
        assert (second.reason, second.key) == ("input_changed", f"{prefix}#page=2")
    else:
        assert "A quick page" in second.text and second.source.key == f"{prefix}#page=2"


def test_the_render_process_serves_every_task_of_a_step_and_ends_with_it(tmp_path):
    paths = [write(tmp_path / "math.pdf", samples.math_pdf()),
             write(tmp_path / "english.pdf", samples.english_pdf())]
    work = RenderDocuments(PdfConfig(), "unit")
    spec = RunSpec("pdf", "unit", "ocr", str(tmp_path / "out"), [])
    job = TaskJob([spec], work, 2, False)
    step = RunTasks(job, processes=1, close_after=True, work=work)
    started = []
    real_setup = work.setup

    def setup(worker):
        real_setup(worker)
        started.append(work.renderer.process)

    work.setup = setup
    tasks = plan_tasks([InputFile(path, os.path.basename(path)) for path in paths])
    summaries = list(step.process(tasks))
    assert len(summaries) == 2 and all(s.input > 0 for s in summaries)
    assert len(started) == 1  # one render process served both tasks
    assert work.renderer is None and started[0].poll() is not None


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
