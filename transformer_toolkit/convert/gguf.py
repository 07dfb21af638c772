"""GGUF files for llama.cpp: export (``save_gguf``) and import (``load_gguf``, ``gguf_tokenizer``,
``gguf_chat_template``), through the ``gguf`` package.

Covered: the dense Llama family (rmsnorm, rope, swiglu; mha/gqa/mqa) as llama.cpp's ``llama``
architecture (``bias=True`` too: llama.cpp reads optional biases), Qwen2-style q/k/v biases as
``qwen2``, and GPT-2-style models (layernorm, learned, sinusoidal or no positions, tanh-GELU MLP,
mha, with or without biases) as ``gpt2`` (gguf_gpt2.py). Tensor names, the RoPE row permutation
and quantisation are in gguf_tensors.py; the tokenizer metadata in gguf_vocab.py.

>>> model.save_gguf("model.gguf", tokenizer=tok, template="chatml", dtype="q8_0")  # doctest: +SKIP
>>> model = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")                           # doctest: +SKIP
>>> tok = gguf_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")                         # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from ..atomic import temp_path_for
from ..model.config import TransformerConfig
from ..model.loading import check_context, check_layers, empty_transformer, expected_shapes
from ..model.transformer import Transformer
from ..optional import require
from ..tokenizer.hf import HFTokenizer
from . import gguf_gpt2
from .gguf_reader import GGUFFile
from .gguf_tensors import FILE_TYPES, WRITABLE, check_types, decode, encode, from_gguf_layout, gguf_name, to_gguf_layout
from .gguf_vocab import build_tokenizer, read_vocab, vocab_metadata, write_vocab
from .hf_io import as_template, check_vocab

ARCHES = ("llama", "qwen2", "gpt2")
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def _gguf():
    return require("gguf", "GGUF support", "gguf")


# export ----------------------------------------------------------------------------------------
def gguf_arch(cfg: TransformerConfig) -> str:
    """The llama.cpp architecture that computes exactly what ``cfg`` computes, or ValueError
    naming every field that blocks the export (as llama and as gpt2)."""
    want = {"norm": "rmsnorm", "pos_enc": "rope", "ffn": "swiglu"}
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items() if getattr(cfg, k) != v]
    if cfg.attn == "mla":
        bad.append("attn='mla' (needs mha, gqa, mqa or flash)")
    if not bad:
        return "qwen2" if cfg.qkv_bias and not cfg.bias else "llama"
    gpt2 = gguf_gpt2.blockers(cfg)
    if not gpt2:
        return "gpt2"
    raise ValueError(f"no GGUF (llama.cpp) counterpart for this config: as llama {'; '.join(bad)}; as gpt2 "
                     f"{'; '.join(gpt2)}. GGUF export covers Llama-style models (rmsnorm, rope, swiglu, mha/gqa/mqa; "
                     "optional bias or qkv_bias) and GPT-2-style ones (layernorm, learned/sinusoidal/no positions, "
                     "tanh-GELU ffn, mha); use save_pretrained for the others")


def _template_text(tokenizer, template) -> str | None:
    if template is not None:
        return template.to_jinja()
    jinja = getattr(tokenizer, "chat_template", None)
    return jinja if isinstance(jinja, str) else None


def _eot_id(tokenizer, template) -> int | None:
    """The id of the template's assistant closer when it is one token (``<|im_end|>``)."""
    if tokenizer is None or template is None or not template.stop_strings():
        return None
    ids = tokenizer.encode(template.stop_strings()[0])
    return ids[0] if len(ids) == 1 else None


def _write_hparams(w, cfg: TransformerConfig) -> None:
    w.add_context_length(cfg.max_seq)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)  # our RoPE rotates the whole head
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.eps)
    w.add_vocab_size(cfg.vocab_size)


def save_gguf(model: Transformer, path: str | os.PathLike, tokenizer=None, template=None, dtype: str = "f16") -> str:
    """Write ``model`` as a GGUF file llama.cpp runs: hyper-parameters, weights (2-D weights in
    ``dtype`` "f32", "f16" or "q8_0"; norms and biases f32), and with ``tokenizer`` its vocabulary,
    merges and special ids; ``template`` (a preset name or ChatTemplate) becomes the Jinja chat
    template. Tied embeddings are stored once (no ``output.weight``).

    Everything is checked before the file is opened (an unsupported config raises ValueError
    naming its fields), and the file appears with one rename. Returns the path."""
    if dtype not in WRITABLE:
        raise ValueError(f"dtype={dtype!r} is not a GGUF export type; choose one of {', '.join(WRITABLE)}")
    cfg = model.cfg
    arch = gguf_arch(cfg)
    check_vocab(model, tokenizer)
    template = as_template(template)
    vocab = vocab_metadata(tokenizer, cfg.vocab_size) if tokenizer is not None else None
    with gguf_writer(path, arch) as w:
        w.add_name("transformer-toolkit model")
        w.add_file_type(FILE_TYPES[dtype])
        if dtype == "q8_0":
            w.add_quantization_version(_gguf().GGML_QUANT_VERSION)
        (gguf_gpt2.write_hparams if arch == "gpt2" else _write_hparams)(w, cfg)
        if vocab is not None:
            write_vocab(w, vocab, _eot_id(tokenizer, template))
        jinja = _template_text(tokenizer, template)
        if jinja:
            w.add_chat_template(jinja)
        _add_tensors(w, model, arch, dtype)
    return os.fspath(path)


@contextmanager
def gguf_writer(path: str | os.PathLike, arch: str) -> Iterator:
    """A ``gguf.GGUFWriter`` for ``arch`` to fill in the block; when the block ends without error
    the file is written to a temporary name next to ``path`` and renamed to it, so ``path``
    appears complete or not at all (an error leaves nothing behind)."""
    gguf = _gguf()
    path = os.fspath(path)
    tmp = temp_path_for(path)  # the writer creates it with a normal file's mode
    try:
        w = gguf.GGUFWriter(tmp, arch)
        try:
            yield w
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _add_tensors(w, model: Transformer, arch: str, dtype: str) -> None:
    cfg = model.cfg
    if arch == "gpt2":
        for name, t in gguf_gpt2.tensors(model.state_dict(), cfg).items():
            array, raw = encode(t, dtype)
            w.add_tensor(name, array, raw_dtype=raw)
        return
    for key, t in model.state_dict().items():
        if key == "head.weight" and cfg.tie_weights:
            continue
        if arch == "llama":
            t = to_gguf_layout(key, t, cfg.n_heads, cfg.n_kv_heads)
        array, raw = encode(t, dtype)
        w.add_tensor(gguf_name(key), array, raw_dtype=raw)


# import ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _reader_at(path: str, mtime_ns: int, size: int):
    _gguf()  # the quantisation tables come from the gguf package
    return GGUFFile(path)


def _reader(path: str | os.PathLike):
    """A ``GGUFFile`` (memory-mapped; see gguf_reader.py), shared by the model, tokenizer and
    template readers of one file. Keyed on the file's mtime and size, so a rewritten file is
    read again."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no GGUF file at {path}")
    st = os.stat(path)
    return _reader_at(path, st.st_mtime_ns, st.st_size)


def _field(fields: dict, key: str, default=None):
    f = fields.get(key)
    return default if f is None else f.contents()


def _f32(x: float) -> float:
    """A float32 metadata value as the shortest decimal that reads back to it (1e-06, not
    9.99999997e-07), so an exported config loads back equal."""
    return float(str(np.float32(x)))


_REQUIRED = ("embedding_length", "block_count", "feed_forward_length", "attention.head_count", "context_length",
             "attention.layer_norm_rms_epsilon")


def _arch_fields(fields: dict, tensors: dict):
    """``(architecture, a)`` where ``a(key, default)`` reads ``<arch>.<key>``; ValueError for an
    unsupported architecture or missing required metadata."""
    arch = _field(fields, "general.architecture")
    if arch not in ARCHES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: {', '.join(ARCHES)}")
    a = lambda key, default=None: _field(fields, f"{arch}.{key}", default)  # noqa: E731
    missing = [f"{arch}.{k}" for k in (gguf_gpt2.REQUIRED if arch == "gpt2" else _REQUIRED) if a(k) is None]
    if missing or "token_embd.weight" not in tensors:
        raise ValueError(f"incomplete GGUF file: missing {', '.join(missing or ['token_embd.weight'])}")
    return arch, a


def gguf_config(fields: dict, tensors: dict) -> TransformerConfig:
    """The ``TransformerConfig`` of a llama / qwen2 / gpt2 GGUF (``tensors``: name -> reader tensor),
    or ValueError naming what is missing or has no counterpart (MoE, RoPE scaling, partial rotary)."""
    arch, a = _arch_fields(fields, tensors)
    if arch == "gpt2":
        check_types(tensors.values())
        return gguf_gpt2.config(a, tensors, decode, _f32)[0]
    dim, n_heads = a("embedding_length"), a("attention.head_count")
    head_dim = a("attention.key_length") or dim // n_heads
    kv = a("attention.head_count_kv") or n_heads
    bad = []
    if isinstance(kv, list):  # per-layer counts: only a constant one maps
        if len(set(kv)) > 1:
            bad.append(f"{arch}.attention.head_count_kv={kv} (varies by layer)")
        kv = kv[0]
    if (a("expert_count") or 0) > 0:
        bad.append(f"{arch}.expert_count={a('expert_count')} (mixture of experts)")
    if a("rope.scaling.type") not in (None, "none"):
        bad.append(f"{arch}.rope.scaling.type={a('rope.scaling.type')!r}")
    if "rope_freqs.weight" in tensors:
        bad.append("rope_freqs.weight (Llama 3.1 RoPE frequency scaling)")
    if a("rope.dimension_count", head_dim) != head_dim:
        bad.append(f"{arch}.rope.dimension_count={a('rope.dimension_count')} (partial rotary; head size {head_dim})")
    if a("attention.value_length", head_dim) != head_dim:
        bad.append(f"{arch}.attention.value_length={a('attention.value_length')} != key length {head_dim}")
    if bad:
        raise ValueError(f"GGUF model not representable exactly: {'; '.join(bad)}")
    bias = "blk.0.attn_output.bias" in tensors  # llama with every linear biased
    return TransformerConfig(
        vocab_size=a("vocab_size") or int(tensors["token_embd.weight"].shape[1]),  # ggml shape: (dim, vocab)
        dim=dim, n_layers=a("block_count"), n_heads=n_heads, head_dim=head_dim, max_seq=a("context_length"),
        attn="mha" if kv == n_heads else "mqa" if kv == 1 else "gqa", n_kv_heads=kv,
        ffn="swiglu", hidden_dim=a("feed_forward_length"), norm="rmsnorm",
        eps=_f32(a("attention.layer_norm_rms_epsilon")), pos_enc="rope", rope_theta=_f32(a("rope.freq_base", 1e4)),
        tie_weights="output.weight" not in tensors, bias=bias, qkv_bias=not bias and "blk.0.attn_q.bias" in tensors)


def load_gguf(path: str | os.PathLike, dtype: torch.dtype | None = None, **overrides) -> Transformer:
    """A llama / qwen2 / gpt2 GGUF file as our ``Transformer`` in eval mode: weights dequantised to
    float32 (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K), the RoPE permutation undone;
    ``dtype`` casts after. ``overrides`` replace config fields (e.g. ``max_seq=2048``)."""
    reader = _reader(path)
    tensors = {t.name: t for t in reader.tensors}
    if _field(reader.fields, "general.architecture") == "gpt2":
        return _load_gpt2(path, reader.fields, tensors, dtype, overrides)
    try:
        cfg = gguf_config(reader.fields, tensors)
    except (TypeError, ZeroDivisionError, IndexError) as e:  # a value of the wrong type, a zero head count
        raise ValueError(f"{path}: its metadata is damaged ({type(e).__name__}: {e})") from None
    if overrides:
        cfg = TransformerConfig(**{**cfg.to_dict(), **overrides})
    arch = _field(reader.fields, "general.architecture")
    _check_header(cfg, tensors, path, arch)
    expected = expected_shapes(cfg)  # on the meta device: the header is checked before anything is allocated
    wanted = {gguf_name(k): k for k in expected if not (k == "head.weight" and cfg.tie_weights)}
    extra, missing = sorted(set(tensors) - set(wanted)), sorted(set(wanted) - set(tensors))
    if extra or missing:
        raise ValueError(f"{path}: tensors do not match its {arch} metadata (unexpected: "
                         f"{', '.join(extra[:5]) or '-'}; missing: {', '.join(missing[:5]) or '-'})")
    check_types(tensors.values())
    shapes = {name: tuple(int(n) for n in reversed(tensors[name].shape)) for name in wanted}  # rows first
    bad = [f"{name} {shapes[name]} (expected {tuple(expected[key])})"
           for name, key in wanted.items() if shapes[name] != expected[key]]
    if bad:
        raise ValueError(f"{path}: tensor shapes do not match its {arch} metadata: {'; '.join(bad[:3])}")
    # Every weight is decoded straight into its parameter (the state dict's tensors share their
    # storage), one at a time: the float32 model plus one tensor in memory, not the model twice.
    # The names were checked to cover every parameter (a tied head is the embedding itself).
    model = empty_transformer(cfg)
    expected = model.state_dict()
    with torch.no_grad():
        for name, key in wanted.items():
            t = decode(tensors[name])
            expected[key].copy_(from_gguf_layout(key, t, cfg.n_heads, cfg.n_kv_heads) if arch == "llama" else t)
            del t
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def _load_gpt2(path, fields: dict, tensors: dict, dtype, overrides: dict) -> Transformer:
    """``load_gguf`` for llama.cpp's gpt2: names checked against the metadata, types before any
    decoding, then the transformers GPT-2 mapping (fillers dropped); shapes checked by the load."""
    _, a = _arch_fields(fields, tensors)
    layers = _layer_numbers(tensors)
    if a("block_count") != len(layers):  # before listing the names a block count implies
        raise ValueError(f"{path}: its gpt2 metadata gives {a('block_count'):,} blocks but the file holds "
                         f"{len(layers):,}; the file is damaged or incomplete")
    wanted = gguf_gpt2.expected_names(a("block_count"), "output.weight" not in tensors)
    extra, missing = sorted(set(tensors) - wanted), sorted(wanted - set(tensors))
    if extra or missing:
        raise ValueError(f"{path}: tensors do not match its gpt2 metadata (unexpected: {', '.join(extra[:5]) or '-'}; "
                         f"missing: {', '.join(missing[:5]) or '-'})")
    check_types(tensors.values())
    cfg, view = gguf_gpt2.config(a, tensors, decode, _f32)
    if overrides:
        cfg = TransformerConfig(**{**cfg.to_dict(), **overrides})
    check_context(cfg, path, "gpt2 metadata")
    sd = gguf_gpt2.state_dict(view, cfg)
    rows = sd["pos.weight"].shape[0] if "pos.weight" in sd else cfg.max_seq
    if rows < cfg.max_seq:
        raise ValueError(f"max_seq={cfg.max_seq} is longer than the file's {rows} learned positions")
    if rows > cfg.max_seq:
        sd["pos.weight"] = sd["pos.weight"][: cfg.max_seq]  # a shorter max_seq override crops the table
    model = empty_transformer(cfg)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: tensor shapes do not match its gpt2 metadata: {e}") from None
    del sd, view
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def _layer_numbers(tensors: dict) -> set[int]:
    return {int(m.group(1)) for name in tensors if (m := _BLOCK.match(name))}


def _check_header(cfg: TransformerConfig, tensors: dict, path, arch: str) -> None:
    """The context and block count of the metadata, against the tensors the file holds: a
    damaged header (``block_count = 100000``) must not build 100,000 blocks to find out."""
    check_context(cfg, os.fspath(path), f"{arch} metadata")
    check_layers(cfg, _layer_numbers(tensors), os.fspath(path), f"{arch} metadata")


def gguf_chat_template(path: str | os.PathLike) -> str | None:
    """The Jinja chat template stored in a GGUF file (``tokenizer.chat_template``), or None."""
    return _field(_reader(path).fields, "tokenizer.chat_template")


class GGUFTokenizer(HFTokenizer):
    """The tokenizer a GGUF file describes, behind our tokenizer protocol (an ``HFTokenizer``
    over a transformers fast tokenizer built from the metadata; ``chat_template`` is the file's)."""

    @staticmethod
    def _load(name: str, **kwargs):
        fields = _reader(name).fields
        vocab, add_bos = read_vocab(fields)
        return build_tokenizer(vocab, add_bos, _field(fields, "tokenizer.chat_template"))

    def __repr__(self) -> str:
        return f"GGUFTokenizer({self.name_or_path!r}, vocab_size={self.vocab_size})"


def gguf_tokenizer(path: str | os.PathLike) -> GGUFTokenizer:
    """The tokenizer stored in a GGUF file (byte-level BPE, as llama.cpp tokenises it)."""
    return GGUFTokenizer(path)
