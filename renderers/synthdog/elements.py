"""The parts of a SynthDoG image, after SynthDoG's `elements/`: background, paper, text boxes,
content (text boxes laid out in grids) and the document (paper + content + document effects).

Each text line is one synthtiger layer rendered whole (SynthDoG renders and merges one layer per
character). Besides the layer, a line keeps its ink box in the layer's own pixels, measured
again after the document effects: the label quad is that box carried through the layer's final
placement (`TextLine.quad`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corpus.config import ConfigError
from renderers.synthdog import compat  # noqa: F401  (before synthtiger)
from renderers.synthdog.config import (BackgroundConfig, ContentConfig, DocumentConfig,
                                       EffectSwitch)
from renderers.synthdog.fonts import FontFace, FontInventory, load_font
from renderers.synthdog.layouts import stack_layout
from renderers.synthdog.quads import layer_transform, transform_points
from renderers.synthdog.text_source import TextStream, is_text_char
from renderers.synthdog.textures import TextureSet
from synthtiger import components, layers

ALPHA_INK = 0  # any coverage counts as ink


def effect(cls: type, args: dict):
    """A synthtiger component; an argument it does not take is a config error, named."""
    try:
        return cls(**args)
    except TypeError as error:
        raise ConfigError(f"{cls.__name__} effect: {error}") from error


def switch(component, setting: EffectSwitch, enabled: bool = True):
    """The component, on with probability `setting.prob` (never when effects are off)."""
    return components.Switch(component, prob=setting.prob if enabled else 0)


def switches(pairs: list[tuple[type, EffectSwitch]], enabled: bool = True):
    """synthtiger's Iterator of Switches, one per effect, with each effect's arguments."""
    return components.Iterator([switch(effect(cls, setting.args), setting, enabled)
                                for cls, setting in pairs])


class FaceTextLayer(layers.TextLayer):
    """synthtiger's TextLayer drawing with a cached face (collections need a face index)."""

    def _read_font(self, face: FontFace, size: int):
        return load_font(face, size)


def ink_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """x0, y0, x1, y1 (x1, y1 open) of the pixels with any coverage, or None if there are none."""
    ys, xs = np.nonzero(image[..., 3] > ALPHA_INK)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@dataclass
class TextLine:
    text: str
    layer: layers.Layer
    ink: tuple[int, int, int, int]  # x0, y0, x1, y1 in the layer image's pixels (x1, y1 open)
    font: str

    def refresh_ink(self) -> None:
        """Re-measure the ink after effects that move pixels inside the layer (elastic
        distortion), so the quad follows the glyphs as drawn."""
        self.ink = ink_box(self.layer.image) or self.ink

    def quad(self) -> np.ndarray:
        """The ink box's corners TL, TR, BR, BL where the layer is finally drawn."""
        x0, y0, x1, y1 = self.ink
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
        return transform_points(layer_transform(self.layer), corners)


class Background:
    def __init__(self, textures: TextureSet, config: BackgroundConfig, effects: bool):
        self.textures = textures
        self.effect = switches([(components.GaussianBlur, config.blur)], effects)

    def generate(self, size) -> layers.Layer:
        layer = layers.RectLayer(size, (255, 255, 255, 255))
        self.textures.apply([layer])
        self.effect.apply([layer])
        return layer


class Paper:
    def __init__(self, textures: TextureSet):
        self.textures = textures

    def generate(self, size) -> layers.Layer:
        layer = layers.RectLayer(size, (255, 255, 255, 255))
        self.textures.apply([layer])
        return layer


class TextBox:
    """Fills a box with as many of the stream's next characters as fit, in one font."""

    def __init__(self, fill):
        self.fill = fill

    def generate(self, box_size, stream: TextStream, position: int, face: FontFace,
                 charset: frozenset, bold: bool):
        """(TextLine or None, characters consumed, characters skipped for missing glyphs)."""
        width, height = box_size
        fill = np.random.uniform(self.fill[0], self.fill[1])
        width = float(np.clip(width * fill, height, width))
        size = max(int(height), 1)
        font = load_font(face, size)
        ascent, descent = font.getmetrics()
        scale = height / max(ascent + descent, 1)
        # Hardly any glyph is narrower than a tenth of the size: enough characters to fill the box.
        raw = stream.read(position, int(width / (0.1 * height)) + 2)
        kept, origin, missing = [], [], []  # kept characters, where each came from in `raw`
        for i, char in enumerate(raw):
            if char.isspace():
                char = " "  # line breaks too: SynthDoG's label joins its texts by spaces
            elif not is_text_char(char):
                continue  # control characters are no text: neither drawn nor counted missing
            drawn = "＼" if char == "\\" else char  # as synthtiger's TextLayer draws it
            if char != " " and drawn not in charset:
                missing.append(i)
            elif char != " " or (kept and kept[-1] != " "):
                kept.append(char)
                origin.append(i)
        fits = self._longest_fit(font, "".join(kept), width / scale)
        # Nothing drawable in the window: move past it rather than stall on it.
        consumed = origin[fits - 1] + 1 if fits else (0 if kept else len(raw))
        skipped = sum(1 for i in missing if i < consumed)
        text = "".join(kept[:fits]).rstrip()
        if not text:
            return None, consumed, skipped
        layer = FaceTextLayer(text, face, size, bold=bold)
        ink = ink_box(layer.image)
        if ink is None:
            return None, consumed, skipped
        layer.bbox = [0, 0, layer.image.shape[1] * scale, height]
        return TextLine(text, layer, ink, face.name), consumed, skipped

    @staticmethod
    def _longest_fit(font, text: str, width: float) -> int:
        low, high = 0, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            if font.getlength(text[:middle]) <= width:
                low = middle
            else:
                high = middle - 1
        return low


class Content:
    """Text boxes laid out in stacked grids over the page, one font per grid."""

    def __init__(self, fonts: FontInventory, stream: TextStream, config: ContentConfig):
        self.fonts, self.stream, self.config = fonts, stream, config
        self.textbox = TextBox(config.textbox_fill)
        self.textbox_color = switch(effect(components.Gray, config.textbox_color.args),
                                    config.textbox_color)
        self.content_color = switch(effect(components.Gray, config.content_color.args),
                                    config.content_color)

    def generate(self, size) -> tuple[list[TextLine], int]:
        width, height = size
        margin = self.config.margin
        left = width * np.random.uniform(margin[0], margin[1])
        top = height * np.random.uniform(margin[0], margin[1])
        area = [left, top, max(width - 2 * left, 0), max(height - 2 * top, 0)]
        grids = stack_layout(area, self.config.layout)
        position = np.random.randint(len(self.stream))
        lines, skipped = [], 0
        for grid in grids:
            face = self.fonts.faces[np.random.randint(len(self.fonts.faces))]
            bold = np.random.rand() < self.config.bold
            for (x, y, w, h), align in grid:
                line, consumed, missing = self.textbox.generate(
                    (w, h), self.stream, position, face, self.fonts.charsets[face], bold)
                position += consumed
                skipped += missing
                if line is None:
                    continue
                line.layer.center = (x + w / 2, y + h / 2)
                if align == "left":
                    line.layer.left = x
                elif align == "right":
                    line.layer.right = x + w
                self.textbox_color.apply([line.layer])
                lines.append(line)
        self.content_color.apply([line.layer for line in lines])
        return lines, skipped


def perspective_selector(setting: EffectSwitch):
    """SynthDoG's weighted table of perspectives (`weights`, `percents` per choice)."""
    return components.Selector(
        [components.Perspective(percents=percents) for percents in setting.args["percents"]],
        weights=setting.args["weights"])


class Document:
    """A sheet of paper with content, distorted by the document effects."""

    def __init__(self, paper: Paper, content: Content, config: DocumentConfig, effects: bool):
        self.paper, self.content, self.config = paper, content, config
        self.effect = components.Iterator([
            switch(effect(components.ElasticDistortion, config.elastic_distortion.args),
                   config.elastic_distortion, effects),
            switch(effect(components.AdditiveGaussianNoise, config.gaussian_noise.args),
                   config.gaussian_noise, effects),
            switch(perspective_selector(config.perspective), config.perspective, effects),
        ])

    def generate(self, size):
        """(paper layer, text lines, characters skipped) for a page inside `size`."""
        width, height = size
        config = self.config
        if np.random.rand() >= config.fullscreen:
            landscape = np.random.rand() < config.landscape
            longest = width if landscape else height
            short_low = min(width, height, config.short_size[0])
            short_high = min(width, height, config.short_size[1])
            short = np.random.randint(short_low, short_high + 1)
            ratio = np.random.uniform(min(longest / short, config.aspect_ratio[0]),
                                      min(longest / short, config.aspect_ratio[1]))
            long_side = int(short * ratio)
            size = (long_side, short) if landscape else (short, long_side)
        lines, skipped = self.content.generate(size)
        paper = self.paper.generate(size)
        self.effect.apply([*(line.layer for line in lines), paper])
        for line in lines:
            line.refresh_ink()
        return paper, lines, skipped
