"""`corpus html` fed the worst inputs together in one run, beside a good page, while a local
HTTP server on 127.0.0.1 counts every request it receives: it must receive none.
`test_html_pipeline.py` runs the demo (a page that never loads, binary content, a 404 and a
non-HTML record in a WARC, the page rules) and `test_html_render.py` checks blocking page by
page; this module puts in one run pages reaching for the server by every channel a browser
has (subresources, script APIs, navigation away), a script that never ends, an oversized DOM,
a 0-byte file, binary bytes, bytes that are not UTF-8, a page over the size limit, a
decompression-bomb image, paths out of the input folder and `file://` URLs, and a truncated
WARC; and it measures the driver's memory.

One page holding all the reaching channels at once sometimes hit `load_timeout` on this
2-core machine (the load event waits on many blocked requests), so they are split in three."""
from __future__ import annotations

import gzip
import http.server
import threading

import pytest

from bad_input import check_rejects_match_report, kept_samples, reason_of, rejects_table, \
    run_measured
from corpus.samples.html import ENGLISH, STYLE_CSS, make_warc
from corpus.samples.pairs import png_bomb

pytestmark = pytest.mark.chromium


def page(body: str, head: str = "") -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8">{head}</head><body>{body}'
            "</body></html>")


def reaching_pages(base: str) -> dict[str, str]:
    """Every way a page can ask the network for something, all aimed at the local server:
    subresources, scripts, and navigation away."""
    ws = base.replace("http", "ws")
    return {"reach-resources.html": page(f"""
      <h1>Resources from elsewhere</h1><p>Many requests leave from here; none may arrive.</p>
      <img src="{base}/img.png"><img srcset="{base}/srcset.png 2x">
      <iframe src="{base}/frame.html"></iframe><object data="{base}/object"></object>
      <video src="{base}/video.mp4" autoplay></video><audio src="{base}/audio.mp3" autoplay>
      </audio><div style="background: url({base}/background.png)">styled</div>
      <script src="{base}/script.js"></script>""", head=f"""
      <link rel="stylesheet" href="{base}/style.css"><link rel="prefetch" href="{base}/prefetch">
      <link rel="preload" as="image" href="{base}/preload.png"><link rel="icon" href="{base}/icon">
      <style>@import url("{base}/import.css");
        @font-face {{ font-family: far; src: url("{base}/font.woff2"); }}
        p {{ font-family: far, sans-serif; }}</style>"""),
        "reach-scripts.html": page(f"""
      <h1>Scripts that call home</h1><p>Every script API that sends a request is tried.</p>
      <form id="f" action="{base}/form" method="post"><input name="q" value="1"></form>
      <script>
        fetch("{base}/fetch").catch(() => {{}});
        const x = new XMLHttpRequest(); x.open("GET", "{base}/xhr"); x.send();
        navigator.sendBeacon("{base}/beacon", "x");
        try {{ new WebSocket("{ws}/socket"); }} catch (e) {{}}
        try {{ new EventSource("{base}/events"); }} catch (e) {{}}
        try {{ new Worker("{base}/worker.js"); }} catch (e) {{}}
        import("{base}/module.js").catch(() => {{}});
        new Image().src = "{base}/new-image.png";
        document.getElementById("f").submit();
        setTimeout(() => {{ location.href = "{base}/navigate"; }}, 10);
      </script>"""),
        "reach-refresh.html": page(
            "<h1>Refresh</h1><p>This page asks to be replaced at once by another one.</p>",
            head=f'<meta http-equiv="refresh" content="0; url={base}/refresh">')}


@pytest.fixture(scope="module")
def server():
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()


def write_inputs(folder, base: str) -> None:
    site = folder / "site"
    (site / "css").mkdir(parents=True)
    (site / "img").mkdir()
    (site / "css" / "style.css").write_text(STYLE_CSS)
    (site / "img" / "bomb.png").write_bytes(png_bomb())
    (site / "good.html").write_text(ENGLISH.replace("https://", f"{base}/https/"))
    for name, html in reaching_pages(base).items():
        (site / name).write_text(html)
    (site / "spin.html").write_text(page("<p>spins forever</p><script>for (;;) {}</script>"))
    (site / "dom.html").write_text(page("<div>" + "<i>x</i> " * 6_000 + "</div>"))
    (site / "empty.html").write_bytes(b"")
    (site / "binary.html").write_bytes(bytes(range(256)) * 8)
    (site / "not-utf8.html").write_bytes(page(
        "<h1>Caf\xe9 menu</h1><p>" + "Coffee, tea and cake are served all day long. " * 8
        + "</p>").encode("latin-1"))
    (site / "oversized.html").write_text(page("<p>" + "word " * 1_100_000 + "</p>"))
    (site / "bomb.html").write_text(page(
        "<h1>A picture</h1><p>The image below claims nine hundred million pixels.</p>"
        '<img src="img/bomb.png">'))
    (site / "escape.html").write_text(page(
        "<h1>Reaching out of the folder</h1><p>Paths that leave the input root are refused.</p>"
        '<img src="../../../../../etc/hostname"><iframe src="file:///etc/passwd"></iframe>'
        '<link rel="stylesheet" href="file:///etc/fonts/fonts.conf">'))
    warc = make_warc(str(folder / "warc" / "pages.warc.gz"))
    with open(warc, "rb") as f:
        data = f.read()
    # Cut inside the last record: the earlier ones are read, the cut one is one error.
    (folder / "warc" / "pages.warc.gz").write_bytes(data[: len(data) - 200])
    assert gzip.decompress(data)  # the whole file was valid before the cut


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, server):
    base, hits = server
    root = tmp_path_factory.mktemp("html")
    write_inputs(root / "in", base)
    measured = run_measured("""
        from conftest import IN_MEMORY
        from pipelines import html
        from renderers.html import RenderConfig
    """, f"""
        config = html.HtmlConfig(render=RenderConfig(load_timeout_s=12, page_timeout_s=24,
                                                     max_elements=5_000),
                                 max_page_bytes=5_000_000)
        report = html.run([{str(root / "in")!r}], {str(root / "out")!r}, "bad", config,
                          IN_MEMORY)
    """, root, timeout=600)
    return root / "out", measured, hits


def test_the_local_server_receives_nothing(outcome):
    out, measured, hits = outcome
    assert hits == []
    assert measured.report["stats"]["blocked_requests"] >= 20


def test_every_bad_input_is_counted_under_its_reason(outcome):
    report = outcome[1].report
    # Kept: good, the three reaching pages, not-utf8 (decoded by detection), bomb (the image is
    # not drawn), escape (the outside paths are refused), and two WARC pages read before the cut.
    assert report["kept"] == 9
    assert report["dropped"] == {"not_html": 1, "page_too_large": 1, "binary_content": 2,
                                 "load_timeout": 2, "dom_too_large": 1,
                                 "too_few_characters": 1}
    assert report["errored"] == {"corrupt_warc": 1}
    assert report["input"] == 9 + 8 + 1


def test_the_rejects_table_names_each_bad_input(outcome):
    out, measured, _ = outcome
    rows = rejects_table(out)
    check_rejects_match_report(measured.report, rows)
    site = {k: v for k, v in reason_of(rows).items() if k.startswith("site/")}
    assert site == {"site/empty.html": "too_few_characters",
                    "site/spin.html": "load_timeout", "site/dom.html": "dom_too_large",
                    "site/binary.html": "binary_content",
                    "site/oversized.html": "page_too_large"}
    warc = sorted(v for k, v in reason_of(rows).items() if k.startswith("warc/"))
    assert warc == ["binary_content", "corrupt_warc", "load_timeout", "not_html"]
    kept = sorted(kept_samples(out, measured.report))
    assert [k for k in kept if k.startswith("site/")] == [
        "site/bomb.html", "site/escape.html", "site/good.html",
        "site/not-utf8.html", "site/reach-refresh.html", "site/reach-resources.html",
        "site/reach-scripts.html"]


def test_memory_stays_bounded(outcome):
    # Measured: the driver grows by ~60 MiB; Chromium runs in its own processes. Reading the
    # 5.5 MB page whole, or keeping every rendered screenshot, would not fit.
    assert outcome[1].growth_mib < 150, outcome[1]
