"""GRPOConfig (rollouts and the objective) and PromptDataConfig (how prompts become batches)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ..config_base import StrictConfig, check_choice
from ..sft.config import ChatDataConfig

LOSS_TYPES = ("dapo", "grpo", "dr_grpo")
SCALES = ("group", "none")
REFERENCES = ("auto", "model", "adapter")


class GRPOConfig(StrictConfig):
    """Group relative policy optimisation with verifiable rewards.

    Rollouts: ``group_size`` completions per prompt (TRL's ``num_generations``) of at most
    ``max_new`` tokens, sampled at ``temperature`` / ``top_k`` / ``top_p``. Rewards: ``rewards``
    names built-in reward functions (``exact_match``, ``char_match``, ``regex_match``, ``numeric_answer``; the
    Python API also takes functions), summed with ``reward_weights`` (default all 1).

    Objective (see ``grpo.loss``): advantages normalised per group (``scale_rewards="group"``)
    or only centred (``"none"``); the policy ratio clipped to ``[1 - epsilon, 1 + epsilon_high]``
    (``epsilon_high`` defaults to ``epsilon``); ``beta`` > 0 adds the k3 KL estimate to a frozen
    reference (``reference``: ``model``, a frozen copy of the starting weights, or ``adapter``,
    the same model with its LoRA adapters disabled; ``auto`` picks ``adapter`` when there are
    adapters); ``num_iterations`` (mu) optimizer steps on each batch of rollouts, the ratio then
    taken against the log-probs of the policy that sampled them. ``loss_type``: ``dapo`` (every
    completion token of a step weighs the same; TRL's default), ``grpo`` (mean per completion,
    then over completions), ``dr_grpo`` (sum per completion / ``max_new``).
    """

    group_size: int = 8
    max_new: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    rewards: list[str] = Field(default_factory=lambda: ["exact_match"])
    reward_weights: list[float] | None = None
    scale_rewards: str = "group"
    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.0
    reference: str = "auto"
    num_iterations: int = 1

    @model_validator(mode="after")
    def _check(self) -> GRPOConfig:
        if self.group_size < 2:
            raise ValueError(f"group_size={self.group_size}: GRPO compares the completions of one prompt with each "
                             "other, and a group of one has advantage 0 (no learning signal); use group_size >= 2 "
                             "(4-16 is usual)")
        if self.max_new < 1 or self.num_iterations < 1:
            raise ValueError(f"max_new and num_iterations must be >= 1, got {self.max_new} and {self.num_iterations}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for rollouts (greedy completions of one prompt are all the "
                             f"same, so their advantages are 0), got {self.temperature}")
        check_choice("loss_type", self.loss_type, LOSS_TYPES)
        check_choice("scale_rewards", self.scale_rewards, SCALES)
        check_choice("reference", self.reference, REFERENCES)
        if self.epsilon <= 0 or (self.epsilon_high is not None and self.epsilon_high <= 0):
            raise ValueError("epsilon and epsilon_high must be > 0")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0 (0: no KL term, no reference model), got {self.beta}")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} values for {len(self.rewards)} rewards; "
                             "give one weight per reward (or none for all 1)")
        return self


class PromptDataConfig(ChatDataConfig):
    """Settings of the prompt loaders.

    Rows are TRL's prompt-only format: ``prompt`` (a string, or a list of messages) plus any
    other columns, which reach the reward functions by name (e.g. ``answer``). ``strings``: how
    a string prompt is rendered, ``chat`` (a user turn in ``template``, then the assistant
    header) or ``text`` (the string as it is, as TRL does). ``max_prompt_len``: longer prompts
    are skipped (counted, with a warning); default: the model's ``max_seq`` minus ``max_new``,
    filled in by the trainer's caller (``ttk grpo``).
    """

    batch_size: int = 8
    split: float = 0.9
    template: Any = "chatml"
    strings: str = "chat"
    max_prompt_len: int = 256
    shuffle: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> PromptDataConfig:
        check_choice("strings", self.strings, ("text", "chat"))
        if self.batch_size < 1 or self.max_prompt_len < 1:
            raise ValueError(f"batch_size and max_prompt_len must be >= 1, got {self.batch_size}, "
                             f"{self.max_prompt_len}")
        if not 0.0 < self.split <= 1.0:
            raise ValueError(f"split must be in (0, 1] (the train fraction; 1 = no val prompts), got {self.split}")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        return self
