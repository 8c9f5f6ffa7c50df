"""The one tokenizer abstraction: counting for packing plans and text chunking, ids for training.

A tokenizer comes from a local checkpoint (a `tokenizer.json` file, or a folder holding one; Qwen
(v1)'s `qwen.tiktoken`, or a folder holding it, as Qwen-7B ships; or a Hugging Face tokenizer
folder), or is trained: a byte-level BPE (Hugging Face `tokenizers`) on
text the caller gives, with the Qwen-VL special tokens added. `TextTokenizer.default()` trains one
on the small bundled text, so counting works with no download; training is deterministic.
"""
from __future__ import annotations

import base64
import functools
import os
from importlib import resources
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from corpus.formats import SPECIAL_TOKENS, Span

IMAGE_PAD = "<|imgpad|>"  # fills the visual-embedding positions between <img> and </img>
PAD = "<|pad|>"
ALL_SPECIAL_TOKENS = (PAD, IMAGE_PAD) + SPECIAL_TOKENS
IMAGE_TOKENS = 256  # visual embeddings per image (the adapter's learned queries)


class TextTokenizer:
    def __init__(self, tokenizer):
        self._tokenizer = tokenizer  # a tokenizers.Tokenizer or a transformers tokenizer
        self._fast = isinstance(tokenizer, Tokenizer)

    @classmethod
    def load(cls, path: str, trust_remote_code: bool = False) -> "TextTokenizer":
        """`trust_remote_code` lets a checkpoint's own tokenizer code run (Qwen-7B's tiktoken
        tokenizer needs it); only turn it on for checkpoints you trust."""
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "tokenizer.json")):
            path = os.path.join(path, "tokenizer.json")
        elif os.path.isdir(path) and os.path.exists(os.path.join(path, QWEN_TIKTOKEN)):
            path = os.path.join(path, QWEN_TIKTOKEN)
        if path.endswith(".tiktoken") and os.path.isfile(path):
            tokenizer = qwen_tiktoken(path)
            tokenizer.add_special_tokens(list(ALL_SPECIAL_TOKENS))
            return cls(tokenizer)
        if os.path.isfile(path):
            tokenizer = Tokenizer.from_file(path)
            tokenizer.add_special_tokens(list(ALL_SPECIAL_TOKENS))
            return cls(tokenizer)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                  trust_remote_code=trust_remote_code)
        tokenizer.add_special_tokens({"additional_special_tokens": list(ALL_SPECIAL_TOKENS)})
        return cls(tokenizer)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096) -> "TextTokenizer":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(ALL_SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    @functools.lru_cache(maxsize=1)
    def default(cls) -> "TextTokenizer":
        text = resources.files("corpus").joinpath("data/tokenizer_corpus.txt").read_text("utf-8")
        return cls.train(text.splitlines())

    def save(self, path: str) -> None:
        if self._fast:
            self._tokenizer.save(path)
        else:
            self._tokenizer.save_pretrained(os.path.dirname(path) or ".")

    @property
    def vocab_size(self) -> int:
        if self._fast:
            return self._tokenizer.get_vocab_size(with_added_tokens=True)
        return len(self._tokenizer)

    def encode(self, text: str) -> list[int]:
        if self._fast:
            return self._tokenizer.encode(text, add_special_tokens=False).ids
        return self._tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def token_id(self, token: str) -> int:
        if self._fast:
            return self._tokenizer.token_to_id(token)
        return self._tokenizer.convert_tokens_to_ids(token)

    def count(self, text: str) -> int:
        return len(self.encode(text))


# Qwen (v1)'s tokenizer (its tokenization_qwen.py): a tiktoken BPE vocabulary, this split pattern,
# NFC-normalised text, then its special tokens numbered from the vocabulary's end (151643)
QWEN_TIKTOKEN = "qwen.tiktoken"
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                       *(f"<|extra_{i}|>" for i in range(205)))


def tiktoken_ranks(path: str) -> dict[bytes, int]:
    """A tiktoken vocabulary file: one base64 token and its rank per line."""
    with open(path, "rb") as f:
        return {base64.b64decode(token): int(rank)
                for token, rank in (line.split() for line in f.read().splitlines() if line)}


def qwen_tiktoken(path: str) -> Tokenizer:
    """Qwen (v1)'s tokenizer as a `tokenizers` byte-level BPE, ids as Qwen's own code gives them,
    without its code or the tiktoken package."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class Converter(TikTokenConverter):
        load_tiktoken_bpe = staticmethod(tiktoken_ranks)  # the package would read it the same

    tokenizer = Converter(vocab_file=path, pattern=QWEN_PATTERN,
                          extra_special_tokens=list(QWEN_SPECIAL_TOKENS)).converted()
    tokenizer.normalizer = normalizers.NFC()
    return tokenizer


def count_span_tokens(spans: list[Span], tokenizer: TextTokenizer,
                      image_tokens: int = IMAGE_TOKENS) -> int:
    """Sequence length of a formatted sample: text tokens plus `<img>` + N + `</img>` per image."""
    total = 0
    for span in spans:
        total += image_tokens + 2 if span.image is not None else tokenizer.count(span.text)
    return total
