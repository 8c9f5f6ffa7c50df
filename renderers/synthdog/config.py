"""SynthDoG's configuration as dataclasses, defaults equal to SynthDoG's `config_en.yaml` and
`config_zh.yaml` (the two differ only in their corpus and font folders).

Ranges are `[low, high]`; `prob` is how often an effect is on. The YAML keys mirror SynthDoG's
config with named effects instead of positional `args` lists (see
`pipelines/configs/synthdog.yaml`). An effect argument SynthDoG does not name keeps synthtiger's
default, as in SynthDoG. The paper used SynthDoG's defaults; where SynthDoG's value is a file of
its own (its fonts, corpus and texture photos), the field says what stands in for it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from corpus.config import ConfigError

DEJAVU = "/usr/share/fonts/truetype/dejavu"
NOTO_CJK = "/usr/share/fonts/opentype/noto"
WQY = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"


@dataclass
class EffectSwitch:
    """One effect of an `Iterator`: on with probability `prob`, parameters as synthtiger's."""

    prob: float = 1.0
    args: dict = field(default_factory=dict)


def _effect(prob, **args):
    return field(default_factory=lambda: EffectSwitch(prob, copy.deepcopy(args)))


# SynthDoG's perspective table: a weighted choice of how far each edge (top, right, bottom, left)
# shrinks; synthtiger's default aligns let each edge slide anywhere in the space it frees.
PERSPECTIVE_WEIGHTS = [750, 50, 50, 25, 25, 25, 25, 50]
PERSPECTIVE_PERCENTS = [
    [[0.75, 1], [0.75, 1], [0.75, 1], [0.75, 1]],
    [[0.75, 1], [1, 1], [0.75, 1], [1, 1]],
    [[1, 1], [0.75, 1], [1, 1], [0.75, 1]],
    [[0.75, 1], [1, 1], [1, 1], [1, 1]],
    [[1, 1], [0.75, 1], [1, 1], [1, 1]],
    [[1, 1], [1, 1], [0.75, 1], [1, 1]],
    [[1, 1], [1, 1], [1, 1], [0.75, 1]],
    [[1, 1], [1, 1], [1, 1], [1, 1]],
]


@dataclass
class LayoutConfig:
    """SynthDoG's GridStack: grids of rows x columns stacked down the page. `fill`/`full` are
    drawn once per page and shared by its grids, as SynthDoG's GridStack does."""

    text_scale: list = field(default_factory=lambda: [0.0334, 0.1])
    max_row: int = 10
    max_col: int = 3
    fill: list = field(default_factory=lambda: [0.5, 1.0])
    full: float = 0.1
    align: list = field(default_factory=lambda: ["left", "right", "center"])
    stack_spacing: list = field(default_factory=lambda: [0.0334, 0.0334])
    stack_fill: list = field(default_factory=lambda: [0.5, 1.0])
    stack_full: float = 0.1


@dataclass
class ContentConfig:
    margin: list = field(default_factory=lambda: [0.0, 0.1])
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    textbox_fill: list = field(default_factory=lambda: [0.5, 1.0])
    textbox_color: EffectSwitch = _effect(0.2, gray=[0, 64], colorize=1)
    content_color: EffectSwitch = _effect(0.2, gray=[0, 64], colorize=1)
    bold: float = 0.0


@dataclass
class PaperConfig:
    alpha: list = field(default_factory=lambda: [0.0, 0.2])  # the texture's opacity over white
    grayscale: float = 1.0
    crop: float = 1.0


@dataclass
class DocumentConfig:
    fullscreen: float = 0.5
    landscape: float = 0.5
    short_size: list = field(default_factory=lambda: [480, 1024])
    aspect_ratio: list = field(default_factory=lambda: [1.0, 2.0])
    paper: PaperConfig = field(default_factory=PaperConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    elastic_distortion: EffectSwitch = _effect(1.0, alpha=[0, 1], sigma=[0, 0.5])
    gaussian_noise: EffectSwitch = _effect(1.0, scale=[0, 8], per_channel=0)
    perspective: EffectSwitch = _effect(1.0, weights=PERSPECTIVE_WEIGHTS,
                                        percents=PERSPECTIVE_PERCENTS)


@dataclass
class BackgroundConfig:
    blur: EffectSwitch = _effect(1.0, sigma=[0, 10])


@dataclass
class GlobalEffects:
    """Applied to the whole composed image, in this order."""

    color: EffectSwitch = _effect(0.2, rgb=[[0, 255], [0, 255], [0, 255]], alpha=[0, 0.2])
    shadow: EffectSwitch = _effect(1.0, intensity=[0, 160], amount=[0, 1], smoothing=[0.5, 1],
                                   bidirectional=0)
    contrast: EffectSwitch = _effect(1.0, alpha=[1, 1.5])
    brightness: EffectSwitch = _effect(1.0, beta=[-48, 0])
    motion_blur: EffectSwitch = _effect(0.5, k=[3, 5], angle=[0, 360])
    gaussian_blur: EffectSwitch = _effect(1.0, sigma=[0, 1.5])


@dataclass
class LanguageConfig:
    """Fonts and text of one language. `fonts` entries: files, folders, or `file.ttc#N`."""

    fonts: list = field(default_factory=list)
    corpus: list = field(default_factory=list)  # UTF-8 text files; empty = the shipped corpus


def _default_languages():
    # Not SynthDoG's (it ships no fonts): Debian's fonts. Noto CJK face 2 is Simplified Chinese.
    return {
        "en": LanguageConfig(fonts=[DEJAVU]),
        "zh": LanguageConfig(fonts=[f"{NOTO_CJK}/NotoSansCJK-Regular.ttc#2",
                                    f"{NOTO_CJK}/NotoSansCJK-Bold.ttc#2",
                                    f"{NOTO_CJK}/NotoSerifCJK-Regular.ttc#2",
                                    f"{NOTO_CJK}/NotoSerifCJK-Bold.ttc#2", WQY]),
    }


@dataclass
class SynthDogConfig:
    quality: list = field(default_factory=lambda: [50, 95])  # JPEG quality range
    landscape: float = 0.5
    short_size: list = field(default_factory=lambda: [720, 1024])
    aspect_ratio: list = field(default_factory=lambda: [1.0, 2.0])
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    document: DocumentConfig = field(default_factory=DocumentConfig)
    effect: GlobalEffects = field(default_factory=GlobalEffects)
    languages: dict = field(default_factory=_default_languages)
    backgrounds: list = field(default_factory=list)  # image files/folders; empty = generated
    papers: list = field(default_factory=list)  # paper textures; empty = generated
    # A face drawing less of the corpus's text than this (characters counted by occurrence) is
    # left out (counted); lines drop the few characters the chosen face still lacks (counted).
    min_font_coverage: float = 0.98
    effects: bool = True  # False: clean pages (no background blur, document or global effects)
    lang: str = "en"  # en, zh or both (each sample picks one of the two)

    def validate(self) -> None:
        for name in ("quality", "short_size", "aspect_ratio"):
            low, high = getattr(self, name)
            if low > high:
                raise ConfigError(f"{name}: low {low} > high {high}")
        if not 1 <= self.quality[0] <= self.quality[1] <= 100:
            raise ConfigError(f"quality must lie in [1, 100], got {self.quality}")
        if self.lang not in ("en", "zh", "both"):
            raise ConfigError(f"lang must be en, zh or both, got {self.lang!r}")
        languages = {}
        for name, value in self.languages.items():
            if name not in ("en", "zh"):
                raise ConfigError(f"languages: unknown language {name!r}; known: en, zh")
            if isinstance(value, dict):
                unknown = set(value) - {"fonts", "corpus"}
                if unknown:
                    raise ConfigError(f"languages.{name}: unknown key(s) {sorted(unknown)}")
                defaults = _default_languages()[name]
                value = LanguageConfig(fonts=value.get("fonts") or defaults.fonts,
                                       corpus=value.get("corpus") or [])
            languages[name] = value
        self.languages = languages
        # A YAML override of one effect may name only some arguments: the rest keep their
        # defaults rather than falling back to synthtiger's (different) ones.
        for section, default in ((self.effect, GlobalEffects()),
                                 (self.document, DocumentConfig()),
                                 (self.background, BackgroundConfig()),
                                 (self.document.content, ContentConfig())):
            for key, value in vars(section).items():
                if isinstance(value, EffectSwitch):
                    value.args = {**getattr(default, key).args, **value.args}
        _check_perspective(self.document.perspective.args)


def _check_perspective(args: dict) -> None:
    """One weight per choice, each choice four [low, high] size ranges (top, right, bottom,
    left; 1 keeps an edge, 0.75 shrinks it by a quarter): a bad table fails here, not inside
    synthtiger when the template is built."""
    unknown = set(args) - {"weights", "percents"}
    if unknown:
        raise ConfigError(f"document.perspective.args: unknown key(s) {sorted(unknown)}; "
                          "known: percents, weights")
    weights, percents = args.get("weights"), args.get("percents")
    if not isinstance(weights, (list, tuple)) or not isinstance(percents, (list, tuple)):
        raise ConfigError("document.perspective.args: `weights` and `percents` must be lists, "
                          f"got {type(weights).__name__} and {type(percents).__name__}")
    if len(weights) != len(percents) or not weights:
        raise ConfigError("document.perspective.args: one weight per choice of `percents`, got "
                          f"{len(weights)} weights and {len(percents)} choices")
    if any(not isinstance(w, (int, float)) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"document.perspective.args.weights: non-negative numbers with a "
                          f"positive sum, got {weights}")
    for choice in percents:
        if not (isinstance(choice, (list, tuple)) and len(choice) == 4
                and all(map(_is_range, choice))):
            raise ConfigError("document.perspective.args.percents: each choice is four "
                              f"[low, high] ranges with 0 < low <= high, got {choice!r}")


def _is_range(edge) -> bool:
    return (isinstance(edge, (list, tuple)) and len(edge) == 2
            and all(isinstance(v, (int, float)) for v in edge) and 0 < edge[0] <= edge[1])
