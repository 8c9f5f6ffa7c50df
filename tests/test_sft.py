"""SFT: conversation JSON into ChatML turns, the dialogue rules, and `corpus sft`."""
import glob
import os

import pytest

from conftest import make_image, make_sample
from corpus.formats import IM_END, IM_START, format_sample, parse_chatml, render
from corpus.samples.sft import write_sft_sample
from corpus.schema import Turn
from corpus.shards import read_shard
from filters.dialogue import empty_answer, empty_dialogue, image_count_mismatch, \
    misplaced_system_turn, special_token_in_turn, trim_trailing_prompts, unknown_role
from pipelines.sft import SftConfig, convert_turns, place_images, run


def test_qwen_vl_inline_images_become_placeholders_in_order():
    turns, paths = convert_turns([
        {"from": "user", "value": "Picture 1: <img>a.jpg</img>\nPicture 2: <img>b.jpg</img>\nQ"},
        {"from": "assistant", "value": "A"},
        {"from": "user", "value": "And <img>c.jpg</img>?"}])
    assert paths == ["a.jpg", "b.jpg", "c.jpg"]
    assert turns == [Turn("user", "<image>\n<image>\nQ"), Turn("assistant", "A"),
                     Turn("user", "And <image>?")]


def test_llava_roles_and_messages_form():
    turns, _ = convert_turns([{"from": "human", "value": "<image>\nQ"},
                              {"from": "gpt", "value": "A"}])
    assert [t.role for t in turns] == ["user", "assistant"]
    turns, _ = convert_turns([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    assert [t.role for t in turns] == ["system", "user"]
    assert convert_turns([{"from": "user"}]) is None
    assert place_images([Turn("system", "S"), Turn("user", "Q")], 2)[1].content == \
        "<image>\n<image>\nQ"


def _dialogue(*turns, images=()):
    return make_sample(task="sft", text="", turns=[Turn(r, c) for r, c in turns],
                       images=list(images))


@pytest.mark.parametrize("rule, sample, reason", [
    (empty_dialogue, _dialogue(), "empty_dialogue"),
    (unknown_role, _dialogue(("narrator", "x"), ("assistant", "y")), "unknown_role"),
    (misplaced_system_turn, _dialogue(("user", "x"), ("system", "y")), "misplaced_system_turn"),
    (special_token_in_turn, _dialogue(("user", "a <|im_start|> b")), "special_token_in_turn"),
    (special_token_in_turn, _dialogue(("user", "<img>x.jpg</img>")), "special_token_in_turn"),
    (trim_trailing_prompts, _dialogue(("user", "x")), "no_assistant_turn"),
    (trim_trailing_prompts, _dialogue(("user", "x"), ("assistant", "y"), ("user", "<image>")),
     "image_after_last_answer"),
    (empty_answer, _dialogue(("user", "x"), ("assistant", " ")), "empty_answer"),
    (image_count_mismatch, _dialogue(("user", "<image> <image>"), images=[make_image()]),
     "image_count_mismatch"),
])
def test_dialogue_rules_reasons(rule, sample, reason):
    assert rule(sample) == reason


def test_grounding_tags_are_allowed_and_trailing_prompts_trimmed():
    sample = _dialogue(("user", "Where?"), ("assistant", "<ref>it</ref><box>(1,2),(3,4)</box>"),
                       ("user", "Thanks"))
    assert special_token_in_turn(sample) is None
    trimmed = trim_trailing_prompts(sample)
    assert [t.role for t in trimmed.turns] == ["user", "assistant"]
    assert trimmed.decisions == ["trim_trailing_prompts: 1 turn(s)"]


def test_only_answers_and_special_tokens_are_supervised():
    sample = _dialogue(("user", "<image>\nWhat is it?"), ("assistant", "A sign."),
                       images=[make_image()])
    spans = format_sample(sample)
    supervised = "".join(s.text for s in spans if s.supervised)
    assert "A sign." in supervised
    assert "What is it?" not in supervised and "user\n" not in supervised
    assert "assistant\n" not in supervised and "Picture 1: " not in supervised
    assert supervised.count(IM_START) == supervised.count(IM_END) == 3  # system, user, assistant


def test_sft_run_counts_every_rule_and_writes_chatml(tmp_path, beam_argv):
    inputs, images = write_sft_sample(str(tmp_path / "in"))
    report = run(inputs, str(tmp_path / "out"), "sft", SftConfig(), beam_argv, images=images)
    assert (report["input"], report["kept"]) == (14, 5)
    assert report["dropped"] == {
        "empty_dialogue": 1, "unknown_role": 1, "misplaced_system_turn": 1,
        "special_token_in_turn": 1, "no_assistant_turn": 1, "empty_answer": 1,
        "image_count_mismatch": 1}
    assert report["errored"] == {"malformed_record": 1, "missing_image": 1}
    samples = {s.extra["source_id"]: s for p in glob.glob(os.path.join(tmp_path, "out",
                                                                       "shards", "*.tar"))
               for s in read_shard(p)}
    assert sorted(samples) == ["l0", "l1", "q0", "q1", "q2"]
    two_pictures = render(format_sample(samples["q1"]))
    assert "Picture 1: <img>sft/" in two_pictures and "Picture 2: <img>sft/" in two_pictures
    assert len(samples["q1"].images) == 2
    roles = [role for role, _ in parse_chatml(render(format_sample(samples["q0"])))]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert samples["l1"].turns[0].content.startswith("<image>\nDescribe")


def test_example_config_loads():
    from corpus.config import load_config

    assert load_config(SftConfig, "pipelines/configs/sft.yaml").images_first_when_unplaced
