"""Run configs: a YAML file (``name``, ``model:``, ``train:``, ``data:``) plus dotted overrides.

``--model.dim 256`` sets ``model: {dim: 256}``; values go through ``yaml.safe_load`` so ``30``
is an int, ``true`` a bool and ``3e-4`` a float. Every section is validated by its config
class, so a typo fails with the field name and the closest valid one.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..config_base import suggest
from ..data import DataConfig
from ..model import TransformerConfig
from ..sft import SFTDataConfig
from ..trainer import TrainConfig

# The recipes ship inside the package (package data), so `--config llama-small` works from an
# installed wheel as well as from a checkout; the repository's recipes/ is a link to this folder.
RECIPES = resources.files("transformer_toolkit") / "recipes"
SECTIONS = ("model", "train", "data")
# compare: the variants, budget and seeds of `ttk compare` (compare.plan.CompareConfig); other
# commands train the base config and leave it aside
TOP_LEVEL = ("name", "init") + SECTIONS + ("compare",)

# data: keys that are not DataConfig / SFTDataConfig fields: where the text comes from and how
# the tokenizer is made.
PRETRAIN_EXTRAS = {"corpus": "builtin:python-stdlib", "tokenizer": None, "vocab_size": 4096, "max_mb": 12.0}
SFT_EXTRAS = {"corpus": "builtin:synthetic", "tokenizer": None, "vocab_size": 330, "n_samples": 4000,
              "n_eval": 50, "tasks": ["reverse", "add"], "multi_turn": 0.0}


def _yaml_value(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string; a float is meant
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """``['--model.dim', '256', '--train.lr=3e-4']`` -> ``{'model.dim': 256, 'train.lr': 0.0003}``."""
    out, i = {}, 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or "." not in tok.split("=", 1)[0]:
            raise ValueError(f"unknown argument {tok!r}; overrides look like --model.dim 256 or --train.lr=3e-4")
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if i + 1 >= len(tokens):
                raise ValueError(f"override --{key} needs a value, e.g. --{key} 128")
            i += 1
            value = tokens[i]
        out[key] = _yaml_value(value)
        i += 1
    return out


def recipe_names() -> list[str]:
    """The names of the recipes shipped with the package (``quickstart``, ``llama-small``, ...)."""
    return sorted(r.name.removesuffix(".yaml") for r in RECIPES.iterdir() if r.name.endswith(".yaml"))


def read_yaml(path: str | os.PathLike) -> dict:
    """A run config by path, or a shipped recipe by name (``llama-small`` or ``llama-small.yaml``).

    A path that exists wins, so a local ``recipes/x.yaml`` can shadow a shipped recipe; otherwise
    ``recipes/llama-small.yaml`` (the repository's path) also finds the shipped recipe, so the
    commands in the README work from any directory with an installed wheel."""
    p = Path(path)
    if not p.is_file():
        name = p.name.removesuffix(".yaml")
        names = recipe_names()
        if name not in names or str(p.parent) not in (".", "recipes"):
            raise FileNotFoundError(f"config file {os.fspath(path)!r} does not exist{suggest(name, names)}; "
                                    f"shipped recipes: {', '.join(names)}")
        p = RECIPES / f"{name}.yaml"
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a run config must be a mapping with sections {', '.join(SECTIONS)}")
    return data


def merge(raw: dict, overrides: dict[str, Any]) -> dict:
    """Apply dotted overrides to a raw config dict (sections are created as needed)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in SECTIONS:
            raise ValueError(f"unknown config section in --{key}{suggest(head, SECTIONS)}; "
                             f"sections: {', '.join(SECTIONS)}")
        out.setdefault(head, {})[rest] = value
    return out


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    msg = str(err.get("msg", e)).removeprefix("Value error, ")
    loc = ".".join(str(x) for x in err.get("loc", ()))
    return f"{loc}: {msg}" if loc else msg


def build(cls, section: str, values: dict):
    """``cls(**values)`` with any error prefixed by the section name."""
    try:
        return cls(**values)
    except ValidationError as e:
        raise ValueError(f"{section}: {_first_error(e)}") from None
    except ValueError as e:
        raise ValueError(f"{section}: {e}") from None


def resolve(raw: dict, kind: str = "train") -> dict:
    """Validate a raw config; returns ``{"name", "init", "model", "train", "data", "extras"}``
    with config objects for model (vocab_size left to the tokenizer when absent), train and data."""
    for k in raw:
        if k not in TOP_LEVEL:
            raise ValueError(f"unknown top-level key {k!r}{suggest(k, TOP_LEVEL)}; keys: {', '.join(TOP_LEVEL)}")
    for s in SECTIONS:
        if not isinstance(raw.get(s) or {}, dict):
            raise ValueError(f"section {s!r} must be a mapping of field: value")
    extras_default, data_cls = (SFT_EXTRAS, SFTDataConfig) if kind == "sft" else (PRETRAIN_EXTRAS, DataConfig)
    data = dict(raw.get("data") or {})
    extras = {k: data.pop(k, v) for k, v in extras_default.items()}
    valid = list(extras_default) + [f for f in data_cls.model_fields if f != "tokenizer"]
    for k in data:
        if k not in valid:
            raise ValueError(f"data: unknown field {k!r}{suggest(k, valid)}")
    data.setdefault("seq_len", 128)
    data.setdefault("batch_size", 16)
    model = dict(raw.get("model") or {})
    model.setdefault("max_seq", data["seq_len"])
    return {
        "name": str(raw.get("name") or ("sft" if kind == "sft" else "quickstart")),
        "init": raw.get("init"),
        # built now (with a stand-in vocab_size) so a typo fails before any data is read
        "model": build(TransformerConfig, "model", {"vocab_size": 512, **model}),
        "model_raw": model,
        "train": build(TrainConfig, "train", raw.get("train") or {}),
        "data": build(data_cls, "data", data),
        "extras": extras,
    }


def model_config(run: dict, vocab_size: int) -> TransformerConfig:
    """The model config with the tokenizer's vocabulary size filled in."""
    return build(TransformerConfig, "model", {**run["model_raw"], "vocab_size": vocab_size})


def resolved_dict(run: dict, model_cfg: TransformerConfig, train_cfg: TrainConfig) -> dict:
    """The config.yaml of a run folder: every field filled in."""
    return {"name": run["name"], "init": run["init"], "model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
            "data": {**run["extras"], **run["data"].to_dict()}}

