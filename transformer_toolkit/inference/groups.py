"""``sample_groups``: ``group`` sampled completions of each prompt, in one batched generation.

What GRPO's rollouts need: for P prompts, P x G completions. A loop of G ``generate`` calls
would prefill every prompt G times and decode G small batches; here each prompt is prefilled
once (``Engine.start_groups``), its cache rows copied to its G rows, and all P x G rows decode
together, each at its own position (prompts may differ in length).

>>> out = sample_groups(model, [ids_a, ids_b], group=8, max_new=32, params=SamplingParams(1.0),  # doctest: +SKIP
...                     stop_ids=[eos])
>>> out.tokens.shape, out.lengths.shape                                                           # doctest: +SKIP
(torch.Size([16, 32]), torch.Size([16]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.kernels import decode_kernels
from .engine import Engine
from .sampling import SamplingParams, sample


@dataclass
class Groups:
    """``tokens`` ``(P * G, max_new)``: row ``p * G + g`` is completion ``g`` of prompt ``p``,
    padded with ``pad`` after its stop token (or its end); ``lengths`` ``(P * G,)``: how many
    tokens each completion has, its stop token included."""

    tokens: Tensor
    lengths: Tensor
    group: int


@torch.no_grad()
def sample_groups(model, prompts: list[Tensor], group: int, max_new: int, params: SamplingParams,
                  stop_ids: Iterable[int] = (), pad_id: int | None = None, generator: torch.Generator | None = None,
                  all_done: Callable[[Tensor], bool] | None = None) -> Groups:
    """Sample ``group`` completions of up to ``max_new`` tokens for each of ``prompts`` (1-D id
    tensors). A row stops at its first ``stop_ids`` token. ``all_done(done)`` decides when to end
    early (default: when every row has stopped); under FSDP every rank must run the same number
    of forwards, so the caller passes a rule that agrees across ranks. The model runs in eval
    mode (no dropout) and is restored afterwards."""
    if group < 1 or max_new < 1 or not prompts:
        raise ValueError(f"need prompts, group >= 1 and max_new >= 1 (got {len(prompts)}, {group}, {max_new})")
    device = next(model.parameters()).device
    n_rows = len(prompts) * group
    longest = max(int(p.shape[0]) for p in prompts)
    if longest + max_new > model.cfg.max_seq:
        raise ValueError(f"a prompt of {longest} tokens + max_new={max_new} exceeds the model's max_seq="
                         f"{model.cfg.max_seq}; lower max_new (or the prompt length)")
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    pad = pad_id if pad_id is not None else (int(stops[0]) if len(stops) else 0)
    out = torch.full((n_rows, max_new), pad, dtype=torch.long, device=device)
    lengths = torch.full((n_rows,), max_new, dtype=torch.long, device=device)
    done = torch.zeros(n_rows, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()
    try:
        with decode_kernels(model):
            engine = Engine.create(model, n_rows, longest + max_new, device)
            logits = engine.start_groups(prompts, group)
            for t in range(max_new):
                nxt = sample(logits, params, generator)
                nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
                out[:, t] = nxt
                stopped = ~done & torch.isin(nxt, stops)
                lengths = torch.where(stopped, t + 1, lengths)
                done = done | stopped
                if t == max_new - 1 or (all_done or _every)(done):
                    break
                logits = engine.decode(nxt)
    finally:
        model.train(was_training)
    return Groups(out, lengths, group)


def _every(done: Tensor) -> bool:
    return bool(done.all())
