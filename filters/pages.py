"""The page rules of Appendix A.4, shared by the PDF and HTML pipelines.

PDF pages run: image too small, too few / too many characters, Latin Extended-A/B, Private Use
Area. HTML pages run the same list without the Latin Extended rule, as the paper lists them.
Each rule reads the sample's rendered image size and its full text (`sample.text`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from corpus.schema import Sample
from filters.base import Reason, character_detail


@dataclass
class PageRulesConfig:
    min_image_side: int = 224  # shorter image side, pixels; the stage-1 input is 224
    min_chars: int = 10  # non-space characters on the page
    max_chars: int = 8000  # beyond this a 448² stage-2 image cannot show the text legibly

    def validate(self) -> None:
        if not 0 <= self.min_chars <= self.max_chars:
            raise ValueError(f"need 0 <= min_chars <= max_chars, got {self.min_chars}, "
                             f"{self.max_chars}")


def is_latin_extended(char: str) -> bool:
    """Latin Extended-A (U+0100–U+017F) and Latin Extended-B (U+0180–U+024F)."""
    return 0x0100 <= ord(char) <= 0x024F


def is_private_use(char: str) -> bool:
    """The BMP Private Use Area and the two supplementary PUA planes (15 and 16)."""
    code = ord(char)
    return 0xE000 <= code <= 0xF8FF or 0xF0000 <= code <= 0xFFFFD or 0x100000 <= code <= 0x10FFFD


# the same ranges as the two functions above, searched in C: a page holds thousands of characters
LATIN_EXTENDED = re.compile("[\u0100-\u024f]")
PRIVATE_USE = re.compile("[\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd]")


class ImageTooSmall:
    name = "image_too_small"
    reasons = (name,)

    def __init__(self, min_side: int):
        self.min_side = min_side

    def __call__(self, sample: Sample):
        image = sample.image
        if image is None:
            return Reason(self.name, "no image")
        if min(image.width, image.height) < self.min_side:
            return Reason(self.name, f"{image.width}x{image.height} px: the shorter side is under "
                                   f"{self.min_side}")
        return None


class CharacterCount:
    name = "character_count"
    reasons = ("too_few_characters", "too_many_characters")

    def __init__(self, min_chars: int, max_chars: int):
        self.min_chars, self.max_chars = min_chars, max_chars

    def __call__(self, sample: Sample):
        count = len("".join(sample.text.split()))  # split() drops exactly what isspace() marks
        if count < self.min_chars:
            return Reason("too_few_characters", f"{count} characters, under {self.min_chars}")
        if count > self.max_chars:
            return Reason("too_many_characters", f"{count} characters, over {self.max_chars}")
        return None


def latin_extended(sample: Sample):
    found = LATIN_EXTENDED.search(sample.text)
    return Reason("latin_extended", character_detail(sample.text, found.start())) if found else None


def private_use_area(sample: Sample):
    found = PRIVATE_USE.search(sample.text)
    return Reason("private_use_area", character_detail(sample.text, found.start())) if found \
        else None


latin_extended.reasons = ("latin_extended",)
private_use_area.reasons = ("private_use_area",)


def pdf_page_rules(config: PageRulesConfig) -> list:
    return [ImageTooSmall(config.min_image_side),
            CharacterCount(config.min_chars, config.max_chars),
            latin_extended, private_use_area]


def html_page_rules(config: PageRulesConfig) -> list:
    return [ImageTooSmall(config.min_image_side),
            CharacterCount(config.min_chars, config.max_chars),
            private_use_area]


PDF_REASON_ORDER = ["image_too_small", "too_few_characters", "too_many_characters",
                    "latin_extended", "private_use_area"]
HTML_REASON_ORDER = ["image_too_small", "too_few_characters", "too_many_characters",
                     "private_use_area"]
