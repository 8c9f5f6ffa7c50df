"""`corpus pdf`: PDF pages -> OCR samples with word and line boxes (Appendix A.4).

files, folders, zips ─> ListDocuments ─> (reshuffle) ─> PlanPageRanges
  ─> first range of each PDF ──────┬─> RenderAndSpill: render, A.4 page rules
  ─> other ranges ─> (reshuffle) ──┘   (filters/pages.py), spill ─> OCR shards

One PDF fans out into page ranges of `pages_per_range` pages. Its first range is rendered where
it was vetted, by the render process that holds it open; the other ranges are reshuffled, so a
900-page PDF keeps many workers busy instead of pinning one. A range that lands elsewhere costs
its process a fresh start on that PDF: reading and opening it, and loading its fonts and images
again (about 15 ms on the benchmark's documents), which is why ranges are 32 pages long. Input
is counted in pages after the fan-out; a PDF that cannot be read at all is one errored unit with
its reason.

PDFs are read (local files), hashed, vetted and rendered in render processes (`isolate: true`):
MuPDF holds the GIL and cannot be interrupted from Python, so a PDF or page past
`page_time_limit_s` (or one that crashes MuPDF) is ended by killing that process, which is then
restarted for the rest. The processes are shared by the plan and render steps of a worker
(`RenderProcesses`), so a PDF vetted by one is rendered from the copy it holds open.

The render step applies the page rules and writes the pages that pass to the sink's spill file
itself, as `corpus pairs` does: a page then goes through no further transform and no shuffle;
only its range's spill chunk does.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import select
import socket
import subprocess
import sys
import threading
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable
from multiprocessing.connection import Connection

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from corpus.config import load_config, to_mapping
from corpus.ids import sample_id
from corpus.inputs import InputFile, expand_inputs
from corpus.schema import Region, Sample, Source
from filters.base import Reject, rule_name
from filters.pages import PDF_REASON_ORDER, PageRulesConfig, pdf_page_rules
from pipelines.common import (SplitRejects, StepFn, add_common_arguments, apply_step, counted,
                              errored_reject, print_summary, run_pipeline)
from pipelines.sinks import CountAll, SpillSamples, chunk_size, collector_paused, write_run
from renderers.pdf import (DOCUMENT_REASONS, PAGE_REASONS, READY, DocumentPolicy, PageRequest,
                           PdfProblem, RenderedPage, RenderOptions, VetRequest, Vetted, open_pdf,
                           read_at_most, receive_result, render_pages, send_request)

PIPELINE = "pdf"
TASK = "ocr"
INPUT_REASONS = ["corrupt_zip", "encrypted_zip_member", "duplicate_zip_member", "pdf_too_large",
                 "unreadable_input", "input_changed"]
RENDER_PROCESS_MAIN = ("import sys; from renderers.pdf import serve_socket; "
                       "serve_socket(int(sys.argv[1]), int(sys.argv[2]))")
STARTUP_LIMIT_S = 120  # spawning the render process and importing PyMuPDF, on a busy machine
REASON_ORDER = DOCUMENT_REASONS + INPUT_REASONS + PAGE_REASONS + PDF_REASON_ORDER


@dataclass
class PdfConfig:
    render: RenderOptions = field(default_factory=RenderOptions)
    documents: DocumentPolicy = field(default_factory=DocumentPolicy)
    rules: PageRulesConfig = field(default_factory=PageRulesConfig)
    pages_per_range: int = 32  # pages rendered by one work item; ranges spread over workers
    page_time_limit_s: float = 30.0  # per page: open (first page) + render + extract + encode
    max_pdf_bytes: int = 256 * 1024 * 1024  # larger files (or zip members) are not read
    isolate: bool = True  # vet and render in child processes; needed for the time limit
    memory_limit_mb: int = 4096  # address-space cap of each child process; 0: none

    def validate(self) -> None:
        self.render.validate()
        self.rules.validate()
        if self.memory_limit_mb < 0:
            raise ValueError("memory_limit_mb must be 0 (no limit) or positive")
        if self.pages_per_range < 1 or self.page_time_limit_s <= 0 or self.max_pdf_bytes < 1:
            raise ValueError("pages_per_range, page_time_limit_s and max_pdf_bytes must be "
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
class PageRange:
    doc: DocumentRef
    sha256: str
    pages: tuple[int, ...]  # 0-based page indices
    page_count: int

    @property
    def uri(self) -> str:
        return self.doc.pdf_uri

    @property
    def key(self) -> str:
        return f"{self.doc.key}#pages={self.pages[0] + 1}-{self.pages[-1] + 1}"


INPUT_EXTENSIONS = (".pdf", ".zip")
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

    def __call__(self, item: InputFile):
        if not item.path.lower().endswith(".zip"):
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
                                       PdfProblem("duplicate_zip_member", "errored")))
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
                        raise PdfProblem("encrypted_zip_member", "errored")
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

class RenderProcess:
    """A child process running renderers.pdf.serve, talking over a socket pair; killed and
    restarted when a page overruns the time limit or crashes it. A plain subprocess rather than
    multiprocessing: spawn would re-import the caller's __main__, fork would copy a Beam worker's
    threads."""

    def __init__(self, memory_limit_mb: int = 0):
        self.memory_limit_mb = memory_limit_mb
        self.process = self.conn = self.poller = None
        self.held_sha = None

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.process = subprocess.Popen(
            [sys.executable, "-c", RENDER_PROCESS_MAIN, str(theirs.fileno()),
             str(self.memory_limit_mb)],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
        theirs.close()
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
        except (OSError, AttributeError):  # interpreter shutdown
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
        called only when the process does not hold that PDF open already, so consecutive ranges
        of one PDF read it once."""
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


class RenderProcesses:
    """The render processes of this Python process, shared by PlanPageRanges and RenderPages.
    The process that vetted a PDF still holds it open, so when the same worker renders that
    PDF's ranges it is not read, hashed, sent or opened again. A caller borrows a process for one
    PDF or one range; concurrent callers (Beam may run bundles on several threads) get one each,
    and a process is started only when every existing one is busy."""

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: list[RenderProcess] = []
        self.started: list[RenderProcess] = []  # every one made (the benchmark reads their CPU)

    @contextlib.contextmanager
    def borrow(self, memory_limit_mb: int, sha256: str | None = None):
        with self._lock:
            fitting = [p for p in self._idle if p.memory_limit_mb == memory_limit_mb]
            holding = [p for p in fitting if sha256 is not None and p.held_sha == sha256]
            chosen = (holding or fitting or [None])[-1]
            if chosen is None:
                chosen = RenderProcess(memory_limit_mb)
                self.started.append(chosen)
            else:
                self._idle.remove(chosen)
        try:
            yield chosen
        finally:
            with self._lock:
                self._idle.append(chosen)

    def stop(self) -> None:
        """End every idle process (a busy one is ended by its borrower's stop, if at all)."""
        with self._lock:
            for process in self._idle:
                process.stop()


RENDER_PROCESSES = RenderProcesses()


# ---- planning and rendering --------------------------------------------------------------------

class PlanPageRanges:
    """A PDF -> its page ranges (after vetting it), or one reject for the whole document."""

    def __init__(self, config: PdfConfig, dataset: str):
        self.config, self.dataset = config, dataset

    def __call__(self, doc: DocumentRef):
        try:
            page_count, sha256 = self._vet(doc)
        except PdfProblem as problem:
            return [_reject(self.dataset, doc.pdf_uri, doc.key, problem)]
        step = self.config.pages_per_range
        return [PageRange(doc, sha256, tuple(range(first, min(first + step, page_count))),
                          page_count) for first in range(0, page_count, step)]

    def _vet(self, doc: DocumentRef) -> Vetted:
        path = local_path(doc) if self.config.isolate else None
        data = None if path else read_document(doc, self.config.max_pdf_bytes)
        if not self.config.isolate:
            return Vetted(open_pdf(data, self.config.documents).page_count,
                          hashlib.sha256(data).hexdigest())
        request = VetRequest(data, self.config.documents, path, self.config.max_pdf_bytes)
        with RENDER_PROCESSES.borrow(self.config.memory_limit_mb) as worker:
            result = worker.vet(request, self.config.page_time_limit_s)
        if isinstance(result, PdfProblem):
            raise result
        return result


class RenderPages:
    """A page range -> one OCR sample or one reject per page."""

    def __init__(self, config: PdfConfig, dataset: str):
        self.config, self.dataset = config, dataset
        self.held: tuple[str, object] | None = None  # (sha256, open document) without isolation

    def __call__(self, page_range: PageRange):
        load = functools.partial(self._read, page_range)
        if not self.config.isolate:
            return self._results(page_range, self._render_here(page_range, load))
        path = local_path(page_range.doc)
        request = PageRequest(page_range.sha256, None, list(page_range.pages), self.config.render,
                              path, self.config.max_pdf_bytes)
        with RENDER_PROCESSES.borrow(self.config.memory_limit_mb, page_range.sha256) as worker:
            return self._results(page_range, worker.render(
                request, (lambda: None) if path else load, self.config.page_time_limit_s))

    def _results(self, page_range: PageRange, rendered) -> list:
        results = []
        for index, result in rendered:
            if isinstance(result, PdfProblem):
                results.append(self._page_reject(page_range, index, result))
            else:
                results.append(self._sample(page_range, result))
        return results

    def _read(self, page_range: PageRange) -> bytes:
        data = read_document(page_range.doc, self.config.max_pdf_bytes)
        if hashlib.sha256(data).hexdigest() != page_range.sha256:
            raise PdfProblem("input_changed", "errored", "the file changed during the run")
        return data

    def _render_here(self, page_range: PageRange, load: Callable[[], bytes]):
        pages = list(page_range.pages)
        if self.held is None or self.held[0] != page_range.sha256:
            try:
                self.held = (page_range.sha256, open_pdf(load(), None))  # vetted when planned
            except PdfProblem as problem:
                return [(index, problem) for index in pages]
        return zip(pages, render_pages(self.held[1], pages, self.config.render))

    def _page_key(self, page_range: PageRange, index: int) -> str:
        return f"{page_range.doc.key}#page={index + 1}"

    def _page_reject(self, page_range: PageRange, index: int, problem: PdfProblem) -> Reject:
        return _reject(self.dataset, page_range.uri, self._page_key(page_range, index), problem)

    def _sample(self, page_range: PageRange, page: RenderedPage) -> Sample:
        key = self._page_key(page_range, page.index)
        # positional: a page has hundreds of words, and keywords cost half as much again
        regions = [Region("word", text, box)
                   for text, box in zip(page.word_texts, page.word_boxes)]
        regions += [Region(kind="line", text=line.text, box=line.box, quad=line.quad)
                    for line in page.lines]
        return Sample(
            id=sample_id(self.dataset, key), dataset=self.dataset, task=TASK,
            source=Source(uri=page_range.uri, key=key, page=page.index + 1,
                          sha256=page_range.sha256),
            images=[page.image], text=page.text, regions=regions,
            extra={"page_count": page_range.page_count, "rotation": page.rotation,
                   "page_size_pt": [round(page.width_pt, 2), round(page.height_pt, 2)],
                   "zoom": round(page.zoom, 4), "inkless_lines": page.inkless_lines,
                   "unmapped_symbols": page.unmapped_symbols})


def rule_failures(sample: Sample, rules: list) -> list[str]:
    """Every A.4 rule this page fails, not only the first: the report counts each separately."""
    failed = []
    for rule in rules:
        result = rule(sample)
        if isinstance(result, str):
            failed.append(result)
    return failed


@dataclass(frozen=True)
class RuleFailures:
    """How many pages of one range fail each A.4 rule, counting every rule a page fails."""

    counts: dict


class RenderAndSpill(SpillSamples):
    """A page range -> a reject for each page that fails to render or fails an A.4 rule (the
    first in paper order), one spill chunk holding the pages that pass, and the range's
    `RuleFailures`."""

    def __init__(self, config: PdfConfig, dataset: str, spill_to: str):
        super().__init__(spill_to)
        self.render = StepFn(RenderPages(config, dataset), dataset)
        self.rules = pdf_page_rules(config.rules)
        self.dataset = dataset

    def setup(self):
        self.render.setup()

    def process(self, page_range: PageRange):
        # a range's pages and their regions stay alive until spilled: collections walking
        # every object of the worker meanwhile cost a sixth of the worker's time per page
        with collector_paused():
            return self._outputs(page_range)

    def _outputs(self, page_range: PageRange) -> list:
        outputs, path, places, failures = [], None, [], Counter()
        for result in self.render.process(page_range):
            if not isinstance(result, Reject):
                result = self._checked(result, failures)
            if isinstance(result, Reject):
                outputs.append(result)
                continue
            path, place = self.spill(result)
            places.append(place)
        if places:
            outputs.append((path, places))
        if failures:
            outputs.append(RuleFailures(dict(failures)))
        return outputs

    def _checked(self, sample: Sample, failures: Counter) -> Sample | Reject:
        try:
            failed = rule_failures(sample, self.rules)
        except Exception as error:  # as in common.StepFn: a failing rule costs this page only
            return counted(errored_reject(sample, error, self.dataset))
        failures.update(failed)
        return counted(Reject.of(sample, failed[0])) if failed else sample


def is_first_range(page_range: PageRange) -> bool:
    return page_range.pages[0] == 0


def _pages(element) -> int:
    """Input pages an element of the render step stands for."""
    if isinstance(element, RuleFailures):
        return 0
    return chunk_size(element) if isinstance(element, tuple) else 1


def _failure_stats(counts: dict) -> dict:
    order = {reason: i for i, reason in enumerate(PDF_REASON_ORDER)}
    ordered = dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    return {"rule_failures_any_order": ordered,
            "note": "pages failing each A.4 rule, counting every rule a page fails"}


# ---- the pipeline -----------------------------------------------------------------------------

def build(pipeline, files: list[InputFile], *, output_dir: str, dataset: str, config: PdfConfig,
          formats: list[str], samples_per_shard: int) -> None:
    file_pc = (pipeline | "Files" >> beam.Create(files)
               | "SpreadFiles" >> beam.Reshuffle())
    docs, list_rejects = apply_step(file_pc, "ListDocuments", ListDocuments(dataset), dataset)
    ranges, plan_rejects = apply_step(docs | "SpreadDocuments" >> beam.Reshuffle(),
                                      "PlanPageRanges", PlanPageRanges(config, dataset), dataset)
    render = RenderAndSpill(config, dataset, output_dir)
    here = (ranges | "FirstRanges" >> beam.Filter(is_first_range)
            | "RenderFirstRanges" >> beam.ParDo(render))
    spread = (ranges | "OtherRanges" >> beam.Filter(lambda r: not is_first_range(r))
              | "SpreadPageRanges" >> beam.Reshuffle()
              | "RenderOtherRanges" >> beam.ParDo(render))
    rendered = (here, spread) | "Rendered" >> beam.Flatten()
    input_count = (rendered, list_rejects, plan_rejects) | "CountInput" >> CountAll(_pages)
    chunks_and_failures, render_rejects = rendered | "SplitRendered" >> SplitRejects()
    spilled = chunks_and_failures | "SpillChunks" >> beam.Filter(
        lambda element: isinstance(element, tuple))
    # exactly one stats element on every runner: a sum per reason seeded with zeros, gathered
    # on one constant key (no CombineGlobally; docs/running-at-scale.md)
    failures = chunks_and_failures | "AllRuleFailures" >> beam.FlatMap(
        lambda element: element.counts.items() if isinstance(element, RuleFailures) else [])
    zeros = pipeline | "NoRuleFailures" >> beam.Create([(r, 0) for r in PDF_REASON_ORDER])
    stats = ((failures, zeros) | "FlattenRuleFailures" >> beam.Flatten()
             | "SumRuleFailures" >> beam.CombinePerKey(sum)
             | "OneKey" >> beam.Map(lambda count: (0, count))
             | "GatherRuleFailures" >> beam.GroupByKey()
             | "RuleFailureStats" >> beam.MapTuple(lambda _, counts: _failure_stats(dict(counts))))
    rules = pdf_page_rules(config.rules)
    write_run(pipeline, None, [list_rejects, plan_rejects, render_rejects], input_count,
              output_dir=output_dir, pipeline_name=PIPELINE, dataset=dataset, task=TASK,
              reason_order=REASON_ORDER, formats=formats, samples_per_shard=samples_per_shard,
              config=to_mapping(config) | {"rule_names": [rule_name(r) for r in rules]},
              stats=stats, spilled=spilled)


def run(inputs: list[str], output_dir: str, dataset: str, config: PdfConfig | None = None,
        beam_argv: list[str] | None = None, formats: list[str] | None = None,
        samples_per_shard: int = 1000) -> dict:
    config = config or PdfConfig()
    config.validate()
    files = expand_inputs(inputs, INPUT_EXTENSIONS)
    return run_pipeline(
        lambda p: build(p, files, output_dir=output_dir, dataset=dataset, config=config,
                        formats=formats or ["webdataset"], samples_per_shard=samples_per_shard),
        beam_argv or [], output_dir)


def add_arguments(parser) -> None:
    add_common_arguments(parser, dataset_default="pdf")
    parser.add_argument("--dpi", type=float,
                        help="render resolution (overrides render.dpi and render.long_side)")
    parser.add_argument("--image-format", choices=["jpeg", "png", "webp"],
                        help="page image format (overrides the config)")


def main(args, beam_argv) -> int:
    config = load_config(PdfConfig, args.config, args.dataset)
    if args.dpi is not None:
        config.render.dpi, config.render.long_side = args.dpi, None
    if args.image_format is not None:
        config.render.image_format = args.image_format
    report = run(args.input, args.output, args.dataset, config, beam_argv, args.shard_formats,
                 args.samples_per_shard)
    print_summary(report)
    return 0


def run_demo(output_dir: str, beam_argv: list[str]) -> dict:
    from corpus.samples.pdf import write_sample_pdfs

    inputs = os.path.join(output_dir, "inputs")
    write_sample_pdfs(inputs)
    return run([inputs], output_dir, "demo-pdf", PdfConfig(), beam_argv)
