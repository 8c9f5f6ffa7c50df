"""`corpus text`: document rules, chunking, bounded reading, and the pipeline end to end."""
import glob
import io
import json

import pyarrow.parquet as pq

from conftest import make_sample
from corpus.ids import sample_id
from corpus.samples.text import TXT_DOCUMENTS
from corpus.shards import read_shard
from corpus.tokens import TextTokenizer
from filters.text_docs import chunk_text, control_characters, document_html, empty_document, \
    normalized_hash, remove_control_characters
from pipelines import text as text_pipeline


def doc(t):
    return make_sample(text=t, task="text", images=[])


def test_control_characters():
    assert remove_control_characters("a\x07b\x00c\r\nd\re\tf\x85") == "abc\nd\ne\tf"
    cleaned = control_characters(doc("bell\x07 here"))
    assert cleaned.text == "bell here" and cleaned.decisions == ["control_characters_removed"]
    assert control_characters(doc("clean\ntext\twith tab")) is None


def test_document_html_keeps_paragraphs():
    cleaned = document_html(doc("<p>One &amp; two.</p><p>Three</p>"))
    assert cleaned.text == "One & two.\n\nThree"
    assert cleaned.decisions == ["html_cleaned"]
    assert empty_document(doc("<br>&nbsp;")) is None  # still raw: the cleaner runs first
    assert empty_document(document_html(doc("<br>&nbsp;<div></div>"))) == "empty_document"


def test_normalized_hash_ignores_case_width_and_whitespace():
    assert normalized_hash("The  Harbour\nwas quiet") == normalized_hash("the harbour was QUIET")
    assert normalized_hash("ＡＢＣ") == normalized_hash("abc")  # NFKC folds full-width forms
    assert normalized_hash("the harbour") != normalized_hash("the harbor")


def test_chunks_fit_and_prefer_boundaries():
    tokenizer = TextTokenizer.default()
    paragraphs = [f"Paragraph {i}. " + "The tide turned slowly. " * 12 for i in range(10)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, 120, tokenizer.count)
    assert all(tokenizer.count(c) <= 120 for c in chunks)
    assert len(chunks) > 1
    # Nothing is lost but the whitespace at the cuts.
    assert "".join(chunks).replace(" ", "").replace("\n", "") == \
        text.replace(" ", "").replace("\n", "")
    # Cuts fall on sentence ends at worst.
    assert all(c.endswith(".") for c in chunks)
    assert chunk_text("short text", 120, tokenizer.count) == ["short text"]


def test_chunking_cuts_unbroken_text_by_characters():
    tokenizer = TextTokenizer.default()
    chunks = chunk_text("一个很长的句子" * 300 + "x" * 3000, 100, tokenizer.count)
    assert all(tokenizer.count(c) <= 100 for c in chunks)
    assert "".join(chunks) == "一个很长的句子" * 300 + "x" * 3000


def test_bounded_lines_never_holds_a_long_line():
    data = b"short\n" + b"x" * 5000 + b"\n" + b"tail"
    lines = list(text_pipeline.bounded_lines(io.BytesIO(data), 100))
    assert lines == [b"short\n", None, b"tail"]


def test_demo_pipeline_counts_and_outcomes(tmp_path, beam_argv):
    report = text_pipeline.run_demo(str(tmp_path), beam_argv)
    assert report["kept"] + report["dropped_total"] + report["errored_total"] == report["input"]
    assert report["task"] == "text"
    rows = pq.read_table(glob.glob(str(tmp_path / "rejects" / "*.parquet"))).to_pylist()
    reasons = {row["key"]: row["reason"] for row in rows}
    # docs.txt blocks are keyed by their first line number. Of the two copies of one text
    # (blocks 0 and 2) the one with the smaller id is kept, the other is a duplicate.
    keys, line = [], 0
    for document, _ in TXT_DOCUMENTS:
        keys.append(f"docs.txt#{line}")
        line += document.count("\n") + 2
    copies = sorted([keys[0], keys[2]], key=lambda key: sample_id("demo", key))
    assert copies[0] not in reasons and reasons[copies[1]] == "duplicate_document"
    for key, (_, expected) in list(zip(keys, TXT_DOCUMENTS))[3:] + [(keys[1], TXT_DOCUMENTS[1])]:
        assert reasons.get(key, "kept") == expected, key
    assert reasons["binary.txt#<file>"] == "binary_file"
    assert reasons["latin1.txt#0"] == "invalid_utf8"
    assert reasons["one-line.txt#0"] == "document_too_large"
    assert reasons["records.jsonl#1"] == "malformed_record"
    assert reasons["records.jsonl#2"] == "no_text_field"
    assert reasons["records.jsonl#3"] == "invalid_utf8"
    samples = [s for path in glob.glob(str(tmp_path / "shards" / "*.tar"))
               for s in read_shard(path)]
    assert len(samples) == report["kept"]
    assert all(s.task == "text" and not s.images for s in samples)
    tokenizer = TextTokenizer.default()
    assert all(tokenizer.count(s.text) <= 255 for s in samples)
    chunks = [s for s in samples if "chunked" in s.decisions]
    assert len(chunks) == report["stats"]["chunks"] - report["stats"]["kept_documents"] + 1
    assert {s.language for s in samples} == {"en", "zh"}
    cleaned = [s for s in samples if "html_cleaned" in s.decisions]
    assert cleaned and "<b>" not in cleaned[0].text and "&" in cleaned[0].text


def test_file_mode_and_duplicates(tmp_path, beam_argv):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("First paragraph of a file that is one document.\n\n"
                                           "Second paragraph of the same document.\n")
    (tmp_path / "in" / "b.txt").write_text("First paragraph of a file that is one document.\n\n"
                                           "Second paragraph of the same document.\n")
    config = text_pipeline.TextDocsConfig(split="file", languages=None)
    report = text_pipeline.run([str(tmp_path / "in")], str(tmp_path / "out"), "files", config,
                               beam_argv)
    assert report["input"] == 2 and report["kept"] == 1
    assert report["dropped"] == {"duplicate_document": 1}
    (sample,) = [s for p in glob.glob(str(tmp_path / "out" / "shards" / "*.tar"))
                 for s in read_shard(p)]
    winner = min(["a.txt#0", "b.txt#0"], key=lambda key: sample_id("files", key))
    assert sample.source.key == winner  # the smaller id wins, whatever the arrival order
    assert "\n\n" in sample.text


def test_small_files_share_a_task_and_larger_ones_have_their_own(tmp_path, monkeypatch):
    from corpus.inputs import expand_inputs

    for i, size in enumerate([30, 30, 30, 30, 150, 10, 10, 10]):
        (tmp_path / f"f{i}.txt").write_bytes(b"x" * size)
    files = expand_inputs([str(tmp_path)], text_pipeline.TEXT_EXTENSIONS)
    monkeypatch.setattr(text_pipeline, "TASK_BYTES", 100)
    monkeypatch.setattr(text_pipeline, "MAX_FILES_PER_TASK", 2)
    tasks = text_pipeline.plan_file_tasks(files)
    assert [task.index for task in tasks] == list(range(len(tasks)))
    assert [[unit.relative for unit in task.units] for task in tasks] == [
        ["f0.txt", "f1.txt"], ["f2.txt", "f3.txt"], ["f4.txt"], ["f5.txt", "f6.txt"],
        ["f7.txt"]]


def test_a_chunked_duplicate_in_another_task_is_dropped_chunk_by_chunk(tmp_path, beam_argv,
                                                                       monkeypatch):
    long_text = "\n\n".join(f"Paragraph {i}. " + "The tide turned slowly over the harbour. " * 12
                            for i in range(6))
    short = "A short note about the ferry, found in one file only."
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text(
        json.dumps({"text": long_text}) + "\n" + json.dumps({"text": short}) + "\n")
    (tmp_path / "in" / "b.jsonl").write_text(json.dumps({"text": long_text}) + "\n")
    monkeypatch.setattr(text_pipeline, "TASK_BYTES", 1)  # a task per file
    config = text_pipeline.TextDocsConfig(max_tokens=64, languages=None)
    report = text_pipeline.run([str(tmp_path / "in")], str(tmp_path / "out"), "dup", config,
                               beam_argv)
    assert len(list((tmp_path / "out" / "_done").iterdir())) == 2
    stats = report["stats"]
    chunks = stats["chunks"] - 1  # the short note is one
    assert chunks > 1
    assert (stats["kept_documents"], stats["chunked_documents"]) == (2, 1)
    assert stats["kept_documents_by_language"] == {"en": 2}
    # every chunk is a unit: the copy's chunks are each a duplicate
    assert (report["input"], report["kept"]) == (2 * chunks + 1, chunks + 1)
    assert report["dropped"] == {"duplicate_document": chunks}
    winner, loser = sorted(["a.jsonl#0", "b.jsonl#0"], key=lambda key: sample_id("dup", key))
    samples = [s for p in glob.glob(str(tmp_path / "out" / "shards" / "*.tar"))
               for s in read_shard(p)]
    chunked = [s for s in samples if "chunk" in s.extra]
    assert {s.source.key for s in chunked} == {winner}
    assert sorted(s.extra["chunk"] for s in chunked) == list(range(chunks))
    rows = pq.read_table(glob.glob(str(tmp_path / "out" / "rejects" / "*.parquet"))).to_pylist()
    assert {(row["key"], row["reason"], row["detail"]) for row in rows} == {
        (loser, "duplicate_document", f"kept {sample_id('dup', winner)}")}


def test_stats_keep_their_keys_when_nothing_is_kept(tmp_path, beam_argv):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("too short\n")
    report = text_pipeline.run([str(tmp_path / "in")], str(tmp_path / "out"), "none",
                               text_pipeline.TextDocsConfig(languages=None), beam_argv)
    assert (report["input"], report["kept"]) == (1, 0)
    assert report["stats"] == {"kept_documents_by_language": {}, "chunks": 0,
                               "chunked_documents": 0, "kept_documents": 0}


def test_compressed_text_is_probed_and_read_decompressed(tmp_path):
    import gzip

    import zstandard

    from corpus.inputs import InputFile

    zstd = zstandard.ZstdCompressor()
    files = {
        "plain.txt.gz": gzip.compress(b"one block of words\n"),  # NULs in the gzip header
        "binary.txt.gz": gzip.compress(b"\x00\x01 an image, renamed"),
        # two frames, as a parallel compressor writes them; a block across their border
        "frames.txt.zst": zstd.compress(b"first block\n\nsecond ") + zstd.compress(b"block\n"),
    }
    reader = text_pipeline.TextReader("unit", text_pipeline.TextDocsConfig())
    read = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        read[name] = [getattr(item, "reason", None) or item.text
                      for item in reader(InputFile(str(tmp_path / name), name))]
    assert read == {"plain.txt.gz": ["one block of words\n"], "binary.txt.gz": ["binary_file"],
                    "frames.txt.zst": ["first block\n", "second block\n"]}
