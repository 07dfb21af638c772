"""Rollouts: a batch of prompts -> sampled groups, rewards, advantages, and a training batch.

``rollout`` samples ``group_size`` completions of every prompt with ``inference.sample_groups``
(one prefill per prompt, all rows decoded together), decodes them to text, scores them with
the reward functions and normalises the rewards per group. The training batch is a dict the
Trainer reads (``input_ids``, ``labels``, ``loss_mask``; the rest lands in ``Batch.extra``):
each row is its prompt then its completion, right-padded, with ``loss_mask`` on the completion
tokens (the stop token included, the padding after it not).

``RolloutStream`` stands in for the Trainer's batch stream: it pulls prompt batches from it and
hands out rollout batches, keeping them for ``num_iterations`` steps; its state (the prompt
position, and the kept rollouts when a checkpoint falls inside those steps) is saved per rank
with the rest of the data position, so a resumed run trains on the very same rollouts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..inference.groups import Groups, sample_groups
from ..inference.sampling import SamplingParams
from .config import GRPOConfig
from .loss import group_advantages
from .rewards import score


def completion_texts(tokenizer, groups: Groups, stop_ids: list[int], conversational: bool) -> list:
    """Each completion as TRL hands it to reward functions: its text without the stop token (a
    string), or ``[{"role": "assistant", "content": text}]`` for conversational prompts."""
    out = []
    stops = set(stop_ids)
    for row, n in zip(groups.tokens.tolist(), groups.lengths.tolist(), strict=True):
        ids = row[:n]
        if ids and ids[-1] in stops:
            ids = ids[:-1]
        text = tokenizer.decode(ids)
        out.append([{"role": "assistant", "content": text}] if conversational else text)
    return out


def training_rows(prompt_ids: list[Tensor], groups: Groups, pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, y, loss_mask)`` ``(P * G, T)``: row ``r`` is its prompt then its completion
    (``y`` is ``x`` shifted by one), ``loss_mask`` 1 where ``y`` is a completion token."""
    G = groups.group
    lens = groups.lengths.tolist()
    plen = [int(prompt_ids[r // G].shape[0]) for r in range(len(lens))]
    T = max(p + n for p, n in zip(plen, lens, strict=True))
    device = groups.tokens.device
    seq = torch.full((len(lens), T), pad, dtype=torch.long, device=device)
    mask = torch.zeros(len(lens), T - 1, dtype=torch.float32, device=device)
    for r, (p, n) in enumerate(zip(plen, lens, strict=True)):
        seq[r, :p] = prompt_ids[r // G].to(device)
        seq[r, p:p + n] = groups.tokens[r, :n]
        mask[r, p - 1:p - 1 + n] = 1.0
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous(), mask


def rollout(model, batch: dict, cfg: GRPOConfig, rewards: list, weights: list[float], tokenizer,
            stop_ids: list[int], pad: int, conversational: bool,
            all_done: Callable[[Tensor], bool] | None = None) -> dict:
    """Sample, score and normalise one prompt batch; returns the training batch dict (see module)."""
    G = cfg.group_size
    params = SamplingParams(cfg.temperature, cfg.top_k, cfg.top_p)
    groups = sample_groups(model, batch["ids"], G, cfg.max_new, params, stop_ids, pad, all_done=all_done)
    completions = completion_texts(tokenizer, groups, stop_ids, conversational)
    prompts = [p for p in batch["prompts"] for _ in range(G)]
    columns = {k: [v for v in vs for _ in range(G)] for k, vs in batch["columns"].items()}
    total, each = score(rewards, weights, prompts, completions, columns)
    device = groups.tokens.device
    reward = torch.tensor(total, dtype=torch.float32, device=device)
    adv, std = group_advantages(reward, G, cfg.scale_rewards)
    x, y, mask = training_rows(batch["ids"], groups, pad)
    out = {"input_ids": x, "labels": y, "loss_mask": mask, "advantages": adv, "reward": reward, "reward_std": std,
           "completion_length": groups.lengths.float()}
    for name, values in each.items():
        out[f"rewards/{name}"] = torch.tensor(values, dtype=torch.float32, device=device)
    return out


class RolloutStream:
    """The Trainer's ``stream`` for GRPO: ``next()`` returns rollout batches (see module)."""

    def __init__(self, stream, make: Callable[[dict], dict], accum: int, iterations: int):
        self.stream, self.make = stream, make
        self.accum, self.iterations = accum, iterations
        self.calls = 0  # batches handed out so far
        self.kept: list[dict] = []  # this cycle's rollouts, one per micro-batch

    def seed(self, seed: int) -> None:
        self.stream.seed(seed)

    def next(self) -> dict:
        i, step = self.calls % self.accum, self.calls // self.accum
        if step % self.iterations == 0:
            if i == 0:
                self.kept = []
            self.kept.append(self.make(self.stream.next()))
        batch = self.kept[i]
        self.calls += 1
        return batch

    def _mid_cycle(self) -> bool:
        return self.iterations > 1 and (self.calls // self.accum) % self.iterations != 0

    def state_dict(self) -> dict:
        state = self.stream.state_dict()
        kept = [{k: v.cpu() for k, v in b.items()} for b in self.kept] if self._mid_cycle() else []
        state["rollouts"] = {"calls": self.calls, "kept": kept}
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        saved = state.pop("rollouts", None) or {"calls": 0, "kept": []}
        self.stream.load_state_dict(state)
        self.calls, self.kept = int(saved["calls"]), list(saved["kept"])
        if self._mid_cycle() and len(self.kept) != self.accum:
            raise ValueError("this checkpoint was saved between the num_iterations steps on one batch of rollouts "
                             "but holds no rollouts (saved with other settings?); resume with the num_iterations "
                             "and grad_accum_steps it was trained with")
