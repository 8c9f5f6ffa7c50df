"""Sample SFT inputs: dialogues in the Qwen-VL form (inline `Picture N: <img>path</img>`, two
images), the LLaVA form (`human`/`gpt`, `<image>`, `image` path) and `messages`, a text-only
one, and broken ones for every rule."""
from __future__ import annotations

import json
import os

from corpus.samples.grounding import draw_scene


def dialogues() -> tuple[list[dict], list[dict]]:
    """(Qwen-VL-form records, LLaVA-form records)."""
    qwen = [
        {"id": "q0", "conversations": [
            {"from": "user", "value": "Picture 1: <img>vg/649.jpg</img>\nWhat is the sign in "
                                      "the picture?"},
            {"from": "assistant", "value": "The sign is a road closure with an orange rhombus."},
            {"from": "user", "value": "How is the weather in the picture?"},
            {"from": "assistant", "value": "The weather is clear."}]},
        {"id": "q1", "conversations": [
            {"from": "user", "value": "Picture 1: <img>vg/649.jpg</img>\nPicture 2: "
                                      "<img>coco/7.jpg</img>\nWhat differs between them?"},
            {"from": "assistant", "value": "The first shows a sign, the second a "
                                           "<ref>blue square</ref><box>(100,100),(500,600)</box>."},
            {"from": "user", "value": "Thanks!"}]},
        {"id": "q2", "conversations": [
            {"from": "system", "value": "You are a terse assistant."},
            {"from": "user", "value": "Say hello."}, {"from": "assistant", "value": "Hello."}]},
        {"id": "q3", "conversations": [
            {"from": "user", "value": "Picture 1: <img>vg/404.jpg</img>\nWhat is this?"},
            {"from": "assistant", "value": "Nothing."}]},
        {"id": "q4", "conversations": [{"from": "user", "value": "Anyone there?"}]},
        {"id": "q5", "conversations": []},
        {"id": "q6", "conversations": [{"from": "narrator", "value": "Once upon a time"},
                                       {"from": "assistant", "value": "…"}]},
        {"id": "q7", "conversations": [
            {"from": "user", "value": "Repeat <|im_end|> please"},
            {"from": "assistant", "value": "No."}]},
        {"id": "q8", "conversations": [{"from": "user", "value": "Hi"},
                                       {"from": "assistant", "value": "  "}]},
        {"id": "q9", "conversations": "not a list"},
    ]
    llava = [
        {"id": "l0", "image": "coco/7.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?"},
            {"from": "gpt", "value": "It is blue."}]},
        {"id": "l1", "image": "coco/7.jpg", "conversations": [
            {"from": "human", "value": "Describe the picture."},
            {"from": "gpt", "value": "A blue square on a pale background."}]},
        {"id": "l2", "image": "coco/7.jpg", "conversations": [
            {"from": "human", "value": "<image>\n<image>\nCompare."},
            {"from": "gpt", "value": "They are the same picture."}]},
        {"id": "l3", "messages": [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Hi"},
                                  {"role": "system", "content": "Be verbose."},
                                  {"role": "assistant", "content": "Hello"}]},
    ]
    return qwen, llava


def write_sft_sample(folder: str) -> tuple[list[str], str]:
    """Returns (input files, image folder)."""
    images = os.path.join(folder, "images")
    for name, colour in (("vg/649.jpg", (230, 120, 30)), ("coco/7.jpg", (60, 60, 200))):
        os.makedirs(os.path.dirname(os.path.join(images, name)), exist_ok=True)
        with open(os.path.join(images, name), "wb") as f:
            f.write(draw_scene(96, 64, [((20, 10, 70, 50), colour)]))
    qwen, llava = dialogues()
    qwen_path = os.path.join(folder, "qwen_vl_chat.json")
    with open(qwen_path, "w", encoding="utf-8") as f:
        json.dump(qwen, f, ensure_ascii=False)
    llava_path = os.path.join(folder, "llava_instruct.jsonl")
    with open(llava_path, "w", encoding="utf-8") as f:
        for record in llava:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return [qwen_path, llava_path], images
