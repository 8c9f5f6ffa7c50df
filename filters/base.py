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
    # the task the reject counts for in a command writing several (GRIT into grounding and its
    # duality tasks); "" counts for every task. Not a column of the rejects table.
    task: str = ""

    @classmethod
    def of(cls, sample: Sample, reason: str, status: str = "dropped", detail: str = "") -> "Reject":
        return cls(sample.id, sample.dataset, sample.source.uri, sample.source.key, reason, status,
                   detail, sample.text[:2000], sample.task)


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


def checked(sample: Sample, rules: list[Rule]) -> Sample | Reject:
    """`apply_rules`, with a rule's exception an errored reject of this sample only: one bad
    sample never stops the rest of its input."""
    try:
        return apply_rules(sample, rules)
    except Exception as error:  # the dead letter of one sample
        return Reject.of(sample, type(error).__name__, "errored", str(error)[:1000])


def set_up(rules: list[Rule]) -> None:
    """Loads what the rules need (a language model) once per process."""
    for rule in rules:
        setup = getattr(rule, "setup", None)
        if setup is not None:
            setup()
