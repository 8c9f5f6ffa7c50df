"""Qwen (v1)'s tiktoken vocabulary read natively: the ids of tiktoken's byte-pair merging, written
out here from its definition, on a small vocabulary in Qwen's file format."""
import base64
import unicodedata

import regex

from corpus.formats import IM_START, IMG_START
from corpus.tokens import QWEN_PATTERN, QWEN_SPECIAL_TOKENS, TextTokenizer

MERGED = [b"th", b"he", b"the", b" t", b" the", b"in", b"ing", b"\xe4\xb8", b"\xe4\xb8\xad",
          b"12", b"\n\n"]


def tiktoken_file(folder):
    """Every byte, then merged tokens, each formed from two before it; in Qwen's file name."""
    tokens = [bytes([b]) for b in range(256)] + MERGED
    path = folder / "qwen.tiktoken"
    path.write_bytes(b"".join(base64.b64encode(token) + b" %d\n" % rank
                              for rank, token in enumerate(tokens)))
    return {token: rank for rank, token in enumerate(tokens)}


def tiktoken_encode(text, ranks):
    """tiktoken's encoding: NFC (Qwen's), the split pattern, then in each piece the adjacent pair
    whose union ranks lowest merged first, until no union is a token."""
    ids = []
    for piece in regex.findall(QWEN_PATTERN, unicodedata.normalize("NFC", text)):
        parts = [bytes([b]) for b in piece.encode()]
        while True:
            pairs = [(ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:]))
                     if a + b in ranks]
            if not pairs:
                break
            _, i = min(pairs)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids += [ranks[part] for part in parts]
    return ids


def test_qwen_tiktoken_gives_tiktoken_s_ids_and_qwen_s_special_tokens(tmp_path):
    ranks = tiktoken_file(tmp_path)
    tokenizer = TextTokenizer.load(str(tmp_path))  # the checkpoint folder, as Qwen-7B ships
    for text in ("the thing in the 12 th", "中国 the\n\nthe  12345", "Cafe\u0301 the"):
        assert tokenizer.encode(text) == tiktoken_encode(text, ranks), text
        assert tokenizer.decode(tokenizer.encode(text)) == unicodedata.normalize("NFC", text)
    # Qwen's special tokens numbered from the vocabulary's end, then the project's own
    assert [tokenizer.token_id(t) for t in QWEN_SPECIAL_TOKENS[:3]] == [len(ranks) + i
                                                                       for i in range(3)]
    assert tokenizer.token_id(IMG_START) >= len(ranks) + len(QWEN_SPECIAL_TOKENS)
    assert tokenizer.encode(f"{IM_START}the") == [tokenizer.token_id(IM_START), ranks[b"the"]]
    assert TextTokenizer.load(str(tmp_path / "qwen.tiktoken")).encode("the") == [ranks[b"the"]]
