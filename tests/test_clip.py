"""The open_clip scorer, loaded from a random-init checkpoint file the way a real one is, in this
process and as one model shared by several worker processes."""
import dataclasses

import numpy as np
import pytest

from corpus.samples.pairs import make_photo
from filters.image_rules import decode_for_model
from pipelines.clip import TINY_MODEL_NAME, ClipConfig, ClipService, load_clip, \
    model_input_size, write_tiny_checkpoint
from pipelines.workers import Workers

CAPTIONS = ["a red kite", "一只小狗", "a bowl of soup", "sunset", "two zebras", "a bike"]


def batch_of(size, n=6):
    pixels = np.stack([decode_for_model(make_photo(160, 120, seed=i), size) for i in range(n)])
    return pixels, [CAPTIONS[i % 6] for i in range(n)]


def test_loads_checkpoint_and_scores_cosine(tiny_clip_config):
    loaded = load_clip(tiny_clip_config)
    size = model_input_size(tiny_clip_config)
    assert size == 64
    pixels, texts = batch_of(size)
    scores = loaded.score(pixels, texts)
    assert scores.shape == (6,) and np.all(np.abs(scores) <= 1.0 + 1e-5)
    # Batching does not change a pair's score.
    single = loaded.score(pixels[:1], texts[:1])
    assert single[0] == pytest.approx(scores[0], abs=1e-4)


def test_weights_come_from_the_checkpoint(tiny_clip_config, tmp_path):
    """Two different checkpoint files give different scores: the file is really loaded."""
    other_config, other_checkpoint = write_tiny_checkpoint(str(tmp_path), seed=1)
    pixels, texts = batch_of(64, 2)
    a = load_clip(tiny_clip_config).score(pixels, texts)
    other = ClipConfig(model=TINY_MODEL_NAME, checkpoint=other_checkpoint,
                       model_config=other_config)
    b = load_clip(other).score(pixels, texts)
    assert not np.allclose(a, b)


class _ScoreJob:
    """A pool job scoring one batch per task through the worker's end of the service."""

    def __init__(self, service, pixels, texts):
        self.service, self.pixels, self.texts = service, pixels, texts

    def setup(self, worker):
        self.model = self.service.clients[worker]

    def run(self, start):
        return start, self.model.score(self.pixels[start:start + 2], self.texts[start:start + 2])


def test_a_model_shared_across_worker_processes_scores_the_same(tiny_clip_config):
    """Two forked worker processes send their batches (uint8 bytes) to one model in a process
    of its own (the default on CUDA); the scores equal a model loaded here."""
    pixels, texts = batch_of(64, 8)
    expected = load_clip(tiny_clip_config).score(pixels, texts)
    shared = dataclasses.replace(tiny_clip_config, share_model_across_processes=True)
    assert shared.shared_model and not tiny_clip_config.shared_model
    assert dataclasses.replace(tiny_clip_config, device="cuda").shared_model  # default on CUDA
    service = ClipService(shared, clients=2)
    try:
        workers = Workers(_ScoreJob(service, pixels, texts), processes=2)
        scores = dict(workers.run(range(0, 8, 2)))
        workers.close()
    finally:
        service.close()
    assert not service.process.is_alive()
    got = np.concatenate([scores[start] for start in range(0, 8, 2)])
    assert got == pytest.approx(expected, abs=1e-5)


def test_a_service_that_cannot_load_says_why(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    config = ClipConfig(model="ViT-B-32", checkpoint=str(broken))
    with pytest.raises(Exception):
        ClipService(config, clients=1)


def test_config_checks():
    assert not ClipConfig().enabled  # no checkpoint: CLIP is off
    assert ClipConfig(score_field="similarity").enabled
    with pytest.raises(ValueError, match="no such file"):
        ClipConfig(checkpoint="/nonexistent/model.pt").validate()
    with pytest.raises(ValueError, match="batch_size"):
        ClipConfig(batch_size=0).validate()
