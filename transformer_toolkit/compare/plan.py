"""The plan of a comparison: which variants, at which sizes, over how many seeds, under one budget.

A variant is a dict of dotted overrides of the base run config, ``{"model.attn": "mla"}``. The
variants of a plan are the product of three lists, each optional:

- ``variants``: written one by one (a YAML list; an entry may carry its own ``name``);
- ``vary``: a grid, ``{"model.attn": ["gqa", "mla"], "model.ffn": ["swiglu", "moe"]}`` (four);
- ``sizes``: the scaling axis (``[32, 64, 128]`` for ``model.dim``, or override dicts); a
  ``model.dim`` grid of three values or more is taken as sizes.

Every variant then runs once per seed. A variant's family is its name without the size, so a
family's sizes make one loss-against-compute curve.

>>> [v.name for v in expand(vary={"model.attn": ["gqa", "mla"]}, sizes=[32, 64])]
['attn=gqa, dim=32', 'attn=gqa, dim=64', 'attn=mla, dim=32', 'attn=mla, dim=64']
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import model_validator

from ..config_base import StrictConfig, suggest

BUDGET_KINDS = ("tokens", "flops", "time", "steps")
SUFFIX = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12, "P": 1e15}
TIME_SUFFIX = {"s": 1, "m": 60, "min": 60, "h": 3600}
# Every variant must read the same token file and hold out the same split (see DESIGN.md).
SHARED_DATA = ("data.corpus", "data.tokenizer", "data.vocab_size", "data.max_mb", "data.split")
# The budget decides how long each variant trains.
BUDGET_FIELDS = ("train.max_steps", "train.max_time")
# Seed k of every variant starts from the same seeds (--seeds repeats them, one apart).
SEED_FIELDS = ("train.seed", "data.seed")


class CompareConfig(StrictConfig):
    """The ``compare:`` section of a run config (command-line options override it)."""

    variants: list[dict[str, Any]] = []
    vary: dict[str, list[Any]] = {}
    sizes: list[Any] = []
    budget: str | None = None  # "tokens=2M", "flops=1e15", "time=10m", "steps=500"; None: train.max_steps
    seeds: int = 1
    evals: int = 10  # validation points along each run (the curves), when the budget fixes the steps
    tasks: list[str | dict[str, Any]] = []  # evaluation tasks scored on each final model (evaluate_tasks)
    bpb_tokens: int = 50_000  # held-out tokens scored for bits per byte
    decode_tokens: int = 32  # tokens generated to time batch-1 decoding

    @model_validator(mode="after")
    def _check(self) -> CompareConfig:
        for name in ("seeds", "evals", "bpb_tokens", "decode_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"compare.{name} must be >= 1, got {getattr(self, name)}")
        if self.budget is not None:
            parse_budget(self.budget)
        for key, values in self.vary.items():
            if not values:
                raise ValueError(f"compare.vary.{key} is empty; give the values to try, e.g. [gqa, mla]")
        return self


@dataclass(frozen=True)
class Budget:
    kind: str  # one of BUDGET_KINDS
    value: float

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}" + ("s" if self.kind == "time" else "")


def _number(text: str, suffixes: dict[str, float]) -> float:
    m = re.fullmatch(r"\s*([0-9._]+(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or (m.group(2) and m.group(2) not in suffixes):
        raise ValueError
    return float(m.group(1).replace("_", "")) * (suffixes[m.group(2)] if m.group(2) else 1)


def parse_budget(text: str) -> Budget:
    """``"tokens=2M"`` -> ``Budget("tokens", 2e6)``; also ``flops=1e15``, ``time=90s|10m|1h``, ``steps=500``."""
    kind, sep, value = str(text).partition("=")
    kind = kind.strip()
    if not sep or kind not in BUDGET_KINDS:
        raise ValueError(f"budget {text!r}: write KIND=VALUE with KIND one of {', '.join(BUDGET_KINDS)}, "
                         "e.g. tokens=2M, flops=1e15, time=10m")
    try:
        number = _number(value, TIME_SUFFIX if kind == "time" else SUFFIX)
    except ValueError:
        units = "s, m or h" if kind == "time" else "k, M, G or T"
        raise ValueError(f"budget {text!r}: {value!r} is not a number (suffixes: {units})") from None
    if number <= 0:
        raise ValueError(f"budget {text!r} must be > 0")
    return Budget(kind, number)


def budget_steps(budget: Budget, tokens_per_step: int, flops_per_token: float) -> int | None:
    """Optimizer steps a variant may take: the most that stay within a tokens or FLOPs budget
    (at least one), the budget itself for steps, None for time (the run stops on the clock).
    ``flops_per_token`` is the Trainer's MFU count (active experts only)."""
    if budget.kind == "steps":
        return max(1, int(budget.value))
    if budget.kind == "tokens":
        return max(1, math.floor(budget.value / tokens_per_step))
    if budget.kind == "flops":
        return max(1, math.floor(budget.value / (flops_per_token * tokens_per_step)))
    return None


@dataclass(frozen=True)
class Variant:
    name: str  # "attn=mla, dim=64"
    family: str  # "attn=mla": the name without the size
    overrides: dict[str, Any] = field(default_factory=dict)
    size: dict[str, Any] = field(default_factory=dict)  # the size overrides (a part of overrides)

    @property
    def slug(self) -> str:
        """A folder name: ``attn-mla_dim-64``."""
        text = self.name.replace("=", "-").replace(", ", "_").replace(" ", "_")
        return re.sub(r"[^A-Za-z0-9._+-]", "_", text) or "base"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"attn": "mla"}}`` -> ``{"model.attn": "mla"}`` (dotted keys kept as they are)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "." not in str(k) and not prefix:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _label(overrides: dict[str, Any]) -> str:
    """``{"model.attn": "mla", "train.lr": 0.001}`` -> ``"attn=mla, lr=0.001"`` (the full key
    where two sections share a field name)."""
    leaves = [k.partition(".")[2] or k for k in overrides]
    parts = []
    for (key, value), leaf in zip(overrides.items(), leaves, strict=True):
        shown = key if leaves.count(leaf) > 1 else leaf
        parts.append(f"{shown}={value}")
    return ", ".join(parts)


def _size(entry: Any) -> dict[str, Any]:
    if isinstance(entry, bool) or not isinstance(entry, (int, dict)):
        raise ValueError(f"compare.sizes entry {entry!r}: give a model.dim (an integer) or a dict of overrides "
                         "such as {model.dim: 64, model.n_layers: 2}")
    return {"model.dim": entry} if isinstance(entry, int) else flatten(entry)


def expand(variants: list[dict] | None = None, vary: dict[str, list] | None = None,
           sizes: list | None = None) -> list[Variant]:
    """The variants of a plan: each listed variant x each grid point x each size (an empty list
    contributes one empty entry), with unique names."""
    vary = dict(vary or {})
    sizes = list(sizes or [])
    if not sizes and len(vary.get("model.dim", [])) >= 3:  # a dimension grid is a scaling axis
        sizes = list(vary.pop("model.dim"))
    listed = []
    for i, entry in enumerate(variants or []):
        if not isinstance(entry, dict):
            raise ValueError(f"compare.variants[{i}] must be a mapping of dotted overrides, e.g. "
                             f"{{model.attn: mla}}; got {entry!r}")
        entry = dict(entry)
        name = entry.pop("name", None)
        listed.append((str(name) if name is not None else None, flatten(entry)))
    listed = listed or [(None, {})]
    keys = list(vary)
    grid = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(vary[k] for k in keys))]
    out, seen = [], set()
    for (given, base), point, size in itertools.product(listed, grid, [_size(s) for s in sizes] or [{}]):
        family = ", ".join(p for p in (given or _label(base), _label(point)) if p) or "base"
        name = f"{family}, {_label(size)}" if size else family
        if name in seen:
            raise ValueError(f"two variants are both named {name!r}; give each a distinct 'name' or distinct "
                             "overrides")
        seen.add(name)
        out.append(Variant(name, family, {**base, **point, **size}, size))
    return out


def check_fields(variant: Variant, known: dict[str, Any]) -> None:
    """Fail (before anything trains) when an override of ``variant`` names no field: ``known``
    maps each section to its valid field names. Overrides of the shared data and of the budget's
    fields and of the seeds are refused too, since every variant must read the same data, in the
    same order, from the same seeds, under the same budget."""
    for key in variant.overrides:
        section, _, name = key.partition(".")
        where = f"variant {variant.name!r}"
        if section not in known:
            raise ValueError(f"{where}: {key!r} names no config section{suggest(section, known)}; overrides look "
                             f"like model.attn or train.lr (sections: {', '.join(known)})")
        if name not in known[section]:
            raise ValueError(f"{where}: unknown field {key!r}{suggest(name, known[section])}")
        if key in SHARED_DATA:
            raise ValueError(f"{where} sets {key}, but every variant trains on the same tokenised data; set it "
                             "in the base config")
        if key in BUDGET_FIELDS:
            raise ValueError(f"{where} sets {key}, but the budget decides how long each variant trains")
        if key in SEED_FIELDS:
            raise ValueError(f"{where} sets {key}, but every variant trains from the same seeds; set it in the "
                             "base config (--seeds K repeats each variant from K seeds)")
