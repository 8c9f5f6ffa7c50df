"""Sample inputs for `corpus synthdog`: a few background photos made on the spot (soft colour
fields, drawn with Pillow) and one file that only looks like a JPEG, which the pipeline leaves
out and counts."""
from __future__ import annotations

import os
import random

from PIL import Image, ImageDraw, ImageFilter


def write_background(path: str, seed: int, size=(640, 480)) -> None:
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(40, 220) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        r = rng.randrange(20, 200)
        draw.ellipse((x - r, y - r, x + r, y + r),
                     fill=tuple(rng.randrange(0, 256) for _ in range(3)))
    image.filter(ImageFilter.GaussianBlur(8)).save(path, quality=90)


def write_synthdog_inputs(directory: str) -> dict[str, str]:
    """Writes `backgrounds/` (three photos and one broken file); returns the paths."""
    backgrounds = os.path.join(directory, "backgrounds")
    os.makedirs(backgrounds, exist_ok=True)
    for seed in range(3):
        write_background(os.path.join(backgrounds, f"photo-{seed}.jpg"), seed)
    with open(os.path.join(backgrounds, "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a JPEG")
    return {"backgrounds": backgrounds}
