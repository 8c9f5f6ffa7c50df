"""Background photos and paper textures: from image files, or generated when none are given.

`TextureSet` follows synthtiger's `BaseTexture` (random texture, random crop, alpha, grayscale)
but keeps decoded images in a small cache, since decoding a photo per sample costs more than the
crop. Unreadable files are left out when found (counted); a file that breaks later raises
`TextureError`, which the pipeline records as an `unreadable_background` skip.

The generated defaults are made from a fixed seed, so every worker of every run has the same
ones: smooth colour fields with blurred shapes (backgrounds) and off-white grain (paper).
"""
from __future__ import annotations

import functools
import os
import warnings
from collections import OrderedDict

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from filters.image_rules import DEFAULT_MAX_PIXELS
from renderers.synthdog import compat  # noqa: F401  (before synthtiger)
from synthtiger import utils

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
GENERATED_COUNT = 8
GENERATED_SIZE = 768
CACHE_SIZE = 32


class TextureError(ValueError):
    """A texture file that cannot be decoded."""


def find_images(entries: list[str]) -> tuple[list[str], list[str]]:
    """(readable image files, unreadable ones) among files and folders, sorted."""
    files = []
    for entry in entries:
        if os.path.isdir(entry):
            for root, _, names in os.walk(entry):
                files += [os.path.join(root, n) for n in names
                          if n.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(entry):
            files.append(entry)
        else:
            raise TextureError(f"no such file or folder: {entry}")
    readable, unreadable = [], []
    for path in sorted(files):
        try:
            with warnings.catch_warnings():  # the size is judged below, against our own limit
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    image.verify()  # header and structure only; full decoding happens on use
            # A decompression bomb (a small file claiming a huge size) would be decoded whole
            # into memory on use, and kept in the cache.
            if image.width * image.height > DEFAULT_MAX_PIXELS:
                raise ValueError(f"{image.width}x{image.height} > {DEFAULT_MAX_PIXELS} pixels")
            readable.append(path)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError,
                Image.DecompressionBombError):
            unreadable.append(path)
    return readable, unreadable


class TextureSet:
    """Textures to draw from: file paths or in-memory uint8 RGB arrays."""

    def __init__(self, sources: list, alpha=(1, 1), grayscale=0.0, crop=0.0):
        if not sources:
            raise TextureError("no texture to draw from")
        self.sources = list(sources)
        self.alpha, self.grayscale, self.crop = alpha, grayscale, crop
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def _decoded(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        source = self.sources[index]
        if isinstance(source, np.ndarray):
            return source
        try:
            with Image.open(source) as image:
                array = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
            raise TextureError(f"cannot decode {source}: {error}") from error
        self._cache[index] = array
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return array

    def sample(self) -> dict:
        index = np.random.randint(len(self.sources))
        height, width = self._decoded(index).shape[:2]
        alpha = np.random.uniform(self.alpha[0], self.alpha[1])
        grayscale = np.random.rand() < self.grayscale
        crop = np.random.rand() < self.crop
        w = np.random.randint(1, width + 1) if crop else width
        h = np.random.randint(1, height + 1) if crop else height
        x = np.random.randint(0, width - w + 1) if crop else 0
        y = np.random.randint(0, height - h + 1) if crop else 0
        return {"index": index, "alpha": alpha, "grayscale": grayscale, "box": (x, y, w, h)}

    def apply(self, layers) -> dict:
        """Blend a texture over each layer, keeping the layer's own alpha (synthtiger's rule)."""
        meta = self.sample()
        x, y, w, h = meta["box"]
        rgb = self._decoded(meta["index"])[y:y + h, x:x + w]
        if meta["grayscale"]:
            rgb = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=-1)
        for layer in layers:
            height, width = layer.image.shape[:2]
            texture = np.empty((height, width, 4), dtype=np.float32)
            texture[..., :3] = cv2.resize(rgb, (width, height))
            texture[..., 3] = 255 * meta["alpha"]
            layer.image = utils.blend_image(texture, layer.image, mask=True)
        return meta


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    small = rng.random((cells, cells, channels)).astype(np.float32)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC).reshape(size, size, -1)


@functools.lru_cache(maxsize=1)
def generated_backgrounds() -> tuple[np.ndarray, ...]:
    """Photo-like stand-ins: colour fields, soft shapes, grain."""
    rng = np.random.default_rng(20230928)
    images = []
    for _ in range(GENERATED_COUNT):
        base = rng.integers(30, 226, 3).astype(np.float32)
        field = _smooth_noise(rng, GENERATED_SIZE, int(rng.integers(3, 8)), 3)
        image = base + (field - 0.5) * rng.uniform(60, 160)
        canvas = image.astype(np.float32)
        for _ in range(int(rng.integers(4, 12))):
            colour = rng.integers(0, 256, 3).tolist()
            centre = tuple(int(v) for v in rng.integers(0, GENERATED_SIZE, 2))
            axes = tuple(int(v) for v in rng.integers(20, GENERATED_SIZE // 3, 2))
            cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        canvas = cv2.GaussianBlur(canvas, (0, 0), float(rng.uniform(3, 12)))
        canvas += rng.normal(0, 6, canvas.shape).astype(np.float32)
        images.append(np.clip(canvas, 0, 255).astype(np.uint8))
    return tuple(images)


@functools.lru_cache(maxsize=1)
def generated_papers() -> tuple[np.ndarray, ...]:
    """Paper stand-ins: off-white with blotches and fibre grain."""
    rng = np.random.default_rng(19980601)
    images = []
    for _ in range(GENERATED_COUNT):
        tint = rng.uniform(215, 250, 3).astype(np.float32)
        blotch = (_smooth_noise(rng, GENERATED_SIZE, int(rng.integers(4, 16)), 1) - 0.5) * 40
        grain = rng.normal(0, 1, (GENERATED_SIZE, GENERATED_SIZE, 1)).astype(np.float32)
        fibres = cv2.GaussianBlur(grain, (0, 0), sigmaX=float(rng.uniform(0.6, 3)),
                                  sigmaY=0.6).reshape(GENERATED_SIZE, GENERATED_SIZE, 1) * 25
        image = tint + blotch + fibres + grain * 4
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return tuple(images)
