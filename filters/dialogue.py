"""Rules for SFT dialogues (Appendix B.2): ChatML turns whose `<image>` placeholders match the
sample's images, with at least one assistant answer to supervise."""
from __future__ import annotations

import dataclasses

from corpus.formats import EOS, IM_END, IM_START, IMAGE_PLACEHOLDER, IMG_END, IMG_START
from corpus.schema import Sample
from filters.base import Reason
from filters.grounding import image_problem

ROLES = ("system", "user", "assistant")
# Text that would break the ChatML structure or the image slots if it stayed in a turn.
# `<ref>`, `<box>` and `<quad>` stay: grounded dialogues use them.
FORBIDDEN_IN_TURNS = (IM_START, IM_END, EOS, IMG_START, IMG_END)


def empty_dialogue(sample: Sample):
    return Reason("empty_dialogue", "no turns") if not sample.turns else None


def unknown_role(sample: Sample):
    unknown = [t.role for t in sample.turns if t.role not in ROLES]
    return Reason("unknown_role", f"role {unknown[0]!r}; known: {', '.join(ROLES)}") if unknown \
        else None


def misplaced_system_turn(sample: Sample):
    """A system turn may only open the dialogue."""
    later = [i for i, t in enumerate(sample.turns) if t.role == "system" and i > 0]
    if later:
        return Reason("misplaced_system_turn", f"a system turn at turn {later[0] + 1}")
    return None


def special_token_in_turn(sample: Sample):
    for number, turn in enumerate(sample.turns, 1):
        found = [token for token in FORBIDDEN_IN_TURNS if token in turn.content]
        if found:
            return Reason("special_token_in_turn", f"{found[0]} in turn {number}")
    return None


def trim_trailing_prompts(sample: Sample):
    """Drops the turns after the last assistant answer: nothing there is supervised.
    `no_assistant_turn` when there is no answer at all."""
    last = max((i for i, t in enumerate(sample.turns) if t.role == "assistant"), default=None)
    if last is None:
        return Reason("no_assistant_turn", f"{len(sample.turns)} turn(s), none by the assistant")
    if last == len(sample.turns) - 1:
        return None
    dropped = sample.turns[last + 1:]
    if any(IMAGE_PLACEHOLDER in t.content for t in dropped):
        return Reason("image_after_last_answer",
                      f"an image in the {len(dropped)} turn(s) after the last answer")
    return dataclasses.replace(sample, turns=sample.turns[: last + 1],
                               decisions=sample.decisions + [
                                   f"trim_trailing_prompts: {len(dropped)} turn(s)"])


def empty_answer(sample: Sample):
    empty = [i for i, t in enumerate(sample.turns, 1)
             if t.role == "assistant" and not t.content.strip()]
    if empty:
        return Reason("empty_answer", f"turn {empty[0]} is blank")
    return None


def image_count_mismatch(sample: Sample):
    placeholders = sum(t.content.count(IMAGE_PLACEHOLDER) for t in sample.turns)
    if placeholders != len(sample.images):
        return Reason("image_count_mismatch",
                      f"{placeholders} placeholder(s), {len(sample.images)} image(s)")
    return None


def dialogue_rules() -> list:
    return [empty_dialogue, unknown_role, misplaced_system_turn, image_problem,
            special_token_in_turn, trim_trailing_prompts, empty_answer, image_count_mismatch]


REASON_ORDER = ["empty_dialogue", "unknown_role", "misplaced_system_turn", "missing_image",
                "corrupt_image", "special_token_in_turn", "no_assistant_turn",
                "image_after_last_answer", "empty_answer", "image_count_mismatch"]
