"""Save a ``Transformer`` as a transformers folder and load one back (safetensors only).

>>> save_pretrained(model, "out/hf", tokenizer=tok, template="chatml")  # doctest: +SKIP
>>> AutoModelForCausalLM.from_pretrained("out/hf")                       # doctest: +SKIP
>>> model = load_pretrained("out/hf")                                    # doctest: +SKIP
"""

from __future__ import annotations

import glob
import os

import torch

from ..model.loading import check_context, check_weights, empty_transformer
from ..model.transformer import Transformer
from ..optional import require
from .files import read_json, staged_folder, write_json
from .hf_config import from_hf_config, to_hf_config
from .hf_weights import drop_fillers, from_hf, to_hf


def safetensors_torch():
    return require("safetensors.torch", "HF export/import", "hf")


def special_ids(tokenizer) -> dict[str, int | None]:
    """``{"bos": id, "eos": id, "pad": id}`` of a tokenizer (None entries where it has none)."""
    if tokenizer is None:
        return {}
    return {k: getattr(tokenizer, f"{k}_id", None) for k in ("bos", "eos", "pad")}


def as_template(template):
    """A preset name -> ``ChatTemplate``; a ChatTemplate or None passes through."""
    if template is None or not isinstance(template, str):
        return template
    from ..tokenizer.templates import ChatTemplate

    return ChatTemplate(template)


def stop_ids(tokenizer, template, eos: int | None) -> list[int]:
    """EOS plus the assistant closer's id when the closer is one token (``<|im_end|>``...):
    generation must stop at either, or a chat model runs on into the next turn."""
    stops = [eos] if eos is not None else []
    if tokenizer is not None and template is not None:
        for s in template.stop_strings():
            i = tokenizer.token_to_id(s) if hasattr(tokenizer, "token_to_id") else None
            if i is not None and i not in stops:
                stops.append(i)
    return stops


def check_vocab(model: Transformer, tokenizer) -> None:
    """Before any export: the tokenizer fits the model, and no LoRA adapter is left in it (the
    exporters write the base weights' keys only, so an adapter would be dropped silently)."""
    if any(k.endswith((".lora_A", ".lora_B")) for k in model.state_dict()):
        raise ValueError("the model has LoRA adapters; export transformer_toolkit.lora.merge_and_unload(model) "
                         "(the adapted model), or the adapter alone with lora.save_peft / lora.save_gguf_adapter")
    if tokenizer is not None and tokenizer.vocab_size > model.cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{model.cfg.vocab_size}; export the tokenizer the model was trained with")


def save_pretrained(model: Transformer, out_dir: str | os.PathLike, tokenizer=None, template=None) -> str:
    """Write ``model`` (and optionally its tokenizer and chat template) as a transformers folder:
    ``config.json``, ``model.safetensors``, ``generation_config.json`` (every stop id), and with
    a tokenizer ``tokenizer.json`` + ``tokenizer_config.json`` (+ ``chat_template.jinja``; the
    chat template as Jinja when ``template`` is given: a preset name or a ``ChatTemplate``).

    Raises ``ValueError`` naming the fields when the config has no exact transformers
    counterpart; nothing is written then. The folder is written atomically (see files.py).
    Returns the folder path."""
    special = special_ids(tokenizer)
    family, hf_cfg = to_hf_config(model.cfg, special)  # raises before anything is written
    check_vocab(model, tokenizer)
    template = as_template(template)
    hf_cfg["torch_dtype"] = hf_cfg["dtype"] = str(model.embed.weight.dtype).removeprefix("torch.")
    st = safetensors_torch()
    with staged_folder(out_dir) as tmp:
        weights = to_hf(model.state_dict(), family, model.cfg.n_layers, model.cfg.tie_weights, model.cfg)
        st.save_file({k: v.cpu() for k, v in weights.items()}, os.path.join(tmp, "model.safetensors"),
                     metadata={"format": "pt"})
        write_json(os.path.join(tmp, "config.json"), hf_cfg)
        gen = {f"{k}_token_id": special[k] for k in ("bos", "pad") if special.get(k) is not None}
        stops = stop_ids(tokenizer, template, special.get("eos"))
        if stops:
            gen["eos_token_id"] = stops if len(stops) > 1 else stops[0]
        write_json(os.path.join(tmp, "generation_config.json"), gen)
        if tokenizer is not None:
            write_tokenizer(tokenizer, tmp, template)
    return os.fspath(out_dir)


def write_tokenizer(tokenizer, folder: str, template=None) -> None:
    """The tokenizer as transformers files in ``folder``; ``template`` (a ChatTemplate) becomes
    its chat template (without one, a template the tokenizer was loaded with is kept). Our
    RustBPETokenizer is written with ``tokenizer_class`` ``PreTrainedTokenizerFast`` and
    ``additional_special_tokens``, names transformers 4 reads too; an HFTokenizer is saved as
    transformers saves it (never modified in place)."""
    ours = hasattr(tokenizer, "to_transformers")
    if ours:
        hf_tok = tokenizer.to_transformers()
    elif hasattr(getattr(tokenizer, "_tok", None), "save_pretrained"):
        hf_tok = tokenizer._tok  # HFTokenizer wraps a transformers tokenizer
    else:
        raise ValueError(f"{type(tokenizer).__name__} cannot be saved as a transformers tokenizer; "
                         "use RustBPETokenizer or HFTokenizer")
    hf_tok.save_pretrained(folder)
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    cfg = read_json(cfg_path) if os.path.isfile(cfg_path) else {}
    if ours:
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        extra = cfg.pop("extra_special_tokens", None)
        if isinstance(extra, list):
            cfg["additional_special_tokens"] = extra
    jinja = template.to_jinja() if template is not None else None
    if jinja is None and ours and isinstance(getattr(tokenizer, "chat_template", None), str):
        jinja = tokenizer.chat_template  # the template load_tokenizer found with it travels on
    if jinja is not None:
        cfg["chat_template"] = jinja  # transformers 4 reads it here, transformers 5 from the .jinja file
        with open(os.path.join(folder, "chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(jinja)
    write_json(cfg_path, cfg)


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's safetensors files (one file, or shards via the index)."""
    st = safetensors_torch()
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return _load_safetensors(st, single)
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        files = sorted(set(read_json(index)["weight_map"].values()))
        files = [os.path.join(path, f) for f in files]
    else:
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{path} holds no *.safetensors weights (pickled .bin/.pt files are never loaded: "
                                "unpickling runs arbitrary code)")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(_load_safetensors(st, f))
    return out


def _load_safetensors(st, path: str) -> dict[str, torch.Tensor]:
    """One safetensors file; ValueError naming it when it is missing, truncated or damaged."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing (the folder's index lists it); download the folder again")
    try:
        return st.load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for every kind of damage
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path} is not a readable safetensors file ({first}); it is truncated or damaged: "
                         "download or export it again") from None


def load_pretrained(path: str | os.PathLike, dtype: torch.dtype | None = None, **overrides) -> Transformer:
    """A transformers folder (Llama, Mistral, SmolLM, Qwen2, Mixtral, GPT-2) as our ``Transformer``.

    ``overrides`` replace config fields (e.g. ``max_seq=512``; GPT-2's position table is cropped
    to it). Weights load into float32 (exact for fp16/bf16 checkpoints); ``dtype`` casts after.
    Raises ``ValueError`` when the checkpoint has no exact counterpart in our config."""
    path = os.fspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path} has no config.json: not a transformers model folder (a training run "
                                "folder or .pt checkpoint loads with Transformer.from_checkpoint)")
    family, cfg = _config(cfg_path, overrides.get("max_seq"))
    hf = read_weights(path)
    cfg = drop_fillers(family, cfg, hf)
    if overrides:
        cfg = type(cfg)(**{**cfg.to_dict(), **overrides})
    check_context(cfg, path, "config.json")
    sd = from_hf(hf, family, cfg.n_layers, cfg.tie_weights, cfg)
    if "pos.weight" in sd and sd["pos.weight"].shape[0] != cfg.max_seq:
        if cfg.max_seq > sd["pos.weight"].shape[0]:
            raise ValueError(f"max_seq={cfg.max_seq} is longer than the checkpoint's {sd['pos.weight'].shape[0]} "
                             "learned positions")
        sd["pos.weight"] = sd["pos.weight"][: cfg.max_seq]
    # names, shapes, layer count and dtypes against config.json, before the model is allocated
    check_weights(cfg, sd, path, f"{family} config")
    model = empty_transformer(cfg)  # every weight is loaded below (strict)
    model.load_state_dict(sd, strict=True)  # copies into the fp32 parameters
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def _config(cfg_path: str, max_seq: int | None):
    """``(family, TransformerConfig)`` of a config.json; a missing or mistyped field is a
    ValueError naming the file, not a KeyError or TypeError."""
    d = read_json(cfg_path)
    try:
        return from_hf_config(d, max_seq=max_seq)
    except KeyError as e:
        raise ValueError(f"{cfg_path} lacks the field {e}; the file is incomplete or not a transformers "
                         "config") from None
    except TypeError as e:
        raise ValueError(f"{cfg_path} has a field of the wrong type ({e}); the file is damaged") from None
