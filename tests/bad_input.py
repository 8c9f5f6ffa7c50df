"""Helpers of the bad-input suite (`tests/test_bad_input_*.py`): run a pipeline in a fresh
interpreter to measure its peak memory, write tar members, and read back the rejects table and
the kept samples."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from collections import Counter
from dataclasses import dataclass

import pyarrow.parquet as pq

from corpus.shards import read_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_MEASURE = """
import json as _json, resource as _resource


def _status_kib(field):
    with open("/proc/self/status") as _f:
        return next(int(line.split()[1]) for line in _f if line.startswith(field + ":"))


{setup}
with open("/proc/self/clear_refs", "w") as _f:  # restart VmHWM, the peak resident size
    _f.write("5")
_before = _status_kib("VmRSS")
_children_before = _resource.getrusage(_resource.RUSAGE_CHILDREN).ru_maxrss
{call}
_children = _resource.getrusage(_resource.RUSAGE_CHILDREN).ru_maxrss
with open({result!r}, "w") as _f:
    _json.dump({{"report": report, "growth_mib": (_status_kib("VmHWM") - _before) / 1024,
                "children_mib": _children / 1024 if _children > _children_before else 0}}, _f)
"""


@dataclass
class Measured:
    report: dict
    growth_mib: float  # peak resident size during the run minus the size before it
    children_mib: float  # peak of a child process started and waited for during the run; 0: none


def run_measured(setup: str, call: str, workdir, timeout: float = 300) -> Measured:
    """Run `setup` (imports), then `call` (which must bind `report`) in a new Python process,
    and measure how much the call raised the process's peak resident memory: imports are not
    counted, so the figure is the run's own (a whole-file read or a leak shows in full)."""
    result = os.path.join(str(workdir), "measured.json")
    code = _MEASURE.format(setup=textwrap.dedent(setup), call=textwrap.dedent(call),
                           result=result)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    with open(result) as f:
        return Measured(**json.load(f))


def rejects_table(output_dir) -> list[dict]:
    folder = os.path.join(str(output_dir), "rejects")
    rows = []
    for name in sorted(os.listdir(folder)):
        rows += pq.read_table(os.path.join(folder, name)).to_pylist()
    return rows


def check_rejects_match_report(report: dict, rows: list[dict]) -> None:
    """The rejects table holds exactly one row per dropped or errored unit of the report."""
    by_reason = Counter((row["status"], row["reason"]) for row in rows)
    expected = Counter({("dropped", r): n for r, n in report["dropped"].items()})
    expected.update({("errored", r): n for r, n in report["errored"].items()})
    assert by_reason == expected
    assert report["kept"] + report["dropped_total"] + report["errored_total"] == report["input"]
    undetailed = sorted({row["reason"] for row in rows if not row["detail"]})
    assert not undetailed, f"rejects without a detail: {undetailed}"


def reason_of(rows: list[dict]) -> dict[str, str]:
    """Source key -> reason, for keys rejected once."""
    counts = Counter(row["key"] for row in rows)
    return {row["key"]: row["reason"] for row in rows if counts[row["key"]] == 1}


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a member under any name, unsafe ones included (tarfile's `add` would refuse some)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def kept_samples(output_dir, report: dict) -> dict:
    """Source key -> sample, for every sample the run's shards hold."""
    return {sample.source.key: sample for shard in report["shards"]
            for sample in read_shard(os.path.join(str(output_dir), shard["path"]))}
