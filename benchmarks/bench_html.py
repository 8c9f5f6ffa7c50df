"""Pages per second of the HTML renderer against a naive loop, side by side on the same pages.

naive:   one browser; for each page open a new page, route requests the same way, load, measure
         the lines with the same extractor, screenshot, close the page: one page at a time.
pool=1:  HtmlRenderer with one page in flight (pages and contexts reused, no concurrency).
pool=N:  HtmlRenderer as the pipeline runs it, N pages in flight in one browser.
Browser launch is timed apart and left out of the rates.

    .venv/bin/python benchmarks/bench_html.py [--pages 24] [--pool 3] [--rounds 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from corpus.samples.html import make_site  # noqa: E402
from pipelines.html import PageReader, expand_inputs  # noqa: E402
from renderers.html import (EXTRACT_JS, LAUNCH_FLAGS, HtmlRenderer, PageJob,  # noqa: E402
                            RenderConfig, decode_html, local_path)

BENCH_PAGES = ("birds.html", "tea.html", "layout.html", "dialogs.html", "icons.html")


def make_jobs(folder: str, count: int) -> list[PageJob]:
    site = make_site(os.path.join(folder, "site"))
    reader = PageReader("bench", 5_000_000)
    base = [job for item in expand_inputs([site]) if os.path.basename(item.uri) in BENCH_PAGES
            for job in reader(item)]
    return [base[i % len(base)] for i in range(count)]


def naive(jobs: list[PageJob], config: RenderConfig) -> tuple[float, float, int]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        started = time.perf_counter()
        browser = playwright.chromium.launch(executable_path=config.chromium, args=LAUNCH_FLAGS)
        launched = time.perf_counter()
        lines = 0
        for job in jobs:
            html = decode_html(job.body).text.encode("utf-8")
            page = browser.new_page(viewport={"width": config.viewport_width,
                                              "height": config.viewport_height})
            page.on("dialog", lambda dialog: dialog.dismiss())

            def route(route, job=job, html=html):
                if route.request.url == job.url:
                    route.fulfill(body=html, headers={"content-type": "text/html; charset=utf-8"})
                elif route.request.url.startswith("http://page.invalid/"):
                    path = local_path(job.root, route.request.url)
                    route.fulfill(path=path) if path else route.fulfill(status=404)
                else:
                    route.abort()

            page.route("**/*", route)
            page.goto(job.url, wait_until="load", timeout=config.load_timeout_s * 1000)
            result = page.evaluate(EXTRACT_JS, {"scale": 1, "maxTextNodes": 50_000})
            page.screenshot(type="png")
            lines += len(result["lines"])
            page.close()
        finished = time.perf_counter()
        browser.close()
    return launched - started, finished - launched, lines


def pooled(jobs: list[PageJob], config: RenderConfig) -> tuple[float, float, int]:
    started = time.perf_counter()
    with HtmlRenderer(config) as renderer:
        launched = time.perf_counter()
        results = [future.result() for future in [renderer.submit(job) for job in jobs]]
        finished = time.perf_counter()
    failures = [r.reason for r in results if not hasattr(r, "lines")]
    assert not failures, failures
    return launched - started, finished - launched, sum(len(r.lines) for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=24)
    parser.add_argument("--pool", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the three loops this many times, interleaved; keep the best")
    args = parser.parse_args()
    config = RenderConfig(viewport_width=1024, viewport_height=1280, pool_size=args.pool)
    loops = [("naive", lambda jobs: naive(jobs, config)),
             ("pool=1", lambda jobs: pooled(jobs, RenderConfig(**{**vars(config),
                                                                  "pool_size": 1}))),
             (f"pool={args.pool}", lambda jobs: pooled(jobs, config))]
    best: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory() as folder:
        jobs = make_jobs(folder, args.pages)
        for _ in range(args.rounds):
            for name, loop in loops:
                result = loop(jobs)
                if name not in best or result[1] < best[name][1]:
                    best[name] = result
    rows = [(name, *best[name]) for name, _ in loops]
    print(f"{args.pages} pages, {os.cpu_count()} CPU(s), best of {args.rounds} round(s)")
    print(f"{'loop':<8} {'launch s':>9} {'render s':>9} {'pages/s':>8} {'lines':>6} "
          f"{'vs naive':>9}")
    naive_rate = args.pages / rows[0][2]
    for name, launch, seconds, lines in rows:
        rate = args.pages / seconds
        print(f"{name:<8} {launch:>9.2f} {seconds:>9.2f} {rate:>8.2f} {lines:>6} "
              f"{rate / naive_rate:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
