"""Text the browser paints but nobody can see (a colour at or near the background's, an opacity
near 0, an overlay) is judged by the screenshot's pixels: it never becomes a label, and a page
made mostly of it is dropped as `invisible_text`."""
import io

import numpy as np
import pytest
from PIL import Image as PILImage, ImageDraw

from filters.base import Reject
from pipelines.html import REASON_ORDER, HtmlConfig, HtmlFiles, HtmlInput, RenderPages
from pipelines.sinks import Counts
from renderers.html import (LOCAL_ORIGIN, HtmlRenderer, Line, PageJob, RenderConfig,
                            RenderedPage, RenderFailure, colour_spread, leave_out_invisible_lines)

FAST = dict(viewport_width=640, viewport_height=720, load_timeout_s=10, page_timeout_s=30,
            pool_size=2)


def page_of(html: str, body_style: str = "background: #fff; color: #000") -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><style>body {{ margin: 20px; '
            f'{body_style}; }}</style></head><body>{html}</body></html>')


def job(html: str, name: str = "page.html") -> PageJob:
    return PageJob(uri=name, key=name, body=html.encode("utf-8"), url=LOCAL_ORIGIN + name)


def texts(page: RenderedPage) -> list[str]:
    return [line.text for line in page.lines]


# -- the measure, on pixels drawn here ----------------------------------------------------------

def drawn_page(rows: list[tuple[str, str]], config_lines=None) -> RenderedPage:
    """A PNG with one 200x20 band per (text colour, background) row, text drawn in it."""
    image = PILImage.new("RGB", (240, 30 * len(rows)), "#ffffff")
    draw = ImageDraw.Draw(image)
    lines = []
    for i, (ink, background) in enumerate(rows):
        top = 30 * i + 5
        draw.rectangle((10, top, 209, top + 19), fill=background)
        draw.text((14, top + 4), "some words", fill=ink)
        lines.append(Line(f"line {i}", (10.0, float(top), 210.0, top + 20.0)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return RenderedPage(buffer.getvalue(), "png", image.width, image.height, lines,
                        "\n".join(line.text for line in lines), {})


def test_the_spread_counts_each_colour_channel_on_its_own():
    pixels = np.zeros((10, 10, 3), np.uint8)
    pixels[4, 4] = (0, 255, 0)  # green on black: no difference in the darkest channel
    assert colour_spread(pixels, (0, 0, 10, 10)) == 255
    assert colour_spread(pixels, (5.2, 0, 10, 10)) == 0  # the box misses the green pixel
    assert colour_spread(pixels, (3.5, 3.5, 4.2, 4.2)) == 255  # pixels the box touches
    assert colour_spread(pixels, (3, 3, 3, 3)) == 0  # no pixel


def test_lines_below_the_contrast_are_left_out_and_counted():
    rows = [("#000000", "#ffffff"), ("#777777", "#ffffff"), ("#111111", "#0a0a0a"),
            ("#ffffff", "#ffffff"), ("#00ff00", "#000000")]
    page = leave_out_invisible_lines(drawn_page(rows), RenderConfig())
    assert texts(page) == ["line 0", "line 1", "line 4"]
    assert page.text == "line 0\nline 1\nline 4"
    assert page.stats["invisible_lines"] == 2
    everything = leave_out_invisible_lines(drawn_page(rows), RenderConfig(min_text_contrast=0))
    assert len(everything.lines) == 5 and everything.stats["invisible_lines"] == 0


def test_a_page_with_more_than_the_share_of_invisible_lines_is_dropped():
    half = [("#000000", "#ffffff"), ("#111111", "#0a0a0a")]
    assert isinstance(leave_out_invisible_lines(drawn_page(half), RenderConfig()), RenderedPage)
    most = half + [("#ffffff", "#ffffff")]
    dropped = leave_out_invisible_lines(drawn_page(most), RenderConfig())
    assert (dropped.reason, dropped.status, dropped.detail) == \
        ("invisible_text", "dropped", "2 of 3 lines show no contrast")
    assert REASON_ORDER.index("invisible_text") < REASON_ORDER.index("too_few_characters")


def test_the_options_are_validated():
    for bad in (dict(min_text_contrast=-1), dict(min_text_contrast=256),
                dict(max_invisible_share=0), dict(max_invisible_share=1.5)):
        with pytest.raises(ValueError):
            RenderConfig(**bad).validate()


# -- in Chromium --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def renderer():
    with HtmlRenderer(RenderConfig(**FAST)) as r:
        yield r


HIDDEN_IN_PLAIN_SIGHT = """
  <p>visible first line</p>
  <div style="background:#0a0a0a; padding:4px">
    <p style="color:#111">dark grey on near black</p></div>
  <p style="color:#fff">white on white</p>
  <p style="color:transparent">transparent colour</p>
  <p style="opacity:0.02">almost transparent</p>
  <div style="position:relative"><p style="margin:0">covered by a panel</p>
    <div style="position:absolute; inset:-4px; background:#eee"></div></div>
  <div style="position:relative; margin-top:20px">
    <p style="margin:0">under a panel clicks go through</p>
    <div style="position:absolute; inset:-4px; background:#eee; pointer-events:none"></div></div>
  <p style="color:#777">light grey on white</p>
  <div style="background:#000; color:#0f0; padding:4px">green on black</div>
  <p>visible last line</p>"""


@pytest.mark.chromium
def test_invisible_lines_never_reach_the_labels(renderer):
    page = renderer.render(job(page_of(HIDDEN_IN_PLAIN_SIGHT)))
    assert texts(page) == ["visible first line", "light grey on white", "green on black",
                           "visible last line"]
    assert page.text == "\n".join(texts(page))
    # the transparent and the hit-tested covered line never become lines; these four do
    assert page.stats["invisible_lines"] == 4


@pytest.mark.chromium
def test_a_page_of_mostly_invisible_text_is_dropped(renderer):
    # the stylesheet's light text colour lost, its dark background kept
    html = page_of('<h1 style="color:#eee">Headline</h1><p>first paragraph of the story</p>'
                   '<p>second paragraph</p><p>third paragraph</p>',
                   "background: #0a0a0a; color: #111")
    result = renderer.render(job(html))
    assert isinstance(result, RenderFailure)
    assert (result.reason, result.status, result.detail) == \
        ("invisible_text", "dropped", "3 of 4 lines show no contrast")


@pytest.mark.chromium
def test_ordinary_pages_keep_every_line(renderer):
    light = page_of('<h1>A heading</h1><p style="color:#777">light grey on white</p>'
                    '<p style="color:#aaa; font-size:10px">small and pale</p>'
                    '<p>a <a href="#">link</a> in body text</p>')
    dark = page_of('<h1>Dark theme</h1><p>light text</p><p style="color:#58a6ff">a link</p>'
                   '<p style="color:#00f">blue on black</p><p style="color:#e50914">red</p>',
                   "background: #000; color: #ddd")
    for html, count in ((light, 4), (dark, 5)):
        page = renderer.render(job(html))
        assert len(page.lines) == count and page.stats["invisible_lines"] == 0


@pytest.mark.chromium
def test_the_pipeline_counts_invisible_lines_and_names_the_dropped_page(renderer, tmp_path):
    files = []
    for name, html in (("a-mixed.html", page_of(HIDDEN_IN_PLAIN_SIGHT)),
                       ("b-dark.html", page_of("<p>one line</p><p>another line</p>",
                                               "background: #0a0a0a; color: #111"))):
        (tmp_path / name).write_text(html)
        files.append(HtmlInput(str(tmp_path / name), "html", name, str(tmp_path)))
    work = RenderPages("unit", HtmlConfig(render=RenderConfig(**FAST)))
    work.renderer = renderer
    items = list(work(HtmlFiles(tuple(files))))
    [counts] = [item.values for item in items if isinstance(item, Counts)]
    [reject] = [item for item in items if isinstance(item, Reject)]
    assert counts["invisible_lines"] == 4
    assert (reject.key, reject.reason, reject.detail) == \
        ("b-dark.html", "invisible_text", "2 of 2 lines show no contrast")
