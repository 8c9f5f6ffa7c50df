"""Every loader `docs/shards.md` shows runs, as written there, on the shards of a real pairs
run (tars and Parquet): a user can copy any of them."""
import glob
import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image as PILImage

from conftest import IN_MEMORY
from corpus.samples.pairs import write_demo_inputs
from corpus.shards import read_shard
from pipelines.pairs import PairsConfig, run
from pipelines.sinks import ShardImages

DOC = Path(__file__).resolve().parent.parent / "docs" / "shards.md"


def loader_blocks() -> dict[str, str]:
    """Heading -> code of each Python block under `## Loaders`."""
    loaders = DOC.read_text(encoding="utf-8").split("## Loaders", 1)[1]
    return {heading.strip(): code for heading, code in
            re.findall(r"### ([^\n]+)\n.*?```python\n(.*?)```", loaders, re.S)}


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    inputs = write_demo_inputs(str(root / "in"))
    photos = root / "in" / "png-photos"  # PNGs beside the JPEGs: the shards still hold one format
    photos.mkdir()
    for i, colour in enumerate(["red", "green", "blue"]):
        PILImage.new("RGB", (320, 240), colour).save(photos / f"p{i}.png")
        (photos / f"p{i}.txt").write_text(f"a plain {colour} square painted on a wall")
    out = root / "out"
    run([*inputs.web, str(photos)], str(out), "demo", PairsConfig(), IN_MEMORY,
        shard_formats=["webdataset", "parquet"])
    return out


def test_the_doc_shows_a_loader_for_each_library():
    assert set(loader_blocks()) == {
        "webdataset", "PyTorch DataLoader", "Hugging Face `datasets`: the tars",
        "Hugging Face `datasets`: the Parquet shards", "pyarrow", "DuckDB", "This project"}


@pytest.mark.parametrize("heading", sorted(loader_blocks()))
def test_each_documented_loader_runs_as_written(pairs_run, heading):
    namespace = {"OUT": str(pairs_run)}
    exec(compile(loader_blocks()[heading], f"docs/shards.md: {heading}", "exec"), namespace)
    assert namespace["first"], heading
    texts = {sample.text for path in glob.glob(os.path.join(pairs_run, "shards", "*.tar"))
             for sample in read_shard(path)}
    shown = namespace["first"]
    text = shown["text"] if isinstance(shown, dict) else next(v for v in shown if v in texts)
    assert text in texts  # the loader read a kept caption


def test_a_pairs_run_writes_one_image_extension(pairs_run):
    samples = [sample for path in glob.glob(os.path.join(pairs_run, "shards", "*.tar"))
               for sample in read_shard(path)]
    assert {image.format for sample in samples for image in sample.images} == {"jpeg"}
    converted = [s for s in samples if "image_reencoded: png->jpeg quality 95" in s.decisions]
    assert len(converted) == 3
    for sample in converted:
        with PILImage.open(io.BytesIO(sample.images[0].data)) as image:
            assert (image.format, image.size) == ("JPEG", (320, 240))


def test_keep_writes_images_as_they_came(tmp_path):
    photos = tmp_path / "in"
    photos.mkdir()
    PILImage.new("RGB", (320, 240), "red").save(photos / "p.png")
    (photos / "p.txt").write_text("a plain red square painted on a wall")
    config = PairsConfig(shard_images=ShardImages(format="keep"))
    report = run([str(photos)], str(tmp_path / "out"), "demo", config, IN_MEMORY)
    (sample,) = read_shard(os.path.join(tmp_path, "out", report["shards"][0]["path"]))
    assert sample.images[0].format == "png"
    assert not any(d.startswith("image_reencoded") for d in sample.decisions)
