"""What a cleaning rule is, and the one loop that applies a list of them.

A rule is any callable taking a `Sample` and returning:
- `None` to keep the sample as it is,
- a short reason string (e.g. `"aspect_ratio_too_large"`) to drop it,
- a `Sample` to keep a cleaned copy (text cleaners, GRIT pruning, VQA answer choice).
Rules carry a `name` (functions use their `__name__`). They know nothing of Beam; the pipelines
count the reasons, and a bare Python loop can apply the same list (`apply_rules`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from corpus.schema import Sample

RuleResult = Union[None, str, Sample]
Rule = Callable[[Sample], RuleResult]


@dataclass
class Reject:
    """A sample (or an input that never became one) that did not make it, and why."""

    id: str
    dataset: str
    uri: str
    key: str
    reason: str
    status: str = "dropped"  # "dropped" by a rule, or "errored" by an exception / unreadable input
    detail: str = ""
    text: str = ""

    @classmethod
    def of(cls, sample: Sample, reason: str, status: str = "dropped", detail: str = "") -> "Reject":
        return cls(sample.id, sample.dataset, sample.source.uri, sample.source.key, reason, status,
                   detail, sample.text[:2000])


def rule_name(rule: Rule) -> str:
    return getattr(rule, "name", None) or getattr(rule, "__name__", type(rule).__name__)


def apply_rules(sample: Sample, rules: list[Rule]) -> Sample | Reject:
    """Run rules in order; the first reason stops the sample. Cleaned copies flow on."""
    for rule in rules:
        result = rule(sample)
        if result is None:
            continue
        if isinstance(result, str):
            return Reject.of(sample, result)
        sample = result
    return sample
