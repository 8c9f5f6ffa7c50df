"""SynthDoG images per second per core, full effects, measured side by side in one run:

- `template`: this template's `render` + JPEG encoding in a loop (what a task's process does);
- `synthtiger runner`: synthtiger's own generator driving the same template class and saving
  with the template's `save` (its documented way to run a template);
- `per-character text`: the same template with SynthDoG's text box, one layer per character
  merged into the line (SynthDoG's `elements/textbox.py` design), for what line rendering buys;
- `pipeline`: `corpus synthdog` end to end in one process (the in-memory runner: template set-up,
  tasks, shards, report), beside `template, same images`: the template loop on the indices the
  pipeline renders (run seed 0, indices 0..count-1), so the two differ by the pipeline alone.
  A run has a fixed cost (building the template, which the loops above build outside their
  timing, the runner, the report and its plot); the pipeline's own CPU time (a run's, less its
  rendering and JPEG encoding) is printed as that fixed cost and a cost per further image.

The first three render the same images (synthtiger's task seeds for run seed 0); the pipeline
renders its own indices (same sizes and effects distribution, not the same images).

Per core = CPU seconds of this process per image, with OpenCV held to one thread, so other
load on a shared machine does not skew it. SynthDoG's README reports about 1.08 images/s on 4
workers, 0.27 images/s per worker.

With `--fidelity`, it also prints the label fidelity on the same images: the median IoU of
each line's quad with the min-area rectangle of its ink as drawn, effects off and on.

    .venv/bin/python benchmarks/bench_synthdog.py [--count 6] [--lang en] [--fidelity]
    .venv/bin/python benchmarks/bench_synthdog.py --only-pipeline --count 3
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from renderers.synthdog import compat  # noqa: E402,F401
from renderers.synthdog.elements import TextBox, TextLine  # noqa: E402
from renderers.synthdog.fonts import FontFace  # noqa: E402
from renderers.synthdog.template import SynthDoG, encode_jpeg, render  # noqa: E402
from synthtiger import generator, layers, set_global_random_seed  # noqa: E402
from synthtiger.gen import _task_generator  # noqa: E402

import imgaug  # noqa: E402

TEMPLATE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "renderers", "synthdog", "template.py")
SYNTHDOG_README_PER_WORKER = 1.08 / 4


class PerCharacterTextBox(TextBox):
    """SynthDoG's text box: each character its own synthtiger TextLayer (opening the font
    file each time), scaled to the box height, placed left to right, then merged."""

    def generate(self, box_size, stream, position, face: FontFace, charset, bold):
        width, height = box_size
        fill = np.random.uniform(self.fill[0], self.fill[1])
        width = float(np.clip(width * fill, height, width))
        char_layers, chars, left = [], [], 0.0
        raw = stream.read(position, int(width / (0.1 * height)) + 2)
        consumed = len(raw)
        for index, char in enumerate(raw):
            if char in "\r\n":
                continue  # as SynthDoG's text box does
            layer = layers.TextLayer(char, face.path, max(int(height), 1), bold=bold)
            scale = height / layer.height
            layer.bbox = [left, 0, *(layer.size * scale)]
            if layer.right > width:
                consumed = index
                break
            char_layers.append(layer)
            chars.append(char)
            left = layer.right
        text = "".join(chars).strip()
        if not text:
            return None, max(consumed, 1), 0
        merged = layers.Group(char_layers).merge()
        ys, xs = np.nonzero(merged.image[..., 3] > 0)
        if len(xs) == 0:
            return None, consumed, 0
        ink = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        return TextLine(text, merged, ink, face.name), consumed, 0


def same_images_as_runner(count: int) -> list[int]:
    """The seeds synthtiger's generator gives its first `count` tasks (run seed 0), so every
    mode below renders the same images."""
    tasks = _task_generator(0)
    return [next(tasks)[1] for _ in range(count)]


def render_seeded(template: SynthDoG, seed: int) -> dict:
    imgaug.random.get_global_rng()
    set_global_random_seed(seed)
    return template.generate()


def fidelity(config: dict, seeds: list[int]) -> None:
    from renderers.synthdog.quads import quad_iou

    for effects in (False, True):
        template = SynthDoG({**config, "effects": effects}, keep_ink=True)
        ious = []
        for seed in seeds:
            data = render_seeded(template, seed)
            ious += [quad_iou(line["quad"], ink) for line, ink in zip(data["lines"], data["ink"])
                     if ink is not None]
        print(f"quad IoU, effects {'on ' if effects else 'off'}: median {np.median(ious):.3f}, "
              f"10th percentile {np.percentile(ious, 10):.3f} over {len(ious)} lines")


def cpu_seconds(work) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.time()
    work()
    return time.process_time() - cpu, time.time() - wall


def show(label: str, count: int, cpu: float, wall: float) -> float:
    cpu, wall = cpu / count, wall / count
    print(f"{label:<26} {1 / cpu:6.2f} images/s/core  ({cpu:.3f} CPU s, {wall:.3f} wall s "
          f"per image)")
    return 1 / cpu


def timed(label: str, count: int, work) -> float:
    return show(label, count, *cpu_seconds(work))


def compare_pipeline(config: dict, template: SynthDoG, count: int) -> float:
    """The pipeline against the template loop on the same images; returns pipeline / loop.

    Image costs vary by a third from one run to the next on a shared machine, so the
    pipeline's own cost is measured inside its runs: their CPU time less what its `render` and
    JPEG encoding took, for a run of one image (the fixed cost) and of `count`."""
    from corpus.config import from_mapping
    from pipelines import synthdog as pipeline
    from renderers.synthdog.config import SynthDogConfig

    def loop(indices):
        for index in indices:
            data = render(template, 0, index)
            encode_jpeg(data["image"], data["quality"])

    def run(images: int) -> tuple[float, float, float]:
        """CPU and wall seconds of a run, and its CPU outside rendering and encoding."""
        spent = [0.0]

        def clocked(function):
            def call(*args):
                started = time.process_time()
                try:
                    return function(*args)
                finally:
                    spent[0] += time.process_time() - started
            return call

        originals = pipeline.render, pipeline.encode_jpeg
        pipeline.render, pipeline.encode_jpeg = map(clocked, originals)
        try:
            with tempfile.TemporaryDirectory() as out:
                cpu, wall = cpu_seconds(lambda: pipeline.run(
                    out, "bench", from_mapping(SynthDogConfig, dict(config)),
                    ["--runner=DirectRunner", "--direct_running_mode=in_memory"],
                    count=images))
        finally:
            pipeline.render, pipeline.encode_jpeg = originals
        return cpu, wall, cpu - spent[0]

    run(1)  # imports what a run needs once (runner internals, the report's plot)
    loop_cpu, loop_wall = cpu_seconds(lambda: loop(range(count)))
    _, _, fixed = run(1)
    cpu, wall, own = run(count)
    template_rate = show("template, same images", count, loop_cpu, loop_wall)
    pipeline_rate = show("pipeline (1 process)", count, cpu, wall)
    per_image = (own - fixed) / max(count - 1, 1)
    at_scale = loop_cpu / count / (loop_cpu / count + per_image)
    print(f"  pipeline's own CPU: {fixed:.2f} s per run, {per_image * 1000:.1f} ms per further "
          f"image (render and JPEG left out): {at_scale:.3f}x the template past the fixed cost")
    return pipeline_rate / template_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--lang", default="en", choices=["en", "zh", "both"])
    parser.add_argument("--fidelity", action="store_true", help="also measure quad IoU")
    parser.add_argument("--only-pipeline", action="store_true",
                        help="only the pipeline against the template loop on its images")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    config = {"lang": args.lang}
    template = SynthDoG(dict(config))
    render_seeded(template, 1)  # warm caches (fonts, textures) outside the timings
    count = args.count
    if args.only_pipeline:
        ratio = compare_pipeline(config, template, count)
        print(f"pipeline / template, same images: {ratio:.2f}x")
        return
    seeds = same_images_as_runner(count)
    results = {}

    def render_all(document_template):
        for seed in seeds:
            data = render_seeded(document_template, seed)
            encode_jpeg(data["image"], data["quality"])
    results["template"] = timed("template", count, lambda: render_all(template))

    with tempfile.TemporaryDirectory() as out:
        saver = SynthDoG(dict(config))

        def runner():  # includes the runner building its own template, as every run does
            saver.init_save(out)
            for index, data in generator(TEMPLATE_PATH, "SynthDoG", config=dict(config),
                                         count=count, worker=0, seed=0):
                saver.save(out, data, index)
            saver.end_save(out)
        results["synthtiger"] = timed("synthtiger runner", count, runner)

    per_char = SynthDoG(dict(config))
    for document in per_char.documents.values():
        document.content.textbox = PerCharacterTextBox(document.content.textbox.fill)
    render_seeded(per_char, 1)

    results["per_char"] = timed("per-character text", count, lambda: render_all(per_char))

    pipeline_ratio = compare_pipeline(config, template, count)

    if args.fidelity:
        fidelity(config, seeds)
    print(f"template / synthtiger runner: {results['template'] / results['synthtiger']:.2f}x")
    print(f"template / per-character text: {results['template'] / results['per_char']:.2f}x")
    print(f"pipeline / template, same images: {pipeline_ratio:.2f}x")
    print(f"template / SynthDoG README per worker ({SYNTHDOG_README_PER_WORKER:.2f}/s): "
          f"{results['template'] / SYNTHDOG_README_PER_WORKER:.1f}x")


if __name__ == "__main__":
    main()
