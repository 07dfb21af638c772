"""LoRA adapters as llama.cpp LoRA GGUF files: llama.cpp (llama-cpp-python) applies our adapter
to our GGUF export and computes our adapted model's logits, q/k rows reordered for its RoPE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

from gguf_helpers import VARIANTS, rel_err, tiny_model, tiny_tokenizer, token_batch  # noqa: E402
from model_helpers import randomize_lora_b  # noqa: E402

from transformer_toolkit.lora import apply_lora  # noqa: E402
from transformer_toolkit.lora.gguf import save_gguf_adapter  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _logits(base, ids, lora=None):
    kw = {"lora_path": str(lora)} if lora else {}
    llm = llama_cpp.Llama(model_path=str(base), verbose=False, logits_all=True, n_ctx=64, **kw)
    try:
        llm.eval(ids.tolist())
        return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
    finally:
        llm.close()


@pytest.mark.parametrize("name,targets", [("llama_gqa_untied", ["all-linear", "head"]),
                                          ("llama_mha_tied", ["q_proj", "k_proj"]),
                                          ("qwen2_gqa", ["attn"])])
def test_llama_cpp_applies_our_adapter_to_our_export(name, targets, tok, tmp_path):
    model = tiny_model(tok.vocab_size, **VARIANTS[name])
    base = model.save_gguf(tmp_path / "base.gguf", tokenizer=tok, dtype="f32")
    apply_lora(model, r=4, alpha=6, targets=targets)
    randomize_lora_b(model, seed=2)
    adapter = save_gguf_adapter(model, tmp_path / "adapter.gguf")
    reader = gguf.GGUFReader(adapter)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(6.0)
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b"} <= names

    ids = token_batch(tok.vocab_size, batch=1)[0]
    with torch.no_grad():
        ours = model(ids[None])[0][0]
    theirs = _logits(base, ids, adapter)
    assert rel_err(theirs, ours) < 1e-3
    assert rel_err(_logits(base, ids), ours) > 1e-2  # the adapter matters: without it llama.cpp is far off


def test_adapters_without_a_llama_cpp_tensor_are_refused(tok, tmp_path):
    model = tiny_model(tok.vocab_size, ffn="moe", n_experts=4, top_k=2)
    apply_lora(model, r=2, targets=["attn"])
    with pytest.raises(ValueError, match="no GGUF"):
        save_gguf_adapter(model, tmp_path / "a.gguf")
    gpt2 = tiny_model(tok.vocab_size, norm="layernorm", pos_enc="learned", ffn="ffn", bias=True)
    apply_lora(gpt2, r=2, targets=["attn"])
    with pytest.raises(ValueError, match="llama and qwen2 layouts, not 'gpt2'"):
        save_gguf_adapter(gpt2, tmp_path / "g.gguf")
    model = tiny_model(tok.vocab_size)
    apply_lora(model, r=2)
    with pytest.raises(ValueError, match="f32 or f16"):
        save_gguf_adapter(model, tmp_path / "b.gguf", dtype="q4_0")
    assert not list(tmp_path.iterdir())
