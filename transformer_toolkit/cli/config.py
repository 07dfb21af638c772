"""Run configs: a YAML file (``name``, ``init``, ``model:``, ``train:``, ``data:``, and for
fine-tuning ``lora:``, ``dpo:`` and ``grpo:``) plus dotted overrides.

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
from ..dpo.config import DPOConfig, PreferenceDataConfig
from ..grpo.config import GRPOConfig, PromptDataConfig
from ..lora.config import LoRAConfig
from ..model import TransformerConfig
from ..sft import SFTDataConfig
from ..store import runs
from ..trainer import TrainConfig

# The recipes ship inside the package (package data), so `--config llama-small` works from an
# installed wheel as well as from a checkout; the repository's recipes/ is a link to this folder.
RECIPES = resources.files("transformer_toolkit") / "recipes"
SECTIONS = ("model", "train", "data", "lora", "dpo", "grpo")
# compare: the variants, budget and seeds of `ttk compare` (compare.plan.CompareConfig); other
# commands train the base config and leave it aside
TOP_LEVEL = ("name", "init") + SECTIONS + ("compare",)

# data: keys that are not DataConfig / SFTDataConfig fields: where the text comes from and how
# the tokenizer is made.
PRETRAIN_EXTRAS = {"corpus": "builtin:python-stdlib", "tokenizer": None, "vocab_size": 4096, "max_mb": 12.0}
SFT_EXTRAS = {"corpus": "builtin:synthetic", "tokenizer": None, "vocab_size": 330, "n_samples": 4000,
              "n_eval": 50, "tasks": ["reverse", "add"], "multi_turn": 0.0}
DPO_EXTRAS = {"corpus": "builtin:synthetic", "n_samples": 1000, "n_eval": 50, "tasks": ["reverse", "add"]}
GRPO_EXTRAS = {"corpus": "builtin:synthetic", "n_samples": 2000, "n_eval": 100, "tasks": ["add3", "reverse_long"]}
# kind -> (data extras, data config class, the sections it reads beyond model/train/data)
KINDS = {"train": (PRETRAIN_EXTRAS, DataConfig, ()), "sft": (SFT_EXTRAS, SFTDataConfig, ("lora",)),
         "dpo": (DPO_EXTRAS, PreferenceDataConfig, ("lora", "dpo")),
         "grpo": (GRPO_EXTRAS, PromptDataConfig, ("lora", "grpo"))}


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
    return runs.check_sections(runs.load_yaml(p.read_text(encoding="utf-8"), p), p, SECTIONS)


def merge(raw: dict, overrides: dict[str, Any]) -> dict:
    """Apply dotted overrides to a raw config dict (sections are created as needed)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in SECTIONS:
            raise ValueError(f"unknown config section in --{key}{suggest(head, SECTIONS)}; "
                             f"sections: {', '.join(SECTIONS)}")
        section = out[head] = {} if out.get(head) is None else out[head]
        if not isinstance(section, dict):
            raise ValueError(f"--{key}: section {head!r} of the config is {section!r}, not a mapping of "
                             f"field: value; fix the config file")
        section[rest] = value
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
    """Validate a raw config; returns ``{"name", "init", "model", "train", "data", "extras", "lora",
    "dpo"}`` with config objects for model (vocab_size left to the tokenizer when absent), train,
    data, and lora / dpo (None when absent; ``lora: {r: 0}`` turns LoRA off)."""
    for k in raw:
        if k not in TOP_LEVEL:
            raise ValueError(f"unknown top-level key {k!r}{suggest(k, TOP_LEVEL)}; keys: {', '.join(TOP_LEVEL)}")
    for s in SECTIONS:
        if not isinstance(raw.get(s) or {}, dict):
            raise ValueError(f"section {s!r} must be a mapping of field: value")
    extras_default, data_cls, extra_sections = KINDS[kind]
    for s in ("lora", "dpo", "grpo"):
        if raw.get(s) and s not in extra_sections:
            users = [f"ttk {k}" for k, v in KINDS.items() if s in v[2]]
            who = " and ".join([", ".join(users[:-1]), users[-1]] if len(users) > 2 else users)
            raise ValueError(f"section {s!r} is for {who}, not ttk {kind}")
    lora = dict(raw.get("lora") or {})
    data = dict(raw.get("data") or {})
    extras = {k: data.pop(k, v) for k, v in extras_default.items()}
    valid = list(extras_default) + [f for f in data_cls.model_fields if f != "tokenizer"]
    for k in data:
        if k not in valid:
            raise ValueError(f"data: unknown field {k!r}{suggest(k, valid)}")
    if "seq_len" in data_cls.model_fields:  # prompt loaders have none: the model's max_seq bounds a row
        data.setdefault("seq_len", 128)
    data.setdefault("batch_size", 16)
    model = dict(raw.get("model") or {})
    model.setdefault("max_seq", data.get("seq_len", 128))
    return {
        "name": str(raw.get("name") or ("quickstart" if kind == "train" else kind)),
        "init": raw.get("init"),
        # built now (with a stand-in vocab_size) so a typo fails before any data is read
        "model": build(TransformerConfig, "model", {"vocab_size": 512, **model}),
        "model_raw": model,
        "train": build(TrainConfig, "train", raw.get("train") or {}),
        "data": build(data_cls, "data", data),
        "extras": extras,
        "lora": build(LoRAConfig, "lora", lora) if lora and lora.get("r") != 0 else None,
        "dpo": build(DPOConfig, "dpo", raw.get("dpo") or {}) if kind == "dpo" else None,
        "grpo": build(GRPOConfig, "grpo", raw.get("grpo") or {}) if kind == "grpo" else None,
    }


def model_config(run: dict, vocab_size: int) -> TransformerConfig:
    """The model config with the tokenizer's vocabulary size filled in."""
    return build(TransformerConfig, "model", {**run["model_raw"], "vocab_size": vocab_size})


def resolved_dict(run: dict, model_cfg: TransformerConfig, train_cfg: TrainConfig) -> dict:
    """The config.yaml of a run folder: every field filled in."""
    out = {"name": run["name"], "init": run["init"], "model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
           "data": {**run["extras"], **run["data"].to_dict()}}
    for s in ("lora", "dpo", "grpo"):
        if run.get(s) is not None:
            out[s] = run[s].to_dict()
    return out

