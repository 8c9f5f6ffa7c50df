"""Hand-written HTML inputs for `corpus html`: a folder of pages with local CSS and an image,
and a WARC file in Common Crawl form. Together they meet every reader/renderer reason that is
cheap to show and the page rules of A.4, besides ordinary English and Chinese pages."""
from __future__ import annotations

import io
import os
import uuid

from PIL import Image as PILImage

STYLE_CSS = """
body { font-family: "DejaVu Sans", sans-serif; margin: 32px; color: #222; background: #fdfdf8; }
h1 { font-family: "DejaVu Serif", serif; color: #134; border-bottom: 2px solid #134; }
.lead { font-size: 20px; }
.columns { columns: 2; column-gap: 40px; }
table { border-collapse: collapse; margin: 16px 0; }
td, th { border: 1px solid #999; padding: 4px 10px; }
.zh { font-family: "Noto Sans CJK SC", "WenQuanYi Micro Hei", sans-serif; }
.hidden { display: none; }
"""

ENGLISH = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Field notes</title>
<link rel="stylesheet" href="css/style.css">
<link rel="stylesheet" href="https://fonts.example.com/css?family=Remote">
<script src="https://cdn.example.com/analytics.js"></script></head>
<body>
<h1>Field notes on river birds</h1>
<p class="lead">Herons wait at the edge of the water, still as posts, until a fish comes close.</p>
<img src="img/heron.png" alt="a heron" width="160" height="90">
<img src="https://images.example.com/remote.jpg" alt="blocked">
<div class="columns"><p>Kingfishers nest in tunnels dug into sandy banks. They perch low over
slow water and dive head first, and a good bank holds several nests a few metres apart, each
tunnel a little longer than an arm.</p></div>
<table><tr><th>Bird</th><th>Seen</th></tr><tr><td>Grey heron</td><td>14</td></tr>
<tr><td>Kingfisher</td><td>3</td></tr></table>
<p class="hidden">This paragraph is not displayed and must not be labelled.</p>
<script>fetch("https://api.example.com/track?page=1").catch(() => {});</script>
</body></html>
"""

CHINESE = """<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>茶</title>
<link rel="stylesheet" href="css/style.css"></head>
<body class="zh">
<h1>中国茶的种类</h1>
<p>中国茶大致可以分为绿茶、红茶、乌龙茶、白茶、黄茶和黑茶六大类。不同的茶叶经过不同的加工工艺，
形成了各自独特的香气和滋味。绿茶不发酵，保留了鲜叶的清香；红茶全发酵，汤色红亮。</p>
<table><tr><th>种类</th><th>代表</th></tr><tr><td>绿茶</td><td>西湖龙井</td></tr>
<tr><td>乌龙茶</td><td>安溪铁观音</td></tr></table>
</body></html>
"""

LAYOUT = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="stylesheet" href="css/style.css"></head>
<body>
<h1>Layouts</h1>
<p dir="rtl" lang="he">שלום עולם, זהו משפט בעברית.</p>
<p dir="rtl" lang="ar">مرحبا بالعالم، هذه جملة باللغة العربية.</p>
<div style="display:flex; gap:24px">
  <div style="flex:1"><h2>Left</h2><p>The left column has its own lines of text.</p></div>
  <div style="flex:1"><h2>Right</h2><p>The right column has other lines of text.</p></div>
</div>
<p style="font-family:'DejaVu Sans Mono', monospace">monospace 0123456789</p>
</body></html>
"""

TINY = """<!doctype html><html><head><meta charset="utf-8"></head><body><p>Hi.</p></body></html>
"""

PRIVATE_USE = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<p>Icon fonts put glyphs in the Private Use Area: \ue001 \ue002 settings and search.</p>
</body></html>
"""

DIALOGS = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<h1>A page that shouts</h1>
<p>It opens an alert and a popup window; both are dismissed and the page still renders.</p>
<script>alert("hello"); window.open("https://ads.example.com/", "_blank");</script>
</body></html>
"""

NEVER_LOADS = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<p>This script never returns, so the page never finishes loading.</p>
<script>for (;;) {}</script></body></html>
"""

GBK_DECLARED = """<!doctype html><html><head><meta http-equiv="Content-Type"
content="text/html; charset=gb2312"><title>新闻</title></head><body>
<h1>今日新闻</h1><p>这个页面声明了 GB2312 编码，但它的字节其实是 UTF-8，需要按 UTF-8 读取。</p>
</body></html>
"""


def _too_many_characters() -> str:
    words = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
             "incididunt ut labore et dolore magna aliqua ").split()
    text = " ".join(words[i % len(words)] for i in range(2600))
    return (f'<!doctype html><html><head><meta charset="utf-8"></head><body style="margin:4px">'
            f'<p style="font-size:7px; line-height:8px">{text}</p></body></html>')


def _png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(path: str, data: str | bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def make_site(folder: str) -> str:
    """A folder of pages sharing `css/style.css` and `img/heron.png`."""
    _write(os.path.join(folder, "css", "style.css"), STYLE_CSS)
    _write(os.path.join(folder, "img", "heron.png"), _png(160, 90, (90, 120, 150)))
    pages = {"birds.html": ENGLISH, "tea.html": CHINESE, "layout.html": LAYOUT,
             "tiny.html": TINY, "icons.html": PRIVATE_USE, "dialogs.html": DIALOGS,
             "dense.html": _too_many_characters()}
    for name, html in pages.items():
        _write(os.path.join(folder, name), html)
    return folder


def make_warc(path: str) -> str:
    """A gzipped WARC with request and response records, like Common Crawl's."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    responses = [
        ("https://news.example.cn/today.html", "200 OK", "text/html",
         GBK_DECLARED.encode("utf-8")),
        ("https://example.org/birds", "200 OK", "text/html; charset=utf-8",
         ENGLISH.replace("css/style.css", "/css/style.css").encode("utf-8")),
        ("https://example.org/spin", "200 OK", "text/html; charset=utf-8",
         NEVER_LOADS.encode("utf-8")),
        ("https://example.org/garbage", "200 OK", "text/html",
         bytes(range(256)) * 8),
        ("https://example.org/logo.png", "200 OK", "image/png", _png(8, 8, (0, 0, 0))),
        ("https://example.org/missing", "404 Not Found", "text/html",
         b"<html><body><h1>Not found</h1></body></html>"),
    ]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for url, status, content_type, body in responses:
            record_id = f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>"
            common = {"WARC-Date": "2021-07-24T10:00:00Z"}
            request = writer.create_warc_record(
                url, "request", payload=io.BytesIO(b""),
                http_headers=StatusAndHeaders(f"GET {url} HTTP/1.1", [], is_http_request=True),
                warc_headers_dict={**common, "WARC-Record-ID":
                                   f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'req' + url)}>"})
            writer.write_record(request)
            headers = StatusAndHeaders(status, [("Content-Type", content_type)],
                                       protocol="HTTP/1.1")
            response = writer.create_warc_record(
                url, "response", payload=io.BytesIO(body), http_headers=headers,
                warc_headers_dict={**common, "WARC-Record-ID": record_id})
            writer.write_record(response)
    return path


def make_html_inputs(folder: str) -> list[str]:
    """The demo's inputs: one folder of pages and one WARC file."""
    site = make_site(os.path.join(folder, "site"))
    warc = make_warc(os.path.join(folder, "warc", "pages.warc.gz"))
    return [site, warc]
