"""The Qwen-VL text formats of Appendix B: exact prompts, coordinates, loss flags, round trips."""
import random

import pytest

from conftest import make_image, make_sample
from corpus.formats import (EOS, format_box, format_quad, format_sample, from_thousandths,
                            parse_boxes, parse_chatml, parse_grounded_caption, parse_quads, render,
                            strip_tags, to_thousandths)
from corpus.schema import Region, Turn


def test_thousandths_follow_the_convention():
    assert to_thousandths(0, 640) == 0
    assert to_thousandths(320, 640) == 500
    assert to_thousandths(639.9, 640) == 999
    assert to_thousandths(640, 640) == 999  # the right edge clamps to 999
    assert to_thousandths(-3, 640) == 0
    assert from_thousandths(500, 640) == 320


def test_box_and_quad_print_as_in_the_paper():
    assert format_box((661, 612, 833, 812), 1000, 1000) == "(661,612),(833,812)"
    quad = (568, 121, 625, 131, 624, 182, 567, 172)
    assert format_quad(quad, 1000, 1000) == "(568,121), (625,131), (624,182), (567,172)"


def test_captioning_prompt_and_loss_flags():
    sample = make_sample(text="the beautiful flowers for design.")
    spans = format_sample(sample)
    assert [s.supervised for s in spans] == [False, False, True]
    assert spans[0].image == 0
    assert render(spans).endswith(
        "</img>Generate the caption in English: the beautiful flowers for design." + EOS)


def test_vqa_and_ref_tasks_match_box_b1():
    vqa = make_sample(task="vqa", question="What is the title of this book?", answer="Asi Se Dice!")
    assert render(format_sample(vqa)).split("</img>")[1] == (
        "What is the title of this book? Answer: Asi Se Dice!" + EOS)
    image = make_image(1000, 1000)
    ref = make_sample(task="ref_grounding", text="the ear on a giraffe", images=[image],
                      regions=[Region("ref", "the ear on a giraffe", (176, 106, 232, 160))])
    assert render(format_sample(ref)).split("</img>")[1] == (
        "<ref>the ear on a giraffe</ref><box>(176,106),(232,160)</box>" + EOS)
    grounded = make_sample(task="grounded_captioning", images=[image],
                           text="Yellow cross country ski racing gloves",
                           regions=[Region("ref", "This", (360, 542, 476, 705))])
    spans = format_sample(grounded)
    assert spans[1].text == "<ref>This</ref><box>(360,542),(476,705)</box>"
    assert spans[2].text == " is Yellow cross country ski racing gloves" + EOS
    assert spans[2].supervised and not spans[1].supervised


def test_chatml_supervises_answers_and_special_tokens_only():
    sample = make_sample(task="sft", images=[make_image(), make_image()], turns=[
        Turn("user", "<image>What is the sign in the picture?"),
        Turn("assistant", "The sign is a road closure."),
        Turn("user", "Compare with <image>"),
        Turn("assistant", "Both are red.")])
    spans = format_sample(sample)
    supervised = "".join(s.text for s in spans if s.supervised)
    assert "The sign is a road closure." in supervised and "Both are red." in supervised
    assert "user" not in supervised and "assistant" not in supervised
    assert "What is the sign" not in supervised and "helpful assistant" not in supervised
    text = render(spans)
    assert "Picture 1: <img>" in text and "Picture 2: <img>" in text
    assert [s.image for s in spans if s.image is not None] == [0, 1]
    roles = [role for role, _ in parse_chatml(text)]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


def _random_caption(rng):
    words = ["a", "dog", "red", "car", "on", "the", "street", "two", "cats", "大", "猫"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(3, 15)))


@pytest.mark.parametrize("seed", range(300))
def test_grounded_caption_round_trip(seed):
    rng = random.Random(seed)
    caption = _random_caption(rng)
    width, height = rng.randint(16, 4000), rng.randint(16, 4000)
    spans, cursor = [], 0
    while cursor < len(caption) - 1 and len(spans) < 4:
        start = rng.randint(cursor, len(caption) - 1)
        end = rng.randint(start + 1, len(caption))
        spans.append((start, end))
        cursor = end
    regions = []
    for start, end in spans:
        for _ in range(rng.randint(1, 3)):
            x1, x2 = sorted(rng.uniform(0, width) for _ in range(2))
            y1, y2 = sorted(rng.uniform(0, height) for _ in range(2))
            regions.append(Region("ref", caption[start:end], (x1, y1, x2, y2), None, start, end))
    sample = make_sample(task="grounding", text=caption, images=[make_image(width, height)],
                         regions=regions)
    target = format_sample(sample)[-1].text.removesuffix(EOS).lstrip(" ")
    plain, refs = parse_grounded_caption(target)
    assert plain == caption
    assert strip_tags(target) == caption
    expected = [(r.char_start, r.char_end,
                 (to_thousandths(r.box[0], width), to_thousandths(r.box[1], height),
                  to_thousandths(r.box[2], width), to_thousandths(r.box[3], height)))
                for r in sorted(regions, key=lambda r: r.char_start)]
    assert refs == expected
    assert parse_boxes(target) == [box for _, _, box in expected]


@pytest.mark.parametrize("seed", range(200))
def test_ocr_quads_round_trip(seed):
    rng = random.Random(seed)
    width, height = rng.randint(16, 3000), rng.randint(16, 3000)
    regions = []
    for i in range(rng.randint(1, 6)):
        quad = tuple(rng.uniform(0, width) if j % 2 == 0 else rng.uniform(0, height)
                     for j in range(8))
        regions.append(Region("line", f"line {i} {_random_caption(rng)}", quad=quad))
    sample = make_sample(task="ocr", images=[make_image(width, height)], regions=regions)
    parsed = parse_quads(render(format_sample(sample)))
    assert [text for text, _ in parsed] == [r.text for r in regions]
    for (_, quad), region in zip(parsed, regions):
        assert quad == tuple(to_thousandths(v, width if i % 2 == 0 else height)
                             for i, v in enumerate(region.quad))


def test_parser_accepts_either_spacing():
    assert parse_quads("<ref>x</ref><quad>(1,2),(3,4),(5,6),(7,8)</quad>") == [
        ("x", (1, 2, 3, 4, 5, 6, 7, 8))]
    assert parse_boxes("<box>(1, 2), (3, 4)</box>") == [(1, 2, 3, 4)]


def test_overlapping_reference_spans_are_refused():
    sample = make_sample(task="grounding", text="a red car", regions=[
        Region("ref", "a red", (0, 0, 1, 1), None, 0, 5),
        Region("ref", "red car", (0, 0, 1, 1), None, 2, 9)])
    with pytest.raises(ValueError, match="overlapping"):
        format_sample(sample)
