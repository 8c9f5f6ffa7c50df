"""The `corpus` command. Each subcommand lives in its own module, imported only when it runs,
so `corpus --help` stays fast and one broken optional dependency breaks only its command.

A command module defines `add_arguments(parser)` and `main(args, extra_argv) -> int`;
`extra_argv` holds the flags the command did not declare (Beam's runner flags, for pipelines).
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import signal
import sys
import threading

from corpus.config import ConfigError

# name -> (module, one-line help). Order is the order `corpus --help` lists them.
COMMANDS = {
    "pairs": ("pipelines.pairs", "clean web image-text pairs into captioning shards (A.1)"),
    "vqa": ("pipelines.vqa", "VQA sets into VQA shards, VQAv2 answer choice (A.2)"),
    "grounding": ("pipelines.grounding", "GRIT pruning and RefCOCO/VG duality tasks (A.3)"),
    "pdf": ("pipelines.pdf", "render PDF pages into OCR shards with text boxes (A.4)"),
    "html": ("pipelines.html", "render HTML pages in Chromium into OCR shards (A.4)"),
    "synthdog": ("pipelines.synthdog", "synthesize SynthDoG OCR images with quads (A.4)"),
    "text": ("pipelines.text", "clean plain text into pure-text shards"),
    "sft": ("pipelines.sft", "dialogues into ChatML SFT shards (B.2)"),
    "manifest": ("manifests.cli", "build, validate and show stage manifests"),
    "train": ("trainer.cli", "train the Qwen-VL model on a stage manifest (Table 8)"),
    "export": ("trainer.export", "write a checkpoint's weights as one safetensors file"),
    "inspect": ("corpus.inspect", "print shard records and draw their boxes and quads"),
    "demo": ("corpus.demo", "run the whole flow on the bundled samples"),
}


# Start-up notes Beam logs on every run that ask nothing of the user: its optional Google Cloud
# clients are not installed (they are not needed off Dataflow).
BEAM_NOTES = ("apitools not found",)


def configure_logging() -> None:
    """Warnings and errors on stderr, less Beam's start-up notes; before any Beam import, which
    would otherwise set up the root logger itself."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(lambda record: not record.getMessage().startswith(BEAM_NOTES))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def add_console_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="no progress line (it is off anyway when stderr is not a terminal)")
    parser.add_argument("--verbose", action="store_true",
                        help="Apache Beam's own warnings and the project's notes on stderr too")


def set_console(args: argparse.Namespace) -> None:
    """What reaches the console: our lines and a progress line; Beam's own logging (its
    warnings concern its internals; its errors come back as our exceptions) with --verbose."""
    verbose = getattr(args, "verbose", False)
    logging.getLogger("apache_beam").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    if verbose:
        logging.getLogger().setLevel(logging.INFO)
    if getattr(args, "quiet", False):
        from corpus import progress
        progress.quiet = True


# Commands whose undeclared flags go to Beam; the others take none.
BEAM_COMMANDS = ("pairs", "vqa", "grounding", "pdf", "html", "synthdog", "text", "sft", "demo")

# The end of a pipeline command's --help: where its undeclared flags go.
BEAM_EPILOG = """\
Flags this command does not declare go to Apache Beam unchanged and choose the engine:
  --runner=DataflowRunner|FlinkRunner|SparkRunner|PortableRunner|
           apache_beam.runners.dask.dask_runner.DaskRunner
  --direct_num_workers=N, --direct_running_mode=in_memory|multi_processing
  --dask_client_address=HOST:PORT, --job_endpoint=HOST:PORT, --project, --region,
  --temp_location (Dataflow)
Without --runner the run stays on this machine (--workers processes). A flag Beam does not
declare either stops the command. See docs/running-at-scale.md."""


class HelpWithDefaults(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, or says it is required. An option whose
    default is None (or an empty list) says in its own help what happens without it, as does
    any help that already names its default; on/off flags are off unless given."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if action.required and action.option_strings:
            return f"{help_text} (required)"
        if (not action.option_strings or "default" in help_text or default is None
                or default is argparse.SUPPRESS or isinstance(default, bool) or default == []):
            return help_text
        if isinstance(default, (list, tuple)):
            default = " ".join(str(value) for value in default)
        shown = str(default).replace("%", "%%")  # help strings are %-formatted
        return f"{help_text} (default: {shown})"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def unknown_option(name: str, parser: argparse.ArgumentParser, extra: list[str]) -> str | None:
    """The first flag in `extra` that neither the command nor (for a pipeline) Beam declares,
    as a one-line message with the nearest known flag; None when every flag is known."""
    flags = [arg.split("=", 1)[0] for arg in extra
             if arg.startswith("-") and not _is_number(arg)]  # "-1": a value
    if not flags:
        return None
    known = {option for action in parser._actions for option in action.option_strings}
    beam = set()
    if name in BEAM_COMMANDS:
        from pipelines.common import beam_option_names
        beam = beam_option_names(extra)
    for flag in flags:
        if flag not in beam:
            close = difflib.get_close_matches(flag, sorted(known | beam), n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]}?)" if close else ""
            passing = " nor a Beam option" if name in BEAM_COMMANDS else ""
            return f"unknown option {flag}{hint}: not an option of corpus {name}{passing}"
    return None


def output_problem(path: str | None) -> str | None:
    """Why a local `--output` folder cannot be written, found before anything runs; None when
    it can (or when it is a URI, for its file system to judge)."""
    if not path or "://" in path:
        return None
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    where = "" if existing == os.path.abspath(path) else f": {existing}"
    if not os.path.isdir(existing):
        return f"--output {path}{where} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--output {path}: no permission to write{where}"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corpus", description="Corpus builder for Qwen-VL-style vision-language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "--version":
        from importlib.metadata import version
        print(f"corpus {version('qwenvl-corpus')}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"corpus: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    configure_logging()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        print(f"corpus {name}: not built yet ({help_text})", file=sys.stderr)
        return 2
    # no abbreviations: `--out` must not quietly mean `--output`, nor a Beam flag's prefix ours
    command_parser = argparse.ArgumentParser(
        prog=f"corpus {name}", description=help_text, formatter_class=HelpWithDefaults,
        epilog=BEAM_EPILOG if name in BEAM_COMMANDS else None, allow_abbrev=False)
    module.add_arguments(command_parser)
    if name in BEAM_COMMANDS:
        add_console_arguments(command_parser)
    args, extra = command_parser.parse_known_args(rest)
    set_console(args)
    problem = unknown_option(name, command_parser, extra)
    if problem:
        command_parser.print_usage(sys.stderr)
    elif name in BEAM_COMMANDS + ("train", "export"):
        problem = output_problem(getattr(args, "output", None))
    if not problem and name in BEAM_COMMANDS:
        from pipelines.common import runner_problem
        problem = runner_problem(extra)
    if problem:
        print(f"corpus {name}: {problem}", file=sys.stderr)
        return 2
    if getattr(args, "workers", None):  # read with the runner flags (pipelines.common)
        extra = [*extra, f"--workers={args.workers}"]
    interrupts = InterruptWatch()
    try:
        with interrupts:
            return module.main(args, extra) or 0
    except (FileNotFoundError, ConfigError) as error:  # the user's to fix: no traceback
        print(f"corpus {name}: {error}", file=sys.stderr)
        return 2
    except BaseException:
        if not interrupts.seen:
            raise
        again = "with --resume to go on from the last checkpoint" if name == "train" else \
            "to resume"
        print(f"\ncorpus {name}: interrupted; run the same command again {again}",
              file=sys.stderr)
        return 130


class InterruptWatch:
    """Ctrl-C during a command, remembered: Beam re-raises the KeyboardInterrupt of a running
    step as a RuntimeError, so the exception alone does not tell an interrupt."""

    def __init__(self):
        self.seen = False
        self._previous = None

    def _interrupted(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._interrupted)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


if __name__ == "__main__":
    sys.exit(main())
