"""Image rules of A.1 steps 1-2 and the two ways an image is opened (header probe, draft decode)."""
import io

import pytest
from PIL import Image as PILImage

from conftest import make_image, make_sample
from corpus.samples.pairs import make_photo, png_bomb
from filters.image_rules import AspectRatio, ImageError, ImageRulesConfig, decode_for_model, \
    image_rules, probe_image


def with_size(width, height):
    return make_sample(images=[make_image(width, height)])


def test_aspect_ratio():
    rule = AspectRatio(3.0)
    assert rule(with_size(300, 100)) is None  # exactly 3 is allowed
    assert rule(with_size(301, 100)) == "aspect_ratio_too_large"
    assert rule(with_size(100, 301)) == "aspect_ratio_too_large"  # tall counts as well as wide


def test_image_rules_in_order_and_switchable():
    rules = image_rules(ImageRulesConfig(max_aspect_ratio=3.0, min_side=200))
    assert [r.name for r in rules] == ["aspect_ratio_too_large", "image_too_small"]
    assert rules[1](with_size(199, 400)) == "image_too_small"
    assert rules[1](with_size(200, 400)) is None
    assert image_rules(ImageRulesConfig(max_aspect_ratio=None, min_side=None)) == []


def test_probe_reads_the_header_only():
    data = make_photo(640, 480, seed=1)
    image = probe_image(data)
    assert (image.format, image.width, image.height) == ("jpeg", 640, 480)
    # A truncated body still has a whole header: probing passes, decoding fails.
    half = data[: len(data) // 2]
    assert probe_image(half).width == 640
    with pytest.raises(ImageError) as error:
        decode_for_model(half, 64)
    assert error.value.reason == "corrupt_image"


@pytest.mark.parametrize("data,reason", [
    (b"", "empty_image"),
    (b"not an image at all", "corrupt_image"),
    (png_bomb(30000, 30000), "decompression_bomb"),  # over twice Pillow's limit: Pillow refuses
    (png_bomb(12000, 12000), "decompression_bomb"),  # over our limit: we refuse
])
def test_probe_rejects(data, reason):
    with pytest.raises(ImageError) as error:
        probe_image(data)
    assert error.value.reason == reason


def test_probe_rejects_formats_the_schema_cannot_hold():
    buffer = io.BytesIO()
    PILImage.new("RGB", (32, 32)).save(buffer, format="GIF")
    with pytest.raises(ImageError) as error:
        probe_image(buffer.getvalue())
    assert error.value.reason == "unsupported_image_format"


def test_decode_for_model_resizes_and_centre_crops():
    pixels = decode_for_model(make_photo(640, 480, seed=2), 64)
    assert pixels.shape == (64, 64, 3) and pixels.dtype.name == "uint8"
    png = decode_for_model(make_photo(100, 300, seed=3, fmt="PNG"), 32)
    assert png.shape == (32, 32, 3)


def test_corrupt_image_detail_names_no_memory_address():
    # Pillow's message names the BytesIO object by address; the rejects table must not.
    details = set()
    for opener in (probe_image, lambda data: decode_for_model(data, 32)):
        for _ in range(2):
            with pytest.raises(ImageError) as raised:
                opener(b"not an image at all")
            assert raised.value.reason == "corrupt_image"
            assert " at 0x" not in raised.value.detail
            details.add(raised.value.detail)
    assert details == {"cannot identify image file <_io.BytesIO object>"}
