"""Render HTML pages offline in headless Chromium and read back every visible text line's box.

One `HtmlRenderer` owns one browser (Debian's Chromium, driven by Playwright's async API on an
event loop in a thread of its own) and a pool of browser contexts with one page each, reused
across pages, so that several pages are in flight at once and one slow page does not idle the
others. `submit(job)` returns a future; `render(job)` waits for it. The browser is relaunched
after a crash and every `restart_every` pages; a context that timed out or crashed is dropped.

Lines whose box shows no text on the screenshot are left out of the labels and the page text
(`leave_out_invisible_lines`): text the browser paints but nobody can see, in a colour at or
near its background's (a stylesheet applied only in part), at an opacity near 0, under an
overlay. A page where most lines are such is dropped (`invisible_text`).

Offline: the page's own bytes are served from memory, files under the page's local root from
disk, `data:` URLs work; every other request is aborted and counted, and the browser is launched
with a dead proxy and a resolver that resolves nothing, so no fetch can leave the machine.

No Beam here: `pipelines/html.py` runs one in each worker process.
"""
from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import io
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image as PILImage

MAX_SCREENSHOT_SIDE = 16384  # Chromium's largest texture
LOCAL_ORIGIN = "http://page.invalid/"  # .invalid never resolves; local pages live under it
EXTRACT_JS = (Path(__file__).with_name("html_extract.js")).read_text(encoding="utf-8")
LAUNCH_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    # Belt and braces behind request routing: nothing resolves, everything else meets a dead
    # proxy (loopback included), and WebRTC may not send UDP around the proxy.
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>", "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--disable-features=MediaRouter,OptimizationHints,Translate",
]
# Stops CSS animation and transitions so the screenshot shows what was measured.
FREEZE_CSS = ("*, *::before, *::after { animation: none !important; "
              "transition: none !important; caret-color: transparent !important; }")
# `window.open` opens nothing and counts the attempt: a popup the context closes as it opens
# raced with the page's own load (the load event of the page that opened it was then lost).
POPUP_GUARD_JS = """(() => {
  let opened = 0;
  window.open = () => { opened += 1; return null; };
  Object.defineProperty(window, "__corpusPopups", {get: () => opened});
})()"""
LOADED_JS = """() => document.readyState === "complete" ||
  new Promise((resolve) => addEventListener("load", () => resolve(true), {once: true}))"""
SETTLE_JS = """async (timeoutMs) => {
  await Promise.race([document.fonts.ready, new Promise((r) => setTimeout(r, timeoutMs))]);
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  window.scrollTo(0, 0);
  // A blocked image would show a broken-image icon and its alt text: ink with no text node.
  for (const img of document.images) {
    if (img.complete && img.naturalWidth === 0) img.style.visibility = "hidden";
  }
  const root = document.documentElement;
  return {elements: document.getElementsByTagName("*").length,
          height: Math.max(root ? root.scrollHeight : 0,
                           document.body ? document.body.scrollHeight : 0)};
}"""


@dataclass
class RenderConfig:
    chromium: str = "/usr/bin/chromium"
    viewport_width: int = 1024  # CSS pixels; a common desktop layout width
    viewport_height: int = 1280  # the capture height when capture is "viewport"
    capture: str = "viewport"  # "viewport": the first screen; "full": the whole page
    max_page_height: int = 8192  # "full" capture stops here (CSS pixels)
    device_scale_factor: float = 1.0
    javascript: bool = True
    load_timeout_s: float = 10.0  # until the load event
    page_timeout_s: float = 20.0  # the whole page: load, settle, measure, screenshot
    pool_size: int = 3  # pages in flight per browser
    pages_per_context: int = 100  # a context is replaced after this many pages
    restart_every: int = 1000  # the browser is relaunched after this many pages
    max_elements: int = 50_000  # DOM elements; larger pages are dropped as dom_too_large
    max_text_nodes: int = 50_000
    image_format: str = "png"  # "png" or "jpeg"
    jpeg_quality: int = 90
    min_text_contrast: int = 48  # a line whose box varies less (0-255) is left out; 0: off
    max_invisible_share: float = 0.5  # a page with a larger share of such lines is dropped

    def validate(self) -> None:
        if self.capture not in ("viewport", "full"):
            raise ValueError(f"capture must be 'viewport' or 'full', got {self.capture!r}")
        if self.image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be 'png' or 'jpeg', got {self.image_format!r}")
        if min(self.viewport_width, self.viewport_height, self.pool_size) < 1:
            raise ValueError("viewport sizes and pool_size must be positive")
        if not 0 < self.load_timeout_s <= self.page_timeout_s:
            raise ValueError("need 0 < load_timeout_s <= page_timeout_s")
        if self.device_scale_factor <= 0:
            raise ValueError("device_scale_factor must be positive")
        if not 0 <= self.min_text_contrast <= 255:
            raise ValueError("min_text_contrast must be within 0..255")
        if not 0 < self.max_invisible_share <= 1:
            raise ValueError("max_invisible_share must be within (0, 1]")
        tallest = max(self.viewport_height, self.max_page_height) * self.device_scale_factor
        if tallest > MAX_SCREENSHOT_SIDE or self.viewport_width * self.device_scale_factor \
                > MAX_SCREENSHOT_SIDE:
            raise ValueError(f"screenshots are at most {MAX_SCREENSHOT_SIDE} pixels a side; "
                             f"lower max_page_height or device_scale_factor")


@dataclass
class PageJob:
    """One page to render. `url` is what the browser navigates to: the page's own URL (WARC) or
    its place under LOCAL_ORIGIN (local files); `root` is the folder local requests may read."""

    uri: str
    key: str
    body: bytes
    url: str
    root: str | None = None
    header_charset: str | None = None


@dataclass
class Line:
    text: str
    box: tuple[float, float, float, float]  # pixels of the screenshot


@dataclass
class RenderedPage:
    image: bytes
    image_format: str
    width: int
    height: int
    lines: list[Line]
    text: str
    stats: dict = field(default_factory=dict)  # blocked_requests, dialogs, popups, ...
    decisions: list[str] = field(default_factory=list)


@dataclass
class RenderFailure:
    reason: str
    status: str = "dropped"  # "dropped" for bad pages, "errored" for crashes
    detail: str = ""


class PageError(Exception):
    """A page that cannot become a sample, with a stable reason."""

    def __init__(self, reason: str, status: str = "dropped", detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.status, self.detail = reason, status, detail


# ---------------------------------------------------------------------------------------------
# Charset: the declared one, unless the bytes say otherwise.

# Labels as browsers map them (WHATWG Encoding Standard), to Python codec names.
CHARSET_ALIASES = {
    "iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "l1": "cp1252",
    "us-ascii": "cp1252", "ascii": "cp1252", "windows-1252": "cp1252", "iso-8859-9": "cp1254",
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "gb_2312-80": "gb18030",
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
    "windows-31j": "cp932", "euc-kr": "cp949", "ks_c_5601-1987": "cp949", "big5": "big5hkscs",
    "tis-620": "cp874", "iso-8859-11": "cp874", "utf8": "utf-8", "unicode-1-1-utf-8": "utf-8",
    # A meta prescan never yields UTF-16 (the bytes would not be ASCII-compatible).
    "utf-16": "utf-8", "utf-16le": "utf-8", "utf-16be": "utf-8",
}
META_CHARSET = re.compile(rb"""<meta[^>]{0,512}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""",
                          re.IGNORECASE)
PRESCAN_BYTES = 4096
MAX_REPLACEMENT_RATIO = 0.01  # more undecodable characters than this and the page is dropped


@dataclass
class DecodedHtml:
    text: str
    encoding: str
    declared: str | None
    decision: str | None = None  # what was fixed, for Sample.decisions


def normalize_charset(label: str | None) -> str | None:
    """A Python codec name for a declared label, or None when the label is unknown."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    label = CHARSET_ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def declared_charset(body: bytes, header_charset: str | None = None) -> str | None:
    """The transport-layer charset if known, else the first `<meta>` one, as a codec name."""
    declared = normalize_charset(header_charset)
    if declared is None:
        match = META_CHARSET.search(body[:PRESCAN_BYTES])
        declared = normalize_charset(match.group(1).decode("ascii")) if match else None
    return declared


def looks_binary(body: bytes) -> bool:
    """NUL bytes or many C0 control bytes in the head: an image, archive or other non-text."""
    head = body[:8192]
    if not head:
        return False
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if b < 0x09 or 0x0E <= b < 0x20 and b != 0x1B)
    return controls > 0.05 * len(head)


def _replacement_ratio(text: str) -> float:
    return text.count("\ufffd") / max(1, len(text))


def _guess_legacy(body: bytes) -> str | None:
    from charset_normalizer import from_bytes  # ships with requests, which Beam pulls in

    best = from_bytes(body[:65536]).best()
    return normalize_charset(best.encoding) if best is not None else None


def decode_html(body: bytes, header_charset: str | None = None) -> DecodedHtml:
    """Decode page bytes as a browser would, fixing the common wrong-charset cases.

    - A BOM wins, as in browsers.
    - Bytes that are valid UTF-8 (and not plain ASCII) under a legacy declaration are UTF-8:
      decoding them as declared would give mojibake, and the chance that real legacy text is
      valid UTF-8 is tiny. Recorded as `charset_utf8_over_<declared>`.
    - Bytes that are not UTF-8 under a UTF-8 declaration (or none) are decoded with the
      detected legacy charset when that decodes cleanly (`charset_detected_<codec>`).
    Raises PageError `binary_content` for non-text bytes and `undecodable_text` when neither
    reading gives text with few replacement characters.
    """
    if body.startswith(codecs.BOM_UTF8):
        return DecodedHtml(body[3:].decode("utf-8", "replace"), "utf-8", None)
    for bom, codec in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if body.startswith(bom):
            return DecodedHtml(body[2:].decode(codec, "replace"), codec, None)
    if looks_binary(body):
        raise PageError("binary_content", detail="NUL or control bytes in the first 8 KiB: not "
                                                 "text")
    declared = declared_charset(body, header_charset)
    try:
        as_utf8 = body.decode("utf-8")
    except UnicodeDecodeError:
        as_utf8 = None
    if declared not in (None, "utf-8"):
        if as_utf8 is not None and not body.isascii():
            return DecodedHtml(as_utf8, "utf-8", declared, f"charset_utf8_over_{declared}")
        text = body.decode(declared, "replace")
        if _replacement_ratio(text) > MAX_REPLACEMENT_RATIO:
            raise PageError("undecodable_text", detail=f"declared {declared}")
        return DecodedHtml(text, declared, declared)
    if as_utf8 is not None:
        return DecodedHtml(as_utf8, "utf-8", declared)
    guess = _guess_legacy(body)
    if guess not in (None, "utf-8"):
        text = body.decode(guess, "replace")
        if _replacement_ratio(text) <= MAX_REPLACEMENT_RATIO:
            return DecodedHtml(text, guess, declared, f"charset_detected_{guess}")
    text = body.decode("utf-8", "replace")
    if _replacement_ratio(text) > MAX_REPLACEMENT_RATIO:
        raise PageError("undecodable_text", detail=f"declared {declared or 'nothing'}")
    return DecodedHtml(text, "utf-8", declared)


# ---------------------------------------------------------------------------------------------
# Geometry: from the extractor's lines to what fits in the screenshot.

def lines_in_capture(raw_lines: list[dict], width: int, height: int,
                     tolerance: float = 1.0) -> list[Line]:
    """Lines whose box lies inside the screenshot (a line cut by an edge is not fully shown,
    so it is left out of both the regions and the text); boxes are clamped to the image."""
    lines = []
    for raw in raw_lines:
        x1, y1, x2, y2 = raw["box"]
        text = " ".join(raw["text"].split())
        if not text or x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance \
                or y2 > height + tolerance:
            continue
        box = (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
        if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
            lines.append(Line(text, tuple(round(v, 2) for v in box)))
    return lines


def local_path(root: str, url: str) -> str | None:
    """The file under `root` that a LOCAL_ORIGIN URL names, or None if it leaves the root."""
    path = unquote(urlsplit(url).path).lstrip("/")
    real_root = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(real_root, path))
    if candidate != real_root and not candidate.startswith(real_root + os.sep):
        return None
    return candidate if os.path.isfile(candidate) else None


def _same_document(a: str, b: str) -> bool:
    return unquote(a.split("#", 1)[0]) == unquote(b.split("#", 1)[0])


# ---------------------------------------------------------------------------------------------
# Pixels: a line is labelled only if its box shows text.

def colour_spread(pixels: np.ndarray, box: tuple[float, float, float, float]) -> int:
    """The largest spread (max - min, 0-255) of one colour channel over the RGB pixels the box
    touches. Glyph stems reach the full text colour even at 10 px, so anti-aliasing does not
    lower it. Each channel counts on its own: coloured text on a dark background (green or
    blue on black, a dark theme's links and highlighted code) can share its darkest channel
    with the background, so the darkest-channel measure of PDF pages (`renderers.pdf.has_ink`)
    would call it inkless."""
    x0, y0 = int(box[0]), int(box[1])
    x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    crop = pixels[y0:y1, x0:x1]
    if not crop.size:
        return 0
    # Rows of interleaved channels (a view): numpy reduces one axis of a 2-D array ~13x
    # faster than two axes of a 3-D one.
    rows = crop.reshape(crop.shape[0], -1)
    highest = rows.max(axis=0).reshape(-1, 3).max(axis=0)
    lowest = rows.min(axis=0).reshape(-1, 3).min(axis=0)
    return int((highest.astype(np.int16) - lowest).max())


def leave_out_invisible_lines(page: RenderedPage, config: RenderConfig
                              ) -> RenderedPage | RenderFailure:
    """The page without the lines whose box shows no text (`colour_spread` below
    `min_text_contrast`), counted as `invisible_lines`; a page with more than
    `max_invisible_share` of its lines so is dropped as `invisible_text`, since what it shows
    is not what its markup says."""
    page.stats["invisible_lines"] = 0
    if config.min_text_contrast == 0 or not page.lines:
        return page
    pixels = np.asarray(PILImage.open(io.BytesIO(page.image)).convert("RGB"))
    visible = [line for line in page.lines
               if colour_spread(pixels, line.box) >= config.min_text_contrast]
    invisible = len(page.lines) - len(visible)
    if invisible > config.max_invisible_share * len(page.lines):
        return RenderFailure("invisible_text",
                             detail=f"{invisible} of {len(page.lines)} lines show no contrast")
    if invisible:
        page.lines = visible
        page.text = "\n".join(line.text for line in visible)
        page.stats["invisible_lines"] = invisible
    return page


# ---------------------------------------------------------------------------------------------
# The browser and its pool of pages.

class _Slot:
    """A context with one page, reused for page after page; carries the current job's counts."""

    def __init__(self, context, page):
        self.context, self.page = context, page
        self.uses = 0
        self.crashed = False
        self.reset(None, b"")

    def reset(self, job: PageJob | None, html: bytes):
        self.job, self.html = job, html
        self.served_main = False
        self.counts = {"blocked_requests": 0, "local_requests": 0, "missing_local": 0,
                       "dialogs": 0, "popups": 0}


class HtmlRenderer:
    def __init__(self, config: RenderConfig | None = None):
        self.config = config or RenderConfig()
        self.config.validate()
        if not os.access(self.config.chromium, os.X_OK):
            raise FileNotFoundError(f"no Chromium at {self.config.chromium}; install the "
                                    f"'chromium' package or set render.chromium")
        # An unknown switch Chromium ignores, so this renderer's processes can be found.
        self.marker = f"--corpus-renderer={uuid.uuid4().hex}"
        self.launches = 0
        self.pages_rendered = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._playwright = None
        self._browser = None
        self._idle: list[_Slot] = []
        self._in_flight = 0
        self._pages_since_launch = 0

    # -- lifecycle, called from any thread --------------------------------------------------
    def start(self) -> "HtmlRenderer":
        if self._loop is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="html-renderer",
                                        daemon=True)
        self._thread.start()
        try:
            self._call(self._start_async())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            self._call(self._close_async(), timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            self._loop = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *_):
        self.close()

    def submit(self, job: PageJob) -> "concurrent.futures.Future[RenderedPage | RenderFailure]":
        if self._loop is None:
            raise RuntimeError("HtmlRenderer.start() first")
        return asyncio.run_coroutine_threadsafe(self._render(job), self._loop)

    def render(self, job: PageJob) -> RenderedPage | RenderFailure:
        return self.submit(job).result()

    def _call(self, coroutine, timeout: float | None = 120):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # -- inside the event loop ---------------------------------------------------------------
    async def _start_async(self):
        from playwright.async_api import async_playwright

        self._semaphore = asyncio.Semaphore(self.config.pool_size)
        self._launch_lock = asyncio.Lock()
        self._drained = asyncio.Condition()
        self._playwright = await async_playwright().start()
        await self._launch()

    async def _close_async(self):
        await self._close_browser()
        if self._playwright is not None:
            await self._playwright.stop()
            self._playwright = None
        # Route handlers of pages closed mid-request may still be pending; end them quietly.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _launch(self):
        self._browser = await self._playwright.chromium.launch(
            executable_path=self.config.chromium, headless=True,
            args=LAUNCH_FLAGS + [self.marker], timeout=60_000)
        self._idle = []
        self._pages_since_launch = 0
        self.launches += 1

    async def _close_browser(self):
        browser, self._browser, self._idle = self._browser, None, []
        if browser is not None:
            try:
                await asyncio.wait_for(browser.close(), 20)
            except Exception:  # a dead or hung browser: its driver kills it on disconnect
                pass

    async def _ensure_browser(self):
        """Relaunch a crashed browser, or a healthy one every `restart_every` pages, once the
        pages still using it are done."""
        async with self._launch_lock:
            browser = self._browser
            due = self._pages_since_launch >= self.config.restart_every
            if browser is not None and browser.is_connected() and not due:
                return
            async with self._drained:
                await self._drained.wait_for(lambda: self._in_flight == 0)
            await self._close_browser()
            await self._launch()

    async def _render(self, job: PageJob) -> RenderedPage | RenderFailure:
        """Render one page; every failure becomes a RenderFailure. A page in flight when the
        browser died is tried once more on a fresh browser: it may not be the one to blame."""
        try:
            decoded = decode_html(job.body, job.header_charset)
        except PageError as error:
            return RenderFailure(error.reason, error.status, error.detail)
        result = RenderFailure("render_failed", "errored")
        for _ in range(2):
            async with self._semaphore:
                await self._ensure_browser()
                self._in_flight += 1
                try:
                    result = await self._render_once(job, decoded)
                finally:
                    self._in_flight -= 1
                    self._pages_since_launch += 1
                    self.pages_rendered += 1
                    async with self._drained:
                        self._drained.notify_all()
            if not (isinstance(result, RenderFailure) and result.reason == "browser_crashed"):
                break
        if isinstance(result, RenderedPage):
            # Decoding the screenshot takes milliseconds: off the loop, which serves every page.
            result = await asyncio.to_thread(leave_out_invisible_lines, result, self.config)
        return result

    async def _render_once(self, job: PageJob, decoded: DecodedHtml):
        from playwright.async_api import Error as PlaywrightError

        browser = self._browser
        slot = None
        stage = ["start"]
        try:
            slot = await self._take_slot(browser)
            slot.reset(job, codecs.BOM_UTF8 + decoded.text.encode("utf-8", "replace"))
            page = await asyncio.wait_for(self._capture(slot, stage),
                                          self.config.page_timeout_s)
            page.decisions = [decoded.decision] if decoded.decision else []
            page.stats.update(slot.counts, encoding=decoded.encoding)
        except PageError as error:
            await self._discard(slot, browser)
            return RenderFailure(error.reason, error.status, error.detail)
        except asyncio.TimeoutError:
            await self._discard(slot, browser)
            reason = "load_timeout" if stage[0] == "load" else "render_timeout"
            return RenderFailure(reason, detail=f"stage {stage[0]}")
        except PlaywrightError as error:
            await self._discard(slot, browser)
            return self._failure_of(error, slot, browser, stage[0])
        except Exception as error:  # the dead letter: never leave a page's context open
            await self._discard(slot, browser)
            return RenderFailure("render_failed", "errored",
                                 f"stage {stage[0]}: {type(error).__name__}: {error}"[:1000])
        slot.uses += 1
        if slot.uses >= self.config.pages_per_context or browser is not self._browser:
            await self._discard(slot, browser)
        else:
            self._idle.append(slot)
        return page

    def _failure_of(self, error, slot, browser, stage: str) -> RenderFailure:
        message = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        if browser is None or not browser.is_connected():
            return RenderFailure("browser_crashed", "errored", message)
        if slot is not None and slot.crashed:
            return RenderFailure("renderer_crashed", "errored", message)
        if "Timeout" in type(error).__name__ or "Timeout" in message:
            return RenderFailure("load_timeout" if stage == "load" else "render_timeout",
                                 detail=message)
        return RenderFailure("render_failed", "errored", f"stage {stage}: {message}")

    async def _discard(self, slot: _Slot | None, browser):
        if slot is None or browser is None or not browser.is_connected():
            return
        try:
            await asyncio.wait_for(slot.context.close(), 10)
        except Exception:  # a context that will not close means a wedged browser: relaunch it
            self._pages_since_launch = self.config.restart_every

    async def _take_slot(self, browser) -> _Slot:
        """An idle slot whose page is still alive, or a new one."""
        while self._idle:
            slot = self._idle.pop()
            if not slot.crashed and not slot.page.is_closed():
                return slot
            await self._discard(slot, browser)
        return await self._new_slot(browser)

    async def _new_slot(self, browser) -> _Slot:
        config = self.config
        context = await browser.new_context(
            viewport={"width": config.viewport_width, "height": config.viewport_height},
            device_scale_factor=config.device_scale_factor,
            java_script_enabled=config.javascript, bypass_csp=True, service_workers="block",
            accept_downloads=False)
        page = await context.new_page()
        slot = _Slot(context, page)

        async def on_request(route):
            await self._route(slot, route)

        async def on_websocket(ws):
            slot.counts["blocked_requests"] += 1
            await ws.close()

        async def on_popup(popup):
            if popup is not slot.page:
                slot.counts["popups"] += 1
                await popup.close()

        async def on_dialog(dialog):
            slot.counts["dialogs"] += 1
            await dialog.dismiss()

        def on_crash(_):
            slot.crashed = True

        await context.add_init_script(POPUP_GUARD_JS)
        await context.route("**/*", on_request)
        await context.route_web_socket("**/*", on_websocket)
        context.on("page", on_popup)
        page.on("dialog", on_dialog)
        page.on("crash", on_crash)
        return slot

    async def _route(self, slot: _Slot, route):
        from playwright.async_api import Error as PlaywrightError

        request, job = route.request, slot.job
        try:
            main_navigation = (request.is_navigation_request()
                               and request.frame == slot.page.main_frame)
            if (job is not None and not slot.served_main and main_navigation
                    and _same_document(request.url, job.url)):
                slot.served_main = True
                await route.fulfill(status=200, body=slot.html,
                                    headers={"content-type": "text/html; charset=utf-8"})
            elif (job is not None and job.root and request.url.startswith(LOCAL_ORIGIN)
                  and not main_navigation):
                path = local_path(job.root, request.url)
                if path is None:
                    slot.counts["missing_local"] += 1
                    await route.fulfill(status=404, body=b"")
                else:
                    slot.counts["local_requests"] += 1
                    await route.fulfill(path=path)
            elif request.is_navigation_request():
                # A 204 cancels a navigation and keeps the current document; an abort would
                # replace it with the browser's error page.
                slot.counts["blocked_requests"] += 1
                await route.fulfill(status=204, body=b"")
            else:
                slot.counts["blocked_requests"] += 1
                await route.abort("blockedbyclient")
        except PlaywrightError:  # the page went away while its request was pending
            pass

    async def _capture(self, slot: _Slot, stage: list[str]) -> RenderedPage:
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        config, page = self.config, slot.page
        if page.viewport_size != {"width": config.viewport_width,
                                  "height": config.viewport_height}:
            await page.set_viewport_size({"width": config.viewport_width,
                                          "height": config.viewport_height})
        stage[0] = "load"
        try:
            # Wait for the committed document's own load event: a script or meta refresh
            # that starts another (cancelled) navigation must not hold the page's load hostage.
            await page.goto(slot.job.url, wait_until="commit",
                            timeout=config.load_timeout_s * 1000)
            await asyncio.wait_for(page.evaluate(LOADED_JS), config.load_timeout_s)
        except (PlaywrightTimeout, asyncio.TimeoutError) as error:
            raise PageError("load_timeout", detail=type(error).__name__) from None
        stage[0] = "settle"
        await page.add_style_tag(content=FREEZE_CSS)
        layout = await page.evaluate(SETTLE_JS, 2000)
        if layout["elements"] > config.max_elements:
            raise PageError("dom_too_large", detail=f"{layout['elements']} elements")
        height = config.viewport_height
        if config.capture == "full":
            height = int(min(max(layout["height"], config.viewport_height),
                             config.max_page_height))
            if height != config.viewport_height:
                await page.set_viewport_size({"width": config.viewport_width, "height": height})
                await page.evaluate("() => new Promise((r) => requestAnimationFrame("
                                    "() => requestAnimationFrame(r)))")
        stage[0] = "extract"
        extracted = await page.evaluate(EXTRACT_JS, {"scale": config.device_scale_factor,
                                                     "maxTextNodes": config.max_text_nodes})
        if extracted["truncated"]:
            raise PageError("dom_too_large", detail=f"over {config.max_text_nodes} text nodes")
        if not _same_document(page.url, slot.job.url):
            raise PageError("navigated_away", detail=page.url[:300])
        slot.counts["popups"] += await page.evaluate("() => window.__corpusPopups || 0")
        stage[0] = "screenshot"
        options = {"type": config.image_format, "animations": "disabled", "caret": "hide",
                   "timeout": config.page_timeout_s * 1000}
        if config.image_format == "jpeg":
            options["quality"] = config.jpeg_quality
        image = await page.screenshot(**options)
        width, height = PILImage.open(io.BytesIO(image)).size
        lines = lines_in_capture(extracted["lines"], width, height)
        stats = {"text_nodes": extracted["textNodes"], "elements": layout["elements"],
                 "lines_outside_capture": len(extracted["lines"]) - len(lines)}
        return RenderedPage(image, config.image_format, width, height, lines,
                            "\n".join(line.text for line in lines), stats)
