"""DPOConfig (the objective) and PreferenceDataConfig (how preference pairs become batches)."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from ..config_base import StrictConfig, check_choice
from ..sft.config import ChatDataConfig

LOSSES = ("sigmoid", "ipo", "hinge", "simpo")
REFERENCES = ("auto", "model", "adapter", "precomputed", "none")


class DPOConfig(StrictConfig):
    """Direct preference optimisation (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290).

    ``loss``: ``sigmoid`` (DPO), ``ipo`` (Azar et al. 2023, length-normalised as in TRL), ``hinge``
    (SLiC), ``simpo`` (Meng et al. 2024: length-normalised log-probs, a margin ``simpo_gamma``, no
    reference model). ``beta``: the strength of the implicit KL term (IPO's tau).

    ``reference``: where the reference log-probs come from. ``model``: a frozen copy of the
    starting weights; ``adapter``: the same model with its LoRA adapters disabled (no copy);
    ``precomputed``: computed once for every pair before the first step (kept in checkpoints), or
    read from the data (TRL's ``ref_chosen_logps`` / ``ref_rejected_logps`` columns); ``none``:
    SimPO only; ``auto``: ``none`` for SimPO, the data's columns when it has them, ``adapter``
    for a model with adapters, else ``model``.
    """

    beta: float = 0.1
    loss: str = "sigmoid"
    simpo_gamma: float = 0.5
    reference: str = "auto"

    @model_validator(mode="after")
    def _check(self) -> DPOConfig:
        check_choice("loss", self.loss, LOSSES)
        check_choice("reference", self.reference, REFERENCES)
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.loss == "simpo" and self.reference not in ("auto", "none"):
            raise ValueError(f"loss='simpo' uses no reference model; set reference='auto' (got {self.reference!r})")
        if self.loss != "simpo" and self.reference == "none":
            raise ValueError(f"loss={self.loss!r} needs a reference; reference='none' is for loss='simpo'")
        return self


class PreferenceDataConfig(ChatDataConfig):
    """Settings of the preference loaders.

    ``seq_len``: the longest row (prompt + response) in tokens; a longer pair keeps its start (the
    response is cut, as TRL's ``keep_start``), a prompt that leaves no room is skipped (counted,
    with a warning). ``template``: the chat template of conversational pairs. ``strings``: how
    pairs of plain strings are rendered: ``text`` (prompt + response + EOS, as TRL does) or
    ``chat`` (a user turn and an assistant turn in ``template``).
    """

    seq_len: int = 512
    batch_size: int = 4
    split: float = 0.9
    template: Any = "chatml"
    strings: str = "text"
    shuffle: bool = True
    num_workers: int = 0
    pin_memory: bool = False
    seed: int = 0
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    @model_validator(mode="after")
    def _check(self) -> PreferenceDataConfig:
        check_choice("strings", self.strings, ("text", "chat"))
        if self.seq_len < 2 or self.batch_size < 1:
            raise ValueError(f"seq_len must be >= 2 and batch_size >= 1, got {self.seq_len} and {self.batch_size}")
        if not 0.0 < self.split <= 1.0:
            raise ValueError(f"split must be in (0, 1] (the train fraction; 1 = no val pairs), got {self.split}")
        if self.num_workers < 0 or self.seed < 0:
            raise ValueError("num_workers and seed must be >= 0")
        return self
