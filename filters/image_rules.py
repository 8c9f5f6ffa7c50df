"""Image rules of Appendix A.1, steps 1 and 2, and the two ways this project opens an image.

`probe_image` reads only the header (format and size; no pixel is decoded), which is all steps 1
and 2 need; only an image stored turned (EXIF), see-through, or in a format readers may lack is
decoded there, to be re-encoded as a viewer shows it. `decode_for_model` fully decodes the survivors that a model must see, with Pillow's
JPEG draft mode: libjpeg scales by 1/2, 1/4 or 1/8 while decoding, so a 4000×3000 photo meant
for a 224² model costs a fraction of a full decode.
"""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from corpus.schema import Image, Sample
from filters.base import Reason
from filters.pages import ImageTooSmall

PIL_FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp",
               "MPO": "jpeg"}  # Pillow name -> schema format; MPO is a camera's JPEG plus extras
# Formats read and re-encoded (the first frame of an animation), as the web and scanners serve
# them. Others Pillow knows are refused: some (EPS) would run a program to decode.
CONVERTED_FORMATS = {"GIF", "BMP", "TIFF", "AVIF"}
LOSSY_FORMATS = {"JPEG", "MPO", "WEBP", "AVIF"}  # re-encoded as JPEG; the rest as PNG
EXIF_ORIENTATION = 0x0112
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


@contextlib.contextmanager
def _reading(data: bytes):
    """Open `data` with Pillow, turning its errors into ImageError (decompression_bomb,
    corrupt_image). Sizes are judged against our own limit, so Pillow's warning is muted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as image:
                yield image
    except ImageError:
        raise
    except PILImage.DecompressionBombError as error:
        raise ImageError("decompression_bomb", str(error)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError("corrupt_image", _stable_detail(error)) from None


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Format and size from the header; the bytes are kept as they are. Raises ImageError:
    empty_image, corrupt_image, unsupported_image_format, decompression_bomb.

    Three kinds are decoded and re-encoded as a viewer shows them instead (`as_shown`), since a
    reader of the shards that converts to RGB would see something else: a photo whose EXIF
    orientation says it is stored turned or mirrored (phones do this), which would be seen
    sideways; a see-through image (a logo on a transparent PNG), whose hidden colour, often
    black, would show; and GIF, BMP, TIFF and AVIF, which not every reader decodes."""
    if not data:
        raise ImageError("empty_image", "0 bytes")
    with _reading(data) as image:
        width, height, pil_format = image.width, image.height, image.format
        if width <= 0 or height <= 0:
            raise ImageError("corrupt_image", f"size {width}x{height}")
        if width * height > max_pixels:
            raise ImageError("decompression_bomb", f"{width}x{height} > {max_pixels} pixels")
        image_format = PIL_FORMATS.get(pil_format or "")
        if image_format is None and pil_format not in CONVERTED_FORMATS:
            raise ImageError("unsupported_image_format", str(pil_format))
        orientation = _orientation(image)
        if image_format is None or orientation != 1 or _may_see_through(image):
            shown = as_shown(image, convert=image_format is None or orientation != 1)
            if shown is not None:
                return shown
    return Image(data, image_format, width, height)


def _orientation(image: PILImage.Image) -> int:
    """EXIF orientation 1-8; 1 (stored upright) when there is none or it is not a valid one."""
    if "exif" not in image.info:  # parsing the EXIF block only when there is one
        return 1
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    return orientation if orientation in range(1, 9) else 1


def _may_see_through(image: PILImage.Image) -> bool:
    """An alpha channel or a transparent colour, from the header."""
    return "A" in image.mode or "transparency" in image.info


def as_shown(image: PILImage.Image, convert: bool) -> Image | None:
    """Decode; turn as EXIF says; lay see-through parts on white, as a page shows them; and
    re-encode without EXIF: JPEG (quality 95) for photos, PNG for the rest. None when nothing
    needed doing (`convert` false and every pixel opaque). Decoding errors propagate."""
    source_format = image.format
    with warnings.catch_warnings():  # Pillow's advice to convert palette transparency to RGBA
        warnings.simplefilter("ignore", UserWarning)
        turned = ImageOps.exif_transpose(image)
        if _may_see_through(turned):
            rgba = turned.convert("RGBA")
            if rgba.getextrema()[3][0] < 255:  # some pixel lets the page through
                turned = PILImage.alpha_composite(
                    PILImage.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
                convert = True
    if not convert:
        return None
    buffer = io.BytesIO()
    if source_format in LOSSY_FORMATS:
        turned.convert("RGB").save(buffer, format="JPEG", quality=95)
        image_format = "jpeg"
    else:
        turned.convert("RGB").save(buffer, format="PNG")
        image_format = "png"
    return Image(buffer.getvalue(), image_format, turned.width, turned.height)


def reencoded(image: Image, image_format: str, quality: int) -> Image:
    """The image in another format (its pixels as shown: probe_image already turned and
    flattened it); JPEG and WebP at `quality`."""
    with PILImage.open(io.BytesIO(image.data)) as opened:
        pixels = opened.convert("RGB")
    buffer = io.BytesIO()
    options = {} if image_format == "png" else {"quality": quality}
    pixels.save(buffer, format=image_format.upper(), **options)
    return Image(buffer.getvalue(), image_format, pixels.width, pixels.height)


def verify_decode(data: bytes) -> None:
    """Decode the image once, to catch a truncated or corrupt body; JPEG at 1/8 scale, which
    still reads every byte. Raises ImageError."""
    with _reading(data) as image:
        image.draft("RGB", (1, 1))
        image.load()


def decode_for_model(data: bytes, size: int) -> np.ndarray:
    """RGB uint8 array (size, size, 3): shorter side resized to `size` (bicubic), centre crop,
    as open_clip's evaluation transform does. Raises ImageError on bad data."""
    with _reading(data) as image:
        image.draft("RGB", (size, size))  # JPEG only; keeps the decoded image >= size
        image = image.convert("RGB")
        scale = size / min(image.size)
        resized = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
        image = image.resize(resized, PILImage.BICUBIC)
        left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8)


class AspectRatio:
    """Step 1: drop when max(w/h, h/w) exceeds the limit."""

    name = "aspect_ratio_too_large"
    reasons = (name,)

    def __init__(self, max_ratio: float):
        self.max_ratio = max_ratio

    def __call__(self, sample: Sample):
        image = sample.image
        if image is None:
            return Reason(self.name, "no image")
        ratio = max(image.width / image.height, image.height / image.width)
        if ratio > self.max_ratio:
            return Reason(self.name, f"{image.width}x{image.height} px: ratio {ratio:.2f} over "
                                   f"{self.max_ratio}")
        return None


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
