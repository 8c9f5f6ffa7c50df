"""The open_clip ModelHandler, loaded from a random-init checkpoint file the way a real one is."""
import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from conftest import IN_MEMORY, make_sample
from corpus.samples.pairs import make_photo
from filters.image_rules import decode_for_model
from pipelines.clip import TINY_MODEL_NAME, ClipConfig, ClipExample, OpenClipModelHandler, \
    model_input_size, write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    config_path, checkpoint = write_tiny_checkpoint(str(tmp_path_factory.mktemp("clip")))
    return ClipConfig(model=TINY_MODEL_NAME, checkpoint=checkpoint, model_config=config_path,
                      threshold=0.0, batch_size=4)


def examples(size, n=6):
    captions = ["a red kite", "一只小狗", "a bowl of soup", "sunset", "two zebras", "a bike"]
    return [ClipExample(make_sample(key=f"k{i}", text=captions[i % 6]),
                        decode_for_model(make_photo(160, 120, seed=i), size), captions[i % 6])
            for i in range(n)]


def test_loads_checkpoint_and_scores_cosine(tiny_clip):
    handler = OpenClipModelHandler(tiny_clip)
    loaded = handler.load_model()
    size = model_input_size(tiny_clip)
    assert size == 64
    batch = examples(size)
    results = list(handler.run_inference(batch, loaded))
    scores = np.array([r.inference for r in results])
    assert [r.example for r in results] == batch
    assert np.all(np.abs(scores) <= 1.0 + 1e-5)
    # Batching does not change a pair's score.
    single = loaded.score([batch[0].pixels], [batch[0].text])
    assert single[0] == pytest.approx(scores[0], abs=1e-4)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 4, "max_batch_size": 4}
    assert handler.get_num_bytes(batch) == sum(e.pixels.nbytes + len(e.text) for e in batch)


def test_weights_come_from_the_checkpoint(tiny_clip, tmp_path):
    """Two different checkpoint files give different scores: the file is really loaded."""
    other_config, other_checkpoint = write_tiny_checkpoint(str(tmp_path), seed=1)
    batch = examples(64, 2)
    a = OpenClipModelHandler(tiny_clip).load_model().score([e.pixels for e in batch],
                    [e.text for e in batch])
    other = ClipConfig(model=TINY_MODEL_NAME, checkpoint=other_checkpoint,
                       model_config=other_config)
    b = OpenClipModelHandler(other).load_model().score([e.pixels for e in batch],
                    [e.text for e in batch])
    assert not np.allclose(a, b)


def test_run_inference_in_a_pipeline(tiny_clip):
    batch = examples(64, 5)
    with test_pipeline.TestPipeline(argv=IN_MEMORY) as p:
        scored = (p | beam.Create(batch) | RunInference(OpenClipModelHandler(tiny_clip))
                  | beam.Map(lambda r: (r.example.sample.source.key, round(r.inference, 3))))

        def check(pairs):
            assert sorted(k for k, _ in pairs) == [f"k{i}" for i in range(5)]
            assert all(-1 <= s <= 1 for _, s in pairs)

        assert_that(scored, check)


def test_a_model_shared_across_worker_processes_scores_the_same(tiny_clip, tmp_path):
    """Two worker processes send their batches to one model in a process of its own (Beam's
    shared model, the default on CUDA); the scores equal a model loaded here."""
    import dataclasses
    import json

    batch = examples(64, 8)
    expected = OpenClipModelHandler(tiny_clip).load_model().score(
        [e.pixels for e in batch], [e.text for e in batch])
    shared = dataclasses.replace(tiny_clip, share_model_across_processes=True)
    assert shared.shared_model and not tiny_clip.shared_model
    assert dataclasses.replace(tiny_clip, device="cuda").shared_model  # the default on CUDA
    out = tmp_path / "scores"

    def save(result):
        (out / result.example.sample.source.key).write_text(json.dumps(float(result.inference)))

    out.mkdir()
    argv = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
            "--direct_num_workers=2"]
    with beam.Pipeline(argv=argv) as p:
        _ = (p | beam.Create(batch) | beam.Reshuffle()
             | RunInference(OpenClipModelHandler(shared)) | beam.Map(save))
    scores = [json.loads((out / e.sample.source.key).read_text()) for e in batch]
    assert scores == pytest.approx(list(expected), abs=1e-5)


def test_config_checks():
    assert not ClipConfig().enabled  # no checkpoint: CLIP is off
    assert ClipConfig(score_field="similarity").enabled
    with pytest.raises(ValueError, match="no such file"):
        ClipConfig(checkpoint="/nonexistent/model.pt").validate()
    with pytest.raises(ValueError, match="batch_size"):
        ClipConfig(batch_size=0).validate()
