"""`corpus inspect` as a user runs it: a shard, a folder, a run's output folder or a glob; and one
line, rc 2, for nothing to read or a shard that cannot be read."""
import subprocess
import sys

import pytest

from conftest import make_image, make_sample
from corpus.shards import write_parquet, write_tar


def _corpus(*args):
    return subprocess.run([sys.executable, "-m", "corpus.cli", "inspect", *args],
                          capture_output=True, text=True)


def _write(path, samples):
    writer = write_parquet if str(path).endswith(".parquet") else write_tar
    with open(path, "wb") as f:
        writer(samples, f)


@pytest.fixture
def run_output(tmp_path):
    """A pipeline's output folder: two tar shards and a Parquet one, three samples each."""
    shards = tmp_path / "out" / "shards"
    shards.mkdir(parents=True)
    for name in ("b-00001.tar", "a-00000.tar", "c-00002.parquet"):
        _write(shards / name, [make_sample(f"{name}-{i}", f"text {name} {i}") for i in range(3)])
    (tmp_path / "out" / "report.json").write_text("{}")
    return tmp_path / "out"


def _texts(stdout):
    return [line.split("text: ")[1] for line in stdout.splitlines() if line.startswith("  text: ")]


def test_a_run_folder_a_shards_folder_and_a_glob_read_shards_in_name_order(run_output):
    for target in (run_output, run_output / "shards", f"{run_output}/shards/*"):
        result = _corpus(str(target), "--n", "4")
        assert result.returncode == 0, result.stderr
        captions = [text.split(": ", 1)[1] for text in _texts(result.stdout)]
        # --n counts over all shards
        assert captions == [f"text a-00000.tar {i}<|endoftext|>" for i in range(3)] + \
            ["text b-00001.tar 0<|endoftext|>"]
    everything = _corpus(f"{run_output}/shards/*.parquet", "--n", "100")
    assert everything.returncode == 0 and len(_texts(everything.stdout)) == 3


def test_previews_go_to_output(run_output, tmp_path):
    result = _corpus(str(run_output / "shards" / "a-00000.tar"), "--n", "1", "--output",
                     str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "png").glob("*.png"))) == 1
    assert "--output DIR" in _corpus("--help").stdout


def test_nothing_to_read_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.json").write_text("{}")
    for target, message in [
        (tmp_path / "empty", f"corpus inspect: no shards (.tar or .parquet) in {tmp_path}/empty"),
        (f"{tmp_path}/none-*.tar", f"no shards (.tar or .parquet) match {tmp_path}/none-*.tar"),
        (tmp_path / "missing.tar", "no shards (.tar or .parquet) match"),
        (tmp_path / "notes.json", "not a shard (.tar or .parquet)"),
    ]:
        result = _corpus(str(target))
        assert result.returncode == 2, (target, result.stdout)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr


def test_a_folder_of_runs_names_them(run_output):
    result = _corpus(str(run_output.parent))
    assert result.returncode == 2
    assert result.stderr.strip().endswith("inspect one of its runs: out")


def test_an_unreadable_shard_is_one_line_naming_it(tmp_path):
    good = tmp_path / "good.tar"
    _write(good, [make_sample("g", images=[make_image()])])
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[:700])
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    for shard in (truncated, garbage):
        result = _corpus(str(shard))
        assert result.returncode == 2
        assert result.stderr.startswith(f"corpus inspect: cannot read shard {shard}: ")
        assert len(result.stderr.strip().splitlines()) == 1
