"""Image rules of Appendix A.1, steps 1 and 2, and the two ways this project opens an image.

`probe_image` reads only the header (format and size; no pixel is decoded), which is all steps 1
and 2 need. `decode_for_model` fully decodes the survivors that a model must see, with Pillow's
JPEG draft mode: libjpeg scales by 1/2, 1/4 or 1/8 while decoding, so a 4000×3000 photo meant
for a 224² model costs a fraction of a full decode.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from corpus.schema import IMAGE_FORMATS, Image, Sample
from filters.pages import ImageTooSmall

PIL_FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}  # Pillow name -> schema format
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own Image.MAX_IMAGE_PIXELS (a 1/4 GB RGBA image)


class ImageError(ValueError):
    """An image that cannot be used; `reason` is the stable reject reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _stable_detail(error: Exception) -> str:
    """The error's message without object addresses (Pillow names the `<_io.BytesIO object at
    0x…>` it could not identify), so the rejects table is the same on every run."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(error))[:200]


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Format and size from the header. Raises ImageError: empty_image, corrupt_image,
    unsupported_image_format, decompression_bomb."""
    if not data:
        raise ImageError("empty_image")
    try:
        with warnings.catch_warnings():  # the size is judged below, against our own limit
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as image:
                width, height, pil_format = image.width, image.height, image.format
    except PILImage.DecompressionBombError as error:
        raise ImageError("decompression_bomb", str(error)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError("corrupt_image", _stable_detail(error)) from None
    if width <= 0 or height <= 0:
        raise ImageError("corrupt_image", f"size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError("decompression_bomb", f"{width}x{height} > {max_pixels} pixels")
    image_format = PIL_FORMATS.get(pil_format or "")
    if image_format not in IMAGE_FORMATS:
        raise ImageError("unsupported_image_format", str(pil_format))
    return Image(data, image_format, width, height)


def decode_for_model(data: bytes, size: int) -> np.ndarray:
    """RGB uint8 array (size, size, 3): shorter side resized to `size` (bicubic), centre crop,
    as open_clip's evaluation transform does. Raises ImageError(corrupt_image) on bad data."""
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            image.draft("RGB", (size, size))  # JPEG only; keeps the decoded image >= size
            image = image.convert("RGB")
            scale = size / min(image.size)
            resized = (max(size, round(image.width * scale)),
                       max(size, round(image.height * scale)))
            image = image.resize(resized, PILImage.BICUBIC)
            left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
            image = image.crop((left, top, left + size, top + size))
            return np.asarray(image, dtype=np.uint8)
    except PILImage.DecompressionBombError as error:
        raise ImageError("decompression_bomb", str(error)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError("corrupt_image", _stable_detail(error)) from None


class AspectRatio:
    """Step 1: drop when max(w/h, h/w) exceeds the limit."""

    name = "aspect_ratio_too_large"

    def __init__(self, max_ratio: float):
        self.max_ratio = max_ratio

    def __call__(self, sample: Sample):
        image = sample.image
        if image is None:
            return self.name
        ratio = max(image.width / image.height, image.height / image.width)
        return self.name if ratio > self.max_ratio else None


@dataclass
class ImageRulesConfig:
    """The paper names no values; these are DataComp's basic filtering (shorter side >= 200,
    aspect ratio < 3)."""

    max_aspect_ratio: float | None = 3.0  # step 1; None turns it off
    min_side: int | None = 200  # step 2, pixels of the shorter side; None turns it off
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are rejected as decompression bombs
    verify_decode: bool = True  # when CLIP is off, still decode survivors to catch corrupt data

    def validate(self) -> None:
        if self.max_aspect_ratio is not None and self.max_aspect_ratio < 1:
            raise ValueError(f"max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")


def image_rules(config: ImageRulesConfig) -> list:
    rules = []
    if config.max_aspect_ratio is not None:
        rules.append(AspectRatio(config.max_aspect_ratio))
    if config.min_side is not None:
        rules.append(ImageTooSmall(config.min_side))
    return rules
