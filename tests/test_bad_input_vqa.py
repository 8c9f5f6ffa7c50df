"""`corpus vqa` fed the worst inputs together in one run, beside two good questions.
`test_vqa.py::test_vqa_run_joins_vqav2_files_and_passes_other_sets_through` covers the rules
(empty question, no answer, unmatched annotation, a missing image); this module adds broken
files and images: corrupt, 0-byte and truncated images, decompression bombs (one Pillow refuses,
one it would decode), `/dev/zero` named as an image, invalid UTF-8, malformed and non-object
JSON Lines, 0-byte, truncated and non-UTF-8 JSON, a truncated Parquet file, a truncated tar and
tar members with `../` and absolute names, a 1 MB question; and the run's peak memory."""
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
MEGABYTE_QUESTION = "is this question very long " * 40_000 + "?"


def record(image: str, question: str = "What colour is the square?", answer="red") -> bytes:
    return json.dumps({"image": image, "question": question, "answer": answer}).encode() + b"\n"


def write_inputs(folder) -> None:
    images = folder / "images"
    images.mkdir(parents=True)
    (images / "good.png").write_bytes(SQUARE)
    (images / "garbage.jpg").write_bytes(b"not an image at all")
    (images / "empty.jpg").write_bytes(b"")
    (images / "half.png").write_bytes(SQUARE[: len(SQUARE) // 2])
    (images / "bomb.png").write_bytes(png_bomb())  # 900 Mpx: Pillow refuses to open it
    (images / "quiet-bomb.png").write_bytes(png_bomb(12_000, 12_000))  # 144 Mpx: it would not
    (folder / "questions.jsonl").write_bytes(
        record("good.png")
        + record("good.png", "Is there a square?", "yes")
        + record("garbage.jpg") + record("empty.jpg") + record("half.png")
        + record("bomb.png") + record("quiet-bomb.png")
        + record("/dev/zero")  # an endless "image": read up to a limit, never whole
        + record("nowhere.jpg")
        + record("good.png", "caf\xe9?".encode("latin-1").decode("latin-1"), "yes")
        .replace(b"caf\\u00e9", b"caf\xe9")  # raw Latin-1 byte in the line: replaced
        + record("good.png", MEGABYTE_QUESTION, "no")
        + b'{"image": "good.png", "question": broken\n'
        + b"[1, 2, 3]\n"
        + b'{"image": "good.png", "question": "Where is the answer?"}\n'
        + b'{"image": "good.png"}\n')
    (folder / "empty.json").write_bytes(b"")
    (folder / "cut.json").write_bytes(b'{"questions": [{"image": "good.png", "quest')
    (folder / "latin1.json").write_bytes(b'[{"image": "good.png", "question": "caf\xe9?"}]')
    pq.write_table(pa.Table.from_pylist([{"image": "good.png", "question": "Q?", "answer": "a"}]),
                   folder / "table.parquet")
    data = (folder / "table.parquet").read_bytes()
    (folder / "table.parquet").write_bytes(data[: len(data) // 2])
    with tarfile.open(folder / "records.tar", "w") as tar:
        add_member(tar, "../escape.json", b'{"question": "Q?", "answer": "a"}')
        add_member(tar, "/abs/olute.json", b'{"question": "Q?", "answer": "a"}')
        add_member(tar, "t0.json", json.dumps({"question": "What is it?", "answer": "a square"})
                   .encode())
        add_member(tar, "t0.png", SQUARE)
        add_member(tar, "t1.json", json.dumps({"question": "Is it red?", "answer": "yes"})
                   .encode())
        add_member(tar, "t1.png", SQUARE)
    data = (folder / "records.tar").read_bytes()
    cut = last_member_middle(str(folder / "records.tar"))
    (folder / "records.tar").write_bytes(data[:cut])  # cut inside t1.png


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa")
    write_inputs(root / "in")
    measured = run_measured("""
        from conftest import IN_MEMORY
        from pipelines import vqa
    """, f"""
        report = vqa.run([{str(root / "in")!r}], {str(root / "out")!r}, "bad", vqa.VqaConfig(),
                         IN_MEMORY, images={str(root / "in" / "images")!r})
    """, root)
    return root / "out", measured


def test_every_bad_input_is_counted_under_its_reason(outcome):
    report = outcome[1].report
    assert report["kept"] == 5  # 2 good, the Latin-1 and 1 MB questions, tar t0
    assert report["dropped"] == {"no_answer": 1}  # broken input is errored, whoever finds it
    assert report["errored"] == {"unreadable_file": 2, "malformed_json": 3, "malformed_record": 2,
                                 "truncated_tar": 1, "unsafe_member_name": 2, "missing_image": 1,
                                 "corrupt_image": 2, "empty_image": 1, "decompression_bomb": 2,
                                 "image_too_large": 1}
    assert report["input"] == 5 + 10 + 8


def test_the_rejects_table_names_each_bad_input(outcome):
    out, measured = outcome
    rows = rejects_table(out)
    check_rejects_match_report(measured.report, rows)
    assert reason_of(rows) == {
        "questions.jsonl#2": "corrupt_image", "questions.jsonl#3": "empty_image",
        "questions.jsonl#4": "corrupt_image", "questions.jsonl#5": "decompression_bomb",
        "questions.jsonl#6": "decompression_bomb", "questions.jsonl#7": "image_too_large",
        "questions.jsonl#8": "missing_image", "questions.jsonl#11": "malformed_json",
        "questions.jsonl#12": "malformed_record", "questions.jsonl#13": "no_answer",
        "questions.jsonl#14": "malformed_record",
        "empty.json#file": "malformed_json", "cut.json#file": "malformed_json",
        "latin1.json#file": "unreadable_file", "table.parquet#file": "unreadable_file",
        "records.tar#../escape.json": "unsafe_member_name",
        "records.tar#/abs/olute.json": "unsafe_member_name",
        "records.tar#t1": "truncated_tar"}


def test_the_good_questions_are_written_whole(outcome):
    out, measured = outcome
    kept = kept_samples(out, measured.report)
    assert sorted(kept) == ["questions.jsonl#0", "questions.jsonl#1", "questions.jsonl#10",
                            "questions.jsonl#9", "records.tar#t0"]
    assert "caf\ufffd?" in kept["questions.jsonl#9"].question
    assert MEGABYTE_QUESTION in kept["questions.jsonl#10"].question


def test_memory_stays_bounded(outcome):
    # /dev/zero is read up to the 64 MiB image limit once; reading it whole never ends, and
    # decoding the quiet bomb would take 144 MiB (greyscale) or more.
    assert outcome[1].growth_mib < 200, outcome[1]
