"""LoRAConfig: rank, scale, dropout and which projections get an adapter.

``targets`` are name patterns matched against each projection's dotted path in the model
(``blocks.0.attn.q_proj``, ``blocks.1.ffn.experts.gate_proj``): a pattern matches the whole path
or its last parts (``q_proj``, ``experts.*``, ``blocks.0.*``; ``fnmatch`` wildcards). Presets:

- ``attn``: every attention projection: q/k/v/o, and MLA's ``q_a_proj``, ``q_b_proj``,
  ``kv_a_proj`` (the latent and the rope key) and ``kv_b_proj`` (the latent's expansion);
- ``ffn``: ``gate_proj``, ``up_proj``, ``down_proj`` of dense FFNs, shared experts and the stacked
  MoE experts (one adapter per expert);
- ``all-linear`` (the default): both. Routers, the embedding and the head are left alone unless
  named (``router``, ``head``).

>>> LoRAConfig(r=8, alpha=16, targets=["q_proj", "v_proj"]).scale
2.0
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from pydantic import field_validator, model_validator

from ..config_base import StrictConfig

ATTN_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "q_a_proj", "q_b_proj", "kv_a_proj", "kv_b_proj")
FFN_NAMES = ("gate_proj", "up_proj", "down_proj")
PRESETS = {"attn": ATTN_NAMES, "ffn": FFN_NAMES, "all-linear": ATTN_NAMES + FFN_NAMES}


class LoRAConfig(StrictConfig):
    """``W x + (alpha / r) * B A dropout(x)`` on every targeted projection; only A and B train.

    ``r``: the rank; ``alpha``: the scale numerator (``scale = alpha / r``); ``dropout``: on the
    adapter's input only; ``targets``: name patterns or presets (see the module docstring).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = ["all-linear"]

    @field_validator("targets", mode="before")
    @classmethod
    def _one_target(cls, v):
        return [v] if isinstance(v, str) else v  # `--lora.targets q_proj` on the command line

    @model_validator(mode="after")
    def _check(self) -> LoRAConfig:
        if self.r < 1:
            raise ValueError(f"r (the adapter rank) must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 (scale = alpha / r), got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError("targets must be a non-empty list of name patterns, e.g. [q_proj, v_proj] or [all-linear]")
        return self

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def patterns(self) -> list[tuple[str, tuple[str, ...]]]:
        """``(as written, patterns)`` per target: a preset expands to its names."""
        return [(t, PRESETS.get(t, (t,))) for t in self.targets]


def matches(path: str, pattern: str) -> bool:
    """Whether ``pattern`` matches the dotted ``path`` whole or its last components."""
    return fnmatchcase(path, pattern) or fnmatchcase(path, "*." + pattern)
