"""What a run was made from, kept in `OUT/run.json`, and what a new run does with an output
folder that already holds one.

run.json holds the command, the dataset, the inputs (the patterns as given and the files they
resolved to, with size and modification time; a generator's settings for `corpus synthdog`), the
config, the shard formats and size, the project's version and when the run started. It is written
before the pipeline starts, so an interrupted run leaves it too.

A run into a folder that already holds outputs:
  - of the same run (same command, dataset, input file paths, config, formats, shard size,
    version): resumes; the tasks' own fingerprints redo those whose files changed in place;
  - of a different run, or of one that left no run.json: refuses (ConfigError, before anything
    is written) unless `--overwrite`, which first removes the files runs write (`RUN_FOLDERS`,
    `RUN_FILES`) and nothing else.
Files no run writes (the inputs kept beside the outputs, notes) never stop a run and are never
removed.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from corpus.config import ConfigError
from corpus.report import PLOT_NAME, REPORT_NAME
from pipelines.sinks import MARKER_DIR, SPILL_DIR, TMP_INFIX, write_atomically
from pipelines.tasks import file_identity, project_version, unit_files

RECORD_NAME = "run.json"
# Everything a run writes in its output folder; `--overwrite` removes these and nothing else.
RUN_FOLDERS = ("shards", "rejects", MARKER_DIR, SPILL_DIR)
OUTPUT_FILES = (REPORT_NAME, PLOT_NAME, "excluded_images.npz")  # the .npz: --exclude-images
RUN_FILES = OUTPUT_FILES + (RECORD_NAME,)
SHOWN_KEYS = 3  # differing config keys named in a refusal
SHOWN_VALUES = 80  # the longest "X now, Y before" quoted beside its key


@dataclass(frozen=True)
class RunRecord:
    """What a run's outputs are a function of: two runs with equal records write the same files."""

    command: str
    dataset: str
    inputs: dict  # {"patterns", "files": [[path, size, mtime]], options}, or generator settings
    config: dict
    formats: list
    samples_per_shard: int

    @classmethod
    def of(cls, spec, inputs: dict) -> "RunRecord":
        """The record of a run writing `spec` (a `RunSpec`; its config is the report's)."""
        return cls(spec.pipeline, spec.dataset, inputs, spec.config, list(spec.formats),
                   spec.samples_per_shard)

    def to_json(self, started: str = "") -> dict:
        # through JSON and back: tuples become lists, as in a stored record
        record = {"command": self.command, "dataset": self.dataset, "version": project_version(),
                  "started": started, **asdict(self)}  # the fields in the order shown
        return json.loads(json.dumps(record, default=str))


def file_inputs(patterns: list[str], files: Iterable[str], **options) -> dict:
    """The inputs of a run reading files: the patterns as given, each file they resolved to
    (size, modification time), and the options naming more inputs (`images=...`), when set."""
    return {"patterns": list(patterns),
            "files": [file_identity(path) for path in sorted(set(files))],
            **{name: value for name, value in options.items() if value is not None}}


def task_files(tasks) -> list[str]:
    """The files a run's tasks read (what their fingerprints take sizes and times of)."""
    return [path for task in tasks for unit in task.units for path in unit_files(unit)]


# ---- comparing two records ----------------------------------------------------------------------

def differences(earlier: dict, now: dict) -> list[str]:
    """What makes `now` a different run from `earlier`, in words; empty for the same run. Input
    files are compared by path: one edited in place is the same run, and its task is redone."""
    found = []
    for key, label in (("command", "pipeline differs"), ("dataset", "dataset differs"),
                       ("version", "version differs"), ("formats", "shard formats differ"),
                       ("samples_per_shard", "samples per shard differ")):
        if earlier.get(key) != now[key]:
            found.append(f"{label}: {_shown(now[key])} now, {_shown(earlier.get(key))} before")
    found += _input_differences(earlier.get("inputs") or {}, now["inputs"])
    config = earlier.get("config") or {}
    keys = _differing_keys(config, now["config"])
    if keys:
        found.append(f"config differs at {_named(keys, config, now['config'])}")
    return found


def _input_differences(earlier: dict, now: dict) -> list[str]:
    found = []
    if "files" in now:
        before = [f[0] for f in earlier.get("files", [])]
        paths = [f[0] for f in now["files"]]
        if len(paths) != len(before):
            found.append(f"inputs differ: {len(paths)} files now, {len(before)} before")
        elif paths != before:
            new = next(path for path in paths if path not in before)
            found.append(f"inputs differ: {new} was not read before")
    settings = {k: v for k, v in now.items() if k not in ("patterns", "files")}
    earlier_settings = {k: v for k, v in earlier.items() if k not in ("patterns", "files")}
    keys = _differing_keys(earlier_settings, settings)
    if keys:
        found.append(f"inputs differ at {_named(keys, earlier_settings, settings)}")
    return found


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {"render.dpi": 150, ...}."""
    if isinstance(value, dict) and value:
        flat = {}
        for key, inner in value.items():
            flat.update(_flat(inner, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value} if prefix else {}


def _differing_keys(earlier: dict, now: dict) -> list[str]:
    before, after = _flat(earlier), _flat(now)
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def _named(keys: list[str], earlier: dict, now: dict) -> str:
    """The first keys, each with its values when they are short."""
    before, after = _flat(earlier), _flat(now)
    named = []
    for key in keys[:SHOWN_KEYS]:
        values = f"{_shown(after.get(key))} now, {_shown(before.get(key))} before"
        named.append(f"{key} ({values})" if len(values) <= SHOWN_VALUES else key)
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(named) + more


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(str(v) for v in value)
    return "unset" if value is None else str(value)


# ---- the output folder --------------------------------------------------------------------------

def _present(output_dir: str, name: str) -> bool:
    path = FileSystems.join(output_dir, name)
    # an object store has no folders: a folder is there when something is under it
    return FileSystems.exists(path) or bool(
        FileSystems.match([FileSystems.join(path, "*")])[0].metadata_list)


def holds_outputs(output_dir: str) -> bool:
    """Whether a run wrote anything here besides its run.json."""
    return any(_present(output_dir, name) for name in RUN_FOLDERS + OUTPUT_FILES)


def read_record(output_dir: str) -> dict | None:
    """The run.json of the folder; None when there is none, or it cannot be read."""
    path = FileSystems.join(output_dir, RECORD_NAME)
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            record = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def refusal(output_dir: str, record: RunRecord) -> str | None:
    """Why `record`'s run may not write into `output_dir` without --overwrite; None when it
    may: nothing a run wrote is there (a run.json alone: the earlier run wrote nothing else),
    or the same run is."""
    if not holds_outputs(output_dir):
        return None
    earlier = read_record(output_dir)
    if earlier is None:
        return f"{output_dir} holds the outputs of a run with no readable {RECORD_NAME}"
    found = differences(earlier, record.to_json())
    return f"{output_dir} holds a different run ({'; '.join(found)})" if found else None


def clear_outputs(output_dir: str) -> None:
    """Removes what runs write in the folder (`RUN_FOLDERS`, `RUN_FILES`, their temporary
    files); anything else there stays."""
    for folder in RUN_FOLDERS:
        path = FileSystems.join(output_dir, folder)
        inside = [m.path for m in FileSystems.match([FileSystems.join(path, "*")])[0].metadata_list]
        if inside:
            FileSystems.delete(inside)
        if FileSystems.exists(path):
            FileSystems.delete([path])
    for name in RUN_FILES:
        path = FileSystems.join(output_dir, name)
        leftovers = [m.path for m in
                     FileSystems.match([f"{path}{TMP_INFIX}*"])[0].metadata_list]
        existing = [path] if FileSystems.exists(path) else []
        if existing + leftovers:
            FileSystems.delete(existing + leftovers)


def claim_outputs(record: RunRecord, output_dirs: list[str], overwrite: bool) -> None:
    """Makes the folders ready for the run of `record`, before it starts: refuses (ConfigError)
    when one holds another run and `overwrite` is not set; with it, removes what runs wrote
    there. Then writes each folder's run.json."""
    if not overwrite:
        for output_dir in output_dirs:
            why = refusal(output_dir, record)
            if why:
                raise ConfigError(f"{why}; use a new --output, or --overwrite to replace it")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    content = json.dumps(record.to_json(started), indent=1).encode("utf-8")
    for output_dir in output_dirs:
        if overwrite and holds_outputs(output_dir):
            clear_outputs(output_dir)
            print(f"{output_dir}: the earlier run's outputs removed (--overwrite)")
        write_atomically(output_dir, RECORD_NAME, lambda f: f.write(content))
