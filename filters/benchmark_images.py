"""The benchmark-image guard: a sample whose image is a near-duplicate of an evaluation image
is dropped (`benchmark_image`), as the paper keeps the COCO images its benchmarks use out of
the training data (Table 13).

An image's fingerprint: the image decoded small (JPEG draft mode, grey), upright, see-through
parts on white, reduced to 64 × 64, then four 64-bit hashes of `imagehash` (pHash, dHash across,
dHash down, average hash): 256 bits. Two images are near-duplicates when their fingerprints
differ in at most `threshold` bits. Re-encoding and resizing move a fingerprint by a few bits; a
crop moves everything in the picture and costs more, so each excluded image is fingerprinted
16 times: as it is and with 3.5 % cut from each combination of its sides (`CROPS`). A sample is
fingerprinted once. docs/benchmark-images.md gives the measurements behind these choices.

The excluded images are fingerprinted once into a NumPy `.npz` (`save_fingerprints`): `scheme`
(how they were made: a file made otherwise is refused), `fingerprints` (images × crops × 4,
uint64) and `paths` (UTF-8, one per line). A pipeline's work loads it into a `HashIndex` once
per process.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import multiprocessing
import os
import posixpath
from dataclasses import dataclass
from typing import Iterator

import fsspec
import imagehash
import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

from corpus.inputs import IMAGE_FILES
from corpus.schema import Sample
from filters.base import Reject
from filters.hash_index import HashIndex
from filters.image_rules import ImageError, _reading

REASON = "benchmark_image"
CROP = 0.035  # of the width or height, cut from a side
CROPS = tuple(itertools.product((0.0, CROP), repeat=4))  # (left, top, right, bottom)
HASHES = (imagehash.phash, imagehash.dhash, imagehash.dhash_vertical, imagehash.average_hash)
DRAFT_SIDE = 64  # JPEGs decode at the smallest scale that keeps both sides at least this
HASH_SIDE = 64  # every hash reads this reduced square
DEFAULT_THRESHOLD = 32  # of 256 bits
SCHEME = (f"v1 {','.join(h.__name__ for h in HASHES)} of {HASH_SIDE}x{HASH_SIDE} grey; "
          f"crops 0/{CROP} per side")
ZIP_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive


# ---- fingerprints ---------------------------------------------------------------------------

def grey_image(data: bytes) -> PILImage.Image:
    """The image as a viewer shows it, in grey, decoded no larger than hashing needs. Raises
    ImageError (corrupt_image, decompression_bomb) as `filters.image_rules` does."""
    with _reading(data) as image:
        image.draft("L", (DRAFT_SIDE, DRAFT_SIDE))
        image = ImageOps.exif_transpose(image)
        if "A" in image.mode or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = PILImage.alpha_composite(PILImage.new("RGBA", rgba.size, "white"), rgba)
        return image.convert("L")


def fingerprint(image: PILImage.Image) -> np.ndarray:
    """The four hashes of a grey image, as 4 uint64 words."""
    small = image.resize((HASH_SIDE, HASH_SIDE), PILImage.Resampling.LANCZOS)
    return np.array([int.from_bytes(np.packbits(h(small).hash).tobytes(), "big")
                     for h in HASHES], dtype=np.uint64)


def crop_fingerprints(image: PILImage.Image) -> np.ndarray:
    """The fingerprints of an excluded image and of its crops (`CROPS`), len(CROPS) × 4."""
    width, height = image.size
    return np.stack([fingerprint(image.crop((round(width * left), round(height * top),
                                             width - round(width * right),
                                             height - round(height * bottom))))
                     for left, top, right, bottom in CROPS])


# ---- the excluded images and their fingerprint file -------------------------------------------

def is_fingerprint_file(path: str) -> bool:
    """Whether `path` is a file `save_fingerprints` may have written (an .npz) rather than a
    folder or a list of images. Raises FileNotFoundError when there is nothing there."""
    fs, root = fsspec.core.url_to_fs(path)
    if fs.isdir(root):
        return False
    with fs.open(root, "rb") as f:
        return f.read(len(ZIP_MAGIC)) == ZIP_MAGIC


def image_paths(source: str) -> list[str]:
    """The images of a folder (searched recursively, by extension, hidden names skipped) or of a
    text file listing one path per line (blank lines and `#` comments skipped; a relative path
    is taken from the list's folder), in order."""
    fs, root = fsspec.core.url_to_fs(source)
    protocol = source.split("://", 1)[0] + "://" if "://" in source else ""
    if fs.isdir(root):
        found = [path for path in fs.find(root) if path.lower().endswith(IMAGE_FILES)
                 and not any(part.startswith(".")
                             for part in posixpath.relpath(path, root).split("/"))]
        return [protocol + path for path in sorted(found)]
    folder = posixpath.dirname(source) if protocol else os.path.dirname(os.path.abspath(source))
    with fsspec.open(source, "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [line if "://" in line or line.startswith("/") else posixpath.join(folder, line)
            for line in lines if line and not line.startswith("#")]


def _fingerprint_file(path: str) -> tuple[np.ndarray | None, str]:
    """(crop fingerprints, "") of one excluded image, or (None, why it could not be read)."""
    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
        return crop_fingerprints(grey_image(data)), ""
    except ImageError as error:
        return None, str(error)
    except OSError as error:
        return None, f"{type(error).__name__}: {error}"


def fingerprint_images(paths: list[str], processes: int = 1
                       ) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The crop fingerprints of every image (images × crops × 4), and (path, reason) of each
    that could not be read. Spread over `processes` forked processes."""
    if processes > 1 and len(paths) > 1:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            results = pool.map(_fingerprint_file, paths, chunksize=64)
    else:
        results = list(map(_fingerprint_file, paths))
    failures = [(path, why) for path, (found, why) in zip(paths, results) if found is None]
    found = [prints for prints, _ in results if prints is not None]
    shape = (len(found), len(CROPS), len(HASHES))
    return np.stack(found) if found else np.empty(shape, dtype=np.uint64), failures


def save_fingerprints(f, fingerprints: np.ndarray, paths: list[str]) -> None:
    """Writes the fingerprint file to `f`, any writable file (numpy's own writer wants one it
    can also read)."""
    buffer = io.BytesIO()
    # the paths as UTF-8 lines: numpy's own strings take 4 bytes a character
    lines = np.frombuffer("\n".join(paths).encode("utf-8"), dtype=np.uint8)
    np.savez(buffer, scheme=np.array(SCHEME), fingerprints=fingerprints, paths=lines)
    f.write(buffer.getvalue())


@dataclass
class FingerprintFile:
    fingerprints: np.ndarray  # images × crops × 4
    paths: list[str]
    sha256: str  # of the file: names the excluded set in a run's config


def load_fingerprints(path: str) -> FingerprintFile:
    """What `save_fingerprints` wrote. Raises ValueError for any other file, or one made by
    another scheme."""
    with fsspec.open(path, "rb") as f:
        data = f.read()
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            scheme = str(stored["scheme"])
            fingerprints = stored["fingerprints"]
            paths = stored["paths"].tobytes().decode("utf-8").split("\n") \
                if len(fingerprints) else []
    except (KeyError, ValueError, OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a fingerprint file of excluded images ({error})") from None
    if scheme != SCHEME:
        raise ValueError(f"{path}: made as {scheme!r}, this version reads {SCHEME!r}; make it "
                         "again from the images")
    if fingerprints.shape[1:] != (len(CROPS), len(HASHES)) or len(fingerprints) != len(paths):
        raise ValueError(f"{path}: fingerprints of shape {fingerprints.shape} for "
                         f"{len(paths)} paths")
    return FingerprintFile(fingerprints, paths, hashlib.sha256(data).hexdigest())


# ---- the guard ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Match:
    path: str  # the excluded image
    distance: int  # bits of 256

    @property
    def detail(self) -> str:
        return f"distance={self.distance} {self.path}"


class BenchmarkImages:
    """What a pipeline's work holds to drop samples showing an excluded image. `load` builds the
    index once per process (a work calls it in `serve`, before its worker processes fork and
    share it, and in `setup`); only the file's path travels when the work is pickled."""

    reason = REASON

    def __init__(self, path: str, threshold: int = DEFAULT_THRESHOLD, images: int = 0,
                 sha256: str = ""):
        self.path, self.threshold = path, threshold
        self.images, self.sha256 = images, sha256  # for the report's config
        self._index: HashIndex | None = None
        self._paths: list[str] = []
        self._last: tuple[bytes, Match | None] | None = None

    def __getstate__(self):
        return {**self.__dict__, "_index": None, "_paths": [], "_last": None}

    def describe(self) -> dict:
        return {"file": self.path, "images": self.images, "sha256": self.sha256,
                "threshold": self.threshold}

    def load(self) -> None:
        if self._index is None:
            stored = load_fingerprints(self.path)
            self._paths = stored.paths
            self._index = HashIndex(stored.fingerprints.reshape(-1, len(HASHES)),
                                    self.threshold)

    def match(self, data: bytes) -> Match | None:
        """The excluded image nearest to the image `data`, if within the threshold. The last
        image's answer is kept: the samples of one record (the questions of an image) share
        their image's bytes."""
        if self._last is not None and self._last[0] is data:
            return self._last[1]
        self.load()
        found = self._index.nearest(fingerprint(grey_image(data)))
        result = None if found is None else \
            Match(self._paths[found[0] // len(CROPS)], found[1])
        self._last = (data, result)
        return result

    def screen(self, sample: Sample) -> Sample | Reject:
        """The sample, or its `benchmark_image` reject (the excluded file and the distance in
        its detail) when any of its images matches. An image that does not decode is an
        errored reject of this sample only."""
        try:
            for image in sample.images:
                found = self.match(image.data)
                if found is not None:
                    return Reject.of(sample, REASON, detail=found.detail)
        except ImageError as error:
            return Reject.of(sample, error.reason, "errored", error.detail)
        except Exception as error:  # as filters.base.checked: this sample only
            return Reject.of(sample, type(error).__name__, "errored", str(error)[:1000])
        return sample


def screened(items: Iterator, guard: BenchmarkImages | None) -> Iterator:
    """`items` (samples, rejects, counts) with every sample screened by the guard, if any."""
    for item in items:
        yield guard.screen(item) if guard is not None and isinstance(item, Sample) else item
