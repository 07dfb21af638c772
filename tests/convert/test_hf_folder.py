"""Hugging Face folder export/import: logits match transformers' own models exactly (fp32)."""

from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from hf_convert_helpers import FAMILIES, SEQ, VOCAB, tiny_model, tokens  # noqa: E402

from transformer_toolkit import load_tokenizer  # noqa: E402
from transformer_toolkit.convert import load_pretrained, save_pretrained  # noqa: E402
from transformer_toolkit.model.config import TransformerConfig  # noqa: E402
from transformer_toolkit.model.transformer import Transformer  # noqa: E402
from transformer_toolkit.tokenizer.templates import ChatTemplate  # noqa: E402

TOL = 1e-4


def _hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_export_matches_transformers_and_round_trips(name, tmp_path):
    overrides, arch = FAMILIES[name]
    model = tiny_model(overrides)
    save_pretrained(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == [arch]
    assert cfg["tie_word_embeddings"] == model.cfg.tie_weights
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert ("lm_head.weight" in f.keys()) == (not model.cfg.tie_weights)

    hf = _hf_model(tmp_path)
    assert type(hf).__name__ == arch
    x = tokens()
    with torch.no_grad():
        ours = model(x)[0]
        theirs = hf(x).logits
        back = load_pretrained(tmp_path)(x)[0]
    assert (ours - theirs).abs().max().item() <= TOL
    assert torch.equal(ours, back)
    assert load_pretrained(tmp_path).cfg == model.cfg


SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=96, max_position_embeddings=SEQ)
DEEPSEEK = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                max_position_embeddings=SEQ, kv_lora_rank=16, qk_nope_head_dim=16, v_head_dim=16, qk_rope_head_dim=8)
HF_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**SMALL, rope_theta=5e5, tie_word_embeddings=True),
    "smollm_llama_mha": lambda: transformers.LlamaConfig(**{**SMALL, "num_key_value_heads": 4}, head_dim=32,
                                                          tie_word_embeddings=True),
    "mistral": lambda: transformers.MistralConfig(**SMALL, sliding_window=None),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL, tie_word_embeddings=False),
    "mixtral": lambda: transformers.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2,
                                                  sliding_window=None),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=SEQ,
                                            bos_token_id=0, eos_token_id=0),
    "gpt2_exact_gelu": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                                       n_positions=SEQ, activation_function="gelu"),
    "gpt2_untied_relu": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                                        n_positions=SEQ, activation_function="relu",
                                                        tie_word_embeddings=False),
    "llama_gelu_mlp": lambda: transformers.LlamaConfig(**SMALL, hidden_act="gelu"),
    "deepseek_v2_dense": lambda: transformers.DeepseekV2Config(**DEEPSEEK, first_k_dense_replace=2, q_lora_rank=None),
    "deepseek_v2_moe": lambda: transformers.DeepseekV2Config(**DEEPSEEK, first_k_dense_replace=0, q_lora_rank=12,
                                                             n_routed_experts=4, n_shared_experts=2,
                                                             num_experts_per_tok=2, moe_intermediate_size=24),
    "deepseek_v2_moe_no_shared": lambda: transformers.DeepseekV2Config(**DEEPSEEK, first_k_dense_replace=0,
                                                                       q_lora_rank=None, n_routed_experts=4,
                                                                       n_shared_experts=0, num_experts_per_tok=2,
                                                                       moe_intermediate_size=24),
}


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_import_transformers_model(name, tmp_path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[name]()).float().eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path)
    model = load_pretrained(tmp_path)
    x = tokens(seed=2)
    with torch.no_grad():
        diff = (model(x)[0] - hf(x).logits).abs().max().item()
    assert diff <= TOL


@pytest.mark.parametrize("change, field", [
    (dict(first_k_dense_replace=1), "first_k_dense_replace=1"),
    (dict(routed_scaling_factor=16.0), "routed_scaling_factor=16.0"),
    (dict(topk_method="group_limited_greedy", n_group=2, topk_group=1), "topk_method='group_limited_greedy'"),
    (dict(rms_norm_eps=1e-5), "rms_norm_eps=1e-05"),
    (dict(v_head_dim=8), "v_head_dim=8"),
])
def test_deepseek_configs_we_cannot_represent_are_refused(change, field, tmp_path):
    cfg = transformers.DeepseekV2Config(**{**DEEPSEEK, "first_k_dense_replace": 0, "n_routed_experts": 4,
                                           "n_shared_experts": 1, "num_experts_per_tok": 2,
                                           "moe_intermediate_size": 24, **change})
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=field.replace("(", "\\(")):
        load_pretrained(tmp_path)


def test_sharded_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS["llama"]()).float().eval()
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    x = tokens()
    with torch.no_grad():
        assert (load_pretrained(tmp_path)(x)[0] - hf(x).logits).abs().max().item() <= TOL


@pytest.mark.parametrize("overrides, fields", [
    (dict(pos_enc="alibi"), ["pos_enc='alibi'"]),
    (dict(pos_enc="sinusoidal"), ["GPT2LMHeadModel", "norm='rmsnorm'", "ffn='swiglu'"]),
    (dict(pos_enc="none", ffn="relu_ffn"), ["pos_enc='none'", "ffn='relu_ffn'"]),
    (dict(ffn="moe_ec", n_experts=4), ["ffn='moe_ec'"]),
    (dict(ffn="moe", n_experts=4, bias=True), ["bias/qkv_bias=True"]),
    (dict(norm="layernorm", pos_enc="learned", ffn="swiglu", bias=True), ["ffn='swiglu'"]),
    (dict(norm="layernorm", pos_enc="learned", ffn="ffn", bias=True, attn="gqa", n_kv_heads=1), ["attn='gqa'"]),
    (dict(ffn="relu_ffn"), ["ffn='relu_ffn'"]),
    (dict(attn="mla", ffn="relu_ffn"), ["DeepseekV2ForCausalLM", "ffn='relu_ffn'"]),
    (dict(norm="layernorm"), ["pos_enc='rope'", "ffn='swiglu'"]),
    (dict(ffn="moe", n_experts=4, moe_norm_topk=False), ["moe_norm_topk=False"]),
    (dict(ffn="moe_shared", n_experts=4, moe_n_shared=1), ["ffn='moe_shared'"]),
    (dict(attn="mla", eps=1e-5), ["DeepseekV2ForCausalLM", "eps=1e-05"]),
    (dict(attn="mla", ffn="moe_shared", n_experts=4, moe_n_shared=1), ["moe_norm_topk=True"]),
    (dict(attn="mla", ffn="moe", n_experts=4, bias=True), ["ffn='moe'"]),
    (dict(attn="mla", pos_enc="alibi"), ["pos_enc='alibi'"]),
    (dict(norm="layernorm", pos_enc="learned", ffn="geglu", attn="mqa"), ["ffn='geglu'", "attn='mqa'"]),
])
def test_unsupported_config_raises_with_field_names(overrides, fields, tmp_path):
    model = Transformer(TransformerConfig(vocab_size=VOCAB, dim=32, n_layers=1, n_heads=2, max_seq=16,
                                          **overrides))
    with pytest.raises(ValueError) as e:
        save_pretrained(model, tmp_path / "out")
    for f in fields:
        assert f in str(e.value)
    assert not (tmp_path / "out").exists()


def test_tokenizer_and_chat_template_export(tmp_path):
    from transformer_toolkit.tokenizer.bpe import RustBPETokenizer

    corpus = ["hello world, the quick brown fox jumps over the lazy dog. " * 20, "Über naïve café 123 tabs\t"] * 5
    tok = RustBPETokenizer().train(corpus, vocab_size=300)
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq=32))
    save_pretrained(model, tmp_path, tokenizer=tok, template="chatml")

    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = ["hello world", "<|im_start|>user\nhi<|im_end|>\n", "[BOS]café Über 123 fox[EOS]",
             "  spaces  \n\n tabs\t", "naïve<|im_end|>"]
    for text in texts:
        assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text), text

    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "fox?"}]
    rendered = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == ChatTemplate("chatml").format_messages(msgs, add_generation_prompt=True)[0]

    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.eos_id, tok.token_to_id("<|im_end|>")]
    assert gen["bos_token_id"] == tok.bos_id and gen["pad_token_id"] == tok.pad_id
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["eos_token_id"] == tok.eos_id and cfg["bos_token_id"] == tok.bos_id
    assert os.path.isfile(tmp_path / "tokenizer.json")

    loaded = load_tokenizer(tmp_path)
    assert type(loaded).__name__ == "RustBPETokenizer"
    assert loaded.encode(texts[1]) == tok.encode(texts[1])

    hf = _hf_model(tmp_path)  # the folder with a tokenizer still loads as a model
    x = torch.tensor([tok.encode("hello world")])
    with torch.no_grad():
        assert (model(x)[0] - hf(x).logits).abs().max().item() <= TOL


def test_hf_tokenizer_re_export(tmp_path):
    """An HFTokenizer (any transformers tokenizer folder) exports too, with the template."""
    from transformer_toolkit.tokenizer.bpe import RustBPETokenizer
    from transformer_toolkit.tokenizer.hf import HFTokenizer

    tok = RustBPETokenizer().train(["hello world fox " * 30] * 3, vocab_size=300)
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq=32))
    save_pretrained(model, tmp_path / "a", tokenizer=tok)
    save_pretrained(model, tmp_path / "b", tokenizer=HFTokenizer(tmp_path / "a"), template=ChatTemplate("chatml"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "b")
    text = "hello <|im_start|>fox<|im_end|>"
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        ChatTemplate("chatml").format_messages([{"role": "user", "content": "hi"}])[0]


def _rust_tok():
    from transformer_toolkit.tokenizer.bpe import RustBPETokenizer

    return RustBPETokenizer().train(["hello world fox " * 30, "café <tab>\t"] * 3, vocab_size=300)


@pytest.mark.parametrize("preset", ["chatml", "llama3", "gemma", "alpaca", "raw"])
def test_every_preset_renders_the_same_in_transformers(preset, tmp_path):
    tok = _rust_tok()
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq=32))
    model.save_pretrained(tmp_path, tokenizer=tok, template=preset)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "fox?"}]
    for gen in (True, False):
        want = ChatTemplate(preset).format_messages(msgs, add_generation_prompt=gen)[0]
        assert hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == want
        assert hf_tok.encode(want, add_special_tokens=False) == tok.encode(want)
    stops = json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"]
    closer = ChatTemplate(preset).stop_strings()
    expected = [tok.eos_id] + ([tok.token_to_id(closer[0])] if closer and tok.token_to_id(closer[0]) else [])
    assert (stops if isinstance(stops, list) else [stops]) == expected


def test_failed_export_writes_nothing_and_rewrites_replace_stale_files(tmp_path):
    from transformer_toolkit.tokenizer.byte_level import ByteLevelTokenizer

    tok = _rust_tok()
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq=32))
    with pytest.raises(ValueError, match="cannot be saved as a transformers tokenizer"):
        model.save_pretrained(tmp_path / "out", tokenizer=ByteLevelTokenizer())  # fails after the weights
    assert list(tmp_path.iterdir()) == []  # no folder, no temp folder

    out = tmp_path / "out"
    model.save_pretrained(out, tokenizer=tok, template="chatml")
    umask = os.umask(0)
    os.umask(umask)
    assert {(p.stat().st_mode & 0o777) for p in out.iterdir()} == {0o666 & ~umask}  # not private temp-file modes
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    (out / "notes.txt").write_text("mine")
    model.save_pretrained(out)  # the same folder, now without tokenizer
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                     "notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    small = Transformer(TransformerConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, max_seq=32))
    with pytest.raises(ValueError, match="vocab_size is 100"):
        small.save_pretrained(tmp_path / "small", tokenizer=tok)


def test_checkpoint_weights_the_config_does_not_describe_are_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS["llama"]()).float()
    hf.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    for extra, match in (("model.layers.0.self_attn.o_proj.bias", "not in the llama config: blocks.0.attn.o_proj"),
                         ("model.layers.0.self_attn.q_norm.weight", "not used by the llama mapping")):
        save_file({**sd, extra: torch.ones(64)}, tmp_path / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ValueError, match=match):
            load_pretrained(tmp_path)
    del sd["model.norm.weight"]
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="no tensor 'model.norm.weight'"):
        load_pretrained(tmp_path)


def test_sliding_window_is_refused_unless_max_seq_stays_inside_it(tmp_path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(transformers.MistralConfig(**SMALL, sliding_window=16)).float()
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="sliding_window=16 < max_seq=64"):
        Transformer.from_pretrained(tmp_path)
    model = Transformer.from_pretrained(tmp_path, max_seq=16)
    x = tokens(length=16)
    with torch.no_grad():
        assert model.cfg.max_seq == 16 and (model(x)[0] - hf.eval()(x).logits).abs().max().item() <= TOL


def test_gpt2_positions_crop_to_a_shorter_max_seq(tmp_path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS["gpt2"]()).float().eval()
    hf.save_pretrained(tmp_path)
    model = Transformer.from_pretrained(tmp_path, max_seq=24)
    assert model.pos.weight.shape[0] == 24
    with torch.no_grad():
        assert (model(tokens())[0] - hf(tokens()).logits).abs().max().item() <= TOL
    with pytest.raises(ValueError, match="longer than the checkpoint"):
        Transformer.from_pretrained(tmp_path, max_seq=SEQ * 2)


def test_load_tokenizer_follows_the_folder_config(tmp_path):
    tok = _rust_tok()
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq=32))
    model.save_pretrained(tmp_path, tokenizer=tok, template="gemma")
    ours = load_tokenizer(tmp_path)
    assert type(ours).__name__ == "RustBPETokenizer" and ours.chat_template == ChatTemplate("gemma").to_jinja()

    cfg_path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["eos_token"] = "<end_of_turn>"  # a folder whose EOS is not our [EOS]: its own settings must win
    cfg_path.write_text(json.dumps(cfg))
    hf = load_tokenizer(tmp_path)
    assert type(hf).__name__ == "HFTokenizer"
    assert hf.eos_id == tok.token_to_id("<end_of_turn>") and hf.bos_id == tok.bos_id and hf.pad_id == tok.pad_id
    assert hf.chat_template == ChatTemplate("gemma").to_jinja()
    assert hf.encode("hello <start_of_turn>fox") == tok.encode("hello <start_of_turn>fox")


def test_gguf_paths_dispatch_to_the_gguf_module(tmp_path, monkeypatch):
    import sys
    import types

    import transformer_toolkit.convert as convert_pkg

    calls = []
    fake = types.ModuleType("transformer_toolkit.convert.gguf")
    fake.load_gguf = lambda path, dtype=None, **kw: calls.append(("load", path, dtype, kw)) or "model"
    fake.gguf_tokenizer = lambda path: calls.append(("tok", path)) or "tok"
    fake.save_gguf = lambda model, path, **kw: calls.append(("save", path, kw)) or path
    monkeypatch.setitem(sys.modules, "transformer_toolkit.convert.gguf", fake)
    monkeypatch.setattr(convert_pkg, "gguf", fake, raising=False)
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert Transformer.from_pretrained(f, max_seq=8) == "model"
    assert load_tokenizer(f) == "tok"
    model = Transformer(TransformerConfig(vocab_size=VOCAB, dim=32, n_layers=1, n_heads=2, max_seq=16))
    model.save_gguf(tmp_path / "out.gguf", dtype="q8_0")
    assert calls == [("load", str(f), None, {"max_seq": 8}), ("tok", str(f)),
                     ("save", tmp_path / "out.gguf", {"tokenizer": None, "template": None, "dtype": "q8_0"})]
    with pytest.raises(FileNotFoundError, match="pull_from_hub"):
        Transformer.from_pretrained(tmp_path / "missing")
