"""`corpus pdf` throughput against a bare PyMuPDF loop, measured side by side in one run.

    .venv/bin/python benchmarks/bench_pdf.py [--docs 8] [--pages 8] [--workers 1 2 4 8 16]
                                             [--documents-per-task N] [--work-only]

The same generated PDFs (text, photo, chart and Chinese pages in turn; each document's text
differs, so no two have the same bytes) go through:
  bare      open + per page: render, extract words and lines (`get_text("words")` and
            `get_text("dict")` on one text page, the extraction the pipeline's spec names),
            encode JPEG (Pillow); nothing else
  bare words-only  the same without the lines, for reference
  work      the pipeline's task work (`RenderDocuments`) in a plain loop over the files: list,
            read, hash and vet each PDF and render all its pages in the render process, build
            the samples, apply the A.4 rules; no shards. Its CPU time is that of this process
            and of the render process, shown split
  pipeline xN  the whole pipeline with N worker processes (1: `--direct_running_mode=in_memory`,
            the tasks run in this process; N: `--workers=N`, a pool of N forked workers), shards
            and report included; its fixed start-up cost is measured on a one-page run and
            subtracted ("marginal"), and also shown included ("end to end"), after a first
            one-page run that pays what only the first run of a process pays. Its CPU time is
            that of every process of the run (this one, the workers, their render processes),
            sampled from /proc
Ratios are pages/s (wall) or pages per CPU second ("per core") of one path over the other, on
the same machine in the same run; each pipeline xN is also compared with pipeline x1. A task is
`--documents-per-task` PDFs: below --docs / N, some of N workers get no task.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pymupdf  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from corpus.inputs import InputFile  # noqa: E402
from corpus.samples.pdf import CHINESE, CJK_FONT, ENGLISH, LATIN_FONT  # noqa: E402
from corpus.schema import Sample  # noqa: E402
from filters.base import Reject  # noqa: E402
from pipelines.pdf import PdfConfig, RenderDocuments, plan_pdf_tasks, run  # noqa: E402


def make_pdf(pages: int, name: str = "") -> bytes:
    """Pages cycling through the kinds a crawl holds: two-column text, a photo with a caption,
    a vector chart with labels, Chinese text. `name` goes into every page's first text, so that
    documents differ (equal bytes would let a render process reuse the open document)."""
    photo = _photo()
    doc = pymupdf.open()
    for number in range(pages):
        page = doc.new_page()
        page.insert_font(fontname="dv", fontfile=LATIN_FONT)
        kind = number % 4
        if kind == 0:
            text = f"{name} page {number + 1}. " + " ".join([ENGLISH] * 6)
            for left in (54, 318):
                page.insert_textbox(pymupdf.Rect(left, 72, left + 240, 720), text, fontsize=10,
                                    fontname="dv")
        elif kind == 1:
            page.insert_image(pymupdf.Rect(72, 72, 540, 423), stream=photo)
            page.insert_textbox(pymupdf.Rect(72, 440, 540, 720), " ".join([name] + [ENGLISH] * 3),
                                fontsize=11, fontname="dv")
        elif kind == 2:
            shape = page.new_shape()
            for bar in range(60):
                height = 40 + (bar * 37) % 300
                shape.draw_rect(pymupdf.Rect(72 + bar * 7.5, 500 - height, 78 + bar * 7.5, 500))
            shape.finish(color=(0, 0, 0.5), fill=(0.4, 0.6, 0.9), width=0.5)
            shape.commit()
            for tick in range(0, 60, 6):
                page.insert_text((72 + tick * 7.5, 515), f"Q{tick // 6 + 1}", fontsize=8,
                                 fontname="dv")
            page.insert_textbox(pymupdf.Rect(72, 540, 540, 720), f"{name} {ENGLISH}",
                                fontsize=11, fontname="dv")
        else:
            page.insert_font(fontname="cjk", fontfile=CJK_FONT)
            page.insert_textbox(pymupdf.Rect(72, 72, 540, 720), name + "".join(CHINESE * 12),
                                fontsize=14, fontname="cjk")
    doc.subset_fonts()  # as every PDF producer does: a full CJK font is 5 MB
    return doc.tobytes(garbage=3, deflate=True)


@functools.lru_cache(maxsize=1)
def _photo() -> bytes:
    """A 1200x900 photo-like JPEG: smooth colour gradients plus grain."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:900, 0:1200]
    pixels = np.stack([(x / 5) % 256, (y / 4) % 256, ((x + y) / 8) % 256], axis=-1)
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def bare_loop(paths: list[str], config: PdfConfig, lines: bool = True,
              mupdf_encoder: bool = False) -> int:
    """Render, extract words (and lines) and encode every page, nothing else. Encoding uses
    Pillow like the pipeline, or MuPDF's own JPEG encoder (`mupdf_encoder`), for reference."""
    options = config.render
    zoom = options.dpi / 72
    pages = 0
    for path in paths:
        doc = pymupdf.open(path)
        for page in doc:
            pixmap = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB,
                                     alpha=False)
            textpage = page.get_textpage(flags=options.text_flags())
            page.get_text("words", textpage=textpage)
            if lines:
                page.get_text("dict", textpage=textpage)
            if mupdf_encoder:
                pixmap.tobytes("jpeg", jpg_quality=options.quality)
            else:
                buffer = io.BytesIO()
                PILImage.frombuffer("RGB", (pixmap.width, pixmap.height), pixmap.samples_mv,
                                    "raw", "RGB", pixmap.stride, 1).save(
                    buffer, format="JPEG", quality=options.quality)
            pages += 1
    return pages


def work_loop(paths: list[str], work: RenderDocuments) -> int:
    """Pages through the task work (a sample or a reject each), as a task runs them."""
    pages = 0
    for path in paths:
        for item in work(InputFile(path, os.path.basename(path))):
            pages += isinstance(item, (Sample, Reject))
    return pages


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def render_process_cpu(work: RenderDocuments | None) -> float:
    """CPU seconds of the work's render process (which also reads and vets) so far."""
    if work is None or work.renderer is None or work.renderer.process is None:
        return 0.0
    return process_cpu_seconds(work.renderer.process.pid)


def cpu_now(work: RenderDocuments | None) -> float:
    """CPU seconds of this process, and of the render process when the work runs."""
    return time.process_time() + render_process_cpu(work)


def timed(fn, *args, work: RenderDocuments | None = None) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, pages)."""
    started, cpu = time.perf_counter(), cpu_now(work)
    pages = fn(*args, work) if work is not None else fn(*args)
    return time.perf_counter() - started, cpu_now(work) - cpu, pages


class TreeCpu:
    """CPU seconds of this process and all its descendants over a block: the Beam workers and
    their render processes are grandchildren that exit without being waited for, so
    `RUSAGE_CHILDREN` does not see them. Every 0.1 s the tree is listed and each process's /proc
    counters read (a process's last 0.1 s can be missed; the workers and render processes idle
    by then). Listed less often, a short run's render process (0.3 CPU s of start-up) could end
    unseen, and the fixed cost subtracted from a long run would leave it out. The sampling
    itself costs about 1 % of a core."""

    def __init__(self):
        self.seconds, self._last, self._pids, self._stop = 0.0, {}, set(), threading.Event()

    def _list(self) -> None:
        me = psutil.Process()
        try:
            self._pids = {me.pid} | {child.pid for child in me.children(recursive=True)}
        except psutil.Error:
            pass

    def _sample(self) -> None:
        for pid in self._pids:
            try:
                self._last[pid] = process_cpu_seconds(pid)
            except OSError:  # ended since it was listed
                continue

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            self._list()
            self._sample()

    def __enter__(self):
        self._list()
        self._sample()
        self._start = dict(self._last)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds = sum(cpu - self._start.get(key, 0.0) for key, cpu in self._last.items())


ONE_WORKER = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def pipeline_run(inputs: list[str], output: str, workers: int, config: PdfConfig):
    """(wall seconds, CPU seconds of the process tree, pages) of one whole run."""
    argv = ONE_WORKER if workers == 1 else [f"--workers={workers}"]
    started = time.perf_counter()
    with TreeCpu() as cpu:
        report = run(inputs, output, "bench", config, argv)
    return time.perf_counter() - started, cpu.seconds, report["input"]


def write_documents(folder: str, docs: int, pages: int) -> list[str]:
    os.makedirs(folder)
    paths = []
    for index in range(docs):
        paths.append(os.path.join(folder, f"doc{index:03d}.pdf"))
        with open(paths[-1], "wb") as f:
            f.write(make_pdf(pages, f"Document {index + 1}"))
    return paths


def in_process_rows(paths: list[str], config: PdfConfig) -> tuple[dict, dict]:
    """The bare loops and the work, alternated, each one's best of three (the machine is
    shared; CPU seconds, pages/s/core, are disturbed far less by other load than wall time);
    and the work's CPU split by process."""
    rows, split = {}, {}
    work = RenderDocuments(config, "bench")
    work.setup(0)  # the render process starts once per worker: not a per-page cost
    paths_in_process = (("bare", bare_loop, (True,)), ("bare words-only", bare_loop, (False,)),
                        ("work", work_loop, ()))
    try:
        for _ in range(3):
            for name, fn, extra in paths_in_process:
                renderer = render_process_cpu(work)
                result = timed(fn, paths, *extra, work=work) if name == "work" else \
                    timed(fn, paths, config, *extra)
                if name == "work" and result < rows.get(name, (float("inf"),)):
                    split = {"render process": render_process_cpu(work) - renderer}
                    split["this process"] = result[1] - split["render process"]
                rows[name] = min(rows.get(name, result), result)
    finally:
        work.close()
    return rows, split


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--pages", type=int, default=8, help="pages per document")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="N",
                        help="worker counts of the pipeline runs (1 is always run: the base)")
    parser.add_argument("--documents-per-task", type=int,
                        default=PdfConfig().documents_per_task,
                        help="PDFs per task; the tasks must outnumber the workers to use them")
    parser.add_argument("--work-only", action="store_true",
                        help="only the bare loops and the work (seconds instead of a minute)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="pipeline runs per worker count, the best kept (the in-process "
                             "rows always keep the best of three)")
    args = parser.parse_args()
    config = PdfConfig(documents_per_task=args.documents_per_task)
    workers = [] if args.work_only else sorted({1, *args.workers})
    with tempfile.TemporaryDirectory() as tmp:
        docs = os.path.join(tmp, "docs")
        paths = write_documents(docs, args.docs, args.pages)
        tasks = len(plan_pdf_tasks([InputFile(p, os.path.basename(p)) for p in paths],
                                   config.documents_per_task))
        single = write_documents(os.path.join(tmp, "single"), 1, 1)
        rows, split = in_process_rows(paths, config)
        if workers:  # what a first run in a process pays once (imports), paid before measuring
            pipeline_run(single, os.path.join(tmp, "warm-up"), 1, config)
        startup = {}
        for count in workers:
            startup[count] = pipeline_run(single, os.path.join(tmp, f"s{count}"), count, config)
            rows[f"pipeline x{count}"] = min(
                pipeline_run([docs], os.path.join(tmp, f"p{count}-{round_}"), count, config)
                for round_ in range(args.rounds))
        if workers:
            rows["bare mupdf-jpeg"] = timed(bare_loop, paths, config, True, True)

    print(f"{args.docs} PDFs x {args.pages} pages, {config.documents_per_task} PDFs per task "
          f"({tasks} tasks), {config.render.dpi:g} dpi {config.render.image_format} "
          f"q{config.render.quality}, cpu_count={os.cpu_count()}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    rate, per_core = {}, {}
    for name, (seconds, cpu, pages) in rows.items():
        rate[name], per_core[name] = pages / seconds, pages / cpu
        line = (f"  {name:15s} {pages:4d} pages {seconds:7.2f} s  {rate[name]:7.1f} pages/s"
                f"  {per_core[name]:6.1f} pages/s/core")
        if name.startswith("pipeline"):
            one_seconds, one_cpu, one_pages = startup[int(name.split("x")[1])]
            # the one-page run's start-up and finishing cost, subtracted
            rate[name + " marginal"] = (pages - one_pages) / (seconds - one_seconds)
            per_core[name + " marginal"] = (pages - one_pages) / (cpu - one_cpu)
            line += (f"  (one-page run {one_seconds:.2f} s, {one_cpu:.2f} CPU s; marginal "
                     f"{rate[name + ' marginal']:.1f} pages/s, "
                     f"{per_core[name + ' marginal']:.1f} pages/s/core)")
        print(line)
    work_pages = rows["work"][2]
    print("  work CPU per page: " + ", ".join(
        f"{name} {seconds / work_pages * 1000:.2f} ms" for name, seconds in split.items())
        + f" (bare loop {rows['bare'][1] / rows['bare'][2] * 1000:.2f} ms)")
    print(f"work / bare, pages/s/core                   {per_core['work'] / per_core['bare']:.2f}x"
          f"  (goal >= 0.8)")
    print(f"work / bare words-only, pages/s/core        "
          f"{per_core['work'] / per_core['bare words-only']:.2f}x")
    print(f"work / bare, wall                           {rate['work'] / rate['bare']:.2f}x")
    if not workers:
        return 0
    encoders = per_core["bare"] / per_core["bare mupdf-jpeg"]
    print(f"Pillow / MuPDF JPEG encoder                 {encoders:.2f}x")
    one = "pipeline x1 marginal"
    print(f"pipeline x1 marginal / bare, pages/s/core   {per_core[one] / per_core['bare']:.2f}x"
          f"  (goal >= 0.8)")
    print(f"pipeline x1 marginal / bare, wall           {rate[one] / rate['bare']:.2f}x")
    print(f"pipeline x1 end to end / bare, wall         "
          f"{rate['pipeline x1'] / rate['bare']:.2f}x")
    for count in workers[1:]:
        name = f"pipeline x{count}"
        print(f"{name + ' / x1':25s} marginal wall {rate[name + ' marginal'] / rate[one]:5.2f}x, "
              f"end to end {rate[name] / rate['pipeline x1']:5.2f}x, per core "
              f"{per_core[name + ' marginal'] / per_core[one]:5.2f}x"
              + ("" if tasks >= count else f"  ({tasks} tasks for {count} workers)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
