"""Every command's --help: each option that takes a value says its default (or that it is
required), and the pipeline commands end by saying where their other flags go (Beam)."""
import re
import subprocess
import sys

import pytest

from corpus.cli import BEAM_COMMANDS, COMMANDS, main

HELP_COMMANDS = [[name] for name in COMMANDS if name != "manifest"] + \
    [["manifest", action] for action in ("build", "validate", "show")]


def help_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def option_entries(help_text: str) -> dict[str, str]:
    """{invocation: help} of the options section: `--n N` -> `how many … (default: 5)`."""
    entries, current, in_options = {}, None, False
    for line in help_text.splitlines():
        if line == "options:":
            in_options = True
        elif not line.strip():
            in_options, current = False, None
        elif in_options and re.match(r"^  -", line):
            current, _, text = line.strip().partition("  ")
            entries[current] = text.strip()
        elif in_options and current and line.startswith("    "):
            entries[current] += " " + line.strip()
    return entries


def takes_value(invocation: str) -> bool:
    """`--n N` and `--kind {a,b}` take a value; `--deep` and `--packing, --no-packing` do not."""
    return any(not token.startswith("-") for token in invocation.replace(",", " ").split())


@pytest.mark.parametrize("argv", HELP_COMMANDS, ids=" ".join)
def test_every_option_with_a_value_says_its_default(argv, capsys):
    entries = option_entries(help_of(argv, capsys))
    assert entries, "no options found in the help"
    silent = [invocation for invocation, text in entries.items()
              if takes_value(invocation) and "default" not in text and "(required)" not in text]
    assert silent == []
    for text in entries.values():
        assert "(default: None)" not in text and "(default: [])" not in text


@pytest.mark.parametrize("argv", HELP_COMMANDS, ids=" ".join)
def test_only_pipeline_commands_send_flags_to_beam(argv, capsys):
    text = help_of(argv, capsys)
    assert ("docs/running-at-scale.md" in text) == (argv[0] in BEAM_COMMANDS)


def test_pdf_help_as_a_user_sees_it():
    result = subprocess.run([sys.executable, "-m", "corpus.cli", "pdf", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    entries = option_entries(result.stdout)
    assert "(default: render.dpi of the config, 80)" in entries["--dpi DPI"]
    assert entries["--samples-per-shard SAMPLES_PER_SHARD"].endswith("(default: 1000)")
    assert entries["--output DIR"].endswith("(required)")
    epilog = result.stdout.rsplit("\n\n", 1)[1]
    for named in ("go to Apache Beam", "--runner=DataflowRunner|FlinkRunner|SparkRunner",
                  "apache_beam.runners.dask.dask_runner.DaskRunner", "--direct_num_workers",
                  "docs/running-at-scale.md"):
        assert named in epilog


def test_demo_and_inspect_list_their_defaults(capsys):
    demo = option_entries(help_of(["demo"], capsys))
    assert demo["--output DIR"].endswith("(default: demo-output)")
    inspect = option_entries(help_of(["inspect"], capsys))
    assert inspect["--n N"].endswith("(default: 5)")
    assert inspect["--kinds KINDS [KINDS ...]"].endswith("(default: word line ref region)")
