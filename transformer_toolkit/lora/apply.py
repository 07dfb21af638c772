"""Adding LoRA adapters to a model, and what is done with them: merge, disable, unload.

>>> model = Transformer(cfg)                                     # doctest: +SKIP
>>> apply_lora(model, LoRAConfig(r=8, targets=["attn"]))         # only adapters train now  # doctest: +SKIP
>>> with disabled(model): ref_logits, _ = model(x)               # the base model alone  # doctest: +SKIP
>>> merge(model); unmerge(model)                                 # W += / -= scale * B @ A  # doctest: +SKIP
>>> plain = merge_and_unload(model)                              # an ordinary Transformer  # doctest: +SKIP

``apply_lora`` records ``model.adapter_info`` (``{"type": "lora", "config": ..., "base": ...}``):
the Trainer stores it in checkpoints, which then hold the adapters only (see trainer/persist.py).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn as nn
from torch import Tensor

from ..config_base import suggest
from ..model.kernels import Linear
from ..model.moe import Experts
from .config import PRESETS, LoRAConfig, matches
from .layers import ADAPTERS, LoRAExperts, LoRALinear

EXPERT_PARAMS = ("gate_proj", "up_proj", "down_proj")
# names of projections some variant has: a target naming one the model lacks is a warning, not an error
KNOWN = {n for names in PRESETS.values() for n in names} | {"router", "head"}


def _projections(model: nn.Module) -> Iterator[tuple[str, nn.Module, str | None]]:
    """``(path, module, expert param)`` of every adaptable projection: each plain linear layer
    (``kernels.Linear`` or ``nn.Linear``) and each stacked expert weight
    (``blocks.0.ffn.experts.gate_proj``)."""
    for name, module in model.named_modules():
        if type(module) in (Linear, nn.Linear):
            yield name, module, None
        elif type(module) is Experts:
            for p in EXPERT_PARAMS:
                yield f"{name}.{p}", module, p


def find_targets(model: nn.Module, cfg: LoRAConfig) -> list[tuple[str, nn.Module, str | None]]:
    """The projections ``cfg.targets`` select; a target that matches nothing is an error naming
    the projections there are (or, for a name another variant has, a warning)."""
    found = list(_projections(model))
    picked, seen = [], set()
    for written, patterns in cfg.patterns():
        hits = [f for f in found if any(matches(f[0], p) for p in patterns)]
        if not hits:
            names = sorted({path.rsplit(".", 1)[-1] for path, _, _ in found})
            if all(p in KNOWN for p in patterns):
                warnings.warn(f"lora target {written!r} matches no projection of this model (it has "
                              f"{', '.join(names)}); ignored", stacklevel=3)
                continue
            raise ValueError(f"lora target {written!r} matches no projection of this model{suggest(written, names)}; "
                             f"its projections: {', '.join(names)}; presets: {', '.join(PRESETS)}")
        for h in hits:
            if h[0] not in seen:
                seen.add(h[0])
                picked.append(h)
    if not picked:
        raise ValueError(f"lora targets {cfg.targets} select no projection of this model")
    return picked


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path``, in the train/eval mode of the module it replaces."""
    parent, _, attr = path.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    module.train(getattr(owner, attr).training)
    setattr(owner, attr, module)


def apply_lora(model: nn.Module, cfg: LoRAConfig | dict | None = None, base: str | os.PathLike | None = None,
               **fields) -> nn.Module:
    """Freeze every parameter of ``model`` and add trainable adapters to the projections
    ``cfg.targets`` selects, in place (returns the model). ``base``: where the base weights come
    from (a local path, kept absolute, or a Hub repo id), recorded so that ``store.load`` can put
    a checkpoint of the adapters back on it."""
    cfg = LoRAConfig(**(cfg or {}), **fields) if not isinstance(cfg, LoRAConfig) else cfg
    if base is not None:
        base = os.path.abspath(base) if os.path.exists(base) else os.fspath(base)
    if adapters(model):
        raise ValueError("this model already has LoRA adapters; merge_and_unload(model) or unload(model) first")
    targets = find_targets(model, cfg)
    tied = getattr(getattr(model, "cfg", None), "tie_weights", False)
    if tied and any(path == "head" for path, _, _ in targets):
        raise ValueError("lora target 'head': the head is tied to the embedding (tie_weights=True), so merging its "
                         "adapter would change the embedding too; leave 'head' out of lora.targets")
    for p in model.parameters():
        p.requires_grad_(False)
    experts: dict[str, tuple[Experts, list[str]]] = {}
    for path, module, param in targets:
        if param is None:
            _set(model, path, LoRALinear(module, cfg.r, cfg.alpha, cfg.dropout))
        else:
            experts.setdefault(path.rsplit(".", 1)[0], (module, []))[1].append(param)
    for path, (module, names) in experts.items():
        _set(model, path, LoRAExperts(module, names, cfg.r, cfg.alpha, cfg.dropout))
    model.adapter_info = {"type": "lora", "config": cfg.to_dict(), "base": base}
    return model


def adapters(model: nn.Module) -> list[nn.Module]:
    """Every adapter module of ``model`` (empty for a model without LoRA)."""
    return [m for m in model.modules() if isinstance(m, ADAPTERS)]


def is_adapter_key(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("lora_A", "lora_B")


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter weights only (``...q_proj.lora_A`` etc.), as ``model.state_dict()`` names them."""
    return {k: v for k, v in model.state_dict().items() if is_adapter_key(k)}


def load_adapter_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load adapter weights; every adapter of the model must be given, and nothing else."""
    want = set(adapter_state_dict(model))
    missing, extra = sorted(want - set(state)), sorted(set(state) - want)
    if missing or extra:
        raise ValueError(f"adapter weights do not fit this model's adapters (missing: {', '.join(missing[:4]) or '-'}; "
                         f"unexpected: {', '.join(extra[:4]) or '-'}); apply_lora with the config they were trained "
                         "with (same r and targets)")
    model.load_state_dict(state, strict=False)


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W += scale * B @ A``); forwards then cost what
    the base model's do. ``unmerge`` takes it out again."""
    for m in adapters(model):
        m.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    for m in adapters(model):
        m.unmerge()
    return model


@contextmanager
def disabled(model: nn.Module):
    """Within the block the model computes as its base (every adapter off): DPO's and GRPO's
    reference model without a second copy of the weights."""
    mods = adapters(model)
    if any(m.merged for m in mods):
        raise ValueError("the adapters are merged into the weights; unmerge(model) before disabling them")
    before = [m.active for m in mods]
    for m in mods:
        m.active = False
    try:
        yield model
    finally:
        for m, a in zip(mods, before, strict=True):
            m.active = a


def _strip(model: nn.Module) -> nn.Module:
    for path, module in list(model.named_modules()):
        if isinstance(module, ADAPTERS):
            _set(model, path, module.base_module())
    for p in model.parameters():
        p.requires_grad_(True)
    model.__dict__.pop("adapter_info", None)
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the adapters and return the model with ordinary modules again (in place): what is
    exported, pushed or served. Every parameter is trainable again."""
    return _strip(merge(model))


def unload(model: nn.Module) -> nn.Module:
    """Drop the adapters (unmerging them first if merged): the base model again, in place."""
    return _strip(unmerge(model))


__all__ = ["LoRAExperts", "LoRALinear", "adapter_state_dict", "adapters", "apply_lora", "disabled", "find_targets",
           "load_adapter_state", "merge", "merge_and_unload", "unload", "unmerge"]
