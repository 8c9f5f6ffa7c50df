"""The open_clip scorer, loaded from a random-init checkpoint file the way a real one is, in this
process and as one model shared by several worker processes; weights named as open_clip names
them (a pretrained tag, an hf-hub repository) found in huggingface_hub's cache without the
network, and a one-line error naming the file to put there when they are missing."""
import dataclasses
import json
import os
import shutil
import time

import numpy as np
import pytest

from corpus.samples.pairs import make_photo
from filters.image_rules import decode_for_model
from pipelines.clip import TINY_MODEL_CONFIG, TINY_MODEL_NAME, ClipConfig, ClipService, \
    MissingWeights, hub_weights, load_clip, model_input_size, write_tiny_checkpoint
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


def test_a_missing_file_or_unknown_tag_is_a_config_error():
    from corpus.config import ConfigError

    with pytest.raises(ConfigError, match="no such file 'laion9000', nor a pretrained tag of "
                                          "ViT-B-32 \\(its tags: openai, "):
        ClipConfig(checkpoint="laion9000").validate()
    with pytest.raises(ConfigError, match="not hf-hub:ORG/REPO"):
        ClipConfig(checkpoint="hf-hub:laion").validate()


# ---- weights named as open_clip names them ----------------------------------------------------

TAG_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
HUB_NAME = "hf-hub:laion/CLIP-ViT-L-14-laion2B-s32B-b82K"
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@pytest.fixture
def offline(monkeypatch):
    """No download is tried: the tests never wait on a network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def fill_hub_cache(cache_dir, repo, files: dict, revision: str | None = None) -> str:
    """Files laid out as `hf download --cache-dir` leaves them (a snapshot named by refs/main),
    or, with no revision, put in `snapshots/main/` as the missing-weights error says; returns
    the snapshot folder."""
    folder = os.path.join(cache_dir, "models--" + repo.replace("/", "--"))
    snapshot = os.path.join(folder, "snapshots", revision or "main")
    os.makedirs(snapshot)
    if revision:
        os.makedirs(os.path.join(folder, "refs"))
        with open(os.path.join(folder, "refs", "main"), "w") as f:
            f.write(revision)
    for name, source in files.items():
        shutil.copyfile(source, os.path.join(snapshot, name))
    return snapshot


def test_a_pretrained_tag_resolves_to_its_repository_in_the_cache(tmp_path):
    for tag in ("laion2b_s34b_b79k", "LAION2B-S34B-B79K"):  # open_clip's forgiving spelling
        hub = hub_weights(ClipConfig(checkpoint=tag, cache_dir=str(tmp_path)))
        assert hub.repo == TAG_REPO
        assert hub.folder == str(tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K")
        assert hub.files == (WEIGHT_NAMES,)
        assert hub.cached() is None


def test_an_hf_hub_name_resolves_to_its_config_and_weights_in_huggingface_hubs_cache():
    from huggingface_hub import constants

    hub = hub_weights(ClipConfig(checkpoint=HUB_NAME))
    assert hub.repo == "laion/CLIP-ViT-L-14-laion2B-s32B-b82K"
    assert hub.folder == os.path.join(constants.HF_HUB_CACHE,
                                      "models--laion--CLIP-ViT-L-14-laion2B-s32B-b82K")
    assert hub.files == (("open_clip_config.json",), WEIGHT_NAMES)


@pytest.mark.parametrize("checkpoint, wanted", [
    ("laion2b_s34b_b79k", "put open_clip_pytorch_model.bin in "),
    (HUB_NAME, "put open_clip_config.json and open_clip_pytorch_model.bin in "),
])
def test_named_weights_missing_offline_fail_in_one_line_naming_the_file_and_place(
        tmp_path, offline, checkpoint, wanted):
    config = ClipConfig(checkpoint=checkpoint, cache_dir=str(tmp_path))
    folder = hub_weights(config).folder
    for attempt in (config.validate, lambda: load_clip(config)):
        with pytest.raises(MissingWeights) as raised:
            attempt()
        message = str(raised.value)
        assert "\n" not in message
        assert "the network is off (HF_HUB_OFFLINE)" in message
        assert f"{wanted}{os.path.join(folder, 'snapshots', 'main')}{os.sep} " in message
        assert f"--cache-dir {tmp_path}" in message
    assert isinstance(raised.value, FileNotFoundError)  # what `corpus` prints as one line


def test_an_unreachable_hub_fails_in_seconds_without_hf_hub_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(MissingWeights, match="http://127.0.0.1:9 cannot be reached"):
        ClipConfig(checkpoint="laion2b_s34b_b79k", cache_dir=str(tmp_path)).validate()
    assert time.monotonic() - started < 10


def test_the_command_prints_missing_weights_as_one_line(tmp_path, offline, capsys):
    from corpus.cli import main

    config = tmp_path / "pairs.yaml"
    config.write_text(f"clip:\n  checkpoint: laion2b_s34b_b79k\n  cache_dir: {tmp_path}\n")
    code = main(["pairs", "--input", str(tmp_path), "--output", str(tmp_path / "out"),
                 "--dataset", "test", "--config", str(config)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("corpus pairs: clip.checkpoint 'laion2b_s34b_b79k': ")
    assert "\n" not in err


def test_an_hf_hub_repository_in_the_cache_loads_by_name_offline(tiny_clip_config, tmp_path,
                                                                 offline, monkeypatch):
    """The tiny model's architecture and weights, laid into the cache as open_clip's Hub files,
    load by `hf-hub:` name with no network, and score as the same weights loaded from a file."""
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_MODEL_CONFIG}))
    snapshot = fill_hub_cache(str(tmp_path / "cache"), "corpus/tiny-clip", {
        "open_clip_config.json": tmp_path / "open_clip_config.json",
        "open_clip_pytorch_model.bin": tiny_clip_config.checkpoint},
        revision="0123456789abcdef0123456789abcdef01234567")
    by_name = ClipConfig(checkpoint="hf-hub:corpus/tiny-clip", cache_dir=str(tmp_path / "cache"),
                         threshold=0.0)
    by_name.validate()
    assert model_input_size(by_name) == 64
    pixels, texts = batch_of(64, 4)
    expected = load_clip(tiny_clip_config).score(pixels, texts)
    assert load_clip(by_name).score(pixels, texts) == pytest.approx(expected, abs=1e-5)
    # open_clip's own downloader, offline, finds the same file there
    from huggingface_hub import constants
    from open_clip.pretrained import download_pretrained_from_hf

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert download_pretrained_from_hf("corpus/tiny-clip", cache_dir=str(tmp_path / "cache")) \
        == os.path.join(snapshot, "open_clip_pytorch_model.bin")


def test_a_pretrained_tag_in_the_cache_loads_by_name_offline(tiny_clip_config, tmp_path,
                                                             offline, monkeypatch):
    """A tag of the tiny model (added to open_clip's registry as its releases add theirs),
    its weights put in the cache folder the missing-weights error names: loaded by tag with no
    network, with the tag's normalisation."""
    import open_clip
    import torch

    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_MODEL_NAME, {
        "corpus_tiny": {"hf_hub": "corpus/tiny-clip-tag/", "mean": (0.5, 0.5, 0.5),
                        "std": (0.25, 0.25, 0.25)}})
    fill_hub_cache(str(tmp_path), "corpus/tiny-clip-tag",
                   {"open_clip_pytorch_model.bin": tiny_clip_config.checkpoint})
    by_tag = dataclasses.replace(tiny_clip_config, checkpoint="corpus_tiny",
                                 cache_dir=str(tmp_path))
    by_tag.validate()
    loaded = load_clip(by_tag)
    assert loaded.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert loaded.std.flatten().tolist() == [0.25, 0.25, 0.25]
    saved = torch.load(tiny_clip_config.checkpoint)["state_dict"]
    state = loaded.model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in saved.items())


def test_a_checkpoint_uri_is_copied_once_into_the_cache(tiny_clip_config, tmp_path):
    import fsspec

    uri = "memory://weights/tiny.pt"
    with fsspec.open(uri, "wb") as f, open(tiny_clip_config.checkpoint, "rb") as source:
        f.write(source.read())
    by_uri = dataclasses.replace(tiny_clip_config, checkpoint=uri, cache_dir=str(tmp_path))
    by_uri.validate()
    pixels, texts = batch_of(64, 2)
    expected = load_clip(tiny_clip_config).score(pixels, texts)
    assert load_clip(by_uri).score(pixels, texts) == pytest.approx(expected, abs=1e-5)
    (copy,) = tmp_path.glob("uri-*/tiny.pt")
    with open(tiny_clip_config.checkpoint, "rb") as original:
        assert copy.read_bytes() == original.read()
