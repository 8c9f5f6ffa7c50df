"""Shared fixtures: small images and samples made on the fly (nothing downloaded, little committed)."""
import io

import pytest
from PIL import Image as PILImage

from corpus.ids import sample_id
from corpus.schema import Image, Sample, Source

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def make_image(width=64, height=48, color=(200, 30, 30), fmt="jpeg") -> Image:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), color).save(buffer, format=fmt.upper())
    return Image(buffer.getvalue(), fmt, width, height)


def make_sample(key="k0", text="a red square", task="captioning", dataset="unit", **fields):
    images = fields.pop("images", [make_image()])
    return Sample(id=sample_id(dataset, key), dataset=dataset, task=task,
                  source=Source(uri=f"mem://{key}", key=key), images=images, text=text, **fields)


@pytest.fixture
def beam_argv():
    """Beam flags for tests: the single-process runner, fastest for tiny inputs."""
    return list(IN_MEMORY)


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory):
    """A random-init tiny open_clip model saved to a file, loaded as a real checkpoint is."""
    from pipelines.clip import TINY_MODEL_NAME, ClipConfig, write_tiny_checkpoint

    config_path, checkpoint = write_tiny_checkpoint(str(tmp_path_factory.mktemp("clip")))
    return ClipConfig(model=TINY_MODEL_NAME, checkpoint=checkpoint, model_config=config_path,
                      threshold=0.0, batch_size=4)
