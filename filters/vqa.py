"""VQA answer choice (Appendix A.2): VQAv2 by maximum confidence, other sets as they are.

VQAv2 has ten answers per question, each with the annotator's `answer_confidence`: "yes",
"maybe" or "no". The paper selects "the answer annotation based on the maximum confidence"
without saying how answers compare or how ties fall, so it is defined here:

1. answers are grouped by their text after trimming and collapsing spaces (VQAv2 answers are
   already lower-case and normalised by its collection tool; nothing else is rewritten);
2. an answer ranks by (votes "yes", votes "maybe", all votes): an answer any annotator gave
   with "yes" beats one given at most with "maybe", and so on; more votes at the highest level
   break ties, then more at the next level, then more votes in all;
3. remaining ties go to the record's `multiple_choice_answer` (VQAv2's own consensus), then to
   the answer first given (annotator order), so the choice never depends on a hash order.

Answers without a confidence (other sets listing several acceptable answers, such as DocVQA)
count as "yes": the most frequent wins, the first given on ties.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from corpus.schema import Sample
from filters.base import Reason

CONFIDENCE_LEVELS = ("no", "maybe", "yes")  # ascending
ANSWERS = "answers"  # sample.extra key holding the raw answer list until the choice


def normalise_answer(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _entry(item: Any) -> tuple[str, str] | None:
    """(answer, confidence) of one raw answer, or None when it holds no text."""
    if isinstance(item, str):
        return normalise_answer(item), "yes"
    if isinstance(item, dict):
        text = item.get("answer", item.get("text"))
        if isinstance(text, str):
            confidence = str(item.get("answer_confidence", "yes")).strip().lower()
            return normalise_answer(text), confidence if confidence in CONFIDENCE_LEVELS else "yes"
    return None


def choose_answer(answers: list[Any], preferred: str | None = None) -> tuple[str, str] | None:
    """(chosen answer, its highest confidence) by the ordering above, or None if none."""
    votes: dict[str, dict[str, int]] = {}
    first_seen: dict[str, int] = {}
    for position, item in enumerate(answers):
        entry = _entry(item)
        if entry is None or not entry[0]:
            continue
        text, confidence = entry
        votes.setdefault(text, {level: 0 for level in CONFIDENCE_LEVELS})[confidence] += 1
        first_seen.setdefault(text, position)
    if not votes:
        return None
    preferred = normalise_answer(preferred) if isinstance(preferred, str) else None

    def rank(text: str):
        v = votes[text]
        return (v["yes"], v["maybe"], v["yes"] + v["maybe"] + v["no"], text == preferred,
                -first_seen[text])

    best = max(votes, key=rank)
    level = next(level for level in reversed(CONFIDENCE_LEVELS) if votes[best][level])
    return best, level


class ChooseAnswer:
    """Sets `sample.answer` from the raw answers in `extra["answers"]` (a sample that already
    has a single answer passes through); `no_answer` when there is none."""

    name = "choose_answer"

    def __call__(self, sample: Sample):
        raw = sample.extra.get(ANSWERS)
        extra = {k: v for k, v in sample.extra.items() if k != ANSWERS}
        if raw is None:
            return Reason("no_answer", "no answers field and a blank answer") \
                if not (sample.answer or "").strip() else None
        choice = choose_answer(raw if isinstance(raw, list) else [raw],
                               sample.extra.get("multiple_choice_answer"))
        if choice is None:
            return Reason("no_answer", f"answers {str(raw)[:80]}")
        answer, level = choice
        extra["answer_confidence"] = level
        return dataclasses.replace(sample, answer=answer, text=answer, extra=extra,
                                   decisions=sample.decisions + [f"choose_answer: {level}"])


class MinAnswerConfidence:
    """Drops a question whose chosen answer no annotator gave with at least `level`."""

    name = "min_answer_confidence"

    def __init__(self, level: str):
        if level not in CONFIDENCE_LEVELS:
            raise ValueError(f"min_answer_confidence must be one of {CONFIDENCE_LEVELS}")
        self.level = level

    def __call__(self, sample: Sample):
        level = sample.extra.get("answer_confidence", "yes")
        if CONFIDENCE_LEVELS.index(level) < CONFIDENCE_LEVELS.index(self.level):
            return Reason("answer_confidence_too_low",
                          f"the chosen answer's best confidence is {level!r}, under {self.level!r}")
        return None


def empty_question(sample: Sample):
    return Reason("empty_question", f"question {sample.question!r}") \
        if not (sample.question or "").strip() else None
