"""The run report every pipeline writes: what came in, what was kept, dropped (why) and errored.

`report.json` is written by the pipeline itself (so it exists on any runner); the driver then
adds wall time and draws `report.png`, the retention per rule in the order rules ran.
`kept + dropped + errored == input` is checked here, and a run whose numbers do not add up fails.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from corpus.shards import ShardInfo

REPORT_NAME = "report.json"
PLOT_NAME = "report.png"


class AccountingError(AssertionError):
    pass


def build_report(*, pipeline: str, dataset: str, task: str, input_count: int,
                 outcome_counts: dict[tuple[str, str], int], shards: list[ShardInfo],
                 reason_order: list[str], stats: dict[str, Any] | None = None,
                 config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the report. `outcome_counts` maps (status, reason) to a count of rejects."""
    dropped = _ordered({r: n for (s, r), n in outcome_counts.items() if s == "dropped"},
                       reason_order)
    errored = _ordered({r: n for (s, r), n in outcome_counts.items() if s == "errored"}, [])
    shards = sorted(shards, key=lambda s: s.path)
    kept = sum(s.samples for s in shards)
    report = {
        "pipeline": pipeline,
        "dataset": dataset,
        "task": task,
        "input": input_count,
        "kept": kept,
        "dropped_total": sum(dropped.values()),
        "errored_total": sum(errored.values()),
        "dropped": dropped,
        "errored": errored,
        "shards": [asdict(s) for s in shards],
        "bytes": sum(s.bytes for s in shards),
        "stats": stats or {},
        "config": config or {},
    }
    check_accounting(report)
    return report


def _ordered(counts: dict[str, int], order: list[str]) -> dict[str, int]:
    """Reasons in the order the rules run, then any others alphabetically."""
    rank = {reason: i for i, reason in enumerate(order)}
    return dict(sorted(counts.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def check_accounting(report: dict[str, Any]) -> None:
    total = report["kept"] + report["dropped_total"] + report["errored_total"]
    if total != report["input"]:
        raise AccountingError(
            f"{report['pipeline']}: kept {report['kept']} + dropped {report['dropped_total']} + "
            f"errored {report['errored_total']} = {total} != input {report['input']}")


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def retention_rows(report: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(step, removed, remaining) per drop reason in rule order, like the paper's Table 2."""
    remaining = report["input"]
    rows = []
    for reason, count in list(report["dropped"].items()) + [
            (f"error: {r}", n) for r, n in report["errored"].items()]:
        remaining -= count
        rows.append((reason, count, remaining))
    return rows


def plot_report(report: dict[str, Any], path: str) -> None:
    """Retention bar chart per rule; a histogram beside it when stats carry one."""
    # the figure without pyplot: its import and state machine cost a second of every run
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = retention_rows(report)
    histogram = report.get("stats", {}).get("histogram")
    columns = 2 if histogram else 1
    fig = Figure(figsize=(7 * columns, 0.45 * len(rows) + 2.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, columns, squeeze=False)
    ax = axes[0][0]
    labels = ["input"] + [r[0] for r in rows]
    remaining = [report["input"]] + [r[2] for r in rows]
    ax.barh(range(len(labels)), remaining, color="#4c72b0")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("samples remaining after each rule")
    kept_pct = 100 * report["kept"] / report["input"] if report["input"] else 0.0
    ax.set_title(f"{report['pipeline']} · {report['dataset']}: kept {report['kept']} of "
                 f"{report['input']} ({kept_pct:.1f} %)")
    if histogram:
        hx = axes[0][1]
        edges, counts = histogram["edges"], histogram["counts"]
        hx.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges, edges[1:])], align="edge",
               color="#55a868")
        if histogram.get("threshold") is not None:
            hx.axvline(histogram["threshold"], color="#c44e52", linestyle="--", label="threshold")
            hx.legend()
        hx.set_xlabel(histogram.get("name", "value"))
        hx.set_ylabel("samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
