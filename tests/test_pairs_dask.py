"""`corpus pairs`, CLIP included, on Beam's DaskRunner (a local two-worker cluster): every
input accounted for and the same bytes as the DirectRunner. The CLIP step batches by grouping,
not with `BatchElements`, whose last batch the Dask runner would drop."""
from __future__ import annotations

import dataclasses

import pytest

from conftest import IN_MEMORY
from corpus.config import load_config
from corpus.samples.pairs import write_demo_inputs
from pipelines import pairs
from test_dask_runner import dask_address, dask_argv  # noqa: F401 (the cluster fixture)
from test_sinks import assert_same_outputs

pytestmark = pytest.mark.slow


def test_pairs_with_clip_on_dask_writes_the_same_bytes_as_direct(tmp_path, dask_address):
    inputs = write_demo_inputs(str(tmp_path / "inputs"))
    config = load_config(pairs.PairsConfig, inputs.config_path, "demo")
    # Batches of 3 over the ~30 pairs that reach the model: many batches, several partitions.
    config = dataclasses.replace(config, longest_caption_per_image=True,
                                 clip=dataclasses.replace(config.clip, batch_size=3))
    patterns = inputs.web + inputs.academic
    direct = pairs.run(patterns, str(tmp_path / "direct"), "demo", config, IN_MEMORY,
                       samples_per_shard=8)
    dask = pairs.run(patterns, str(tmp_path / "dask"), "demo", config,
                     dask_argv(dask_address), samples_per_shard=8)
    assert dask["input"] == direct["input"] == sum(inputs.expected.values())
    assert dask["stats"]["clip_scored"] == direct["stats"]["clip_scored"] > 20
    assert (dask["kept"], dask["dropped"], dask["errored"]) == \
        (direct["kept"], direct["dropped"], direct["errored"])
    assert len(direct["shards"]) > 1
    assert_same_outputs(tmp_path / "dask", tmp_path / "direct")
