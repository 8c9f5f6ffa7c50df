"""`corpus pdf`: PDF pages -> OCR samples with word and line boxes (Appendix A.4).

A task per few input files, done whole by one process (`pipelines.tasks`):

  files, folders, zips ─> tasks ─> per file: its PDFs (a zip's members, from its central
  directory) ─> per PDF, in one render process: read, hash, vet, render every page in order
  ─> A.4 page rules (filters/pages.py) ─> the task's shards, rejects and marker

Tasks are formed from the names of the expanded inputs alone: the machine that launches a run
opens no PDF. A zip (Common Crawl's PDF corpus comes in zips of a thousand PDFs) is a task of its
own; loose PDFs go `documents_per_task` (32) to a task, in key order: at ten pages a PDF, a
shard of about 300 pages, and for a hundred thousand PDFs some three thousand tasks. The grouping
depends on the inputs and the config only, never on the number of workers, so any runner and
worker count write the same shards.

One render process renders a PDF from its first page to its last, so the PDF is read, opened and
its fonts and images loaded once. The pages of one PDF do not spread over workers: a 1000-page
PDF pins one process for some seconds (6-15 s at the benchmark's 6-15 ms a page), which is
acceptable while other tasks keep the other workers busy. Input is counted in pages; a PDF that
cannot be read at all is one errored unit with its reason.

PDFs are read (local files), hashed, vetted and rendered in render processes (`isolate: true`):
MuPDF holds the GIL and cannot be interrupted from Python, so a PDF or page past
`page_time_limit_s` (or one that crashes MuPDF) is ended by killing that process, which is then
restarted for the rest of the PDF, reading it again (a changed file is refused: `input_changed`).
Each worker process has one render process, started in `setup` and kept across its tasks (a
start costs about 0.7 CPU seconds, the rendering of some 50 pages), stopped when the step ends
(`close`, for the tasks run in this process) or when the worker process exits (a forked pool
worker leaves without running atexit handlers: a multiprocessing finalizer stops it).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import multiprocessing.util
import os
import select
import socket
import subprocess
import sys
import weakref
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator
from multiprocessing.connection import Connection

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from corpus.config import to_mapping
from corpus.ids import sample_id
from corpus.inputs import InputFile, find_inputs
from corpus.schema import Region, Sample, Source
from filters.base import Reject, rule_name, set_up
from filters.pages import PDF_REASON_ORDER, PageRulesConfig, pdf_page_rules
from pipelines.common import add_common_arguments, load_pipeline_config, print_summary, run_pipeline
from pipelines.run_record import RunRecord, file_inputs, task_files
from pipelines.sinks import Counts, RunSpec, collector_paused
from pipelines.tasks import Task, run_tasks, unread_tasks
from renderers.pdf import (DOCUMENT_REASONS, PAGE_REASONS, READY, DocumentPolicy, PageRequest,
                           PdfProblem, RenderedPage, RenderOptions, VetRequest, Vetted, let_go,
                           open_pdf, read_at_most, receive_result, render_pages, send_request)

log = logging.getLogger(__name__)

PIPELINE = "pdf"
TASK = "ocr"
INPUT_REASONS = ["corrupt_zip", "encrypted_zip_member", "duplicate_zip_member", "pdf_too_large",
                 "unreadable_input", "input_changed"]
RENDER_PROCESS_MAIN = ("import sys; from renderers.pdf import serve_socket; "
                       "serve_socket(int(sys.argv[1]), int(sys.argv[2]))")
STARTUP_LIMIT_S = 120  # spawning the render process and importing PyMuPDF, on a busy machine
REASON_ORDER = DOCUMENT_REASONS + INPUT_REASONS + PAGE_REASONS + PDF_REASON_ORDER
FAILURES = "rule_failures_any_order"  # the report's stat, and its key in the tasks' counts


@dataclass
class PdfConfig:
    render: RenderOptions = field(default_factory=RenderOptions)
    documents: DocumentPolicy = field(default_factory=DocumentPolicy)
    rules: PageRulesConfig = field(default_factory=PageRulesConfig)
    documents_per_task: int = 32  # loose PDFs per task (a zip is a task of its own)
    page_time_limit_s: float = 30.0  # per page (and per PDF vetting): render + extract + encode
    max_pdf_bytes: int = 256 * 1024 * 1024  # larger files (or zip members) are not read
    isolate: bool = True  # vet and render in child processes; needed for the time limit
    memory_limit_mb: int = 4096  # address-space cap of each child process; 0: none

    def validate(self) -> None:
        self.render.validate()
        self.rules.validate()
        if self.memory_limit_mb < 0:
            raise ValueError("memory_limit_mb must be 0 (no limit) or positive")
        if self.documents_per_task < 1 or self.page_time_limit_s <= 0 or self.max_pdf_bytes < 1:
            raise ValueError("documents_per_task, page_time_limit_s and max_pdf_bytes must be "
                             "positive")


# ---- inputs -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DocumentRef:
    uri: str  # the file; for a zip member, the zip
    rel: str
    member: str | None = None  # name inside the zip

    @property
    def key(self) -> str:
        return self.rel if self.member is None else f"{self.rel}#{self.member}"

    @property
    def pdf_uri(self) -> str:
        return self.uri if self.member is None else f"{self.uri}#{self.member}"


@dataclass(frozen=True)
class VettedDocument:
    """A PDF that passed vetting: its bytes' sha256 and its page count."""

    doc: DocumentRef
    sha256: str
    page_count: int

    @property
    def uri(self) -> str:
        return self.doc.pdf_uri

    def page_key(self, index: int) -> str:
        return f"{self.doc.key}#page={index + 1}"


INPUT_EXTENSIONS = (".pdf", ".zip")


def is_zip(file: InputFile) -> bool:
    return file.path.lower().endswith(".zip")


def plan_pdf_tasks(files: list[InputFile], documents_per_task: int) -> list[Task]:
    """Each zip a task of its own, the loose PDFs `documents_per_task` to a task; tasks in the
    order of their first file's key. Only names are looked at: no file is opened."""
    loose = [file for file in files if not is_zip(file)]
    groups = [loose[start:start + documents_per_task]
              for start in range(0, len(loose), documents_per_task)]
    groups += [[file] for file in files if is_zip(file)]
    groups.sort(key=lambda group: group[0].relative)
    return [Task(index, tuple(group)) for index, group in enumerate(groups)]


def _open_file(uri: str):
    return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)


def _reject(dataset: str, uri: str, key: str, problem: PdfProblem) -> Reject:
    return Reject(sample_id(dataset, key), dataset, uri, key, problem.reason, problem.status,
                  problem.detail)


class ListDocuments:
    """An input file -> the PDFs in it: itself, or every file member of a zip (read from its
    central directory; members are streamed later, one at a time)."""

    def __init__(self, dataset: str):
        self.dataset = dataset

    def __call__(self, item: InputFile) -> list[DocumentRef | Reject]:
        if not is_zip(item):
            return [DocumentRef(item.path, item.relative)]
        try:
            with _open_file(item.path) as f, zipfile.ZipFile(f) as archive:
                names = [i.filename for i in archive.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            return [_reject(self.dataset, item.path, item.relative,
                            PdfProblem("corrupt_zip", "errored", str(error)[:300]))]
        results, seen = [], set()
        for name in names:
            ref = DocumentRef(item.path, item.relative, name)
            if name in seen:  # only the last of equal names can be read back
                results.append(_reject(self.dataset, ref.pdf_uri, f"{ref.key}#duplicate",
                                       PdfProblem("duplicate_zip_member", "errored",
                                                  f"{name} appears more than once")))
                continue
            seen.add(name)
            results.append(ref)
        return results


def read_document(doc: DocumentRef, max_bytes: int) -> bytes:
    """The bytes of one PDF, from a file or streamed out of its zip; raises PdfProblem."""
    try:
        with _open_file(doc.uri) as f:
            if doc.member is None:
                data = read_at_most(f, max_bytes + 1)
            else:
                with zipfile.ZipFile(f) as archive:
                    info = archive.getinfo(doc.member)
                    if info.flag_bits & 0x1:
                        raise PdfProblem("encrypted_zip_member", "errored",
                                         f"{doc.member} is encrypted in the zip")
                    if info.file_size > max_bytes:
                        raise PdfProblem("pdf_too_large", "errored", f"{info.file_size} bytes")
                    with archive.open(info) as member:
                        data = read_at_most(member, max_bytes + 1)
    except (zipfile.BadZipFile, KeyError, EOFError, zlib.error, NotImplementedError) as error:
        # NotImplementedError: a compression method zipfile cannot read (Deflate64, …)
        raise PdfProblem("corrupt_zip", "errored", str(error)[:300]) from error
    except OSError as error:
        raise PdfProblem("unreadable_input", "errored", str(error)[:300]) from error
    if len(data) > max_bytes:
        raise PdfProblem("pdf_too_large", "errored", f"over {max_bytes} bytes")
    return data


def local_path(doc: DocumentRef) -> str | None:
    """The path of a PDF that the render process can read itself: a plain local file (not a
    zip member, not a remote URI)."""
    return doc.uri if doc.member is None and FileSystems.get_scheme(doc.uri) is None else None


# ---- the render process ----------------------------------------------------------------------

_LIVE = weakref.WeakSet()  # the render processes this process may still have running
_stops_at_exit_of: int | None = None  # the process whose exit stops them


def _stop_at_exit(process: RenderProcess) -> None:
    """Have `process` stopped, if still running, when this process exits. A multiprocessing
    finalizer rather than atexit: a forked pool worker leaves through `os._exit`, after running
    multiprocessing's finalizers but no atexit handler (a main process runs both)."""
    global _stops_at_exit_of
    _LIVE.add(process)
    if _stops_at_exit_of != os.getpid():  # a forked worker starts without its parent's finalizers
        multiprocessing.util.Finalize(None, _stop_live, exitpriority=10)
        _stops_at_exit_of = os.getpid()


def _stop_live() -> None:
    for process in list(_LIVE):
        process.stop()


class RenderProcess:
    """A child process running renderers.pdf.serve, talking over a socket pair; killed and
    restarted when a page overruns the time limit or crashes it. A plain subprocess rather than
    multiprocessing: spawn would re-import the caller's __main__, fork would copy a Beam worker's
    threads."""

    def __init__(self, memory_limit_mb: int = 0):
        self.memory_limit_mb = memory_limit_mb
        self.process = self.conn = self.poller = None
        self.held_sha = None
        self.owner = None  # the process that started it: only that one can end it

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.process = subprocess.Popen(
            [sys.executable, "-c", RENDER_PROCESS_MAIN, str(theirs.fileno()),
             str(self.memory_limit_mb)],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self.owner = os.getpid()
        _stop_at_exit(self)
        self.conn = Connection(ours.detach())
        # one poll object for the life of the process: Connection.poll builds a selector per call
        self.poller = select.poll()
        self.poller.register(self.conn.fileno(), select.POLLIN)
        self.held_sha = None
        if not self._ready(STARTUP_LIMIT_S) or self.conn.recv() != READY:
            self.stop()
            raise RuntimeError(f"the render process did not start within {STARTUP_LIMIT_S} s")

    def stop(self) -> None:
        if self.process is not None:
            if self.owner == os.getpid():  # a copy inherited by a forked worker only lets go
                self.process.kill()
                self.process.wait()
            self.conn.close()
        self.process = self.conn = self.poller = None

    def _ready(self, time_limit: float) -> bool:
        """Whether an answer (or the end of the process) arrives within `time_limit` seconds."""
        return bool(self.poller.poll(math.ceil(time_limit * 1000)))

    def __del__(self):
        try:
            self.stop()
        except (OSError, AttributeError, TypeError):  # interpreter shutdown
            pass

    def vet(self, request: VetRequest, time_limit: float) -> Vetted | PdfProblem:
        """The page count and sha256 of a PDF, or why it is refused; reading and opening it
        also have a time limit, and a PDF that crashes MuPDF while opening costs only itself."""
        if self.process is None:
            self.start()
        self.held_sha = None
        try:
            send_request(self.conn, request)
            if not self._ready(time_limit):
                self.stop()
                return PdfProblem("open_timeout", "errored", f"over {time_limit} s")
            result = receive_result(self.conn)
        except (EOFError, OSError) as error:  # BrokenPipeError is an OSError
            self.stop()
            return PdfProblem("open_crashed", "errored", str(error) or "the process died")
        if isinstance(result, Vetted):
            self.held_sha = result.sha256  # the process keeps the vetted PDF open
        return result

    def render(self, request: PageRequest, load: Callable[[], bytes], time_limit: float):
        """Yield (page index, RenderedPage | PdfProblem) for every requested page, in order.
        `load()` gives the PDF's bytes (None: the process reads `request.path` itself); it is
        called only when the process does not hold that PDF open already (the one it vetted),
        so only after a restart."""
        remaining = list(request.pages)
        while remaining:
            if self.process is None:
                self.start()
            request.pages = remaining
            try:
                request.data = None if self.held_sha == request.sha256 else load()
            except PdfProblem as problem:
                for index in remaining:
                    yield index, problem
                return
            try:
                send_request(self.conn, request)
            except (BrokenPipeError, OSError) as error:  # the process died: fail this page
                self.stop()
                yield remaining.pop(0), PdfProblem("render_crashed", "errored", str(error))
                continue
            self.held_sha = request.sha256
            finished = False
            try:
                while remaining:
                    index = remaining[0]
                    if not self._ready(time_limit):
                        self.stop()
                        remaining.pop(0)
                        yield index, PdfProblem("render_timeout", "errored",
                                                f"over {time_limit} s")
                        break
                    try:
                        result = receive_result(self.conn)
                    except (EOFError, OSError):
                        self.stop()
                        remaining.pop(0)
                        yield index, PdfProblem("render_crashed", "errored",
                                                "the render process died")
                        break
                    remaining.pop(0)
                    if isinstance(result, PdfProblem) and (
                            result.reason not in PAGE_REASONS or result.reason == "out_of_memory"):
                        self.held_sha = None  # it may not have opened the PDF: send it again
                    yield index, result
                finished = True
            finally:
                if not finished and self.process is not None and remaining:
                    self.stop()  # abandoned midway: its unread results must not leak


# ---- the work of a task ------------------------------------------------------------------------

class RenderDocuments:
    """The work of a PDF task: an input file -> its PDFs -> for each, a sample or a reject per
    page in page order (or one reject for a PDF refused whole), and `Counts` of the pages failing
    each A.4 rule. A PDF is vetted and rendered start to end by one render process, which keeps
    it open in between. An unexpected failure costs the PDF it happened in, not its zip."""

    def __init__(self, config: PdfConfig, dataset: str):
        self.config, self.dataset = config, dataset
        self.rules = pdf_page_rules(config.rules)
        self.list_documents = ListDocuments(dataset)
        self.renderer: RenderProcess | None = None

    def setup(self, worker: int) -> None:
        set_up(self.rules)
        if self.renderer is not None and self.renderer.owner != os.getpid():
            self.close()  # a forked copy of the parent's: only let go of it
        if self.config.isolate and self._render_process().process is None:
            try:
                self.renderer.start()
            except RuntimeError as error:  # each PDF tries again, and is refused if it fails
                log.warning("worker %d: %s", worker, error)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.stop()
            self.renderer = None

    def _render_process(self) -> RenderProcess:
        if self.renderer is None:
            self.renderer = RenderProcess(self.config.memory_limit_mb)
        return self.renderer

    def __call__(self, file: InputFile) -> Iterator[Sample | Reject | Counts]:
        for doc in self.list_documents(file):
            if isinstance(doc, Reject):
                yield doc
            else:
                yield from self._document(doc)

    def _document(self, doc: DocumentRef) -> Iterator[Sample | Reject | Counts]:
        failures: Counter = Counter()
        try:
            # a PDF's pages and their regions are built and kept by the hundred: collections
            # walking every object of the worker meanwhile cost a tenth of its time per page
            with collector_paused():
                yield from self._pages(doc, failures)
        except Exception as error:  # the dead letter of one PDF: its pages so far stay counted
            yield _reject(self.dataset, doc.pdf_uri, doc.key,
                          PdfProblem(type(error).__name__, "errored", str(error)[:1000]))
        if failures:
            yield Counts({FAILURES: dict(failures)})

    def _pages(self, doc: DocumentRef, failures: Counter) -> Iterator[Sample | Reject]:
        try:
            document, rendered = self._open(doc)
        except PdfProblem as problem:
            yield _reject(self.dataset, doc.pdf_uri, doc.key, problem)
            return
        for index, result in rendered:
            if isinstance(result, PdfProblem):
                yield _reject(self.dataset, document.uri, document.page_key(index), result)
            else:
                yield self._checked(self._sample(document, result), failures)

    def _open(self, doc: DocumentRef):
        """(the vetted PDF, its pages as (index, RenderedPage | PdfProblem) in order); raises
        PdfProblem for a PDF refused whole."""
        if not self.config.isolate:
            data = read_document(doc, self.config.max_pdf_bytes)
            opened = open_pdf(data, self.config.documents)
            document = VettedDocument(doc, hashlib.sha256(data).hexdigest(), opened.page_count)
            return document, self._render_here(opened)
        path = local_path(doc)
        data = None if path else read_document(doc, self.config.max_pdf_bytes)
        request = VetRequest(data, self.config.documents, path, self.config.max_pdf_bytes)
        renderer = self._render_process()
        vetted = renderer.vet(request, self.config.page_time_limit_s)
        if isinstance(vetted, PdfProblem):
            raise vetted
        document = VettedDocument(doc, vetted.sha256, vetted.page_count)
        pages = PageRequest(document.sha256, None, list(range(document.page_count)),
                            self.config.render, path, self.config.max_pdf_bytes)
        # after a restart the process reads a local file again itself; a zip member is sent
        load = (lambda: None) if path else functools.partial(self._read_again, document)
        return document, renderer.render(pages, load, self.config.page_time_limit_s)

    def _render_here(self, opened) -> Iterator[tuple[int, RenderedPage | PdfProblem]]:
        try:
            yield from enumerate(render_pages(opened, range(opened.page_count),
                                              self.config.render))
        finally:
            let_go(opened)

    def _read_again(self, document: VettedDocument) -> bytes:
        data = read_document(document.doc, self.config.max_pdf_bytes)
        if hashlib.sha256(data).hexdigest() != document.sha256:
            raise PdfProblem("input_changed", "errored", "the file changed during the run")
        return data

    def _checked(self, sample: Sample, failures: Counter) -> Sample | Reject:
        """The page, or its reject under the first A.4 rule it fails; `failures` counts every
        rule it fails."""
        try:
            failed = rule_failures(sample, self.rules)
        except Exception as error:  # as filters.base.checked: a failing rule costs this page
            return Reject.of(sample, type(error).__name__, "errored", str(error)[:1000])
        failures.update(failed)
        if not failed:
            return sample
        return Reject.of(sample, failed[0], detail=getattr(failed[0], "detail", ""))

    def _sample(self, document: VettedDocument, page: RenderedPage) -> Sample:
        key = document.page_key(page.index)
        # positional: a page has hundreds of words, and keywords cost half as much again
        regions = [Region("word", text, box)
                   for text, box in zip(page.word_texts, page.word_boxes)]
        regions += [Region(kind="line", text=line.text, box=line.box, quad=line.quad)
                    for line in page.lines]
        return Sample(
            id=sample_id(self.dataset, key), dataset=self.dataset, task=TASK,
            source=Source(uri=document.uri, key=key, page=page.index + 1,
                          sha256=document.sha256),
            images=[page.image], text=page.text, regions=regions,
            extra={"page_count": document.page_count, "rotation": page.rotation,
                   "page_size_pt": [round(page.width_pt, 2), round(page.height_pt, 2)],
                   "zoom": round(page.zoom, 4), "inkless_lines": page.inkless_lines,
                   "unmapped_symbols": page.unmapped_symbols,
                   "byte_swapped_lines": page.byte_swapped_lines})


def rule_failures(sample: Sample, rules: list) -> list[str]:
    """Every A.4 rule this page fails, not only the first: the report counts each separately."""
    failed = []
    for rule in rules:
        result = rule(sample)
        if isinstance(result, str):
            failed.append(result)
    return failed


def failure_stats(counts: dict) -> dict:
    """The report's stats from the tasks' summed counts: pages failing each rule, every rule in
    paper order even at zero."""
    found = counts.get(FAILURES, {})
    order = {reason: i for i, reason in enumerate(PDF_REASON_ORDER)}
    every = {reason: 0 for reason in PDF_REASON_ORDER} | found
    ordered = dict(sorted(every.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    return {FAILURES: ordered,
            "note": "pages failing each A.4 rule, counting every rule a page fails"}


# ---- the pipeline -----------------------------------------------------------------------------

def run_spec(output_dir: str, dataset: str, config: PdfConfig, formats: list[str],
             samples_per_shard: int) -> RunSpec:
    rules = pdf_page_rules(config.rules)
    return RunSpec(PIPELINE, dataset, TASK, output_dir, REASON_ORDER, formats=formats,
                   samples_per_shard=samples_per_shard,
                   config=to_mapping(config) | {"rule_names": [rule_name(r) for r in rules]},
                   finish_stats=failure_stats)


def run(inputs: list[str], output_dir: str, dataset: str, config: PdfConfig | None = None,
        beam_argv: list[str] | None = None, formats: list[str] | None = None,
        samples_per_shard: int = 1000, *, overwrite: bool = False) -> dict:
    """Render the PDFs under `inputs` into OCR shards in `output_dir`; returns the report."""
    config = config or PdfConfig()
    config.validate()
    found = find_inputs(inputs, INPUT_EXTENSIONS, "corpus pdf", ".pdf, and .zip files of PDFs")
    tasks = plan_pdf_tasks(found.files, config.documents_per_task)
    tasks += unread_tasks(found.unread, len(tasks))
    log.info("corpus pdf: %d task(s)", len(tasks))
    spec = run_spec(output_dir, dataset, config, formats or ["webdataset"], samples_per_shard)
    return run_pipeline(
        lambda pipeline, execution: run_tasks(pipeline, [spec], RenderDocuments(config, dataset),
                                              tasks, execution),
        beam_argv or [], output_dir,
        record=RunRecord.of(spec, file_inputs(inputs, task_files(tasks))), overwrite=overwrite)


def add_arguments(parser) -> None:
    add_common_arguments(parser, dataset_default="pdf")
    parser.add_argument("--dpi", type=float,
                        help="render resolution; overrides render.dpi and render.long_side "
                             f"(default: render.dpi of the config, {RenderOptions().dpi:g})")
    parser.add_argument("--image-format", choices=["jpeg", "png", "webp"],
                        help="page image format; overrides render.image_format (default: the "
                             f"config's, {RenderOptions().image_format})")


def main(args, beam_argv) -> int:
    config = load_pipeline_config(PdfConfig, "pdf", args.config, args.dataset)
    if args.dpi is not None:
        config.render.dpi, config.render.long_side = args.dpi, None
    if args.image_format is not None:
        config.render.image_format = args.image_format
    report = run(args.input, args.output, args.dataset, config, beam_argv, args.shard_formats,
                 args.samples_per_shard, overwrite=args.overwrite)
    print_summary(report)
    return 0


def run_demo(output_dir: str, beam_argv: list[str]) -> dict:
    from corpus.samples.pdf import write_sample_pdfs

    inputs = os.path.join(output_dir, "inputs")
    write_sample_pdfs(inputs)
    return run([inputs], output_dir, "demo-pdf", PdfConfig(), beam_argv)
