"""The SynthDoG template for synthtiger, with a quadrilateral for every text line.

An image is SynthDoG's, with SynthDoG's default settings: a background photo, a sheet of
textured paper with text in stacked grids, document effects (elastic distortion, noise,
SynthDoG's weighted table of perspectives), the sheet placed on the background, global effects
(colour, shadow, contrast, brightness, motion and Gaussian blur), and a random JPEG quality.
Each line's label quad is its ink box (measured after the elastic distortion) carried through
the line layer's final placement, read after the perspective and the placement on the
background and before the layers are merged (global effects do not move pixels), then clipped
to the image.

`render(template, seed, index)` makes sample `index` of a run with seed `seed`: the same image
on any machine and any runner. synthtiger's own runner can drive the class too:
`synthtiger renderers/synthdog/template.py SynthDoG CONFIG.yaml -o DIR`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
from PIL import Image as PILImage

from corpus.config import from_mapping
from renderers.synthdog import compat  # noqa: F401  (before synthtiger)
from renderers.synthdog.config import SynthDogConfig
from renderers.synthdog.elements import Background, Content, Document, Paper, switches
from renderers.synthdog.fonts import discover_fonts
from renderers.synthdog.quads import clip_quad, min_area_rect
from renderers.synthdog.text_source import TextStream, default_corpus
from renderers.synthdog.textures import (TextureError, TextureSet, find_images,
                                         generated_backgrounds, generated_papers)
from synthtiger import components, layers, set_global_random_seed, templates, utils

import imgaug  # noqa: E402  (needs compat first)

LANGUAGES = {"en": ["en"], "zh": ["zh"], "both": ["en", "zh"]}


def task_seed(seed: int, index: int) -> int:
    """The random seed of sample `index` in a run seeded `seed`: a hash, so neighbouring
    indices and seeds give unrelated images."""
    digest = hashlib.blake2b(f"synthdog:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def _textures(entries: list[str], generated, what: str) -> tuple[list, list[str]]:
    if not entries:
        return list(generated()), []
    readable, unreadable = find_images(entries)
    if not readable:
        raise TextureError(f"no readable {what} image in {entries}"
                           + (f" (unreadable: {unreadable[:5]})" if unreadable else ""))
    return readable, unreadable


class SynthDoG(templates.Template):
    def __init__(self, config=None, lang: str | None = None, keep_ink: bool = False):
        super().__init__(config)
        if not isinstance(config, SynthDogConfig):
            config = from_mapping(SynthDogConfig, config or {}, "synthdog config")
        self.config = config
        self.lang = lang or config.lang
        self.keep_ink = keep_ink  # also return each line's ink rectangle (fidelity checks)
        self.inventory = {}

        backgrounds, bad_backgrounds = _textures(config.backgrounds, generated_backgrounds,
                                                 "background")
        papers, bad_papers = _textures(config.papers, generated_papers, "paper")
        self.inventory["backgrounds"] = {"count": len(backgrounds),
                                         "generated": not config.backgrounds,
                                         "unreadable": len(bad_backgrounds),
                                         "unreadable_names": bad_backgrounds[:20]}
        self.inventory["papers"] = {"count": len(papers), "generated": not config.papers,
                                    "unreadable": len(bad_papers)}
        self.background = Background(TextureSet(backgrounds), config.background, config.effects)
        paper_config = config.document.paper
        paper = Paper(TextureSet(papers, paper_config.alpha, paper_config.grayscale,
                                 paper_config.crop))

        self.documents = {}
        for language in LANGUAGES[self.lang]:
            settings = config.languages[language]
            stream = TextStream(settings.corpus or [default_corpus(language)])
            fonts = discover_fonts(settings.fonts, stream.chars(), config.min_font_coverage,
                                   language)
            self.inventory[language] = {"corpus": stream.paths, "corpus_chars": len(stream),
                                        "fonts": fonts.summary()}
            content = Content(fonts, stream, config.document.content)
            self.documents[language] = Document(paper, content, config.document, config.effects)

        effect = config.effect
        self.effect = switches([
            (components.RGB, effect.color),
            (components.Shadow, effect.shadow),
            (components.Contrast, effect.contrast),
            (components.Brightness, effect.brightness),
            (components.MotionBlur, effect.motion_blur),
            (components.GaussianBlur, effect.gaussian_blur),
        ], config.effects)

    def generate(self) -> dict:
        config = self.config
        languages = LANGUAGES[self.lang]
        language = languages[np.random.randint(len(languages))]
        landscape = np.random.rand() < config.landscape
        short = np.random.randint(config.short_size[0], config.short_size[1] + 1)
        ratio = np.random.uniform(config.aspect_ratio[0], config.aspect_ratio[1])
        size = (int(short * ratio), short) if landscape else (short, int(short * ratio))
        width, height = size

        background = self.background.generate(size)
        paper, lines, skipped = self.documents[language].generate(size)
        document = layers.Group([*(line.layer for line in lines), paper])
        space = np.clip(np.array(size) - document.size, 0, None)
        document.left = np.random.randint(int(space[0]) + 1)
        document.top = np.random.randint(int(space[1]) + 1)

        # Labels now: every geometric transform is done, and merging forgets the layers.
        labels, outside, ink = [], 0, []
        for line in lines:
            quad = clip_quad(line.quad(), width, height)
            if quad is None:
                outside += 1
                continue
            labels.append({"text": line.text, "quad": quad, "font": line.font})
            if self.keep_ink:
                ink.append(_ink_rect(line.layer, width, height))

        merged = layers.Group([*document.layers, background]).merge()
        self.effect.apply([merged])
        image = merged.output(bbox=[0, 0, width, height])
        quality = np.random.randint(config.quality[0], config.quality[1] + 1)
        data = {
            "image": np.clip(image[..., :3], 0, 255).astype(np.uint8),
            "lines": labels,
            "language": language,
            "quality": int(quality),
            "roi": [round(float(v), 2) for v in paper.quad.reshape(-1)],
            "chars_skipped": int(skipped),
            "lines_outside": outside,
        }
        if self.keep_ink:
            data["ink"] = ink
        return data

    # synthtiger's runner calls these to write what `generate` returns.
    def init_save(self, root):
        os.makedirs(os.path.join(root, "images"), exist_ok=True)
        self._labels = open(os.path.join(root, "labels.jsonl"), "w", encoding="utf-8")

    def save(self, root, data, idx):
        name = f"images/{idx:08d}.jpg"
        with open(os.path.join(root, name), "wb") as f:
            f.write(encode_jpeg(data["image"], data["quality"]))
        record = {"image": name, "language": data["language"], "lines": data["lines"]}
        self._labels.write(json.dumps(record, ensure_ascii=False) + "\n")

    def end_save(self, root):
        self._labels.close()


def _ink_rect(layer, width: int, height: int) -> np.ndarray | None:
    """The line's ink as drawn (after every effect on the layer), as a min-area rectangle."""
    quad = np.array(layer.quad, dtype=int)
    x0, y0 = np.maximum(quad.min(axis=0), 0)
    x1, y1 = np.minimum(quad.max(axis=0) + 1, (width, height))
    if x1 <= x0 or y1 <= y0:
        return None
    canvas = utils.create_image((x1 - x0, y1 - y0))
    utils.paste_image(layer.image, canvas, quad - (x0, y0))
    rect = min_area_rect(canvas[..., 3] > 0)
    return None if rect is None else rect + (x0, y0)


def render(template: SynthDoG, seed: int, index: int) -> dict:
    """Sample `index` of a run seeded `seed` (seeds synthtiger's global random states)."""
    # imgaug makes its global generator on first use by drawing from NumPy's: were that to
    # happen inside the seeding below, a process's first sample would differ from the rest.
    imgaug.random.get_global_rng()
    set_global_random_seed(task_seed(seed, index))
    return template.generate()
