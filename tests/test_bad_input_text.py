"""`corpus text` fed the worst inputs together in one run, beside two good documents.
`test_text_pipeline.py::test_demo_pipeline_counts_and_outcomes` already covers a binary file,
Latin-1 text, a 300 KB line and malformed/fieldless JSONL records; this module adds a 100 MB
single-line file (read in bounded memory: the run's peak is measured), 0-byte and truncated
Parquet, a 0-byte text file, invalid UTF-8 after the binary probe, null and non-object JSONL
records, a last line cut mid-record and a 1 MB document."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bad_input import check_rejects_match_report, kept_samples, reason_of, rejects_table, \
    run_measured
from corpus.samples.text import CHINESE, ENGLISH

HUNDRED_MB = 100 << 20


def write_inputs(folder) -> None:
    folder.mkdir()
    (folder / "good.txt").write_text(ENGLISH + "\n\n" + CHINESE + "\n", encoding="utf-8")
    with open(folder / "huge.txt", "wb") as f:  # one 100 MB line, no newline at all
        block = b"word " * (1 << 18)
        for _ in range(HUNDRED_MB // len(block)):
            f.write(block)
    (folder / "empty.txt").write_bytes(b"")
    # Clean ASCII past the 8 KiB binary probe, then bytes that are not UTF-8, in one block.
    (folder / "late-garbage.txt").write_bytes(b"plain words " * 1000 + b"\xff\xfe\xc3(\n")
    (folder / "records.jsonl").write_bytes(
        json.dumps({"text": "A lighthouse keeper painted the tower every single spring."})
        .encode() + b"\n"
        + json.dumps({"text": None}).encode() + b"\n"
        + b"[1, 2, 3]\n"
        + b'{"text": "caf\xe9"}\n'
        + json.dumps({"text": "long words " * 100_000}).encode() + b"\n"  # 1.1 MB
        + b'{"text": "the last line was cut in the mid')
    row = "A row of a table: the ferry left on time despite the thick fog."
    pq.write_table(pa.Table.from_pylist([{"text": row}, {"text": None}]),
                   folder / "table.parquet")
    data = (folder / "table.parquet").read_bytes()
    (folder / "cut.parquet").write_bytes(data[: len(data) // 2])
    (folder / "empty.parquet").write_bytes(b"")


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    write_inputs(root / "in")
    measured = run_measured("""
        from conftest import IN_MEMORY
        from pipelines import text
    """, f"""
        config = text.TextDocsConfig(max_document_bytes=2 << 20, max_chars=500_000)
        report = text.run([{str(root / "in")!r}], {str(root / "out")!r}, "bad", config,
                          IN_MEMORY)
    """, root)
    return root / "out", measured


def test_every_bad_document_is_counted_under_its_reason(outcome):
    _, measured = outcome
    report = measured.report
    assert report["kept"] == 4  # good.txt's two blocks, records.jsonl#0, table.parquet#0
    assert report["dropped"] == {"text_too_long": 1}
    assert report["errored"] == {"document_too_large": 1, "invalid_utf8": 2,
                                 "malformed_record": 1, "no_text_field": 3,
                                 "unreadable_file": 2}
    assert report["input"] == 4 + 1 + 9  # empty.txt holds no document: no unit


def test_the_rejects_table_names_each_bad_input(outcome):
    out, measured = outcome
    rows = rejects_table(out)
    check_rejects_match_report(measured.report, rows)
    assert reason_of(rows) == {
        "huge.txt#0": "document_too_large",
        "late-garbage.txt#0": "invalid_utf8",
        "records.jsonl#1": "no_text_field",
        "records.jsonl#2": "no_text_field",
        "records.jsonl#3": "invalid_utf8",
        "records.jsonl#4": "text_too_long",
        "records.jsonl#5": "malformed_record",
        "table.parquet#1": "no_text_field",
        "cut.parquet#<file>": "unreadable_file",
        "empty.parquet#<file>": "unreadable_file"}
    kept = sorted(kept_samples(out, measured.report))
    assert kept == ["good.txt#0", "good.txt#2", "records.jsonl#0", "table.parquet#0"]


def test_a_100_mb_line_is_not_held(outcome):
    # Measured: the run grows the process by ~60 MiB (runner, fastText model), the same with
    # the 100 MB file replaced by one byte: the reader holds at most max_document_bytes (2 MiB)
    # of a line. Reading the line whole would add 100 MiB or more.
    assert outcome[1].growth_mib < 120, outcome[1]
