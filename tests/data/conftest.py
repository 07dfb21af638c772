"""Shared fixtures of the data tests: tokenizers (byte-level, a trained BPE, a >65k fake) and corpora."""

from __future__ import annotations

import numpy as np
import pytest

from transformer_toolkit.tokenizer import ByteLevelTokenizer, RustBPETokenizer

WORDS = ("the", "king", "queen", "ROMEO:", "héllo", "naïve", "42", "3.14", "it's", "we'll", "—", "!!", "??",
         "日本語", "emoji🙂", "tab\tbed", "x" * 30)
SEPARATORS = (" ", " ", " ", "\n", "\n\n", "  ", "\n \n", " \n", "\t", "\r\n", "\u00a0", "\n\n\n")


def make_text(n_words: int, seed: int = 0) -> str:
    """Deterministic text mixing letters, digits, punctuation, unicode and every kind of whitespace run."""
    rng = np.random.default_rng(seed)
    words = rng.choice(len(WORDS), n_words)
    seps = rng.choice(len(SEPARATORS), n_words)
    return "".join(WORDS[w] + SEPARATORS[s] for w, s in zip(words, seps, strict=True))


class BigVocabTokenizer:
    """A fake tokenizer whose ids pass 65,535, to exercise uint32 storage: byte b -> 70000 + b."""

    vocab_size = 70_256
    bos_id = 70_000 - 2
    eos_id = 70_000 - 1
    pad_id = None

    def encode(self, text: str) -> list[int]:
        return [70_000 + b for b in text.encode("utf-8")]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return bytes(int(i) - 70_000 for i in ids if int(i) >= 70_000).decode("utf-8", errors="replace")


@pytest.fixture(scope="session")
def text_of():
    """``text_of(n_words, seed=0)``: the deterministic mixed test text."""
    return make_text


@pytest.fixture(scope="session")
def byte_tok():
    return ByteLevelTokenizer()


@pytest.fixture(scope="session")
def big_tok():
    return BigVocabTokenizer()


@pytest.fixture(scope="session")
def bpe_tok():
    """The project's RustBPETokenizer, trained on the mixed test text (a fraction of a second)."""
    return RustBPETokenizer().train([make_text(3000, seed=s) for s in range(3)], vocab_size=600)


@pytest.fixture
def tokens_bin(tmp_path, byte_tok):
    """A headed token file of 5,000 byte-level ids and the ids themselves."""
    from transformer_toolkit.dataloader import save_binary

    ids = np.array(byte_tok.encode(make_text(1200)), dtype=np.int64)[:5000]
    path = tmp_path / "data.bin"
    save_binary(ids, path, vocab_size=256)
    return path, ids
