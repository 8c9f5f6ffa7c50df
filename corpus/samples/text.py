"""Sample plain-text inputs for `corpus text`: a blank-line-separated .txt, JSONL, Parquet, and
the bad inputs the pipeline must survive (binary, Latin-1, one oversized line). Each document's
expected outcome is listed, so the demo shows every rule and tests can check it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

ENGLISH = ("The harbour was quiet in the early morning. Fishing boats rocked gently against "
           "the pier while gulls circled overhead, waiting for the first catch of the day.")
CHINESE = "清晨的港口十分安静。渔船在码头边轻轻摇晃，海鸥在空中盘旋，等待着当天的第一批渔获。"
GERMAN = "Der Hafen war am frühen Morgen ruhig. Fischerboote schaukelten sanft am Steg."


def long_document(paragraphs: int = 24) -> str:
    """Numbered paragraphs on separate lines (one block): long enough to be chunked."""
    return "\n".join(f"Paragraph {i}. {ENGLISH} The tide turned slowly, and the town woke up "
                     f"street by street as the light grew." for i in range(paragraphs))


# (document, expected outcome) for the blocks of docs.txt, in order.
TXT_DOCUMENTS = [
    (ENGLISH, "kept"),
    (CHINESE, "kept"),
    # The normalised hash ignores case and whitespace: this copies the first block (of the
    # two, the one with the larger id is dropped).
    (ENGLISH.replace("The harbour", "THE  harbour").replace(" while", "\nwhile"),
     "duplicate_document"),
    ("<p>The <b>market</b> opened at dawn &amp; traders set out fresh fruit and bread for the "
     "first customers.</p>", "kept"),
    ("Too short.", "text_too_short"),
    (GERMAN, "language_not_allowed"),
    ("<br>&nbsp;<div></div>", "empty_document"),
    ("A line with a bell\x07 and a form feed\x0c inside it, which the cleaner removes quietly.",
     "kept"),
    (long_document(), "kept"),
]


@dataclass
class TextDemoInputs:
    patterns: list[str]
    config_path: str


def write_demo_inputs(directory: str) -> TextDemoInputs:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "docs.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(doc for doc, _ in TXT_DOCUMENTS) + "\n")
    with open(os.path.join(directory, "records.jsonl"), "wb") as f:
        f.write(json.dumps({"text": "A record from a JSONL file, about a lighthouse keeper "
                                    "who painted the tower every spring."}).encode() + b"\n")
        f.write(b'{"text": "broken json\n')  # malformed_record
        f.write(json.dumps({"body": "no text field here"}).encode() + b"\n")  # no_text_field
        f.write(b'{"text": "caf\xe9 au lait, written in Latin-1 bytes"}\n')  # invalid_utf8
    pq.write_table(pa.Table.from_pylist([
        {"text": "A row from a Parquet table: the ferry left on time despite the fog."},
        {"text": "一行来自表格的文本：尽管有雾，渡轮还是准时出发了，乘客们都很高兴。"}]),
        os.path.join(directory, "table.parquet"))
    with open(os.path.join(directory, "binary.txt"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))  # binary_file
    with open(os.path.join(directory, "latin1.txt"), "wb") as f:
        f.write("Crème brûlée for dessert, and a café to finish the evening.".encode("latin-1"))
    with open(os.path.join(directory, "one-line.txt"), "wb") as f:
        f.write(b"word " * 60_000)  # 300 KB on one line, over the demo's 256 KiB limit
    config_path = os.path.join(directory, "text.yaml")
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(DEMO_CONFIG)
    return TextDemoInputs([directory], config_path)


# Small limits, so the demo's inputs show chunking and the oversized-document reject.
DEMO_CONFIG = """\
max_tokens: 256
max_document_bytes: 262144
"""
