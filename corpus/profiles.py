"""Dataset profiles: the paper's treatment of each dataset it names (`corpus/data/datasets.yaml`).

`--dataset NAME` picks a profile; its settings for a pipeline lie between the pipeline's
defaults and the `--config` file (`corpus.config.load_config`). A name without a profile gets
the generic one: A.1's web rules for caption pairs, the defaults elsewhere.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from corpus.config import merge

PROFILES_FILE = "data/datasets.yaml"


@dataclass(frozen=True)
class Profile:
    dataset: str
    kind: str
    paper: str  # where the paper names the dataset, and what it did to it
    found: bool  # False: the dataset has no profile, this is the generic one
    settings: dict[str, Any] = field(default_factory=dict)  # pipeline -> config mapping

    def for_pipeline(self, pipeline: str) -> dict[str, Any]:
        return self.settings.get(pipeline, {})

    def describe(self, pipeline: str) -> str:
        if self.found:
            return f"dataset profile {self.dataset!r}: {self.kind} ({self.paper})"
        if self.for_pipeline(pipeline) or pipeline == "pairs":
            return f"no dataset profile for {self.dataset!r}: the generic {self.kind} profile " \
                   f"({self.paper})"
        return f"no dataset profile for {self.dataset!r}: the {pipeline} defaults"


@functools.cache
def _document() -> dict[str, Any]:
    text = resources.files("corpus").joinpath(PROFILES_FILE).read_text("utf-8")
    return yaml.safe_load(text)


def profile_names() -> list[str]:
    return sorted(_document()["profiles"])


def profile_of(dataset: str | None) -> Profile:
    """The profile of `dataset`, or the generic one under the dataset's name."""
    document = _document()
    entry = document["profiles"].get(dataset or "")
    found = entry is not None
    entry = dict(entry if found else document["generic"])
    kind = entry.pop("kind")
    paper = entry.pop("paper")
    settings = merge(document["kinds"].get(kind) or {}, entry)
    return Profile(dataset or "", kind, paper, found, settings)


def clip_threshold(model: str) -> float | None:
    """The harsh CLIP cut the field uses with `model` (an open_clip name), if one is known."""
    return _document()["clip_thresholds"].get(model)
