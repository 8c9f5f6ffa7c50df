"""The console as a user sees it: one-line errors for mistakes, a progress line on a terminal
and nothing else of Beam's, Ctrl-C answered in one line."""
import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time

import fsspec
import pytest

CORPUS = [sys.executable, "-m", "corpus.cli"]


def _corpus(*args):
    return subprocess.run([*CORPUS, *args], capture_output=True, text=True, timeout=600)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def text_input(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("A plain document with enough words in it to be kept by the "
                                  "length rule of the text pipeline.\n")
    return str(folder)


def test_a_misspelt_runner_stops_the_command_naming_the_runner_meant(tmp_path, text_input):
    result = _corpus("text", "--input", text_input, "--output", str(tmp_path / "out"),
                     "--runner=DirectRuner")
    assert result.returncode == 2
    assert "unknown runner DirectRuner (did you mean DirectRunner?)" in _one_line(result.stderr)
    assert not (tmp_path / "out").exists()
    result = _corpus("text", "--input", text_input, "--output", str(tmp_path / "out"),
                     "--runner=apache_beam.runners.dask.dask_runner.DaskRuner")
    assert result.returncode == 2 and "cannot be imported" in _one_line(result.stderr)


def _pdf_config_refused(tmp_path, text_input, document: str) -> tuple[str, str]:
    """`corpus pdf` with a config holding `document`: the config's path and the one line it
    printed (the command must end with status 2)."""
    config = tmp_path / "pdf.yaml"
    config.write_text(document)
    result = _corpus("pdf", "--input", text_input, "--output", str(tmp_path / "out"),
                     "--config", str(config))
    assert result.returncode == 2
    return str(config), _one_line(result.stderr)


def test_a_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path, text_input):
    config, line = _pdf_config_refused(tmp_path, text_input,
                                       "render:\n  dpi: 100\n  long_side: [1, 2\n")
    assert f"{config}:4:1: invalid YAML" in line, line


def test_a_wrong_type_in_a_pdf_config_is_one_line_naming_the_key(tmp_path, text_input):
    _, line = _pdf_config_refused(tmp_path, text_input, "render:\n  dpi: high\n")
    assert "render.dpi: expected" in line


def test_dataset_entries_that_do_not_apply_are_named(tmp_path, text_input):
    config = tmp_path / "text.yaml"
    config.write_text("datasets:\n  wiki-en: {max_document_bytes: 100}\n"
                      "  books: {max_document_bytes: 100}\n")
    result = _corpus("text", "--input", text_input, "--output", str(tmp_path / "out"),
                     "--dataset", "news", "--config", str(config))
    assert result.returncode == 0, result.stderr
    line = _one_line(result.stderr)
    assert "`datasets:` entries books, wiki-en do not apply to --dataset news" in line


def test_a_run_off_a_terminal_prints_our_lines_only(tmp_path, text_input):
    result = _corpus("text", "--input", text_input, "--output", str(tmp_path / "out"),
                     "--workers", "2")
    assert result.returncode == 0
    assert result.stderr == ""  # no progress line off a terminal, none of Beam's notes
    assert result.stdout.splitlines()[-1].startswith("text text: input 1, kept 1")


def _run_on_terminal(args, timeout=600) -> tuple[int, str]:
    """A command whose stdout and stderr are a 150-column terminal; (status, what it showed)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    process = subprocess.Popen([*CORPUS, *args], stdout=follower, stderr=follower,
                               stdin=subprocess.DEVNULL)
    os.close(follower)
    shown, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    return process.wait(timeout=60), shown.decode("utf-8", "replace")


def test_a_long_run_on_a_terminal_shows_a_progress_line(tmp_path):
    status, shown = _run_on_terminal(["synthdog", "--count", "8", "--output",
                                      str(tmp_path / "out"), "--workers", "2"])
    assert status == 0, shown
    lines = shown.replace("\r\n", "\n").split("\r")
    progress = [line for line in lines if line.startswith("corpus synthdog: ")]
    assert progress, shown
    assert any("/8 tasks" in line and "elapsed" in line and "left" in line for line in progress)
    assert any("inputs (" in line for line in progress), progress
    assert "synthdog synthdog: input 8, kept 8" in shown

    status, shown = _run_on_terminal(["synthdog", "--count", "8", "--output",
                                      str(tmp_path / "quiet"), "--workers", "2", "--quiet"])
    assert status == 0 and "tasks" not in shown, shown


def test_ctrl_c_ends_a_run_in_one_line_and_keeps_finished_tasks(tmp_path):
    """Ctrl-C reaches the whole process group, as a terminal sends it."""
    out = tmp_path / "out"
    process = subprocess.Popen(
        [*CORPUS, "synthdog", "--count", "2000", "--output", str(out), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600
    while not (out / "_done").is_dir() or not any((out / "_done").iterdir()):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert _one_line(stderr) == ("corpus synthdog: interrupted; run the same command again to "
                                 "resume")
    with pytest.raises(ProcessLookupError):  # the workers went with it
        os.killpg(process.pid, 0)
    assert not (out / "report.json").exists()
    markers = list((out / "_done").iterdir())
    assert markers and all(json.loads(m.read_text()) for m in markers if m.suffix == ".json")


def test_two_input_folders_whose_files_share_names_are_one_line(tmp_path, text_input):
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("Another plain document, with the same file name as the first.\n")
    result = _corpus("text", "--input", text_input, str(other), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert "both have the key 'a.txt'" in line and "give their common folder as --input" in line


class ConnectError(Exception):
    """What an HTTP client raises for a host it cannot resolve (not an OSError)."""


class Unreachable(fsspec.AbstractFileSystem):
    """A file system whose every listing fails, as a remote store does without a network."""

    protocol = "unreachable"

    def ls(self, path, detail=True, **kwargs):
        raise ConnectError("Name or service not known")

    def info(self, path, **kwargs):
        raise ConnectError("Name or service not known")


def test_an_input_that_cannot_be_listed_is_one_line(tmp_path, capsys):
    from corpus.cli import main

    fsspec.register_implementation("unreachable", Unreachable, clobber=True)
    status = main(["text", "--input", "unreachable://bucket/docs/*.txt", "--output",
                   str(tmp_path / "out")])
    assert status == 2
    assert _one_line(capsys.readouterr().err) == (
        "corpus text: cannot list --input unreachable://bucket/docs/*.txt: ConnectError: Name or "
        "service not known")
