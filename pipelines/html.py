"""`corpus html`: HTML pages (files, folders with their CSS/images, WARC files) rendered offline in
headless Chromium into OCR samples with one box per rendered text line (Appendix A.4).

Graph: expand inputs on the driver -> read pages (a WARC fans out into its response records)
-> batches of pages, the same on every run -> render (one browser per worker, several pages in
flight) -> page rules (`filters.pages.html_page_rules`) -> shards, rejects and report. Every
page ends kept, dropped (bad page or rule) or errored (unreadable input, browser or renderer
crash). The graph keeps to what every runner supports (docs/running-at-scale.md): one output
per step split by type, no side inputs, no global combines, nothing emitted from
`finish_bundle`.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from urllib.parse import quote

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from corpus.config import load_config, to_mapping
from corpus.ids import sample_id
from corpus.inputs import expand_inputs as expand_input_files
from corpus.schema import Image, Region, Sample, Source
from filters.base import Reject
from filters.pages import HTML_REASON_ORDER, PageRulesConfig, html_page_rules
from pipelines.common import (METRICS_NAMESPACE, Batches, RulesStep, SplitRejects,
                              add_common_arguments, apply_step, count_elements, print_summary,
                              run_pipeline)
from pipelines.sinks import write_run
from renderers.html import (LOCAL_ORIGIN, HtmlRenderer, PageJob, RenderConfig, RenderedPage,
                            RenderFailure)

HTML_EXTENSIONS = (".html", ".htm", ".xhtml", ".shtml")
WARC_EXTENSIONS = (".warc", ".warc.gz")
HTML_MIME_TYPES = ("text/html", "application/xhtml+xml")
# Reader and renderer reasons come first (a page meets them before any rule), then A.4's rules.
REASON_ORDER = ["not_html", "http_error_status", "page_too_large", "binary_content",
                "undecodable_text", "load_timeout", "render_timeout", "dom_too_large",
                "navigated_away", *HTML_REASON_ORDER]


@dataclass
class HtmlConfig:
    render: RenderConfig = field(default_factory=RenderConfig)
    pages: PageRulesConfig = field(default_factory=PageRulesConfig)
    max_page_bytes: int = 5_000_000  # larger documents are dropped before rendering
    # Pages handed to one worker at once; `render.pool_size` of them render at a time, so a
    # slow page idles a slot only at the end of its batch.
    pages_per_batch: int = 16

    def validate(self) -> None:
        self.render.validate()
        self.pages.validate()
        if self.max_page_bytes < 1 or self.pages_per_batch < 1:
            raise ValueError("max_page_bytes and pages_per_batch must be positive")


@dataclass
class HtmlInput:
    uri: str
    kind: str  # "html" | "warc"
    key: str  # source key: the path below the input pattern's fixed part
    root: str | None = None  # local folder a page may load its CSS/images from


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


def _local_url(path: str, root: str | None) -> str:
    relative = os.path.relpath(path, root) if root else os.path.basename(path)
    return LOCAL_ORIGIN + quote(relative.replace(os.sep, "/"))


def _charset_of(content_type: str | None) -> str | None:
    for part in (content_type or "").split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip("\"'") or None
    return None


class ReadPagesFn(beam.DoFn):
    """An HTML file is one page; a WARC file is one page per HTTP response record. Pages and
    rejects leave in one output (split by type downstream, as every runner supports). Anything
    that cannot be read becomes one counted reject; pages read before a WARC breaks are kept."""

    def __init__(self, dataset: str, max_page_bytes: int):
        self.dataset, self.max_page_bytes = dataset, max_page_bytes

    def _reject(self, uri: str, key: str, reason: str, status: str = "dropped",
                detail: str = "") -> Reject:
        Metrics.counter(METRICS_NAMESPACE, f"{status}_{reason}").inc()
        return Reject(sample_id(self.dataset, key), self.dataset, uri, key, reason, status,
                      detail[:1000])

    def process(self, item: HtmlInput):
        pages = self._read_warc(item) if item.kind == "warc" else self._read_html(item)
        try:
            yield from pages
        except Exception as error:  # the dead letter: an unforeseen failure is one counted unit
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
            yield self._reject(item.uri, item.key, "page_too_large")
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
            return self._reject(uri, key, "page_too_large")
        if not url.startswith(("http://", "https://")):
            url = LOCAL_ORIGIN + "warc/" + hashlib.sha1(key.encode()).hexdigest() + ".html"
        return PageJob(uri, key, body, url, None, _charset_of(content_type))


# ---------------------------------------------------------------------------------------------
# Rendering

def to_sample(job: PageJob, page: RenderedPage, dataset: str) -> Sample:
    return Sample(
        id=sample_id(dataset, job.key), dataset=dataset, task="ocr",
        source=Source(uri=job.uri, key=job.key, sha256=hashlib.sha256(job.body).hexdigest()),
        images=[Image(page.image, page.image_format, page.width, page.height)],
        text=page.text,
        regions=[Region(kind="line", text=line.text, box=line.box) for line in page.lines],
        decisions=list(page.decisions),
        extra={"render": page.stats})


class RenderBatchFn(beam.DoFn):
    """One browser per worker (setup/teardown), reused for every batch. The pages of a batch are
    all submitted at once and emitted as they finish, `pool_size` at a time in the browser.
    Everything is emitted from `process` (some runners drop what `finish_bundle` emits)."""

    def __init__(self, config: RenderConfig, dataset: str):
        self.config, self.dataset = config, dataset
        self.renderer: HtmlRenderer | None = None

    def setup(self):
        self.renderer = HtmlRenderer(self.config).start()

    def teardown(self):
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None

    def process(self, batch: list[PageJob]):
        pending = {self.renderer.submit(job): job for job in batch}
        for future in as_completed(pending):
            yield self._output(pending[future], future)

    def _output(self, job: PageJob, future) -> Sample | Reject:
        error = future.exception()
        result = (RenderFailure("render_failed", "errored", repr(error)) if error
                  else future.result())
        if isinstance(result, RenderFailure):
            Metrics.counter(METRICS_NAMESPACE, f"{result.status}_{result.reason}").inc()
            return Reject(sample_id(self.dataset, job.key), self.dataset, job.uri, job.key,
                          result.reason, result.status, result.detail[:1000])
        Metrics.counter(METRICS_NAMESPACE, "pages_rendered").inc()
        return to_sample(job, result, self.dataset)


STAT_KEYS = ("blocked_requests", "local_requests", "missing_local", "dialogs", "popups",
             "lines_outside_capture")


def render_stats(sample: Sample) -> dict:
    stats = sample.extra.get("render", {})
    counts = {key: stats.get(key, 0) for key in STAT_KEYS}
    counts["pages_rendered"] = 1
    for decision in sample.decisions:
        if decision.startswith("charset_"):
            counts["charset_fixed"] = counts.get("charset_fixed", 0) + 1
    return counts


class SumCounts(beam.CombineFn):
    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, counts):
        for key, value in counts.items():
            accumulator[key] = accumulator.get(key, 0) + value
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            self.add_input(merged, accumulator)
        return merged

    def extract_output(self, accumulator):
        return dict(sorted(accumulator.items()))


# ---------------------------------------------------------------------------------------------
# The pipeline

class RenderStats(beam.PTransform):
    """Exactly one dict: the render counts summed over the pages (empty input gives zeros), as
    a sum per constant key plus one empty dict rather than a global combine."""

    def expand(self, samples):
        counts = samples | "Counts" >> beam.Map(lambda s: (0, render_stats(s)))
        empty = samples.pipeline | "Empty" >> beam.Create([(0, {})])
        return ((counts, empty) | "Flatten" >> beam.Flatten()
                | "Sum" >> beam.CombinePerKey(SumCounts()) | "Value" >> beam.Values())


def build(pipeline, files: list[HtmlInput], output_dir: str, dataset: str, config: HtmlConfig,
          formats: list[str], samples_per_shard: int) -> None:
    pages, read_rejects = (pipeline
                           | "Inputs" >> beam.Create(files)
                           | "SpreadInputs" >> beam.Reshuffle()
                           | "ReadPages" >> beam.ParDo(ReadPagesFn(dataset,
                                                                   config.max_page_bytes))
                           | "SplitRead" >> SplitRejects())
    input_count = count_elements("Input", pages, read_rejects)
    rendered, render_rejects = (
        pages
        | "BatchPages" >> Batches(config.pages_per_batch,
                                  lambda job, dataset=dataset: sample_id(dataset, job.key))
        | "Render" >> beam.ParDo(RenderBatchFn(config.render, dataset))
        | "SplitRender" >> SplitRejects())
    stats = rendered | "RenderStats" >> RenderStats()
    kept, rule_rejects = apply_step(rendered, "PageRules",
                                    RulesStep(html_page_rules(config.pages)), dataset)
    write_run(pipeline, kept, [read_rejects, render_rejects, rule_rejects], input_count,
              output_dir=output_dir, pipeline_name="html", dataset=dataset, task="ocr",
              reason_order=REASON_ORDER, formats=formats, samples_per_shard=samples_per_shard,
              config=to_mapping(config), stats=stats)


def run(inputs: list[str], output_dir: str, dataset: str, config: HtmlConfig | None = None,
        beam_argv: list[str] | None = None, formats: list[str] | None = None,
        samples_per_shard: int = 1000) -> dict:
    config = config or HtmlConfig()
    config.validate()
    files = expand_inputs(inputs)
    return run_pipeline(
        lambda pipeline: build(pipeline, files, output_dir, dataset, config,
                               formats or ["webdataset"], samples_per_shard),
        beam_argv or [], output_dir)


def add_arguments(parser) -> None:
    add_common_arguments(parser, dataset_default="html")
    parser.add_argument("--chromium", help="Chromium executable (default: /usr/bin/chromium)")
    parser.add_argument("--capture", choices=["viewport", "full"],
                        help="screenshot the first screen or the whole page")


def main(args, beam_argv) -> int:
    config = load_config(HtmlConfig, args.config, args.dataset)
    if args.chromium:
        config.render.chromium = args.chromium
    if args.capture:
        config.render.capture = args.capture
    report = run(args.input, args.output, args.dataset, config, beam_argv, args.shard_formats,
                 args.samples_per_shard)
    print_summary(report)
    return 0


def run_demo(output_dir: str, beam_argv: list[str]) -> dict:
    from corpus.samples.html import make_html_inputs

    inputs = make_html_inputs(os.path.join(output_dir, "inputs"))
    # Short limits so the demo's never-ending page costs seconds, not the production default.
    config = HtmlConfig(render=RenderConfig(viewport_width=800, viewport_height=1000,
                                            load_timeout_s=3, page_timeout_s=6, pool_size=3))
    return run(inputs, output_dir, "html-demo", config, beam_argv)
