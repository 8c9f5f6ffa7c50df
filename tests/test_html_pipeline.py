"""`corpus html` end to end on the demo inputs (a folder with CSS and an image, and a WARC
file), with the in-memory Beam runner: exact accounting, shards in the shared OCR form (a task,
hence a shard, for the folder and one for the WARC); the same shard bytes from forked workers
and from the Dask runner."""
import json
import os
import time
import uuid

import pytest

from corpus.formats import OCR_PROMPT, format_sample, parse_quads, render
from corpus.shards import read_shard
from pipelines import html
from pipelines.html import HtmlConfig
from renderers.html import RenderConfig

pytestmark = pytest.mark.chromium


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from conftest import IN_MEMORY

    output = str(tmp_path_factory.mktemp("html-demo"))
    return output, html.run_demo(output, list(IN_MEMORY))


def test_demo_report_accounts_for_every_page(demo):
    _, report = demo
    assert report["input"] == 13
    assert report["kept"] == 6
    assert report["dropped"] == {"not_html": 1, "http_error_status": 1, "binary_content": 1,
                                 "load_timeout": 1, "too_few_characters": 1,
                                 "too_many_characters": 1, "private_use_area": 1}
    assert report["errored"] == {}
    stats = report["stats"]
    assert stats["pages_rendered"] == 9 and stats["charset_fixed"] == 1
    assert stats["blocked_requests"] >= 8 and stats["local_requests"] >= 4
    assert stats["dialogs"] == 1


def test_shards_hold_ocr_samples_with_line_boxes(demo):
    output, report = demo
    assert [shard["path"] for shard in report["shards"]] == \
        ["shards/ocr-00000-of-00002.tar", "shards/ocr-00001-of-00002.tar"]
    shards = [[s.source.key for s in read_shard(os.path.join(output, shard["path"]))]
              for shard in report["shards"]]
    assert shards[0] == ["birds.html", "dialogs.html", "layout.html", "tea.html"]  # key order
    assert [key.split("#")[0] for key in shards[1]] == ["pages.warc.gz"] * 2  # record order
    samples = {s.source.uri.rsplit("/", 1)[-1]: s for shard in report["shards"]
               for s in read_shard(os.path.join(output, shard["path"]))}
    assert set(samples) == {"birds.html", "tea.html", "layout.html", "dialogs.html", "birds",
                            "today.html"}
    birds = samples["birds.html"]
    assert birds.task == "ocr" and birds.images[0].format == "png"
    assert (birds.images[0].width, birds.images[0].height) == (800, 1000)
    assert birds.text.splitlines()[0] == "Field notes on river birds"
    assert "not displayed" not in birds.text
    assert all(r.kind == "line" and r.box[2] <= 800 and r.box[3] <= 1000 for r in birds.regions)
    assert birds.source.key == "birds.html" and birds.source.sha256
    text = render(format_sample(birds))
    assert OCR_PROMPT in text
    assert [t for t, _ in parse_quads(text)] == [r.text for r in birds.regions]
    news = samples["today.html"]
    assert news.decisions == ["charset_utf8_over_gb18030"]
    assert news.text.startswith("今日新闻")
    assert samples["tea.html"].text.startswith("中国茶的种类")


def test_rejects_name_the_pages(demo):
    import pyarrow.parquet as pq

    output, _ = demo
    folder = os.path.join(output, "rejects")
    rows = [row for name in sorted(os.listdir(folder))
            for row in pq.read_table(os.path.join(folder, name)).to_pylist()]
    by_reason = {row["reason"]: row["uri"] for row in rows}
    assert by_reason["load_timeout"] == "https://example.org/spin"
    assert by_reason["binary_content"] == "https://example.org/garbage"
    assert by_reason["too_few_characters"].endswith("tiny.html")
    with open(os.path.join(output, "report.json"), encoding="utf-8") as f:
        assert json.load(f)["config"]["render"]["viewport_width"] == 800


def test_cli_runs_a_folder_with_a_config(tmp_path, beam_argv, capsys):
    import argparse

    from corpus.samples.html import make_site

    site = make_site(str(tmp_path / "site"))
    for name in ("dense.html", "icons.html", "dialogs.html", "layout.html", "tiny.html"):
        os.remove(os.path.join(site, name))
    config = tmp_path / "html.yaml"
    config.write_text("render:\n  viewport_width: 700\n  viewport_height: 600\n"
                      "  image_format: jpeg\n  pool_size: 2\n")
    parser = argparse.ArgumentParser()
    html.add_arguments(parser)
    args, extra = parser.parse_known_args(["--input", site, "--output", str(tmp_path / "out"),
                                           "--config", str(config), "--capture", "full",
                                           *beam_argv])
    assert html.main(args, extra) == 0
    assert "html html: input 2, kept 2" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["config"]["render"]["capture"] == "full"
    sample = next(read_shard(str(tmp_path / "out" / report["shards"][0]["path"])))
    assert sample.images[0].format == "jpeg" and sample.images[0].width == 700


def test_config_defaults_follow_the_page_rules():
    config = HtmlConfig()
    assert (config.pages.min_image_side, config.pages.min_chars, config.pages.max_chars) == \
        (224, 10, 8000)
    assert RenderConfig().chromium == "/usr/bin/chromium"


def small_site(folder) -> str:
    """Three pages of the demo site: two kept, one too short."""
    from corpus.samples.html import make_site

    site = make_site(str(folder))
    for name in ("dense.html", "icons.html", "dialogs.html", "layout.html"):
        os.remove(os.path.join(site, name))
    return site


def browsers_left(token: str, wait_s: float = 60.0) -> list:
    """Browser processes still running that were started under the environment variable
    `token` (inherited by forked workers, Playwright's driver and Chromium, and kept when an
    exiting worker's browser is reparented); a browser closing is given `wait_s` to go."""
    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        left = [p for p in psutil.process_iter() if _is_our_browser(p, token)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _is_our_browser(process, token: str) -> bool:
    import psutil

    try:
        return (process.status() != psutil.STATUS_ZOMBIE and token in process.environ()
                and any(arg.startswith("--corpus-renderer=") for arg in process.cmdline()))
    except psutil.Error:  # gone meanwhile, or another user's
        return False


def traced_finalizers(monkeypatch, log) -> None:
    """Each browser's exit finalizer writes `started PID` when made and `closed PID` when run
    (forked workers inherit the patch)."""
    from multiprocessing.util import Finalize

    def traced(obj, callback, **options):
        def close():
            callback()
            with open(log, "a") as f:
                f.write(f"closed {os.getpid()}\n")

        with open(log, "a") as f:
            f.write(f"started {os.getpid()}\n")
        return Finalize(obj, close, **options)

    monkeypatch.setattr(html, "Finalize", traced)


@pytest.mark.slow
def test_forked_workers_write_the_same_shards_and_close_their_browsers(tmp_path, beam_argv,
                                                                       monkeypatch):
    token = f"CORPUS_HTML_TEST_{uuid.uuid4().hex}"
    monkeypatch.setenv(token, "1")
    log = tmp_path / "browsers.log"
    traced_finalizers(monkeypatch, log)
    site = small_site(tmp_path / "site")
    config = HtmlConfig(render=RenderConfig(viewport_width=640, viewport_height=640,
                                            pool_size=2), pages_per_batch=1)
    one = html.run([site], str(tmp_path / "one"), "unit", config, beam_argv)
    assert browsers_left(token) == []  # the browser of the one worker closed with its step
    assert log.read_text().split() == ["started", str(os.getpid()), "closed", str(os.getpid())]
    log.unlink()
    two = html.run([site], str(tmp_path / "two"), "unit", config, ["--workers=2"])
    assert browsers_left(token) == []
    events = [line.split() for line in log.read_text().splitlines()]
    started = sorted(pid for event, pid in events if event == "started")
    closed = sorted(pid for event, pid in events if event == "closed")
    # each forked worker closed its own browser as it left
    assert started == closed and str(os.getpid()) not in started
    assert len(set(started)) == len(started) >= 1
    assert (two["input"], two["kept"], two["dropped"]) == \
        (one["input"], one["kept"], one["dropped"]) == (3, 2, {"too_few_characters": 1})
    assert len(one["shards"]) == 2  # a page per task: the kept two
    for shard in one["shards"]:
        assert (tmp_path / "one" / shard["path"]).read_bytes() == \
            (tmp_path / "two" / shard["path"]).read_bytes()


@pytest.mark.slow
def test_dask_runner_writes_the_same_shards(tmp_path, beam_argv):
    """The tasks run on Dask workers as they run here: same report, same shard bytes."""
    from distributed import LocalCluster, default_client

    site = small_site(tmp_path / "site")
    config = HtmlConfig(render=RenderConfig(viewport_width=640, viewport_height=640,
                                            pool_size=2))
    direct = html.run([site], str(tmp_path / "direct"), "unit", config, beam_argv)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=40)
    try:
        dask = html.run([site], str(tmp_path / "dask"), "unit", config,
                        ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                         f"--dask_client_address={cluster.scheduler_address}",
                         "--dask_npartitions=2"])
    finally:
        while True:  # the runner leaves its client open
            try:
                default_client().close()
            except ValueError:
                break
        cluster.close()
    assert (dask["input"], dask["kept"], dask["dropped"]) == \
        (direct["input"], direct["kept"], direct["dropped"]) == (3, 2, {"too_few_characters": 1})
    for shard in direct["shards"]:
        assert (tmp_path / "direct" / shard["path"]).read_bytes() == \
            (tmp_path / "dask" / shard["path"]).read_bytes()
