"""A byte-level BPE tokenizer <-> GGUF tokenizer metadata (``tokenizer.ggml.*``).

GGUF carries no ``tokenizer.json``. llama.cpp's "gpt2" tokenizer model is byte-level BPE
described by: the token strings (in the byte-to-unicode alphabet of GPT-2, as tokenizer.json
spells them), a type per token (normal, control = special, user-defined = added, unused =
padding), the merges, the special ids, and a pre-tokenizer *name* (``tokenizer.ggml.pre``)
standing for the regex that splits text into words before merging. Only names whose split we
reproduce exactly with HF ``tokenizers`` are written or read (``PRE_TOKENIZERS``); anything else
raises instead of tokenising differently from llama.cpp.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..optional import require
from .hf_io import special_ids

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # gguf.TokenType values

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(use_regex: bool = True):
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)


def _split_then_bytes(regex: str):
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"), _byte_level(False)])


def _digits_then_bytes():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level()])


# llama.cpp pre-tokenizer name -> the same split as a `tokenizers` pre-tokenizer
PRE_TOKENIZERS = {
    "gpt-2": _byte_level,  # GPT-2's regex: what our RustBPETokenizer uses
    "smollm": _digits_then_bytes,  # SmolLM / StarCoder: every digit alone, then GPT-2's regex
    "starcoder": _digits_then_bytes,
    "llama-bpe": lambda: _split_then_bytes(_LLAMA3_SPLIT),
    "qwen2": lambda: _split_then_bytes(_QWEN2_SPLIT),
}
# llama.cpp takes a word that is itself a token whole, without merging, for these (HF: ignore_merges)
IGNORE_MERGES = {"llama-bpe"}


@dataclass
class Vocab:
    """Everything ``tokenizer.ggml.*`` holds for a byte-level BPE tokenizer."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special: dict[str, int | None]  # bos / eos / pad / unk


def _backend(tokenizer):
    """The HF ``tokenizers.Tokenizer`` behind one of our tokenizers."""
    if hasattr(tokenizer, "to_transformers"):  # RustBPETokenizer
        return tokenizer.tokenizer
    backend = getattr(getattr(tokenizer, "_tok", None), "backend_tokenizer", None)  # HFTokenizer (fast)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} cannot be stored in a GGUF file: llama.cpp needs a byte-level "
                         "BPE vocabulary; use RustBPETokenizer or a fast HFTokenizer")
    return backend


def _pre_json(pre) -> dict:
    """A pre-tokenizer as tokenizer.json spells it, without ``trim_offsets`` (offsets only)."""
    from tokenizers import Tokenizer, models

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre
    return _drop_trim(json.loads(t.to_str())["pre_tokenizer"])


def _drop_trim(d):
    if isinstance(d, dict):
        return {k: _drop_trim(v) for k, v in d.items() if k != "trim_offsets"}
    if isinstance(d, list):
        return [_drop_trim(v) for v in d]
    return d


def pre_name(pre_tokenizer_json: dict | None) -> str:
    """The llama.cpp name of a tokenizer.json ``pre_tokenizer``, or ValueError."""
    want = _drop_trim(pre_tokenizer_json)
    for name, build in PRE_TOKENIZERS.items():
        if _pre_json(build()) == want:
            return name
    raise ValueError(f"the tokenizer's pre-tokenizer {json.dumps(pre_tokenizer_json)[:200]} has no llama.cpp "
                     f"counterpart that splits text the same way (supported: GPT-2 byte-level, SmolLM digits + "
                     f"byte-level, Llama 3 and Qwen2 regex splits); train a RustBPETokenizer for GGUF export")


def vocab_metadata(tokenizer, n_vocab: int) -> Vocab:
    """The GGUF vocabulary of ``tokenizer`` padded to the model's ``n_vocab`` rows (llama.cpp
    requires one token per embedding row; the padding is ``[PAD{id}]``, type unused)."""
    d = json.loads(_backend(tokenizer).to_str())
    model = d["model"]
    if model.get("type") != "BPE" or d.get("normalizer") is not None:
        what = f"model type {model.get('type')!r}" if model.get("type") != "BPE" else "a normalizer"
        raise ValueError(f"the tokenizer has {what}; GGUF export writes byte-level BPE without normalisation only")
    pre = pre_name(d.get("pre_tokenizer"))
    if bool(model.get("ignore_merges")) != (pre in IGNORE_MERGES):
        raise ValueError(f"the tokenizer has ignore_merges={bool(model.get('ignore_merges'))} but llama.cpp "
                         f"{'ignores' if pre in IGNORE_MERGES else 'applies'} merges for whole-vocabulary words with "
                         f"pre-tokenizer {pre!r}, so it would tokenise differently")
    vocab = dict(model["vocab"])
    added = {t["id"]: t for t in d.get("added_tokens", [])}
    vocab.update({t["content"]: i for i, t in added.items()})
    tokens: list[str | None] = [None] * n_vocab
    for text, i in vocab.items():
        tokens[i] = text  # check_vocab already ensured every id < n_vocab
    types = [NORMAL if t is not None else UNUSED for t in tokens]
    for i, t in added.items():
        types[i] = CONTROL if t.get("special") else USER_DEFINED
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = dict(special_ids(tokenizer))
    ours = hasattr(tokenizer, "to_transformers")  # RustBPETokenizer: [UNK] at its fixed id; else transformers'
    special["unk"] = vocab.get("[UNK]") if ours else getattr(tokenizer._tok, "unk_token_id", None)
    return Vocab(tokens, types, merges, pre, special)


def write_vocab(writer, vocab: Vocab, eot_id: int | None = None) -> None:
    """Add ``vocab`` to a ``gguf.GGUFWriter`` (``eot_id``: the token that ends a chat turn)."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "pad": writer.add_pad_token_id,
               "unk": writer.add_unk_token_id}
    for name, i in vocab.special.items():
        if i is not None:
            setters[name](i)
    if eot_id is not None:
        writer.add_eot_token_id(eot_id)
    # Our tokenizers' encode adds no BOS; a template that needs one writes it in its text.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


def read_vocab(fields: dict) -> tuple[Vocab, bool]:
    """``(vocab, add_bos)`` from a GGUFReader's fields, or ValueError naming what is unsupported."""
    model = _value(fields, "tokenizer.ggml.model")
    if model is None:
        raise ValueError("the GGUF file holds no tokenizer (no tokenizer.ggml.model); load the tokenizer "
                         "it was exported from instead")
    pre = _value(fields, "tokenizer.ggml.pre") or "default"
    if model != "gpt2" or pre not in PRE_TOKENIZERS:
        what = f"tokenizer model {model!r}" if model != "gpt2" else f"pre-tokenizer {pre!r}"
        raise ValueError(f"the GGUF file's {what} is not supported (supported: byte-level BPE 'gpt2' with "
                         f"pre-tokenizer {', '.join(PRE_TOKENIZERS)}); transformers' own GGUF reader may know "
                         "it: HFTokenizer(folder, gguf_file=name)")
    tokens = _value(fields, "tokenizer.ggml.tokens")
    types = _value(fields, "tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    special = {name: _value(fields, f"tokenizer.ggml.{key}_token_id")
               for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown"))}
    vocab = Vocab(tokens, types, _value(fields, "tokenizer.ggml.merges") or [], pre, special)
    return vocab, bool(_value(fields, "tokenizer.ggml.add_bos_token"))


def _value(fields: dict, key: str):
    field = fields.get(key)
    return None if field is None else field.contents()


def build_tokenizer(vocab: Vocab, add_bos: bool, chat_template: str | None = None):
    """A ``transformers.PreTrainedTokenizerFast`` that tokenises as llama.cpp does for ``vocab``:
    BPE over the pre-tokenizer's words, control tokens matched whole as special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    PreTrainedTokenizerFast = require("transformers", "a GGUF file's tokenizer", "hf").PreTrainedTokenizerFast

    ids = {t: i for i, t in enumerate(vocab.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    tk = Tokenizer(models.BPE(vocab=ids, merges=merges, fuse_unk=False, byte_fallback=False,
                              ignore_merges=vocab.pre in IGNORE_MERGES))
    tk.pre_tokenizer = PRE_TOKENIZERS[vocab.pre]()
    tk.decoder = decoders.ByteLevel()
    kinds = list(zip(vocab.tokens, vocab.types, strict=True))
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in kinds if k == CONTROL])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in kinds if k == USER_DEFINED])
    bos = vocab.special.get("bos")
    if add_bos and bos is not None:
        tk.post_processor = processors.TemplateProcessing(single=f"{vocab.tokens[bos]} $A",
                                                          pair=f"{vocab.tokens[bos]} $A $B",
                                                          special_tokens=[(vocab.tokens[bos], bos)])
    named = {f"{k}_token": vocab.tokens[i] for k, i in vocab.special.items() if i is not None and i < len(vocab.tokens)}
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, clean_up_tokenization_spaces=False, **named)
    hf.chat_template = chat_template
    return hf
