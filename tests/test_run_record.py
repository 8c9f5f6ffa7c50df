"""A run records what it was made from (OUT/run.json); a run into a folder holding a different
run refuses, in one line naming the difference, unless --overwrite; the same run resumes. As a
user runs it: `corpus text` on tiny files, through the command line's entry point."""
from __future__ import annotations

import json
import os
import shutil

from corpus import cli
from corpus.shards import read_shard
from pipelines.run_record import RECORD_NAME, RunRecord, differences, file_inputs

DOCUMENTS = {
    "a": ["A lighthouse keeper painted the tower every spring, whatever the weather did."],
    "b": ["The ferry left on time despite the fog that covered the whole harbour.",
          "A baker on the corner sold bread to the sailors before sunrise each day."],
}


def write_inputs(folder, name: str) -> str:
    """A folder of one text file per document of DOCUMENTS[name]."""
    path = folder / name
    path.mkdir()
    for i, text in enumerate(DOCUMENTS[name]):
        (path / f"{name}{i}.txt").write_text(text + "\n", encoding="utf-8")
    return str(path)


def corpus_text(capsys, inputs: str, output, *flags: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what earlier runs printed
    code = cli.main(["text", "--input", inputs, "--output", str(output), "--workers", "1",
                     *flags])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def shard_texts(output) -> list[str]:
    folder = output / "shards"
    return sorted(s.text.strip() for name in sorted(os.listdir(folder))
                  for s in read_shard(str(folder / name)))


def shard_files(output) -> dict[str, tuple]:
    folder = output / "shards"
    return {name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime_ns)
            for name in os.listdir(folder)}


def test_a_run_records_what_it_was_made_from(tmp_path, capsys):
    a = write_inputs(tmp_path, "a")
    code, _, err = corpus_text(capsys, a, tmp_path / "out")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / RECORD_NAME).read_text())
    assert (record["command"], record["dataset"]) == ("text", "text")
    assert record["inputs"]["patterns"] == [a]
    ((path, size, mtime),) = record["inputs"]["files"]
    assert path == os.path.join(a, "a0.txt") and size == os.path.getsize(path) and mtime
    assert record["config"]["min_chars"] == 20 and record["formats"] == ["webdataset"]
    assert record["samples_per_shard"] == 1000 and record["version"] and record["started"]


def test_other_inputs_are_refused_then_replaced_with_overwrite(tmp_path, capsys):
    a, b, out = write_inputs(tmp_path, "a"), write_inputs(tmp_path, "b"), tmp_path / "out"
    assert corpus_text(capsys, a, out)[0] == 0
    before, record = shard_files(out), (out / RECORD_NAME).read_text()

    code, _, err = corpus_text(capsys, b, out)
    assert code == 2
    assert err.splitlines() == [
        f"corpus text: {out} holds a different run (inputs differ: 2 files now, 1 before); "
        "use a new --output, or --overwrite to replace it"]
    assert shard_files(out) == before and (out / RECORD_NAME).read_text() == record

    code, printed, err = corpus_text(capsys, b, out, "--overwrite")
    assert code == 0, err
    assert "the earlier run's outputs removed (--overwrite)" in printed
    assert shard_texts(out) == sorted(DOCUMENTS["b"])
    assert json.loads((out / RECORD_NAME).read_text())["inputs"]["patterns"] == [b]


def test_the_same_run_again_resumes_keeping_every_task(tmp_path, capsys):
    a = write_inputs(tmp_path, "a")
    assert corpus_text(capsys, a, tmp_path / "out")[0] == 0
    before = shard_files(tmp_path / "out")
    code, printed, err = corpus_text(capsys, a, tmp_path / "out")
    assert code == 0, err
    assert "resuming: 1 of 1 tasks kept from the earlier run, 0 redone" in printed
    assert shard_files(tmp_path / "out") == before


def test_a_changed_config_key_is_refused_by_name(tmp_path, capsys):
    a = write_inputs(tmp_path, "a")
    assert corpus_text(capsys, a, tmp_path / "out")[0] == 0
    (tmp_path / "stricter.yaml").write_text("min_chars: 40\n")
    code, _, err = corpus_text(capsys, a, tmp_path / "out", "--config",
                               str(tmp_path / "stricter.yaml"))
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "config differs at min_chars (40 now, 20 before)" in err


def test_files_no_run_writes_stay_even_with_overwrite(tmp_path, capsys):
    a, out = write_inputs(tmp_path, "a"), tmp_path / "out"
    (out / "inputs").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    assert corpus_text(capsys, a, out)[0] == 0  # other files do not make a folder taken
    assert corpus_text(capsys, a, out, "--overwrite")[0] == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "inputs").is_dir()


def test_outputs_without_a_record_are_refused_until_overwritten(tmp_path, capsys):
    a, out = write_inputs(tmp_path, "a"), tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "captioning-00000-of-00001.tar").write_bytes(b"an older run's shard")
    code, _, err = corpus_text(capsys, a, out)
    assert code == 2
    assert f"{out} holds the outputs of a run with no readable run.json" in err
    assert corpus_text(capsys, a, out, "--overwrite")[0] == 0
    assert os.listdir(out / "shards") == ["text-00000-of-00001.tar"]


def test_a_record_alone_does_not_stop_a_run(tmp_path, capsys):
    """An earlier run that stopped before writing anything but its run.json left nothing to
    keep."""
    a, b, out = write_inputs(tmp_path, "a"), write_inputs(tmp_path, "b"), tmp_path / "out"
    assert corpus_text(capsys, a, out)[0] == 0
    for path in out.iterdir():
        if path.name == RECORD_NAME:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    assert corpus_text(capsys, b, out)[0] == 0


def test_synthdog_records_its_settings_in_place_of_inputs(tmp_path, capsys):
    out = str(tmp_path / "out")
    capsys.readouterr()
    assert cli.main(["synthdog", "--count", "1", "--output", out, "--workers", "1"]) == 0
    inputs = json.loads((tmp_path / "out" / RECORD_NAME).read_text())["inputs"]
    assert (inputs["count"], inputs["seed"], inputs["start"], inputs["lang"]) == (1, 0, 0, "en")
    capsys.readouterr()
    assert cli.main(["synthdog", "--count", "2", "--output", out, "--workers", "1"]) == 2
    assert "inputs differ at count (2 now, 1 before)" in capsys.readouterr().err


def record(**changes) -> dict:
    fields = {"command": "pdf", "dataset": "d", "inputs": {"patterns": ["in"], "files": []},
              "config": {"render": {"dpi": 150, "image_format": "jpeg"}},
              "formats": ["webdataset"], "samples_per_shard": 1000, **changes}
    return RunRecord(**fields).to_json()


def test_differences_name_what_changed_and_nothing_else():
    assert differences(record(), record()) == []
    assert differences(record(), record(command="html", formats=["webdataset", "parquet"])) == [
        "pipeline differs: html now, pdf before",
        "shard formats differ: webdataset+parquet now, webdataset before"]
    earlier, now = record(), record(config={"render": {"dpi": 200, "image_format": "png"}})
    assert differences(earlier, now) == [
        "config differs at render.dpi (200 now, 150 before), render.image_format (png now, "
        "jpeg before)"]
    assert differences({**earlier, "version": "0.0.1"}, earlier) == [
        f"version differs: {earlier['version']} now, 0.0.1 before"]


def test_an_input_edited_in_place_is_the_same_run(tmp_path):
    """Its path is the same; the task reading it is redone by its own fingerprint."""
    path = tmp_path / "a.txt"
    path.write_text("one")
    earlier = record(inputs=file_inputs([str(tmp_path)], [str(path)]))
    path.write_text("one, edited")
    assert differences(earlier, record(inputs=file_inputs([str(tmp_path)], [str(path)]))) == []
    other = tmp_path / "b.txt"
    other.write_text("two")
    assert differences(earlier, record(inputs=file_inputs([str(tmp_path)], [str(other)]))) == [
        f"inputs differ: {other} was not read before"]
    assert differences(earlier, record(inputs=file_inputs([str(tmp_path)], [str(path)],
                                                          images="imgs"))) == [
        "inputs differ at images (imgs now, unset before)"]
