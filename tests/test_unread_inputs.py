"""Nothing below an input folder is left out silently: `corpus text` reads compressed text, and
every file a command does not read is one errored `unsupported_file` input, in the report and
the rejects table. The commands run as a user runs them (`corpus.cli.main`)."""
import bz2
import gzip
import json
import lzma
import os

import pymupdf
import zstandard

from bad_input import check_rejects_match_report, kept_samples, rejects_table
from corpus.cli import main
from corpus.inputs import IMAGE_FILES, extension_of, find_inputs
from pipelines import pairs

DOCUMENTS = {
    "a.txt": "The harbour was quiet in the early morning light.",
    "b.txt.gz": "A ferry left on time despite the thick grey fog.",
    "c.jsonl.bz2": "The lighthouse keeper painted the tower every spring.",
    "d.txt.xz": "Fishing boats came back at dusk with their nets full.",
    "e.txt.zst": "Gulls circled above the market stalls by the old pier.",
}
COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
            ".zst": zstandard.ZstdCompressor().compress}


def write_document(folder, name: str, text: str) -> None:
    data = (json.dumps({"text": text}) if ".jsonl" in name else text).encode() + b"\n"
    compress = COMPRESS.get(os.path.splitext(name)[1])
    (folder / name).write_bytes(compress(data) if compress else data)


def run_corpus(*args: str) -> dict:
    """A command as typed, on one worker; its report."""
    assert main([*args, "--workers", "1"]) == 0
    with open(os.path.join(args[args.index("--output") + 1], "report.json")) as f:
        return json.load(f)


def run_text(tmp_path, folder) -> dict:
    config = tmp_path / "text.yaml"
    config.write_text("languages: null\n")  # short documents: no language to be sure of
    return run_corpus("text", "--input", str(folder), "--output", str(tmp_path / "out"),
                      "--config", str(config))


def test_compressed_text_is_read_and_other_files_are_errored_inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, text in DOCUMENTS.items():
        write_document(folder, name, text)
    (folder / "notes.docx").write_bytes(b"PK\x03\x04 not text")
    (folder / ".DS_Store").write_bytes(b"\x00hidden, as a shell glob skips it")

    report = run_text(tmp_path, folder)
    assert (report["input"], report["kept"], report["errored"]) == (6, 5,
                                                                    {"unsupported_file": 1})
    kept = kept_samples(tmp_path / "out", report)
    assert {key.split("#")[0]: sample.text for key, sample in kept.items()} == DOCUMENTS
    rows = rejects_table(tmp_path / "out")
    check_rejects_match_report(report, rows)
    (row,) = rows
    assert (row["key"], row["reason"], row["status"]) == ("notes.docx#<file>",
                                                          "unsupported_file", "errored")
    assert row["uri"] == str(folder / "notes.docx")
    assert row["detail"].startswith("extension .docx is not read by corpus text (it reads .txt")
    assert ".zst" in row["detail"]


def test_a_corrupt_compressed_file_is_an_unreadable_file(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_document(folder, "good.txt", DOCUMENTS["a.txt"])
    (folder / "corrupt.txt.gz").write_bytes(b"\x1f\x8b" + b"not deflate data at all" * 20)
    cut = zstandard.ZstdCompressor().compress(b"a long document that is cut short\n" * 4000)
    (folder / "cut.jsonl.zst").write_bytes(cut[: len(cut) // 2])

    report = run_text(tmp_path, folder)
    assert (report["input"], report["kept"], report["errored"]) == (3, 1,
                                                                    {"unreadable_file": 2})
    rows = rejects_table(tmp_path / "out")
    check_rejects_match_report(report, rows)
    details = {row["key"]: row["detail"] for row in rows}
    assert details["corrupt.txt.gz#<file>"].startswith("BadGzipFile")
    assert details["cut.jsonl.zst#<file>"] == "EOFError: zstd file ended inside a frame"


def test_pdf_counts_a_file_it_does_not_read(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "A page of a small report.", fontsize=14)
    (folder / "report.pdf").write_bytes(doc.tobytes())
    (folder / "readme.md").write_text("# What these PDFs are\n")

    report = run_corpus("pdf", "--input", str(folder), "--output", str(tmp_path / "out"))
    assert report["errored"].get("unsupported_file") == 1
    rows = rejects_table(tmp_path / "out")
    check_rejects_match_report(report, rows)
    (row,) = [row for row in rows if row["reason"] == "unsupported_file"]
    assert row["key"] == "readme.md#<file>"
    assert row["detail"].startswith("extension .md is not read by corpus pdf")


def test_a_named_file_and_companions_are_not_unread(tmp_path):
    for name in ("set/a.jsonl", "set/images/1.JPG", "set/README", "set/notes.txt.gz",
                 "set/.cache/x.bin", "set/extra.csv"):
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = find_inputs([str(tmp_path / "set"), str(tmp_path / "set" / "extra.csv")],
                        (".jsonl",), "corpus vqa", companions=IMAGE_FILES)
    assert [f.relative for f in found.files] == ["a.jsonl", "extra.csv"]  # named: read
    assert [(f.relative, f.detail) for f in found.unread] == [
        ("README", "a file without an extension is not read by corpus vqa (it reads .jsonl "
                   "files)"),
        ("notes.txt.gz", "extension .txt.gz is not read by corpus vqa (it reads .jsonl files)")]
    assert (extension_of("b.tar.gz"), extension_of("A.JPG"), extension_of("x")) == (
        ".tar.gz", ".JPG", "")


def test_pairs_reads_img2dataset_companions_and_counts_other_files(tmp_path):
    folder = tmp_path / "in"
    os.makedirs(folder / "00000")
    for name in ("00000.tar", "00000.parquet", "00000_stats.json", "00000/0.jpg",
                 "00000/0.json", "urls.csv"):
        (folder / name).write_bytes(b"x")
    found = pairs.find_pair_inputs([str(folder)])
    assert [f.relative for f in found.files] == ["00000.parquet", "00000.tar"]
    assert [(f.relative, extension_of(f.relative)) for f in found.unread] == [
        ("urls.csv", ".csv")]
    assert "is not read by corpus pairs" in found.unread[0].detail
