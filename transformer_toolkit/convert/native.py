"""The native folder: for configs with no transformers counterpart (MLA, ALiBi, expert choice...).

Same shape as a transformers folder, so the Hub, ``pull_from_hub`` and ``load_tokenizer`` treat
it alike: ``model.safetensors`` holds our own parameter names (the tied head left out),
``config.json`` holds our ``TransformerConfig`` under ``model_type: "transformer-toolkit"``,
and the tokenizer files are the transformers ones. ``Transformer.from_pretrained`` loads it;
transformers does not (there is no class that computes the same thing).
"""

from __future__ import annotations

import os

import torch

from ..model.config import TransformerConfig
from ..model.loading import check_weights, empty_transformer
from ..model.transformer import Transformer
from .files import read_json, staged_folder, write_json
from .hf_io import as_template, check_vocab, read_weights, safetensors_torch, special_ids, write_tokenizer

MODEL_TYPE = "transformer-toolkit"
FORMAT_VERSION = 1


def save_native(model: Transformer, out_dir: str | os.PathLike, tokenizer=None, template=None,
                reason: str | None = None) -> str:
    """Write ``model`` as a native folder (atomically); ``reason`` (why it is not a transformers
    folder) is recorded in config.json. Returns the folder path."""
    check_vocab(model, tokenizer)
    template = as_template(template)
    st = safetensors_torch()
    cfg = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION, "transformer_config": model.cfg.to_dict(),
           "dtype": str(model.embed.weight.dtype).removeprefix("torch."),
           **{f"{k}_token_id": v for k, v in special_ids(tokenizer).items()}}
    if reason:
        cfg["no_transformers_counterpart"] = reason
    with staged_folder(out_dir) as tmp:
        weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict_for_save().items()}
        st.save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        write_json(os.path.join(tmp, "config.json"), cfg)
        if tokenizer is not None:
            write_tokenizer(tokenizer, tmp, template)
    return os.fspath(out_dir)


def is_native(path: str | os.PathLike) -> bool:
    cfg = os.path.join(os.fspath(path), "config.json")
    return os.path.isfile(cfg) and read_json(cfg).get("model_type") == MODEL_TYPE


def load_native(path: str | os.PathLike, dtype: torch.dtype | None = None, **overrides) -> Transformer:
    """A native folder as a ``Transformer`` (eval mode; ``overrides`` replace config fields)."""
    path = os.fspath(path)
    d = read_json(os.path.join(path, "config.json"))
    version = d.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: native format version {version!r} is not supported (this library reads "
                         f"version {FORMAT_VERSION}); upgrade transformer-toolkit")
    if not isinstance(d.get("transformer_config"), dict):
        raise ValueError(f"{path}/config.json has no transformer_config object; the file is damaged")
    cfg = TransformerConfig.from_dict({**d["transformer_config"], **overrides})
    weights = read_weights(path)
    check_weights(cfg, weights, path, "config.json", optional=("head.weight",) if cfg.tie_weights else ())
    model = empty_transformer(cfg)  # every weight is loaded below (strict)
    model.load_state_dict(weights, strict=True)  # a missing tied head is filled from the embedding
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
