"""Every pipeline on Beam's DaskRunner (a local two-worker cluster) writes the bytes it writes on
the DirectRunner. `corpus pairs` and `corpus html` have their own Dask tests beside their other
tests; this module covers the rest, each on its demo inputs."""
from __future__ import annotations

import importlib
import os
import shutil

import pytest

from conftest import IN_MEMORY
from pipelines import pdf
from test_dask_runner import dask_address, dask_argv  # noqa: F401 (the cluster fixture)
from test_sinks import output_files

pytestmark = pytest.mark.slow


def _clear(output_dir, keep=()):
    for name in os.listdir(output_dir):
        if name not in keep:
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


@pytest.mark.parametrize("name", ["vqa", "grounding", "sft", "text", "synthdog"])
def test_demo_on_dask_writes_the_same_bytes_as_direct(tmp_path, dask_address, name):
    module = importlib.import_module(f"pipelines.{name}")
    # Both runs write to the same directory: records name their input files by path.
    run_dir = str(tmp_path / "run")
    direct = module.run_demo(run_dir, IN_MEMORY)
    direct_files = output_files(run_dir)
    _clear(run_dir)
    on_dask = module.run_demo(run_dir, dask_argv(dask_address))
    assert (on_dask["input"], on_dask["kept"], on_dask["dropped"], on_dask["errored"]) == \
        (direct["input"], direct["kept"], direct["dropped"], direct["errored"])
    assert direct["kept"] > 0
    assert output_files(run_dir) == direct_files


def test_pdf_on_dask_writes_the_same_bytes_as_direct(tmp_path, dask_address):
    # The sample PDFs carry creation stamps, so both runs read the same generated files.
    run_dir = str(tmp_path / "run")
    direct = pdf.run_demo(run_dir, IN_MEMORY)
    direct_files = output_files(run_dir)
    _clear(run_dir, keep=("inputs",))
    on_dask = pdf.run([os.path.join(run_dir, "inputs")], run_dir, "demo-pdf", pdf.PdfConfig(),
                      dask_argv(dask_address))
    assert (on_dask["input"], on_dask["kept"], on_dask["errored"]) == \
        (direct["input"], direct["kept"], direct["errored"])
    assert output_files(run_dir) == direct_files
