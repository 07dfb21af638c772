"""Tiny models, a tiny tokenizer and hand-made quantised GGUF files for the GGUF tests
(imported by name, not via conftest)."""

from __future__ import annotations

import numpy as np
import torch

from transformer_toolkit.model.config import TransformerConfig
from transformer_toolkit.model.transformer import Transformer
from transformer_toolkit.tokenizer.bpe import RustBPETokenizer
from transformer_toolkit.tokenizer.templates import ChatTemplate

# Texts the tokenizer is trained on and tested with: ChatML turns, digits, accents, CJK, runs of
# spaces and newlines (each splits differently under a wrong pre-tokenizer regex).
CORPUS = [ChatTemplate("chatml").format_messages([{"role": "user", "content": f"What is {i} + {i * 7}?"},
                                                  {"role": "assistant", "content": f"It is {i * 8}."}])[0]
          for i in range(40)]
CORPUS += ["The quick brown fox jumps over the lazy dog; café déjà vu, naïve über 日本語.\n\n  indented   code"] * 20
SAMPLES = ["hello world", "What is 12345 + 678?", "café déjà vu 日本語", "  two  spaces\n\nand\ttabs ",
           "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", "don't 'quote' it's"]

# Configs with a llama.cpp counterpart, each exercising a different part of the mapping; the
# GPT-2 ones with fillers (zero biases, zero or sinusoidal positions) where GPT-2 has parameters they lack.
_GPT2 = dict(norm="layernorm", ffn="ffn", eps=1e-5)
VARIANTS = {
    "llama_mha_tied": dict(),
    "llama_gqa_untied": dict(attn="gqa", n_kv_heads=2, tie_weights=False, rope_theta=5e5, eps=1e-5),
    "llama_mqa_bias_head32": dict(attn="mqa", bias=True, head_dim=32),
    "qwen2_gqa": dict(attn="gqa", n_kv_heads=2, qkv_bias=True),
    "gpt2_bias_untied": dict(_GPT2, pos_enc="learned", bias=True, tie_weights=False),
    "gpt2_no_bias": dict(_GPT2, pos_enc="learned"),
    "gpt2_qkv_bias_sinusoidal": dict(_GPT2, pos_enc="sinusoidal", qkv_bias=True),
    "gpt2_no_positions": dict(_GPT2, pos_enc="none"),
}


def tiny_tokenizer() -> RustBPETokenizer:
    return RustBPETokenizer().train(CORPUS, vocab_size=400)


def tiny_model(vocab_size: int, seed: int = 0, dim: int = 64, hidden_dim: int = 96, **overrides) -> Transformer:
    """A random model whose norms and biases are perturbed too, so a dropped or swapped
    scale/bias (or a wrong RoPE permutation) changes the logits."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=vocab_size, dim=dim, n_layers=2, n_heads=4, max_seq=64,
                            hidden_dim=hidden_dim, **overrides)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def token_batch(vocab_size: int, seed: int = 1, batch: int = 2, length: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=g)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Max absolute difference relative to the reference's largest magnitude."""
    return ((ours - ref).abs().max() / ref.abs().max()).item()


# Byte layout of the k-quant blocks (ggml's block_q4_K and block_q6_K): where the float16 super-block
# scales sit in each block; every other byte is a packed quant or sub-scale and may hold anything.
_F16_FIELDS = {"Q4_K": ((0, 1e-4), (2, 1e-4)),  # d, dmin at the start of the 144-byte block
               "Q6_K": ((208, 2e-5),)}  # d at the end of the 210-byte block


def quantized(weight: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, object]:
    """``(raw bytes, GGMLQuantizationType)`` of a 2-D weight in type ``kind``.

    Types ``gguf.quants`` can quantise (Q8_0, Q4_0, Q4_1, BF16) quantise the weight; for Q4_K and
    Q6_K, which it only decodes, random blocks with small scales stand in for the weight, which is
    enough to compare two readers of the same bytes."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quantize

    qtype = GGMLQuantizationType[kind]
    if kind == "F16":
        return weight.astype(np.float16), None
    if kind not in _F16_FIELDS:
        return quantize(weight, qtype), qtype
    block, size = GGML_QUANT_SIZES[qtype]
    rows, cols = weight.shape
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    for offset, scale in _F16_FIELDS[kind]:
        d = (rng.uniform(0.5, 1.5, size=(rows, cols // block)) * scale).astype(np.float16)
        raw[:, :, offset:offset + 2] = d.view(np.uint8).reshape(rows, cols // block, 2)
    return raw.reshape(rows, -1), qtype


def write_quantized_gguf(path, model: Transformer, kind: str, seed: int = 0, edit=None) -> None:
    """A llama GGUF of ``model`` (no tokenizer) whose 2-D weights are stored as ``kind``
    (see ``quantized``); what ``save_gguf`` cannot write, for the importer's tests.
    ``edit(writer)`` may add metadata."""
    from gguf import GGUFWriter

    from transformer_toolkit.convert.gguf import _write_hparams
    from transformer_toolkit.convert.gguf_tensors import gguf_name, to_gguf_layout

    cfg, rng = model.cfg, np.random.default_rng(seed)
    w = GGUFWriter(str(path), "llama")
    _write_hparams(w, cfg)
    if edit is not None:
        edit(w)
    for key, t in model.state_dict().items():
        if key == "head.weight" and cfg.tie_weights:
            continue
        a = to_gguf_layout(key, t, cfg.n_heads, cfg.n_kv_heads).float().numpy()
        array, raw = quantized(a, kind, rng) if a.ndim == 2 else (a, None)
        w.add_tensor(gguf_name(key), array, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
