"""`corpus html`: HTML pages (files, folders with their CSS/images, WARC files) rendered offline in
headless Chromium into OCR samples with one box per rendered text line (Appendix A.4).

A run is a list of tasks, each done whole by one process (`pipelines.tasks`):

  a WARC file, or `pages_per_batch` loose HTML files -> read the pages (a WARC fans out into
  its response records) -> render (the process's browser, `render.pool_size` pages in flight,
  results taken in input order) -> page rules (`filters.pages.html_page_rules`) -> the task's
  shards, rejects and marker; the render counts are summed over the tasks into the report.

Tasks: each WARC file is one task (a crawl's WARCs hold thousands of pages each); the loose HTML
files, in key order, are cut into tasks of `pages_per_batch` files (256 by default: a big site
gives many tasks, and a task's shard holds a few hundred screenshots, tens of MB). The cut
depends on the inputs and the config only, so the shards are the same whatever the workers.
A task's pages are rendered several at a time but leave in the order they were read, so its
shard's bytes do not depend on which page finished first.

Every page ends kept, dropped (bad page or rule) or errored (unreadable input, browser or
renderer crash).
"""
from __future__ import annotations

import hashlib
import os
import zlib
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.util import Finalize
from typing import Iterable, Iterator
from urllib.parse import quote

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from corpus.config import to_mapping
from corpus.ids import sample_id
from corpus.inputs import expand_inputs as expand_input_files
from corpus.schema import Image, Region, Sample, Source
from filters.base import Reject, checked, set_up
from filters.pages import HTML_REASON_ORDER, PageRulesConfig, html_page_rules
from pipelines.common import add_common_arguments, load_pipeline_config, print_summary, run_pipeline
from pipelines.run_record import RunRecord, file_inputs, task_files
from pipelines.sinks import Counts, RunSpec
from pipelines.tasks import Task, plan_tasks, run_tasks
from renderers.html import (LOCAL_ORIGIN, HtmlRenderer, PageJob, RenderConfig, RenderedPage,
                            RenderFailure)

PIPELINE = "html"
TASK = "ocr"
HTML_EXTENSIONS = (".html", ".htm", ".xhtml", ".shtml")
WARC_EXTENSIONS = (".warc", ".warc.gz")
HTML_MIME_TYPES = ("text/html", "application/xhtml+xml")
# Reader and renderer reasons come first (a page meets them before any rule), then A.4's rules.
REASON_ORDER = ["not_html", "http_error_status", "page_too_large", "binary_content",
                "undecodable_text", "load_timeout", "render_timeout", "dom_too_large",
                "navigated_away", "invisible_text", *HTML_REASON_ORDER]
# Pages submitted to the browser ahead of the oldest one still rendering, per slot of the pool:
# the other slots keep working behind a slow page, and memory holds this many pages at most.
PAGES_AHEAD_PER_SLOT = 8


@dataclass
class HtmlConfig:
    render: RenderConfig = field(default_factory=RenderConfig)
    pages: PageRulesConfig = field(default_factory=PageRulesConfig)
    max_page_bytes: int = 5_000_000  # larger documents are dropped before rendering
    # Loose HTML files per task (a WARC file is a task of its own): a task's pages go to one
    # worker at once, `render.pool_size` of them render at a time, and its kept pages are one
    # shard.
    pages_per_batch: int = 256

    def validate(self) -> None:
        self.render.validate()
        self.pages.validate()
        if self.max_page_bytes < 1 or self.pages_per_batch < 1:
            raise ValueError("max_page_bytes and pages_per_batch must be positive")


@dataclass(frozen=True)
class HtmlInput:
    uri: str
    kind: str  # "html" | "warc"
    key: str  # source key: the path below the input pattern's fixed part
    root: str | None = None  # local folder a page may load its CSS/images from

    @property
    def path(self) -> str:
        """The file a task's fingerprint takes the size and time of."""
        return self.uri


@dataclass(frozen=True)
class HtmlFiles:
    """Loose HTML files rendered together, one page each."""

    files: tuple[HtmlInput, ...]

    @property
    def paths(self) -> list[str]:
        """The files a task's fingerprint takes the sizes and times of: a page edited in place
        makes its task run again."""
        return [item.uri for item in self.files]

    @property
    def uri(self) -> str:
        return self.files[0].uri

    @property
    def key(self) -> str:
        """The keys it spans, naming the unit in the reject of a failure that ends it."""
        return f"{self.files[0].key}..{self.files[-1].key}"


# ---------------------------------------------------------------------------------------------
# Inputs

def _kind_of(path: str) -> str | None:
    lower = path.lower()
    if lower.endswith(WARC_EXTENSIONS):
        return "warc"
    if lower.endswith(HTML_EXTENSIONS):
        return "html"
    return None


def expand_inputs(patterns: list[str]) -> list[HtmlInput]:
    """`corpus.inputs.expand_inputs` plus what a page needs: its kind (a named file of another
    extension is HTML) and the local folder it may load files from: the folder it was found in
    when a folder was given (a site), else the page's own folder."""
    folders = {os.path.abspath(p) for p in patterns if "://" not in p and os.path.isdir(p)}
    return [HtmlInput(f.path, _kind_of(f.path) or "html", f.relative,
                      None if "://" in f.path else
                      f.root if f.root in folders else os.path.dirname(f.path))
            for f in expand_input_files(patterns, HTML_EXTENSIONS + WARC_EXTENSIONS)]


def plan_html_tasks(inputs: list[HtmlInput], files_per_task: int) -> list[Task]:
    """A task per WARC file, and a task per `files_per_task` loose HTML files in key order;
    tasks in the order of their first key."""
    pages = [item for item in inputs if item.kind == "html"]
    groups = [tuple(pages[start:start + files_per_task])
              for start in range(0, len(pages), files_per_task)]
    units: list[HtmlInput | HtmlFiles] = [HtmlFiles(group) for group in groups]
    units += [item for item in inputs if item.kind == "warc"]
    return plan_tasks(sorted(units, key=_first_key))


def _first_key(unit: HtmlInput | HtmlFiles) -> str:
    return unit.files[0].key if isinstance(unit, HtmlFiles) else unit.key


def _local_url(path: str, root: str | None) -> str:
    relative = os.path.relpath(path, root) if root else os.path.basename(path)
    return LOCAL_ORIGIN + quote(relative.replace(os.sep, "/"))


def _charset_of(content_type: str | None) -> str | None:
    for part in (content_type or "").split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip("\"'") or None
    return None


class PageReader:
    """An HTML file is one page; a WARC file is one page per HTTP response record. Anything
    that cannot be read becomes one reject; pages read before a WARC breaks are kept."""

    def __init__(self, dataset: str, max_page_bytes: int):
        self.dataset, self.max_page_bytes = dataset, max_page_bytes

    def _reject(self, uri: str, key: str, reason: str, status: str = "dropped",
                detail: str = "") -> Reject:
        return Reject(sample_id(self.dataset, key), self.dataset, uri, key, reason, status,
                      detail[:1000])

    def __call__(self, item: HtmlInput) -> Iterator[PageJob | Reject]:
        pages = self._read_warc(item) if item.kind == "warc" else self._read_html(item)
        try:
            yield from pages
        except Exception as error:  # an unforeseen failure is one unit of this file only
            yield self._reject(item.uri, f"{item.key}#failed", type(error).__name__, "errored",
                               str(error))

    def _read_html(self, item: HtmlInput):
        try:
            with FileSystems.open(item.uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                body = f.read(self.max_page_bytes + 1)
        except (OSError, IOError) as error:
            yield self._reject(item.uri, item.key, "unreadable_input", "errored", str(error))
            return
        if len(body) > self.max_page_bytes:
            yield self._reject(item.uri, item.key, "page_too_large",
                               detail=f"over max_page_bytes, {self.max_page_bytes:,}")
            return
        yield PageJob(item.uri, item.key, body, _local_url(item.uri, item.root), item.root)

    def _read_warc(self, item: HtmlInput):
        from warcio.archiveiterator import ArchiveIterator
        from warcio.exceptions import ArchiveLoadFailed

        try:
            with FileSystems.open(item.uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                records = ArchiveIterator(f)
                for record in records:
                    if record.rec_type == "response":
                        yield self._page_of(item, record, records.offset)
        # warcio raises AttributeError for a record cut inside its WARC headers (no target URI)
        except (ArchiveLoadFailed, EOFError, zlib.error, OSError, ValueError,
                AttributeError) as error:
            yield self._reject(item.uri, f"{item.key}#corrupt", "corrupt_warc", "errored",
                               f"{type(error).__name__}: {error}")

    def _page_of(self, item: HtmlInput, record, offset: int):
        url = record.rec_headers.get_header("WARC-Target-URI") or ""
        key = f"{item.key}#{record.rec_headers.get_header('WARC-Record-ID') or offset}"
        uri = url or f"{item.uri}#{offset}"
        http = record.http_headers
        status = http.get_statuscode() if http is not None else "200"
        content_type = http.get_header("Content-Type") if http is not None else None
        mime = (content_type or "text/html").split(";")[0].strip().lower()
        if not str(status).startswith("2"):
            return self._reject(uri, key, "http_error_status", detail=f"HTTP {status}")
        if mime not in HTML_MIME_TYPES:
            return self._reject(uri, key, "not_html", detail=mime)
        body = record.content_stream().read(self.max_page_bytes + 1)
        if len(body) > self.max_page_bytes:
            return self._reject(uri, key, "page_too_large",
                                detail=f"over max_page_bytes, {self.max_page_bytes:,}")
        if not url.startswith(("http://", "https://")):
            url = LOCAL_ORIGIN + "warc/" + hashlib.sha1(key.encode()).hexdigest() + ".html"
        return PageJob(uri, key, body, url, None, _charset_of(content_type))


# ---------------------------------------------------------------------------------------------
# Rendering

def to_sample(job: PageJob, page: RenderedPage, dataset: str) -> Sample:
    return Sample(
        id=sample_id(dataset, job.key), dataset=dataset, task=TASK,
        source=Source(uri=job.uri, key=job.key, sha256=hashlib.sha256(job.body).hexdigest()),
        images=[Image(page.image, page.image_format, page.width, page.height)],
        text=page.text,
        regions=[Region(kind="line", text=line.text, box=line.box) for line in page.lines],
        decisions=list(page.decisions),
        extra={"render": page.stats})


STAT_KEYS = ("blocked_requests", "local_requests", "missing_local", "dialogs", "popups",
             "lines_outside_capture", "invisible_lines")


def render_stats(sample: Sample) -> dict:
    """A rendered page's part of the report's stats (summed over the rendered pages)."""
    stats = sample.extra.get("render", {})
    counts = {key: stats.get(key, 0) for key in STAT_KEYS}
    counts["pages_rendered"] = 1
    for decision in sample.decisions:
        if decision.startswith("charset_"):
            counts["charset_fixed"] = counts.get("charset_fixed", 0) + 1
    return counts


class RenderPages:
    """The work of an HTML task: the pages of a WARC file or of some HTML files, rendered by
    this process's browser with `render.pool_size` pages in flight, then the page rules. Its
    items leave in the order the pages were read, each rendered page's counts before it.

    One browser per process, started in `setup`; it is closed when the run's step ends in this
    process (`close`), or else when the process exits: pool workers are forked and leave
    through `os._exit`, which skips `atexit`, so the browser is closed by a multiprocessing
    finalizer, which runs on the way out of every process (this one included)."""

    def __init__(self, dataset: str, config: HtmlConfig):
        self.dataset, self.config = dataset, config
        self.reader = PageReader(dataset, config.max_page_bytes)
        self.rules = html_page_rules(config.pages)
        self.renderer: HtmlRenderer | None = None
        self._close_renderer: Finalize | None = None

    def setup(self, worker: int) -> None:
        set_up(self.rules)
        if self.renderer is None:
            self.renderer = HtmlRenderer(self.config.render).start()
            self._close_renderer = Finalize(None, self.renderer.close, exitpriority=10)

    def close(self) -> None:
        if self._close_renderer is not None:
            self._close_renderer()  # closes the browser once, and drops the exit finalizer
        self.renderer = self._close_renderer = None

    def __getstate__(self) -> dict:
        # a browser belongs to its process: a copy of the work starts its own in `setup`
        return {**self.__dict__, "renderer": None, "_close_renderer": None}

    def __call__(self, unit: HtmlInput | HtmlFiles) -> Iterator[Sample | Reject | Counts]:
        files = unit.files if isinstance(unit, HtmlFiles) else (unit,)
        pages = (item for file in files for item in self.reader(file))
        for item, future in self._submitted(pages):
            if isinstance(item, Reject):
                yield item
            else:
                yield from self._finished(item, future)

    def _submitted(self, items: Iterable[PageJob | Reject]):
        """(item, its render future or None) in the order read, with up to
        `PAGES_AHEAD_PER_SLOT * pool_size` pages submitted ahead of the one taken next."""
        ahead = PAGES_AHEAD_PER_SLOT * self.config.render.pool_size
        window: deque = deque()
        for item in items:
            future = self.renderer.submit(item) if isinstance(item, PageJob) else None
            window.append((item, future))
            if len(window) > ahead:
                yield window.popleft()
        while window:
            yield window.popleft()

    def _finished(self, job: PageJob, future) -> Iterator[Sample | Reject | Counts]:
        try:
            result = future.result()
        except Exception as error:  # the renderer itself failed: this page's error only
            result = RenderFailure("render_failed", "errored", repr(error))
        if isinstance(result, RenderFailure):
            yield Reject(sample_id(self.dataset, job.key), self.dataset, job.uri, job.key,
                         result.reason, result.status, result.detail[:1000])
            return
        sample = to_sample(job, result, self.dataset)
        yield Counts(render_stats(sample))
        yield checked(sample, self.rules)


# ---------------------------------------------------------------------------------------------
# The pipeline

def run_spec(output_dir: str, dataset: str, config: HtmlConfig, formats: list[str],
             samples_per_shard: int) -> RunSpec:
    return RunSpec(PIPELINE, dataset, TASK, output_dir, REASON_ORDER, formats=formats,
                   samples_per_shard=samples_per_shard, config=to_mapping(config),
                   finish_stats=_sorted_stats)


def _sorted_stats(counts: dict) -> dict:
    """The render counts summed over every rendered page (none rendered: no counts)."""
    return dict(sorted(counts.items()))


def run(inputs: list[str], output_dir: str, dataset: str, config: HtmlConfig | None = None,
        beam_argv: list[str] | None = None, formats: list[str] | None = None,
        samples_per_shard: int = 1000, *, overwrite: bool = False) -> dict:
    config = config or HtmlConfig()
    config.validate()
    tasks = plan_html_tasks(expand_inputs(inputs), config.pages_per_batch)
    spec = run_spec(output_dir, dataset, config, formats or ["webdataset"], samples_per_shard)
    return run_pipeline(
        lambda pipeline, execution: run_tasks(pipeline, [spec], RenderPages(dataset, config),
                                              tasks, execution),
        beam_argv or [], output_dir,
        record=RunRecord.of(spec, file_inputs(inputs, task_files(tasks))), overwrite=overwrite)


def add_arguments(parser) -> None:
    add_common_arguments(parser, dataset_default="html")
    parser.add_argument("--chromium", metavar="PATH",
                        help="Chromium executable; overrides render.chromium (default: the "
                             f"config's, {RenderConfig().chromium})")
    parser.add_argument("--capture", choices=["viewport", "full"],
                        help="screenshot the first screen or the whole page; overrides "
                             f"render.capture (default: the config's, {RenderConfig().capture})")


def main(args, beam_argv) -> int:
    config = load_pipeline_config(HtmlConfig, "html", args.config, args.dataset)
    if args.chromium:
        config.render.chromium = args.chromium
    if args.capture:
        config.render.capture = args.capture
    report = run(args.input, args.output, args.dataset, config, beam_argv, args.shard_formats,
                 args.samples_per_shard, overwrite=args.overwrite)
    print_summary(report)
    return 0


def run_demo(output_dir: str, beam_argv: list[str]) -> dict:
    from corpus.samples.html import make_html_inputs

    inputs = make_html_inputs(os.path.join(output_dir, "inputs"))
    # A short load limit so the demo's never-ending page costs seconds, not the production
    # default; the whole-page limit leaves the dense page room on a busy machine.
    config = HtmlConfig(render=RenderConfig(viewport_width=800, viewport_height=1000,
                                            load_timeout_s=3, page_timeout_s=15, pool_size=3))
    return run(inputs, output_dir, "html-demo", config, beam_argv)
