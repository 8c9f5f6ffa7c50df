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
        "rules": list(reason_order),  # every drop reason the run checked, in rule order
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
    """(step, removed, remaining) per step, like the paper's Table 2: the errored inputs (they
    never reach a rule), then every rule the run checked in its order, those that dropped
    nothing too, then any other drop reason."""
    rules = report.get("rules") or []
    dropped = report["dropped"]
    steps = [(f"error: {reason}", count) for reason, count in report["errored"].items()]
    steps += [(reason, dropped.get(reason, 0)) for reason in rules]
    steps += [(reason, count) for reason, count in dropped.items() if reason not in rules]
    remaining, rows = report["input"], []
    for step, count in steps:
        remaining -= count
        rows.append((step, count, remaining))
    return rows


def plot_report(report: dict[str, Any], path: str) -> None:
    """Samples remaining after each step as bars, each labelled with what it removed and its
    share of the input; the score histogram beside it when the stats carry one."""
    # the figure without pyplot: its import and state machine cost a second of every run
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = retention_rows(report)
    histogram = report.get("stats", {}).get("histogram")
    columns = 2 if histogram else 1
    fig = Figure(figsize=(8 * columns, 0.32 * len(rows) + 2.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, columns, squeeze=False)
    _draw_retention(axes[0][0], report, rows)
    if histogram:
        _draw_histogram(axes[0][1], histogram)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _draw_retention(ax, report: dict[str, Any], rows: list[tuple[str, int, int]]) -> None:
    from matplotlib.ticker import MaxNLocator

    total = report["input"]
    labels = ["input"] + [row[0] for row in rows]
    remaining = [total] + [row[2] for row in rows]
    removed = [0] + [row[1] for row in rows]
    colours = ["#4c72b0"] + ["#c44e52" if label.startswith("error: ") else
                             "#dd8452" if count else "#8fa9d6"
                             for label, count in zip(labels[1:], removed[1:])]
    ax.barh(range(len(labels)), remaining, color=colours)
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.invert_yaxis()
    for y, (left, gone) in enumerate(zip(remaining, removed)):
        share = "" if not y else f"  −{gone:,} ({100 * gone / total:.1f} %)" if gone else "  −0"
        ax.text(left, y, f" {left:,}{share}", va="center", fontsize=8)
    ax.set_xlim(0, max(total, 1) * 1.45)  # room for the labels right of the longest bar
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("samples remaining after each step (removed, share of the input)")
    kept_pct = 100 * report["kept"] / total if total else 0.0
    ax.set_title(f"{report['pipeline']} · {report['dataset']}: kept {report['kept']:,} of "
                 f"{total:,} ({kept_pct:.1f} %)", fontsize=10)


def _draw_histogram(ax, histogram: dict[str, Any]) -> None:
    from matplotlib.ticker import MaxNLocator

    edges, counts = histogram["edges"], histogram["counts"]
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges, edges[1:])], align="edge",
           color="#55a868")
    if histogram.get("threshold") is not None:
        ax.axvline(histogram["threshold"], color="#c44e52", linestyle="--",
                   label=f"threshold {histogram['threshold']}")
        ax.legend()
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # whole samples, never quarter ones
    ax.set_xlabel(histogram.get("name", "value"))
    ax.set_ylabel("samples")
    ax.set_title(f"{histogram.get('name', 'value')}: {sum(counts):,} samples scored",
                 fontsize=10)
