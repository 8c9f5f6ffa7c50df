"""The HTML renderer in a real Chromium: label fidelity on hand-written pages (boxes hold the
text's ink, nothing inked is left unlabelled), offline rendering, and bad pages."""
import asyncio
import http.server
import io
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from PIL import Image as PILImage

from renderers.html import LOCAL_ORIGIN, HtmlRenderer, PageJob, RenderConfig, RenderedPage

pytestmark = pytest.mark.chromium

# Small pages, and time limits far above what a page needs even on a machine busy with other
# jobs: only the tests about time limits set short ones.
FAST = dict(viewport_width=640, viewport_height=720, load_timeout_s=10, page_timeout_s=30,
            pool_size=2)


@pytest.fixture(scope="module")
def renderer():
    with HtmlRenderer(RenderConfig(**FAST)) as r:
        yield r
    assert _processes(r.marker) == []


def _processes(marker: str) -> list[int]:
    time.sleep(0.5)  # Chromium's children take a moment to exit after the browser
    found = subprocess.run(["pgrep", "-f", marker.lstrip("-")], capture_output=True,
                           text=True).stdout
    return [int(pid) for pid in found.split()]


def job(html: str | bytes, name: str = "page.html", root: str | None = None) -> PageJob:
    body = html.encode("utf-8") if isinstance(html, str) else html
    return PageJob(uri=name, key=name, body=body, url=LOCAL_ORIGIN + name, root=root)


def page_of(html: str, styles: str = "") -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><style>body {{ margin: 20px; '
            f'background: #fff; color: #000; }} {styles}</style></head><body>{html}</body></html>')


def ink(page: RenderedPage, threshold: int = 110) -> np.ndarray:
    grey = np.asarray(PILImage.open(io.BytesIO(page.image)).convert("L"))
    assert grey.shape == (page.height, page.width)
    return grey < threshold


def assert_boxes_hold_ink(page: RenderedPage, margin: int = 1) -> None:
    """Every box holds ink, and (almost) every inked pixel lies in a box."""
    mask = ink(page)
    covered = np.zeros_like(mask)
    for line in page.lines:
        x1, y1, x2, y2 = line.box
        x1, y1 = max(0, int(x1) - margin), max(0, int(y1) - margin)
        x2, y2 = int(np.ceil(x2)) + margin, int(np.ceil(y2)) + margin
        assert mask[y1:y2, x1:x2].any(), f"no ink in the box of {line.text!r}"
        covered[y1:y2, x1:x2] = True
    stray = mask & ~covered
    assert stray.sum() <= 0.002 * mask.sum(), f"{stray.sum()} of {mask.sum()} ink pixels unlabelled"


def texts(page: RenderedPage) -> list[str]:
    return [line.text for line in page.lines]


def test_fonts_and_inline_styles(renderer):
    html = page_of("""
      <h1 style="font-family:'DejaVu Serif'">A serif heading</h1>
      <p style="font-family:'DejaVu Sans'">Sans text with <b>bold</b>, <i>italic</i> and
        <u>underlined</u> words.</p>
      <p style="font-family:'DejaVu Sans Mono'; font-size:11px">mono 0123456789 {}[]()</p>
      <p style="font-size:30px; text-transform:uppercase">shouted words</p>""")
    page = renderer.render(job(html))
    assert texts(page) == ["A serif heading",
                           "Sans text with bold, italic and underlined words.",
                           "mono 0123456789 {}[]()", "SHOUTED WORDS"]
    assert_boxes_hold_ink(page)


def test_chinese_paragraph_wraps_into_lines_in_reading_order(renderer):
    sentence = "汉字的排版没有空格，所以一行在任何两个字之间都可以断开。"
    html = page_of(f'<p style="width:300px">{sentence * 3}</p>'
                   f'<p style="font-family:\'WenQuanYi Micro Hei\'">文泉驿微米黑字体</p>',
                   "p { font-family: 'Noto Sans CJK SC'; font-size: 18px; }")
    page = renderer.render(job(html))
    assert len(page.lines) >= 4
    assert "".join(texts(page)[:-1]) == sentence * 3
    assert texts(page)[-1] == "文泉驿微米黑字体"
    tops = [line.box[1] for line in page.lines]
    assert tops == sorted(tops)
    assert_boxes_hold_ink(page)


def test_vertical_chinese_columns_are_lines(renderer):
    text = "竖排的中文从上到下书写，列从右向左排列。"
    html = page_of(f'<p style="writing-mode:vertical-rl; height:200px; margin:0">{text}</p>',
                   "p { font-family: 'Noto Sans CJK SC'; font-size: 20px; }")
    page = renderer.render(job(html))
    assert "".join(texts(page)) == text and len(page.lines) >= 2
    for line in page.lines:
        x1, y1, x2, y2 = line.box
        assert y2 - y1 > x2 - x1  # a column, taller than wide
    assert page.lines[0].box[0] > page.lines[1].box[0]  # columns run right to left
    assert_boxes_hold_ink(page)


def test_right_to_left_text_keeps_logical_order(renderer):
    hebrew, arabic = "שלום עולם, זהו משפט בעברית", "مرحبا بالعالم، هذه جملة"
    html = page_of(f'<p dir="rtl">{hebrew}</p><p dir="rtl" lang="ar">{arabic}</p>'
                   f'<p>Mixed: English then {hebrew} inside.</p>')
    page = renderer.render(job(html))
    assert texts(page) == [hebrew, arabic, f"Mixed: English then {hebrew} inside."]
    assert page.lines[0].box[2] > 600  # flush right
    assert_boxes_hold_ink(page)


def test_table_cells_and_css_columns(renderer):
    words = " ".join(f"word{i}" for i in range(60))
    html = page_of(f"""
      <table><tr><th>Name</th><th>Count</th></tr><tr><td>apples</td><td>12</td></tr></table>
      <div style="columns:2; column-gap:40px; width:560px">{words}</div>""",
                   "td, th { border: 1px solid #ccc; padding: 3px 8px; }")
    page = renderer.render(job(html))
    assert texts(page)[:4] == ["Name", "Count", "apples", "12"]
    column_lines = page.lines[4:]
    assert " ".join(line.text for line in column_lines) == words
    lefts = [line.box[0] for line in column_lines]
    split = lefts.index(max(lefts))  # the first line of the second column
    assert 0 < split and all(x < 300 for x in lefts[:split]) and all(x > 300 for x in lefts[split:])
    assert_boxes_hold_ink(page)


def test_text_that_is_not_painted_gets_no_label(renderer):
    html = page_of("""
      <p>visible one</p>
      <p style="display:none">hidden by display</p>
      <p style="visibility:hidden">hidden by visibility</p>
      <div style="opacity:0"><p>hidden by opacity</p></div>
      <p style="color:transparent">hidden by colour</p>
      <p style="font-size:0">hidden by size</p>
      <span style="position:absolute; width:1px; height:1px; overflow:hidden;
                   clip:rect(0 0 0 0)">screen reader only</span>
      <div style="position:relative; height:40px">
        <p style="margin:0">covered by a banner</p>
        <div style="position:absolute; inset:0; background:#fff"></div></div>
      <div style="height:20px; overflow:hidden"><p style="margin:0 0 30px">shown line</p>
        <p>clipped away</p></div>
      <p>visible two</p>""")
    page = renderer.render(job(html))
    assert texts(page) == ["visible one", "shown line", "visible two"]
    assert_boxes_hold_ink(page)


def test_scale_factor_and_full_page_capture():
    config = RenderConfig(**{**FAST, "device_scale_factor": 2.0, "capture": "full",
                             "pool_size": 1})
    paragraphs = "".join(f"<p>paragraph number {i}</p>" for i in range(40))
    with HtmlRenderer(config) as renderer:
        page = renderer.render(job(page_of(paragraphs)))
    assert page.width == 2 * 640 and page.height > 2 * 720
    assert texts(page) == [f"paragraph number {i}" for i in range(40)]
    assert page.lines[-1].box[3] > 2 * 720
    assert_boxes_hold_ink(page)


def test_local_resources_load_and_everything_else_is_blocked(renderer, tmp_path):
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    (tmp_path / "css").mkdir()
    (tmp_path / "css" / "site.css").write_text("p.styled { font-size: 40px; }")
    html = page_of(f"""
      <link rel="stylesheet" href="css/site.css"><link rel="stylesheet" href="{base}/a.css">
      <p class="styled">styled text</p>
      <img src="{base}/a.png"><img src="http://localhost:{server.server_address[1]}/b.png">
      <iframe src="{base}/frame.html"></iframe>
      <img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">
      <script src="{base}/a.js"></script>
      <script>fetch("{base}/fetch").catch(() => {{}}); new WebSocket("ws://127.0.0.1:9/");
        navigator.sendBeacon("{base}/beacon", "x");</script>""")
    try:
        page = renderer.render(job(html, "page.html", root=str(tmp_path)))
    finally:
        server.shutdown()
    assert hits == []
    assert page.stats["blocked_requests"] >= 7
    assert page.stats["local_requests"] == 1
    assert page.lines[0].box[3] - page.lines[0].box[1] > 40  # the local CSS applied


@pytest.mark.parametrize("html, reason", [
    ("<p>never loads</p><script>for (;;) {}</script>", "load_timeout"),
    ("<div>" + "<i>x</i>" * 6_000 + "</div>", "dom_too_large"),
    (bytes(range(256)) * 8, "binary_content"),
])
def test_bad_pages_are_named_rejects(html, reason):
    # limits short enough for the bad page to reach them soon, long enough for the good one
    # on a busy machine
    config = RenderConfig(**{**FAST, "load_timeout_s": 5, "page_timeout_s": 10,
                             "max_elements": 5_000})
    with HtmlRenderer(config) as renderer:
        result = renderer.render(job(html))
        assert result.reason == reason
        assert renderer.render(job(page_of("<p>the next page is fine</p>"))).text == \
            "the next page is fine"


def test_dialogs_popups_and_navigation_away_are_contained(renderer):
    html = page_of("""<p>still here</p><script>alert("a"); confirm("b");
      window.open("https://example.com/"); location.href = "https://example.com/away";</script>""")
    page = renderer.render(job(html))
    assert texts(page) == ["still here"]
    assert page.stats["dialogs"] == 2
    assert page.stats["popups"] == 1  # window.open opened nothing, and was counted
    assert page.stats["blocked_requests"] >= 1


def test_a_page_without_text_renders_with_no_lines(renderer):
    page = renderer.render(job(page_of('<div style="height:200px;background:#39c"></div>')))
    assert page.lines == [] and page.text == ""


def test_browser_crash_restarts_the_browser_and_retries_the_page():
    busy = page_of("<p>busy page</p><script>const t = Date.now(); "
                   "while (Date.now() - t < 1500) {}</script>")
    with HtmlRenderer(RenderConfig(**FAST)) as renderer:
        future = renderer.submit(job(busy))
        time.sleep(0.8)
        browser = int(subprocess.run(["pgrep", "-o", "-f", renderer.marker.lstrip("-")],
                                     capture_output=True, text=True).stdout.split()[0])
        os.kill(browser, signal.SIGKILL)
        assert future.result(timeout=120).text == "busy page"
        assert renderer.launches == 2
        assert renderer.render(job(page_of("<p>after the crash</p>"))).text == "after the crash"
    assert _processes(renderer.marker) == []


def test_browser_is_relaunched_every_n_pages():
    with HtmlRenderer(RenderConfig(**{**FAST, "restart_every": 2})) as renderer:
        for i in range(3):
            assert renderer.render(job(page_of(f"<p>page {i}</p>"))).text == f"page {i}"
        assert renderer.launches == 2
    assert _processes(renderer.marker) == []


async def _crash_every_page(browser) -> int:
    """Fault injection through the DevTools protocol: the renderer of each open page dies."""
    crashed = 0
    for context in browser.contexts:
        for page in context.pages:
            session = await context.new_cdp_session(page)
            try:
                await asyncio.wait_for(session.send("Page.crash"), 2)
            except Exception:  # the crash cuts the session; that is the point
                pass
            crashed += 1
    return crashed


def test_renderer_crash_is_an_error_and_the_next_page_is_fine():
    with HtmlRenderer(RenderConfig(**{**FAST, "pool_size": 1})) as renderer:
        assert renderer.render(job(page_of("<p>first</p>"))).text == "first"
        assert renderer._call(_crash_every_page(renderer._browser)) == 1  # an idle page
        assert renderer.render(job(page_of("<p>second</p>"))).text == "second"
        busy = renderer.submit(job(page_of("<p>busy</p><script>const t = Date.now(); "
                                           "while (Date.now() - t < 8000) {}</script>")))
        time.sleep(2)  # the page is open and busy, even on a busy machine
        renderer._call(_crash_every_page(renderer._browser))
        result = busy.result(timeout=120)
        assert (result.reason, result.status) == ("renderer_crashed", "errored")
        assert renderer.render(job(page_of("<p>third</p>"))).text == "third"
        assert renderer.launches == 1


def test_a_slow_page_does_not_hold_up_the_others(renderer):
    slow = renderer.submit(job(page_of("<p>slow</p><script>for (;;) {}</script>"), "slow.html"))
    started = time.perf_counter()
    quick = [renderer.render(job(page_of(f"<p>quick {i}</p>"), f"q{i}.html")) for i in range(3)]
    quick_seconds = time.perf_counter() - started
    assert [page.text for page in quick] == ["quick 0", "quick 1", "quick 2"]
    assert not slow.done() or quick_seconds < FAST["load_timeout_s"]
    assert slow.result(timeout=120).reason == "load_timeout"


def test_the_same_page_renders_to_the_same_bytes(renderer):
    html = page_of("<h1>Same</h1><p>the same page twice gives the same sample</p>")
    first, second = renderer.render(job(html)), renderer.render(job(html))
    assert first.image == second.image and first.lines == second.lines
