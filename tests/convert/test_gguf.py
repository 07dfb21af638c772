"""GGUF export and import: exact round trips, the metadata llama.cpp needs, llama.cpp itself
computing our logits and our token ids, and every supported tensor type read like transformers
reads it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from gguf_helpers import (  # noqa: E402
    SAMPLES,
    VARIANTS,
    rel_err,
    tiny_model,
    tiny_tokenizer,
    token_batch,
    write_quantized_gguf,
)

from transformer_toolkit import load_tokenizer  # noqa: E402
from transformer_toolkit.convert.gguf import gguf_chat_template, gguf_tokenizer, load_gguf, save_gguf  # noqa: E402
from transformer_toolkit.model.transformer import Transformer  # noqa: E402
from transformer_toolkit.tokenizer.templates import ChatTemplate  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _reader(path):
    return gguf.GGUFReader(str(path))


def _value(reader, key):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _llama_cpp(path, **kwargs):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=str(path), verbose=False, **kwargs)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_f32_round_trip_is_exact(name, tok, tmp_path):
    model = tiny_model(tok.vocab_size, **VARIANTS[name])
    path = model.save_gguf(tmp_path / "m.gguf", tokenizer=tok, template="chatml", dtype="f32")
    back = Transformer.from_pretrained(path)
    assert back.cfg == model.cfg
    assert not back.training
    x = token_batch(tok.vocab_size)
    with torch.no_grad():
        assert torch.equal(model(x)[0], back(x)[0])
    if model.cfg.tie_weights:
        assert back.head.weight is back.embed.weight


@pytest.mark.parametrize(("dtype", "tol"), [("f16", 1e-3), ("q8_0", 3e-2)])
def test_f16_and_q8_0_round_trips_are_close(dtype, tol, tok, tmp_path):
    model = tiny_model(tok.vocab_size, **VARIANTS["llama_gqa_untied"])
    path = save_gguf(model, tmp_path / f"m-{dtype}.gguf", tokenizer=tok, dtype=dtype)
    x = token_batch(tok.vocab_size)
    with torch.no_grad():
        err = rel_err(load_gguf(path)(x)[0], model(x)[0])
    assert 0 < err < tol  # lossy, but close
    kinds = {t.name: t.tensor_type.name for t in _reader(path).tensors}
    assert kinds["blk.0.attn_q.weight"] == dtype.upper() and kinds["output.weight"] == dtype.upper()
    assert kinds["blk.0.attn_norm.weight"] == "F32"  # norms stay exact, as llama.cpp's converter keeps them
    f32 = save_gguf(model, tmp_path / "m-f32.gguf", tokenizer=tok, dtype="f32")
    assert os.path.getsize(path) < os.path.getsize(f32) * (0.6 if dtype == "f16" else 0.35)


def test_metadata_holds_what_llama_cpp_needs(tok, tmp_path):
    model = tiny_model(tok.vocab_size + 5, **VARIANTS["llama_mqa_bias_head32"])  # 5 embedding rows of padding
    cfg = model.cfg
    path = save_gguf(model, tmp_path / "m.gguf", tokenizer=tok, template=ChatTemplate("chatml"))
    r = _reader(path)
    expected = {"general.architecture": "llama", "llama.context_length": cfg.max_seq,
                "llama.embedding_length": cfg.dim, "llama.block_count": cfg.n_layers,
                "llama.feed_forward_length": cfg.hidden_dim, "llama.attention.head_count": cfg.n_heads,
                "llama.attention.head_count_kv": 1, "llama.attention.key_length": 32,
                "llama.rope.dimension_count": 32, "llama.vocab_size": cfg.vocab_size,
                "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
                "tokenizer.ggml.bos_token_id": tok.bos_id, "tokenizer.ggml.eos_token_id": tok.eos_id,
                "tokenizer.ggml.padding_token_id": tok.pad_id, "tokenizer.ggml.unknown_token_id": 0,
                "tokenizer.ggml.eot_token_id": tok.token_to_id("<|im_end|>"), "tokenizer.ggml.add_bos_token": False,
                "tokenizer.chat_template": ChatTemplate("chatml").to_jinja(), "general.file_type": 1}
    assert {k: _value(r, k) for k in expected} == expected
    assert _value(r, "llama.rope.freq_base") == pytest.approx(cfg.rope_theta)
    assert _value(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.eps)
    tokens, types = _value(r, "tokenizer.ggml.tokens"), _value(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == cfg.vocab_size
    assert tokens[: tok.vocab_size] == [tok.id_to_token(i) for i in range(tok.vocab_size)]
    assert types[:21] == [3] * 21 and set(types[21: tok.vocab_size]) == {1}  # specials are control tokens
    assert tokens[tok.vocab_size:] == [f"[PAD{i}]" for i in range(tok.vocab_size, cfg.vocab_size)]
    assert set(types[tok.vocab_size:]) == {5}  # unused
    merges = _value(r, "tokenizer.ggml.merges")
    assert merges and all(len(m.split(" ")) == 2 for m in merges)
    names = {t.name for t in r.tensors}
    assert "output.weight" not in names  # tied: the embedding is the head
    assert {"blk.1.attn_q.bias", "blk.1.ffn_down.bias", "output_norm.weight"} <= names
    assert gguf_chat_template(path) == ChatTemplate("chatml").to_jinja()


@pytest.mark.parametrize(("overrides", "blocking"), [
    (dict(norm="layernorm", ffn="geglu"), ["norm='layernorm'", "ffn='geglu'"]),
    (dict(attn="mla"), ["attn='mla'"]),
    (dict(pos_enc="alibi"), ["pos_enc='alibi'"]),
    (dict(ffn="moe", n_experts=4, top_k=2), ["ffn='moe'"]),
    (dict(norm="layernorm", pos_enc="learned", ffn="relu_ffn"), ["ffn='relu_ffn' (llama.cpp's gpt2 runs a GELU MLP)"]),
    (dict(norm="layernorm", pos_enc="learned", ffn="ffn", gelu="exact"), ["gelu='exact'"]),
    (dict(norm="layernorm", pos_enc="learned", ffn="ffn", attn="gqa", n_kv_heads=2), ["attn='gqa'"]),
])
def test_unmappable_config_raises_naming_fields_and_writes_nothing(overrides, blocking, tok, tmp_path):
    model = tiny_model(tok.vocab_size, **overrides)
    with pytest.raises(ValueError, match="no GGUF") as err:
        save_gguf(model, tmp_path / "m.gguf", tokenizer=tok)
    assert all(b in str(err.value) for b in blocking)
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tok, tmp_path, monkeypatch):
    from transformer_toolkit.convert import gguf as gguf_mod

    model = tiny_model(tok.vocab_size)
    path = save_gguf(model, tmp_path / "m.gguf", tokenizer=tok, dtype="f32")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    before = open(path, "rb").read()
    real, calls = gguf_mod.encode, []

    def failing_encode(t, dtype):  # the third tensor fails, as a full disk would
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(t, dtype)

    monkeypatch.setattr(gguf_mod, "encode", failing_encode)
    with pytest.raises(OSError, match="disk full"):
        save_gguf(tiny_model(tok.vocab_size, seed=5), path, tokenizer=tok, dtype="f32")
    assert os.listdir(tmp_path) == ["m.gguf"]
    assert open(path, "rb").read() == before


def test_unsupported_tokenizer_and_dtype_raise_before_writing(tok, tmp_path):
    from tokenizers import pre_tokenizers

    from transformer_toolkit.tokenizer.bpe import RustBPETokenizer

    model = tiny_model(tok.vocab_size)
    with pytest.raises(ValueError, match="dtype='q4_k'"):
        save_gguf(model, tmp_path / "m.gguf", tokenizer=tok, dtype="q4_k")
    odd = RustBPETokenizer().load(_saved(tok, tmp_path))
    odd.tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="pre-tokenizer"):
        save_gguf(model, tmp_path / "m.gguf", tokenizer=odd)
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json"]


def _saved(tok, folder) -> str:
    path = str(folder / "tokenizer.json")
    tok.save(path)
    return path


def test_gguf_tokenizer_encodes_like_ours_and_travels(tok, tmp_path):
    path = save_gguf(tiny_model(tok.vocab_size), tmp_path / "m.gguf", tokenizer=tok, template="chatml")
    ours = gguf_tokenizer(path)
    assert load_tokenizer(path).encode(SAMPLES[0]) == tok.encode(SAMPLES[0])
    assert (ours.vocab_size, ours.bos_id, ours.eos_id, ours.pad_id) == (tok.vocab_size, tok.bos_id, tok.eos_id,
                                                                        tok.pad_id)
    assert ours.encode_batch(SAMPLES) == [tok.encode(s) for s in SAMPLES]
    assert all(ours.decode(ours.encode(s)) == s for s in SAMPLES)
    assert ours.chat_template == ChatTemplate("chatml").to_jinja()
    ours.save(tmp_path / "tok")  # a transformers folder, loadable without the GGUF
    assert load_tokenizer(tmp_path / "tok").encode_batch(SAMPLES) == [tok.encode(s) for s in SAMPLES]
    again = save_gguf(load_gguf(path), tmp_path / "again.gguf", tokenizer=ours)  # an imported tokenizer re-exports
    first, second = _reader(path), _reader(again)
    for key in ("tokens", "token_type", "merges", "pre", "bos_token_id", "eos_token_id", "padding_token_id"):
        assert _value(first, f"tokenizer.ggml.{key}") == _value(second, f"tokenizer.ggml.{key}"), key
    assert gguf_chat_template(again) == gguf_chat_template(path)  # the tokenizer's template travels with it


@pytest.mark.parametrize("name", list(VARIANTS))
def test_llama_cpp_runs_our_export_with_our_logits(name, tok, tmp_path):
    model = tiny_model(tok.vocab_size, **VARIANTS[name])
    path = save_gguf(model, tmp_path / "m.gguf", tokenizer=tok, template="chatml", dtype="f32")
    ids = token_batch(tok.vocab_size, batch=1)[0]
    llm = _llama_cpp(path, logits_all=True, vocab_only=False, n_ctx=model.cfg.max_seq)
    try:
        llm.eval(ids.tolist())
        theirs = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
    finally:
        llm.close()
    with torch.no_grad():
        ours = model(ids[None])[0][0]
    assert rel_err(theirs, ours) < 1e-3


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_llama_cpp_tokenizes_like_ours(pre, tok, tmp_path):
    """Each pre-tokenizer we map (our own GPT-2 split, and the SmolLM, Llama 3 and Qwen2 splits of
    imported tokenizers) splits text as llama.cpp's implementation of that name does."""
    if pre != "gpt-2":  # the same vocabulary and merges behind another split
        tok = _with_pre_tokenizer(tok, pre, tmp_path)
    path = save_gguf(tiny_model(tok.vocab_size), tmp_path / "m.gguf", tokenizer=tok)
    assert _value(_reader(path), "tokenizer.ggml.pre") == pre
    ours = gguf_tokenizer(path)
    llm = _llama_cpp(path, vocab_only=True)
    try:
        for text in SAMPLES:
            ids = tok.encode(text)
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids == ours.encode(text), text
            assert llm.detokenize(ids, special=True).decode() == text
    finally:
        llm.close()


def _with_pre_tokenizer(tok, pre, folder):
    import json

    from transformer_toolkit.convert.gguf_vocab import IGNORE_MERGES, PRE_TOKENIZERS
    from transformer_toolkit.tokenizer.bpe import RustBPETokenizer

    d = json.loads(tok.tokenizer.to_str())
    d["model"]["ignore_merges"] = pre in IGNORE_MERGES
    backend = type(tok.tokenizer).from_str(json.dumps(d))
    backend.pre_tokenizer = PRE_TOKENIZERS[pre]()
    path = folder / f"{pre}.json"
    path.write_text(backend.to_str())
    return RustBPETokenizer().load(path)


@pytest.mark.parametrize("kind", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"])
def test_each_tensor_type_loads_like_transformers_reads_it(kind, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny_model(97, dim=256, hidden_dim=256, attn="gqa", n_kv_heads=2, tie_weights=False)  # k-quants: 256 cols
    write_quantized_gguf(tmp_path / "q.gguf", model, kind)
    assert {t.tensor_type.name for t in _reader(tmp_path / "q.gguf").tensors} == {kind, "F32"}
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf", dtype=torch.float32).eval()
    x = token_batch(97)
    with torch.no_grad():
        ours, theirs = load_gguf(tmp_path / "q.gguf")(x)[0], hf(x).logits
    assert rel_err(ours, theirs) < 1e-5


def test_unsupported_tensor_type_and_architecture_raise_naming_them(tmp_path):
    model = tiny_model(97, dim=256, hidden_dim=256)
    write_quantized_gguf(tmp_path / "q5.gguf", model, "Q5_0")
    with pytest.raises(ValueError, match=r"blk\.0\.attn_q\.weight \(Q5_0\)"):
        load_gguf(tmp_path / "q5.gguf")
    w = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
        step()
    with pytest.raises(ValueError, match="'phi2' is not supported"):
        load_gguf(tmp_path / "phi.gguf")
    with pytest.raises(ValueError, match="no tokenizer"):
        gguf_tokenizer(tmp_path / "q5.gguf")


def test_metadata_without_a_counterpart_raises_naming_it(tmp_path):
    def edit(w):
        w.add_expert_count(4)
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)

    write_quantized_gguf(tmp_path / "moe.gguf", tiny_model(97), "F16", edit=edit)
    with pytest.raises(ValueError, match="not representable") as err:
        load_gguf(tmp_path / "moe.gguf")
    assert "llama.expert_count=4" in str(err.value) and "llama.rope.scaling.type='yarn'" in str(err.value)
