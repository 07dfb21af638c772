"""A small trained BPE tokenizer shared by the tokenizer tests (trains in well under a second)."""

from __future__ import annotations

import pytest
from tok_helpers import corpus

from transformer_toolkit.tokenizer import RustBPETokenizer


@pytest.fixture(scope="session")
def bpe() -> RustBPETokenizer:
    return RustBPETokenizer().train(corpus(), vocab_size=350)
