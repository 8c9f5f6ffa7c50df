"""What a cleaning rule is, and the one loop that applies a list of them.

A rule is any callable taking a `Sample` and returning:
- `None` to keep the sample as it is,
- a reason string (e.g. `"aspect_ratio_too_large"`) to drop it: a `Reason`, which also says
  what it saw (the size, the character, the language and its score: the reject's detail),
- a `Sample` to keep a cleaned copy (text cleaners, GRIT pruning, VQA answer choice).
Rules carry a `name` (functions use their `__name__`) and `reasons`, the drop reasons they can
give, in order (the report lists every rule of a run, those that dropped nothing too). They
know nothing of Beam; the pipelines count the reasons, and a bare Python loop can apply the
same list (`apply_rules`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from corpus.schema import Sample

RuleResult = Union[None, str, Sample]
Rule = Callable[[Sample], RuleResult]


# Reasons that say the input itself is broken: errored wherever they are found, whichever
# pipeline finds them (one status per reason, so reports of different pipelines add up).
INPUT_PROBLEMS = frozenset({
    "unreadable_file", "unsupported_file", "malformed_json", "malformed_record",
    "missing_image", "empty_image", "corrupt_image", "decompression_bomb", "image_too_large",
    "unsupported_image_format", "image_template_unfilled"})


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

    def __post_init__(self):
        if self.reason in INPUT_PROBLEMS:
            self.status = "errored"

    @classmethod
    def of(cls, sample: Sample, reason: str, status: str = "dropped", detail: str = "") -> "Reject":
        return cls(sample.id, sample.dataset, sample.source.uri, sample.source.key, reason, status,
                   detail, sample.text[:2000], sample.task)


class Reason(str):
    """A rule's reason to set a sample aside, with what triggered it (`detail`) and the status
    it counts under: `dropped` by a rule, or `errored` where the input itself is broken (an
    image that is missing or cannot be decoded). It is the reason string itself, so a caller
    comparing reasons sees no difference."""

    detail: str
    status: str

    def __new__(cls, reason: str, detail: str, status: str = "dropped") -> "Reason":
        made = super().__new__(cls, reason)
        made.detail, made.status = detail, status
        return made

    def __reduce__(self):  # pickles with its detail and status
        return Reason, (str(self), self.detail, self.status)


def character_detail(text: str, position: int) -> str:
    """`'é' (U+00E9) at 12` of the character at `position`."""
    char = text[position]
    return f"{char!r} (U+{ord(char):04X}) at {position}"


def rule_name(rule: Rule) -> str:
    return getattr(rule, "name", None) or getattr(rule, "__name__", type(rule).__name__)


def rule_reasons(rules: list[Rule]) -> list[str]:
    """The drop reasons a list of rules can give, in the order they run."""
    return [reason for rule in rules for reason in getattr(rule, "reasons", ())]


def apply_rules(sample: Sample, rules: list[Rule]) -> Sample | Reject:
    """Run rules in order; the first reason stops the sample. Cleaned copies flow on."""
    for rule in rules:
        result = rule(sample)
        if result is None:
            continue
        if isinstance(result, str):
            return Reject.of(sample, result, getattr(result, "status", "dropped"),
                             getattr(result, "detail", ""))
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
