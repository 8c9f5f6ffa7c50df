"""Image rules of A.1 steps 1-2 and the ways an image is opened (header probe, upright
re-encoding, decode check, draft decode)."""
import io

import pytest
from PIL import Image as PILImage

from conftest import make_image, make_sample
from corpus.samples.pairs import make_photo, png_bomb
from filters.image_rules import AspectRatio, ImageError, ImageRulesConfig, decode_for_model, \
    image_rules, probe_image, verify_decode


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


def encoded(image: PILImage.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def red_left_blue_right(width=60, height=40) -> PILImage.Image:
    image = PILImage.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    return image


def test_a_photo_stored_turned_is_re_encoded_upright():
    exif = PILImage.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise: the stored left edge is the top
    data = encoded(red_left_blue_right(), "JPEG", quality=95, exif=exif.tobytes())
    image = probe_image(data)
    assert (image.format, image.width, image.height) == ("jpeg", 40, 60)
    with PILImage.open(io.BytesIO(image.data)) as upright:
        assert upright.size == (40, 60)
        assert 0x0112 not in upright.getexif()  # no reader turns it a second time
        pixels = upright.convert("RGB")
        top, bottom = pixels.getpixel((20, 10)), pixels.getpixel((20, 50))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_a_photo_stored_upright_keeps_its_bytes():
    exif = PILImage.Exif()
    exif[0x0112] = 1
    data = encoded(red_left_blue_right(), "JPEG", exif=exif.tobytes())
    assert probe_image(data).data is data
    invalid = PILImage.Exif()
    invalid[0x0112] = 0  # not an orientation: taken as upright
    data = encoded(red_left_blue_right(), "JPEG", exif=invalid.tobytes())
    assert probe_image(data).data is data
    # a camera's multi-picture JPEG is a JPEG to every reader (they show its first picture)
    data = encoded(red_left_blue_right(), "MPO", save_all=True,
                   append_images=[PILImage.new("RGB", (60, 40))])
    image = probe_image(data)
    assert image.format == "jpeg" and image.data is data


@pytest.mark.parametrize("fmt,stored_as", [("GIF", "png"), ("BMP", "png"), ("TIFF", "png"),
                                           ("AVIF", "jpeg")])
def test_formats_readers_may_lack_are_re_encoded(fmt, stored_as):
    image = probe_image(encoded(red_left_blue_right(), fmt))
    assert (image.format, image.width, image.height) == (stored_as, 60, 40)
    with PILImage.open(io.BytesIO(image.data)) as reopened:
        assert reopened.format == stored_as.upper()


def test_other_formats_are_refused_and_truncated_conversions_are_corrupt():
    with pytest.raises(ImageError) as error:
        probe_image(encoded(red_left_blue_right(), "PCX"))
    assert error.value.reason == "unsupported_image_format"
    gif = encoded(red_left_blue_right(600, 400), "GIF")
    with pytest.raises(ImageError) as error:
        probe_image(gif[: len(gif) // 2])
    assert error.value.reason == "corrupt_image"


def test_verify_decode_catches_a_truncated_body():
    data = make_photo(640, 480, seed=4)
    verify_decode(data)
    with pytest.raises(ImageError) as error:
        verify_decode(data[: len(data) // 2])
    assert error.value.reason == "corrupt_image"


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


def test_see_through_parts_are_laid_on_white():
    logo = PILImage.new("RGBA", (60, 40), (0, 0, 0, 0))  # black where transparent: hidden colour
    logo.paste((200, 0, 0, 255), (0, 0, 30, 40))
    for fmt in ("PNG", "WEBP"):
        image = probe_image(encoded(logo, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
        with PILImage.open(io.BytesIO(image.data)) as shown:
            assert shown.mode == "RGB"
            assert shown.getpixel((45, 20)) == (255, 255, 255)  # the page, not black
            assert shown.getpixel((10, 20))[0] > 180
    palette = logo.convert("P")  # GIF-style: one colour index is transparent
    palette.info["transparency"] = palette.getpixel((45, 20))
    image = probe_image(encoded(palette, "PNG", transparency=palette.info["transparency"]))
    with PILImage.open(io.BytesIO(image.data)) as shown:
        assert shown.convert("RGB").getpixel((45, 20)) == (255, 255, 255)


def test_an_opaque_image_with_an_alpha_channel_keeps_its_bytes():
    data = encoded(red_left_blue_right().convert("RGBA"), "PNG")
    assert probe_image(data).data is data
