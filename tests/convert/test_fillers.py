"""Exports through a class that has parameters our config lacks: the fillers are exact (zero
biases, zero or sinusoidal positions, a zero shared expert), transformers and llama.cpp compute our
logits with them (test_hf_folder.py and test_gguf.py run every family), and loading drops a filler
only when it holds exactly its fill value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors.torch")

from hf_convert_helpers import SEQ, VOCAB, tiny_model, tokens  # noqa: E402

from transformer_toolkit.convert import load_pretrained, save_pretrained  # noqa: E402
from transformer_toolkit.model.position import SinusoidalPE  # noqa: E402

TOL = 1e-4
GPT2 = dict(norm="layernorm", ffn="ffn", eps=1e-5)


def _weights(folder) -> dict[str, torch.Tensor]:
    return safetensors.load_file(folder / "model.safetensors")


def _hf_logits(folder, x):
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(x).logits


@pytest.mark.parametrize("pos", ["none", "sinusoidal"])
def test_gpt2_fillers_hold_exactly_their_fill_values(pos, tmp_path):
    model = tiny_model(dict(GPT2, pos_enc=pos, qkv_bias=True))
    save_pretrained(model, tmp_path)
    w = _weights(tmp_path)
    D = model.cfg.dim
    for i in range(model.cfg.n_layers):
        for name in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            assert not w[f"transformer.h.{i}.{name}.bias"].any()
        qkv = torch.cat([model.state_dict()[f"blocks.{i}.attn.{p}_proj.bias"] for p in "qkv"])
        assert torch.equal(w[f"transformer.h.{i}.attn.c_attn.bias"], qkv) and qkv.any()
    want = torch.zeros(SEQ, D) if pos == "none" else SinusoidalPE(D, SEQ, rms=model.cfg.init_std).pe
    assert torch.equal(w["transformer.wpe.weight"], want)


def test_a_filler_that_is_not_exactly_zero_loads_as_a_parameter(tmp_path):
    """A bias-free export, then one bias nudged by 1e-6: it is a real bias now, and loading keeps
    every bias (bias=True) rather than drop one that matters."""
    model = tiny_model(dict(GPT2, pos_enc="none"))
    save_pretrained(model, tmp_path)
    w = _weights(tmp_path)
    w["transformer.h.1.mlp.c_fc.bias"][3] = 1e-6
    w["transformer.wpe.weight"][5, 0] = 1e-3
    safetensors.save_file(w, tmp_path / "model.safetensors", metadata={"format": "pt"})
    back = load_pretrained(tmp_path)
    assert back.cfg.bias and back.cfg.pos_enc == "learned"
    assert back.state_dict()["blocks.1.ffn.up_proj.bias"][3] == 1e-6
    x = tokens()
    with torch.no_grad():
        assert (back(x)[0] - _hf_logits(tmp_path, x)).abs().max() <= TOL


def test_a_freshly_initialised_transformers_gpt2_loads_without_biases(tmp_path):
    """transformers starts GPT-2 biases at zero: such a model computes exactly a bias-free one."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=SEQ,
                                  activation_function="relu", tie_word_embeddings=False)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    model = load_pretrained(tmp_path)
    assert (model.cfg.bias, model.cfg.qkv_bias, model.cfg.ffn, model.cfg.tie_weights) == (False, False, "relu_ffn",
                                                                                          False)
    assert not any(k.endswith("proj.bias") for k in model.state_dict())
    x = tokens()
    with torch.no_grad():
        assert (model(x)[0] - _hf_logits(tmp_path, x)).abs().max() <= TOL


def test_deepseek_fillers_are_zero_and_a_non_zero_one_is_refused(tmp_path):
    model = tiny_model(dict(attn="mla", latent_dim=16, q_latent_dim=12, ffn="moe_shared", n_experts=3,
                            moe_n_shared=0, top_k=2, moe_norm_topk=False, moe_hidden_dim=8, bias=True))
    save_pretrained(model, tmp_path)
    w = _weights(tmp_path)
    fillers = [k for k in w if "shared_experts" in k or k.endswith(("q_a_proj.bias", "kv_a_proj_with_mqa.bias"))]
    assert len(fillers) == model.cfg.n_layers * 5 and not any(w[k].any() for k in fillers)
    assert all(w[f"model.layers.{i}.self_attn.o_proj.bias"].any() for i in range(model.cfg.n_layers))
    w["model.layers.0.self_attn.kv_a_proj_with_mqa.bias"][0] = 0.5
    safetensors.save_file(w, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.kv_a_proj_with_mqa\.bias is not zero"):
        load_pretrained(tmp_path)


def test_gpt2_gguf_holds_llama_cpp_names_and_fillers(tmp_path):
    gguf = pytest.importorskip("gguf")
    model = tiny_model(dict(GPT2, pos_enc="learned", tie_weights=False))
    path = model.save_gguf(tmp_path / "m.gguf", dtype="f32")
    r = gguf.GGUFReader(str(path))
    assert r.fields["general.architecture"].contents() == "gpt2"
    assert r.fields["gpt2.attention.layer_norm_epsilon"].contents() == pytest.approx(1e-5)
    names = {t.name: t for t in r.tensors}
    L = model.cfg.n_layers
    layer = {f"blk.{i}.{m}.{s}" for i in range(L) for s in ("weight", "bias")
             for m in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")}
    assert set(names) == layer | {"token_embd.weight", "position_embd.weight", "output_norm.weight",
                                  "output_norm.bias", "output.weight"}
    assert not np.asarray(names["blk.0.attn_qkv.bias"].data).any()  # bias=False: zero fillers
    qkv = np.asarray(names["blk.0.attn_qkv.weight"].data)  # rows first: (3 * dim, dim)
    sd = model.state_dict()
    assert np.array_equal(qkv, torch.cat([sd[f"blocks.0.attn.{p}_proj.weight"] for p in "qkv"]).numpy())
