"""`corpus html` without a browser: charset decisions, geometry clipping, local file access,
input expansion, the WARC reader, the tasks a run is cut into, the order a task's pages leave
in, and the config."""
import dataclasses
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from corpus.config import ConfigError, load_config
from corpus.samples.html import make_site, make_warc
from pipelines.html import (HtmlConfig, HtmlFiles, PageReader, RenderPages, expand_inputs,
                            plan_html_tasks)
from pipelines.sinks import Counts, RunSpec
from pipelines.tasks import fingerprint
from renderers.html import (LOCAL_ORIGIN, PageError, PageJob, decode_html, declared_charset,
                            lines_in_capture, local_path, looks_binary, normalize_charset)

ZH = "中文网页的正文，这里有足够多的汉字。"


def test_utf8_bytes_under_legacy_declaration_are_read_as_utf8():
    body = f'<meta charset="gb2312"><p>{ZH}</p>'.encode("utf-8")
    decoded = decode_html(body)
    assert ZH in decoded.text
    assert decoded.encoding == "utf-8"
    assert decoded.declared == "gb18030"
    assert decoded.decision == "charset_utf8_over_gb18030"


def test_declared_legacy_charset_is_respected():
    body = f'<meta charset="gbk"><p>{ZH}</p>'.encode("gbk")
    decoded = decode_html(body)
    assert ZH in decoded.text and decoded.encoding == "gb18030" and decoded.decision is None


def test_http_header_charset_beats_meta():
    body = "<meta charset='utf-8'><p>café crème brûlée</p>".encode("cp1252")
    decoded = decode_html(body, header_charset="windows-1252")
    assert "café crème brûlée" in decoded.text and decoded.encoding == "cp1252"


def test_latin1_label_means_windows_1252_as_in_browsers():
    assert normalize_charset("ISO-8859-1") == "cp1252"
    assert decode_html(b"<meta charset=iso-8859-1>\x93quoted\x94").text.endswith(
        "\u201cquoted\u201d")


def test_legacy_bytes_under_utf8_declaration_are_detected():
    text = "Съешь же ещё этих мягких французских булок, да выпей чаю. " * 4
    body = f'<meta charset="utf-8"><p>{text}</p>'.encode("cp1251")
    decoded = decode_html(body)
    assert text.strip() in decoded.text
    assert decoded.decision.startswith("charset_detected_")


def test_ascii_under_any_declaration_needs_no_fix():
    decoded = decode_html(b'<meta charset="shift_jis"><p>plain ascii</p>')
    assert decoded.decision is None and decoded.encoding == "cp932"


def test_bom_wins():
    assert decode_html(b"\xef\xbb\xbf<meta charset=gbk>" + ZH.encode()).text.endswith(ZH)


def test_binary_garbage_is_rejected():
    with pytest.raises(PageError) as error:
        decode_html(bytes(range(256)) * 16)
    assert error.value.reason == "binary_content"
    assert looks_binary(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert not looks_binary("<p>ordinary text\twith tabs\r\n</p>".encode())


def test_text_that_decodes_under_nothing_is_rejected():
    body = b"<meta charset='shift_jis'>" + b"\x81\x20\xa0" * 200  # broken lead/trail pairs
    with pytest.raises(PageError) as error:
        decode_html(body)
    assert error.value.reason == "undecodable_text"


def test_meta_http_equiv_charset_is_found():
    body = b'<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">'
    assert declared_charset(body) == "cp932"
    assert declared_charset(b"<p>no declaration</p>") is None


def test_lines_cut_by_the_capture_edge_are_left_out():
    raw = [{"text": "inside", "box": [10, 10, 100, 30]},
           {"text": "cut at the bottom", "box": [10, 790, 100, 810]},
           {"text": "  spaced   out  ", "box": [-0.5, 40, 50, 60]},
           {"text": "   ", "box": [10, 70, 100, 90]}]
    lines = lines_in_capture(raw, 200, 800)
    assert [line.text for line in lines] == ["inside", "spaced out"]
    assert lines[1].box == (0.0, 40, 50, 60)


def test_local_requests_cannot_leave_the_root(tmp_path):
    (tmp_path / "css").mkdir()
    (tmp_path / "css" / "a.css").write_text("p{}")
    assert local_path(str(tmp_path), LOCAL_ORIGIN + "css/a.css") == str(tmp_path / "css" / "a.css")
    assert local_path(str(tmp_path), LOCAL_ORIGIN + "css/missing.css") is None
    assert local_path(str(tmp_path), LOCAL_ORIGIN + "..%2F..%2Fetc%2Fpasswd") is None
    os.symlink("/etc", tmp_path / "etc")
    assert local_path(str(tmp_path), LOCAL_ORIGIN + "etc/hostname") is None


def test_expand_inputs_walks_folders_and_matches_globs(tmp_path):
    site = make_site(str(tmp_path / "site"))
    warc = make_warc(str(tmp_path / "w" / "pages.warc.gz"))
    files = expand_inputs([site])
    assert {f.key for f in files} >= {"birds.html", "tea.html"}
    assert all(f.kind == "html" and f.root == site for f in files)
    globbed = expand_inputs([str(tmp_path / "site" / "b*.html"), warc])
    assert [(f.kind, f.key) for f in globbed] == [("html", "birds.html"),
                                                 ("warc", "pages.warc.gz")]


def test_warc_reader_yields_one_page_per_html_response(tmp_path):
    warc = make_warc(str(tmp_path / "w" / "pages.warc.gz"))
    reader = PageReader("unit", 100_000)
    results = list(reader(expand_inputs([warc])[0]))
    pages = [r for r in results if isinstance(r, PageJob)]
    rejects = sorted(r.reason for r in results if not isinstance(r, PageJob))
    assert [p.url for p in pages] == ["https://news.example.cn/today.html",
                                      "https://example.org/birds", "https://example.org/spin",
                                      "https://example.org/garbage"]
    assert all(p.key.startswith("pages.warc.gz#<urn:uuid:") for p in pages)
    assert pages[1].header_charset == "utf-8" and pages[0].header_charset is None
    assert rejects == ["http_error_status", "not_html"]


def test_truncated_warc_keeps_earlier_pages_and_counts_one_error(tmp_path):
    warc = make_warc(str(tmp_path / "w" / "pages.warc.gz"))
    data = open(warc, "rb").read()
    broken = tmp_path / "w" / "broken.warc.gz"
    broken.write_bytes(data[: len(data) // 2] + b"not gzip at all" * 10)
    results = list(PageReader("unit", 100_000)(expand_inputs([str(broken)])[0]))
    errors = [r for r in results if not isinstance(r, PageJob)
              and r.status == "errored"]
    assert [e.reason for e in errors] == ["corrupt_warc"]
    assert any(isinstance(r, PageJob) for r in results)


def test_oversized_and_unreadable_files_are_counted(tmp_path):
    big = tmp_path / "big.html"
    big.write_bytes(b"<p>" + b"x" * 200 + b"</p>")
    results = list(PageReader("unit", 100)(expand_inputs([str(big)])[0]))
    assert results[0].reason == "page_too_large"
    missing = dataclasses.replace(expand_inputs([str(big)])[0], uri=str(tmp_path / "gone.html"))
    results = list(PageReader("unit", 100)(missing))
    assert (results[0].reason, results[0].status) == ("unreadable_input", "errored")


def test_tasks_are_each_warc_and_runs_of_html_files_in_key_order(tmp_path):
    make_site(str(tmp_path / "in" / "site"))
    make_warc(str(tmp_path / "in" / "a.warc.gz"))
    make_warc(str(tmp_path / "in" / "z.warc.gz"))
    inputs = expand_inputs([str(tmp_path / "in")])
    tasks = plan_html_tasks(inputs, 3)
    units = [task.units for task in tasks]
    assert [task.index for task in tasks] == list(range(len(tasks)))
    assert all(len(task_units) == 1 for task_units in units)
    names = [[f.key for f in unit.files] if isinstance(unit, HtmlFiles) else unit.key
             for (unit,) in units]
    html_keys = sorted(f.key for f in inputs if f.kind == "html")
    assert len(html_keys) == 7
    assert names == ["a.warc.gz", html_keys[0:3], html_keys[3:6], html_keys[6:], "z.warc.gz"]
    assert units[0][0].path.endswith("a.warc.gz")
    # Planned again: the same tasks; a page edited in place changes its task's fingerprint
    # only (the fingerprint takes the sizes and times of a unit's files).
    assert [repr(t) for t in plan_html_tasks(inputs, 3)] == [repr(t) for t in tasks]
    spec = RunSpec("html", "unit", "ocr", str(tmp_path / "out"), [])
    before = [fingerprint([spec], task) for task in tasks]
    edited = next(f.uri for f in inputs if f.key == html_keys[4])
    os.utime(edited, (time.time() + 60, time.time() + 60))
    after = [fingerprint([spec], task) for task in tasks]
    assert [a == b for a, b in zip(after, before)] == [True, True, False, True, True]


class FakeRenderer:
    """Finishes the pages it is given in reverse order: the later a page, the sooner."""

    def __init__(self, results: dict):
        self.results, self.submitted = results, 0
        self.pool = ThreadPoolExecutor(8)

    def submit(self, job: PageJob) -> Future:
        self.submitted += 1
        delay = 0.05 * max(0, 8 - self.submitted)

        def finish():
            time.sleep(delay)
            result = self.results[job.key]
            if isinstance(result, Exception):
                raise result
            return result

        return self.pool.submit(finish)


def test_a_tasks_pages_leave_in_the_order_read_whatever_finishes_first(tmp_path):
    from renderers.html import Line, RenderedPage, RenderFailure

    site = make_site(str(tmp_path / "site"))
    inputs = expand_inputs([site])
    (unit,) = plan_html_tasks(inputs, 100)[0].units
    keys = [f.key for f in unit.files]

    def page(text):
        return RenderedPage(b"png", "png", 640, 480, [Line(text, (0, 0, 10, 10))], text,
                            {"blocked_requests": 2})

    results = {key: page(f"page {key} with enough characters") for key in keys}
    results[keys[1]] = RenderFailure("load_timeout", detail="stage load")
    results[keys[2]] = RuntimeError("the browser went away")
    results[keys[3]] = page("tiny")
    work = RenderPages("unit", HtmlConfig())
    work.renderer = FakeRenderer(results)
    items = list(work(unit))
    counts = [item.values for item in items if isinstance(item, Counts)]
    outcomes = [item for item in items if not isinstance(item, Counts)]
    assert [item.source.key if hasattr(item, "source") else item.key for item in outcomes] == keys
    assert [getattr(item, "reason", "kept") for item in outcomes[:4]] == \
        ["kept", "load_timeout", "render_failed", "too_few_characters"]
    assert outcomes[2].status == "errored" and "went away" in outcomes[2].detail
    assert len(counts) == len(keys) - 2
    assert counts[0] == {"blocked_requests": 2, "local_requests": 0, "missing_local": 0,
                         "dialogs": 0, "popups": 0, "lines_outside_capture": 0,
                         "invisible_lines": 0, "pages_rendered": 1}


def test_the_work_pickles_without_its_browser():
    import pickle

    work = RenderPages("unit", HtmlConfig())
    work.renderer = object()  # stands for a started browser, which cannot travel
    copy = pickle.loads(pickle.dumps(work))
    assert copy.renderer is None and copy.config == work.config


def test_config_yaml_loads_and_rejects_typos(tmp_path):
    config = load_config(HtmlConfig, os.path.join(os.path.dirname(__file__), "..", "pipelines",
                                                  "configs", "html.yaml"))
    assert config.render.viewport_width == 1024 and config.pages.min_chars == 10
    bad = tmp_path / "bad.yaml"
    bad.write_text("render:\n  viewport_widht: 800\n")
    with pytest.raises(ConfigError, match="viewport_widht"):
        load_config(HtmlConfig, str(bad))
    bad.write_text("render:\n  capture: sideways\n")
    with pytest.raises(ValueError, match="capture"):
        load_config(HtmlConfig, str(bad))
