"""`corpus demo`, the README's main command, end to end as a user runs it: every pipeline's run
accounts for its inputs and wrote its shards, the three stage manifests validate, and the trainer
went through stages 1 -> 2 -> 3 with checkpoints and finite losses."""
import glob
import json
import math
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from corpus.demo import DEMO_PIPELINES
from manifests.manifest import STAGES, load_manifest
from manifests.validate import validate_manifest
from trainer.demo import DEMO_STEPS

# The run folders the demo's pipelines write (grounding: one per task, pairs: one per rule set).
RUN_FOLDERS = {"pairs/web", "pairs/academic", "vqa", "grounding/grounding",
               "grounding/ref_grounding", "grounding/grounded_captioning", "pdf", "html",
               "synthdog", "text", "sft"}
DEMO_TIMEOUT_S = 1800  # about a minute to four here; a busy machine takes longer


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "out"
    result = subprocess.run([sys.executable, "-m", "corpus.cli", "demo", "--output", str(output)],
                            capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-5000:]
    # the console holds our own lines only: no progress line off a terminal, none of Beam's
    assert result.stderr == ""
    assert f"demo output in {output}" in result.stdout
    return output


def run_reports(output) -> dict[str, dict]:
    """Run folder (relative to the demo's output) -> its report.json, inputs left out."""
    reports = {}
    for folder, _, files in os.walk(output):
        relative = os.path.relpath(folder, output)
        if "report.json" in files and "inputs" not in relative.split(os.sep):
            with open(os.path.join(folder, "report.json"), encoding="utf-8") as f:
                reports[relative.replace(os.sep, "/")] = json.load(f)
    return reports


def check_run(output, folder: str, report: dict) -> None:
    assert report["kept"] > 0, folder
    assert report["kept"] + report["dropped_total"] + report["errored_total"] == \
        report["input"], folder
    assert sum(shard["samples"] for shard in report["shards"]) == report["kept"], folder
    for shard in report["shards"]:
        path = os.path.join(output, folder, shard["path"])
        assert os.path.getsize(path) == shard["bytes"], path


def check_training(stage_dir) -> None:
    """A stage's checkpoint of its last step, and a log line per step with a finite loss."""
    checkpoints = os.path.join(stage_dir, "checkpoints")
    with open(os.path.join(checkpoints, "latest"), encoding="utf-8") as f:
        latest = os.path.join(checkpoints, f.read().strip())
    for name in ("model/.metadata", "optimizer/.metadata", "tokenizer.json", "state.json"):
        assert os.path.getsize(os.path.join(latest, name)) > 0, (latest, name)
    with open(os.path.join(latest, "state.json"), encoding="utf-8") as f:
        assert json.load(f)["step"] == DEMO_STEPS
    with open(os.path.join(stage_dir, "log.jsonl"), encoding="utf-8") as f:
        logged = [json.loads(line) for line in f if line.strip()]
    assert [row["step"] for row in logged] == list(range(1, DEMO_STEPS + 1))
    assert all(math.isfinite(row["loss"]) and row["loss"] > 0 for row in logged)


def test_the_demo_runs_every_pipeline_builds_the_manifests_and_trains(demo_output):
    reports = run_reports(demo_output)
    assert set(reports) == RUN_FOLDERS
    for folder, report in reports.items():
        check_run(demo_output, folder, report)

    summary = json.loads((demo_output / "demo-summary.json").read_text())
    assert list(summary) == [name for name, _ in DEMO_PIPELINES]
    for name, totals in summary.items():
        runs = [r for folder, r in reports.items() if folder.split("/")[0] == name]
        assert totals["kept"] == sum(r["kept"] for r in runs) > 0, name
        assert totals["input"] == totals["kept"] + totals["dropped_total"] + \
            totals["errored_total"], name

    for stage, settings in STAGES.items():
        manifest = load_manifest(str(demo_output / "manifests" / f"stage{stage}.yaml"))
        assert validate_manifest(manifest, deep=True) == []
        # the demo feeds every task the stage reads
        assert {source.task for source in manifest.sources} == set(settings.tasks)
        check_training(demo_output / "train" / f"stage{stage}")


def test_every_reject_says_why_and_each_reason_has_one_status(demo_output):
    statuses: dict[str, set] = {}
    paths = glob.glob(os.path.join(demo_output, "**", "rejects", "*.parquet"), recursive=True)
    rows = [row for path in paths if "inputs" not in path
            for row in pq.read_table(path, columns=["reason", "status", "detail"]).to_pylist()]
    assert len({row["reason"] for row in rows}) > 40  # every pipeline's rules and bad inputs
    undetailed = sorted({row["reason"] for row in rows if not row["detail"]})
    assert undetailed == []
    for row in rows:
        statuses.setdefault(row["reason"], set()).add(row["status"])
    assert {reason: s for reason, s in statuses.items() if len(s) > 1} == {}
