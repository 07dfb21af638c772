"""Bits per byte: total nats / (ln 2 x UTF-8 bytes), every token scored once, per file and pooled."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from eval_helpers import sentence, tiny_model, tiny_tokenizer

from transformer_toolkit import ByteLevelTokenizer, Transformer, TransformerConfig
from transformer_toolkit.data import save_binary
from transformer_toolkit.evaluation import bits_per_byte, score_text


def _nats_by_hand(model, ids, prefix):
    """Negative log-likelihood of ``ids`` after ``prefix``, in windows of max_seq, no overlap."""
    stream, total, L = [prefix] + ids, 0.0, model.cfg.max_seq
    for a in range(0, len(ids), L):
        x = torch.tensor([stream[a:a + L + 1]])
        with torch.no_grad():
            logp = torch.log_softmax(model(x[:, :-1])[0][0].float(), -1)
        total -= logp.gather(-1, x[0, 1:, None]).sum().item()
    return total


def test_bits_per_byte_is_nats_over_ln2_bytes():
    tok, model = tiny_tokenizer(), tiny_model(max_seq=32)
    text = sentence(random.Random(0), 60) + " café ü"  # multi-byte characters count as their bytes
    ids = tok.encode(text)
    assert len(ids) > 2 * 32  # several windows
    f = score_text(model, tok, text)
    # windows of exactly max_seq predictions: the by-hand split matches the rolling one except for the
    # last window's context, which the rolling one fills up; so compare the first full windows exactly
    assert f["tokens"] == len(ids) and f["bytes"] == len(text.encode("utf-8"))
    assert f["bits_per_byte"] == pytest.approx(f["nats"] / (math.log(2) * f["bytes"]))
    assert f["perplexity"] == pytest.approx(math.exp(f["nats"] / len(ids)))
    head = ids[:64]
    assert score_text(model, tok, tok.decode(head))["nats"] == pytest.approx(_nats_by_hand(model, head, tok.bos_id),
                                                                            rel=1e-5)


def test_files_domains_token_files_and_pooling(tmp_path):
    tok, model = tiny_tokenizer(), tiny_model()
    rng = random.Random(1)
    a, b = sentence(rng, 40), sentence(rng, 90)
    (tmp_path / "a.txt").write_text(a)
    (tmp_path / "b.txt").write_text(b)
    # the same text as a token file with BOS/EOS around it (as ttk prepare writes): the specials
    # count no bytes and their predictions count no nats
    save_binary([tok.bos_id] + tok.encode(b) + [tok.eos_id], tmp_path / "b.bin")
    out = bits_per_byte(model, tok, texts={"inline": a}, files=[tmp_path / "a.txt", tmp_path / "b.txt",
                                                                  tmp_path / "b.bin"])
    assert list(out) == ["inline", "a.txt", "b.txt", "b.bin", "all"]
    assert out["inline"]["nats"] == pytest.approx(out["a.txt"]["nats"])
    assert out["b.bin"]["bytes"] == out["b.txt"]["bytes"] == len(b.encode())
    assert out["b.bin"]["tokens"] == out["b.txt"]["tokens"]
    # the file's BOS is the first token's context, as the prefix token is for the text: within one
    # window the same nats (across windows the trailing EOS moves the last window's context a little)
    short = sentence(rng, 20)
    save_binary([tok.bos_id] + tok.encode(short) + [tok.eos_id], tmp_path / "short.bin")
    assert score_text(model, tok, short)["nats"] == pytest.approx(
        bits_per_byte(model, tok, files=tmp_path / "short.bin")["short.bin"]["nats"], rel=1e-6)
    assert out["b.bin"]["nats"] == pytest.approx(out["b.txt"]["nats"], rel=1e-2)
    pooled = out["all"]
    assert pooled["bytes"] == sum(out[k]["bytes"] for k in ("inline", "a.txt", "b.txt", "b.bin"))
    assert pooled["bits_per_byte"] == pytest.approx(pooled["nats"] / (math.log(2) * pooled["bytes"]))
    capped = bits_per_byte(model, tok, files=tmp_path / "b.txt", max_tokens=10)["b.txt"]
    assert capped["tokens"] == 10 and capped["bytes"] == len(tok.decode(tok.encode(b)[:10]).encode())


def test_models_with_different_tokenizers_compare_by_bytes():
    """A byte-level model and a BPE model score the same text; bytes agree, tokens do not."""
    text = sentence(random.Random(2), 30)
    bpe = score_text(tiny_model(), tiny_tokenizer(), text)
    byte_tok = ByteLevelTokenizer()
    byte_model = Transformer(TransformerConfig(vocab_size=256, dim=32, n_layers=1, n_heads=4, max_seq=64)).eval()
    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):
        score_text(byte_model, byte_tok, text)  # nothing to predict the first byte after
    byte_tok.bos_id = 0  # any id works as the prefix
    byte = score_text(byte_model, byte_tok, text)
    assert byte["bytes"] == bpe["bytes"] == len(text.encode()) and byte["tokens"] > bpe["tokens"]
    # an untrained model is near uniform: bits per byte ~ log2(vocab) x tokens per byte
    assert byte["bits_per_byte"] == pytest.approx(8.0, rel=0.05)


def test_bad_files_are_named(tmp_path):
    tok, model = tiny_tokenizer(), tiny_model()
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        bits_per_byte(model, tok, files=[tmp_path / "nope.txt"])
    np.save(tmp_path / "big.npy", np.array([1, 2, 5000], dtype=np.int64))
    with pytest.raises(ValueError, match="outside this tokenizer's vocabulary"):
        bits_per_byte(model, tok, files=tmp_path / "big.npy")
    with pytest.raises(ValueError, match="give texts="):
        bits_per_byte(model, tok)
