"""`corpus sft` fed the worst inputs together in one run, beside two good dialogues.
`test_sft.py::test_sft_run_counts_every_rule_and_writes_chatml` covers each dialogue rule
(no assistant turn, unknown roles, empty answers, ...) on well-formed files; this module mixes
dialogues without an assistant turn with broken files and images: corrupt, 0-byte and bomb
images (listed and embedded as bytes), `/dev/zero` named as an image, invalid UTF-8, a 1 MB
answer, malformed JSON Lines, 0-byte and truncated JSON, a truncated tar with `../` and
absolute member names, a truncated Parquet file; and the run's peak memory."""
from __future__ import annotations

import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bad_input import add_member, check_rejects_match_report, kept_samples, reason_of, \
    rejects_table, run_measured
from corpus.samples.grounding import draw_scene
from corpus.samples.pairs import last_member_middle, png_bomb

SQUARE = draw_scene(96, 64, [((10, 10, 60, 50), (200, 60, 60))])
MEGABYTE_ANSWER = "and then the square stayed red " * 33_000


def llava(image, answer: str | None = "It is red.", question="<image>\nWhat colour is it?"):
    turns = [{"from": "human", "value": question}]
    if answer is not None:
        turns.append({"from": "gpt", "value": answer})
    record = {"conversations": turns}
    if image is not None:
        record["image"] = image
    return record


def line(record) -> bytes:
    return json.dumps(record).encode() + b"\n"


def write_inputs(folder) -> None:
    images = folder / "images"
    images.mkdir(parents=True)
    (images / "good.png").write_bytes(SQUARE)
    (images / "garbage.jpg").write_bytes(b"not an image at all")
    (images / "empty.jpg").write_bytes(b"")
    (images / "bomb.png").write_bytes(png_bomb(12_000, 12_000))
    (folder / "dialogues.jsonl").write_bytes(
        line(llava("good.png"))
        + line(llava(None, "Four.", "What is two plus two?"))
        + line(llava("good.png", answer=None))  # no assistant turn
        + line({"messages": [{"role": "user", "content": "Hello?"}]})  # no assistant turn
        + line(llava("garbage.jpg")) + line(llava("empty.jpg")) + line(llava("bomb.png"))
        + line(llava("/dev/zero")) + line(llava("nowhere.jpg"))
        + line(llava("good.png", MEGABYTE_ANSWER))
        + line(llava(None, "Yes.", "Is this caf\xe9 open?"))
        .replace(b"caf\\u00e9", b"caf\xe9")  # a raw Latin-1 byte: replaced, not fatal
        + b'{"conversations": [{"from": "human", "value": "cut in the mid\n'
        + b"[]\n"
        + line({"conversations": "not a list"}))
    pq.write_table(pa.Table.from_pylist([
        {"images": [{"bytes": SQUARE, "path": None}],
         "conversations": [{"from": "human", "value": "<image>\nColour?"},
                           {"from": "gpt", "value": "Red."}]},
        {"images": [{"bytes": b"\x89PNG garbage", "path": None}],
         "conversations": [{"from": "human", "value": "<image>\nColour?"},
                           {"from": "gpt", "value": "Red."}]}]), folder / "embedded.parquet")
    data = (folder / "embedded.parquet").read_bytes()
    (folder / "cut.parquet").write_bytes(data[: len(data) // 2])
    (folder / "empty.json").write_bytes(b"")
    (folder / "cut.json").write_bytes(json.dumps([llava("good.png")]).encode()[:40])
    with tarfile.open(folder / "dialogues.tar", "w") as tar:
        add_member(tar, "../escape.json", json.dumps(llava(None)).encode())
        add_member(tar, "/abs/olute.json", json.dumps(llava(None)).encode())
        add_member(tar, "t0.json", json.dumps(llava(None, "Red.", "<image>\nColour?")).encode())
        add_member(tar, "t0.png", SQUARE)
        add_member(tar, "t1.json", json.dumps(llava(None, "Red.", "<image>\nColour?")).encode())
        add_member(tar, "t1.png", SQUARE)
    cut = last_member_middle(str(folder / "dialogues.tar"))
    data = (folder / "dialogues.tar").read_bytes()
    (folder / "dialogues.tar").write_bytes(data[:cut])


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    write_inputs(root / "in")
    measured = run_measured("""
        from conftest import IN_MEMORY
        from pipelines import sft
    """, f"""
        report = sft.run([{str(root / "in")!r}], {str(root / "out")!r}, "bad", sft.SftConfig(),
                         IN_MEMORY, images={str(root / "in" / "images")!r})
    """, root)
    return root / "out", measured


def test_every_bad_input_is_counted_under_its_reason(outcome):
    report = outcome[1].report
    assert report["kept"] == 6  # 2 good, the 1 MB and Latin-1 ones, Parquet #0, tar t0
    assert report["dropped"] == {"no_assistant_turn": 2}
    assert report["errored"] == {"malformed_json": 3, "malformed_record": 2,
                                 "truncated_tar": 1, "unreadable_file": 1,
                                 "unsafe_member_name": 2, "missing_image": 1, "corrupt_image": 2,
                                 "empty_image": 1, "decompression_bomb": 1, "image_too_large": 1}
    assert report["input"] == 6 + 9 + 8


def test_the_rejects_table_names_each_bad_input(outcome):
    out, measured = outcome
    rows = rejects_table(out)
    check_rejects_match_report(measured.report, rows)
    assert reason_of(rows) == {
        "dialogues.jsonl#2": "no_assistant_turn", "dialogues.jsonl#3": "no_assistant_turn",
        "dialogues.jsonl#4": "corrupt_image", "dialogues.jsonl#5": "empty_image",
        "dialogues.jsonl#6": "decompression_bomb", "dialogues.jsonl#7": "image_too_large",
        "dialogues.jsonl#8": "missing_image", "dialogues.jsonl#11": "malformed_json",
        "dialogues.jsonl#12": "malformed_record", "dialogues.jsonl#13": "malformed_record",
        "embedded.parquet#1": "corrupt_image", "cut.parquet#file": "unreadable_file",
        "empty.json#file": "malformed_json", "cut.json#file": "malformed_json",
        "dialogues.tar#../escape.json": "unsafe_member_name",
        "dialogues.tar#/abs/olute.json": "unsafe_member_name",
        "dialogues.tar#t1": "truncated_tar"}


def test_the_good_dialogues_are_written_whole(outcome):
    out, measured = outcome
    kept = kept_samples(out, measured.report)
    assert sorted(kept) == ["dialogues.jsonl#0", "dialogues.jsonl#1", "dialogues.jsonl#10",
                            "dialogues.jsonl#9", "dialogues.tar#t0", "embedded.parquet#0"]
    assert MEGABYTE_ANSWER in kept["dialogues.jsonl#9"].turns[1].content
    assert "caf\ufffd" in kept["dialogues.jsonl#10"].turns[0].content
    assert len(kept["dialogues.tar#t0"].images) == 1  # the image member of the tar key


def test_memory_stays_bounded(outcome):
    # /dev/zero is read up to the 64 MiB image limit once; reading it whole never ends, and
    # decoding the 144 Mpx bomb would take 144 MiB (greyscale) or more.
    assert outcome[1].growth_mib < 200, outcome[1]
