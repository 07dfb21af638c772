"""GRPOTrainer: the Trainer loop with rollouts and the GRPO objective in place of next-token loss.

The loader yields prompt batches (``grpo.from_prompt_*``); the trainer's batch stream turns
each into rollouts (``rollout.RolloutStream``: ``group_size`` sampled completions per prompt,
scored, advantages per group) and ``compute_loss`` is the clipped-ratio policy loss on the
completion tokens (``grpo.loss``). Checkpoints, exact resume (the sampling RNG is the torch RNG
the checkpoint saves per rank), Ctrl+C pauses, DDP/FSDP2, LoRA and logging are the Trainer's.

Recorded per step (metrics.jsonl, TensorBoard, the plot): ``reward`` (mean over completions),
``reward_std`` (the mean spread within a group), ``zero_std`` (share of groups whose completions
all scored the same: no signal), ``rewards/<fn>`` per reward function, ``completion_length``,
``kl`` (per completion token; 0 without a reference) and ``clip_ratio`` (share of completion
tokens whose ratio was clipped). Evals sample one greedy completion per val prompt: the val
"loss" is minus its mean reward, so the best checkpoint is the one with the highest reward.

>>> trainer = GRPOTrainer(model, train_dl, val_dl, tok.vocab_size, TrainConfig(max_steps=100),  # doctest: +SKIP
...                       tokenizer=tok, grpo=GRPOConfig(group_size=8, rewards=["exact_match"]))
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
from torch import Tensor

from ..inference.groups import sample_groups
from ..inference.sampling import SamplingParams
from ..lora import adapters, disabled
from ..trainer import Trainer
from ..trainer import distributed as D
from ..trainer.batches import Batch
from ..trainer.reference import frozen_copy, frozen_eval, place, same_reference
from .config import GRPOConfig
from .loss import grpo_token_loss, reduce_loss, token_logps
from .rewards import check_columns, resolve, score
from .rollout import RolloutStream, completion_texts, rollout

PER_TOKEN = ("kl", "clip_ratio")  # statistics per completion token; the others are per completion


class GRPOTrainer(Trainer):
    """``GRPOTrainer(model, train_dl, val_dl, vocab_size, cfg, tokenizer, grpo=GRPOConfig(...))``.

    ``reward_funcs``: functions ``fn(prompts, completions, **columns) -> list[float]`` used in
    place of ``grpo.rewards`` (names of built-ins; both may be mixed in the list).
    ``stop_ids``: tokens that end a completion (default: the loader's, from its chat template:
    EOS and the assistant closer). ``ref_model``: the reference for ``beta > 0`` (default: a
    frozen copy of ``model`` as it is now, or the model without its adapters under LoRA)."""

    loss_is_nll = False
    progress_stats = ("reward", "kl")

    def __init__(self, model: nn.Module, train_dl, val_dl, vocab_size: int, cfg=None, tokenizer=None, *,
                 grpo: GRPOConfig | dict | None = None, reward_funcs: list | None = None,
                 stop_ids: list[int] | None = None, ref_model: nn.Module | None = None, uploader=None,
                 data_config: dict | None = None):
        self.grpo = grpo if isinstance(grpo, GRPOConfig) else GRPOConfig(**(grpo or {}))
        if tokenizer is None:
            raise ValueError("GRPOTrainer needs the tokenizer: reward functions score completions as text")
        self.rewards = resolve(reward_funcs if reward_funcs is not None else self.grpo.rewards)
        self.weights = self.grpo.reward_weights or [1.0] * len(self.rewards)
        if len(self.weights) != len(self.rewards):
            raise ValueError(f"reward_weights has {len(self.weights)} values for {len(self.rewards)} reward functions")
        data = getattr(train_dl, "dataset", None)
        if not hasattr(data, "columns") or not hasattr(data, "ids"):
            raise ValueError("GRPOTrainer reads prompt batches: build the loaders with "
                             "transformer_toolkit.grpo.from_prompt_samples / from_prompt_json")
        for ds in (data, getattr(val_dl, "dataset", None)):
            if ds is not None:
                check_columns(self.rewards, set(ds.columns))
        self.stop_ids = list(stop_ids if stop_ids is not None else data.stop_ids)
        self.pad = self.stop_ids[0] if self.stop_ids else 0
        self.conversational = data.conversational
        self.reference = None
        if self.grpo.beta > 0:
            self.reference = self.grpo.reference
            if self.reference == "auto":
                self.reference = "adapter" if adapters(model) and ref_model is None else "model"
            if self.reference == "adapter" and not adapters(model):
                raise ValueError("reference='adapter' needs a model with LoRA adapters; use reference='model'")
        # the reference copy is made before the Trainer moves, shards or wraps the model
        ref, self._ref_print = frozen_copy(model, ref_model) if self.reference == "model" else (None, None)
        super().__init__(model, train_dl, val_dl, vocab_size, cfg, tokenizer, uploader=uploader,
                         data_config=data_config)
        self.ref_model = None if ref is None else place(ref, self)
        max_prompt = max(int(i.shape[0]) for i in data.ids)
        if max_prompt + self.grpo.max_new > self.model.cfg.max_seq:
            raise ValueError(f"prompts of up to {max_prompt} tokens + max_new={self.grpo.max_new} exceed the model's "
                             f"max_seq={self.model.cfg.max_seq}; lower max_new or PromptDataConfig(max_prompt_len)")
        if self.metrics:
            self.metrics.panel = ("reward",)  # the plot shows the reward under the loss
        self.stream = RolloutStream(self.stream, self._rollout, self.cfg.grad_accum_steps, self.grpo.num_iterations)

    # rollouts ------------------------------------------------------------------------------
    def _all_done(self):
        """Under FSDP every rank runs each decode step (its forward gathers the shards): stop
        when every row of every rank has stopped. Elsewhere, when this rank's rows have."""
        if not (self.dist.enabled and self.cfg.parallel == "fsdp"):
            return None
        return lambda done: D.all_reduce_sum((~done).sum().float(), self.dist).item() == 0

    def _rollout(self, batch: dict) -> dict:
        with self.precision.autocast():
            out = rollout(self.model, batch, self.grpo, self.rewards, self.weights, self.tokenizer, self.stop_ids,
                          self.pad, self.conversational, self._all_done())
        x = out["input_ids"]
        if self.grpo.num_iterations > 1:  # the ratio's denominator: the policy that sampled
            with self._frozen_eval(self.model):
                out["old_logps"] = self._logps(self.model, x, out["labels"])
        if self.reference is not None:
            out["ref_logps"] = self.reference_logps(x, out["labels"])
        return out

    @contextmanager
    def _frozen_eval(self, model: nn.Module):
        """``frozen_eval`` under the run's autocast, as the rollouts are sampled."""
        with frozen_eval(model), self.precision.autocast():
            yield

    def _logps(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        out = model(x)
        return token_logps(out[0] if isinstance(out, tuple) else out, y)

    def reference_logps(self, x: Tensor, y: Tensor) -> Tensor:
        """``(B, T)`` per-token log-probs of ``y`` under the reference."""
        if self.reference == "adapter":
            with self._frozen_eval(self.model), disabled(self.model):
                return self._logps(self.model, x, y)
        with self._frozen_eval(self.ref_model):
            return self._logps(self.ref_model, x, y)

    # the objective -------------------------------------------------------------------------
    def count_tokens(self, batch: Batch) -> Tensor:
        """The loss's unit (``loss_type``): completion tokens, or completions."""
        if batch.loss_mask is None or not batch.extra or "advantages" not in batch.extra:
            raise ValueError("GRPOTrainer trains on rollouts; its loader must yield prompt batches "
                             "(transformer_toolkit.grpo.from_prompt_samples)")
        mask = batch.loss_mask
        return reduce_loss(torch.zeros_like(mask), mask, self.grpo.loss_type, self.grpo.max_new)[1].float()

    def compute_loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        g, ex, mask = self.grpo, batch.extra, batch.loss_mask
        out = model(batch.x)
        logits, aux = out if isinstance(out, tuple) else (out, None)
        logps = token_logps(logits, batch.y)
        token_loss, diag = grpo_token_loss(logps, ex["advantages"], ex.get("old_logps"), ex.get("ref_logps"),
                                           g.beta, g.epsilon, g.epsilon_high)
        loss, _ = reduce_loss(token_loss, mask, g.loss_type, g.max_new)
        self._record_rollout(ex, mask)
        self.record("kl", (diag["kl"] * mask).sum())
        self.record("clip_ratio", (diag["clipped"] * mask).sum())
        aux = torch.zeros((), device=batch.x.device) if aux is None else aux.float()
        return loss, aux

    def _record_rollout(self, ex: dict, mask: Tensor) -> None:
        self.record("_completions", torch.tensor(float(mask.shape[0]), device=mask.device))
        self.record("_tokens", mask.sum())
        for name in ("reward", "reward_std", "completion_length"):
            self.record(name, ex[name].sum())
        # counted on every row of a group alike, so the mean over rows is the share of groups
        self.record("zero_std", (ex["reward_std"] < 1e-6).float().sum())
        for name in ex:
            if name.startswith("rewards/"):
                self.record(name, ex[name].sum())

    def _reduce_stats(self, head: list[Tensor], count: Tensor) -> tuple[list[float], dict[str, float]]:
        """Per-completion and per-token means: each statistic over its own count (recorded
        alongside it and reduced in the same all-reduce), whatever the loss's unit."""
        values, stats = super()._reduce_stats(head, count)
        n_rows, n_tok = stats.pop("_completions", 0.0), stats.pop("_tokens", 0.0)
        return values, {k: v / max(n_tok if k in PER_TOKEN else n_rows, 1e-12) for k, v in stats.items()}

    # evaluation: greedy completions of the val prompts --------------------------------------
    @torch.no_grad()
    def evaluate(self, every_prompt: bool = False) -> float | None:
        """Minus the mean reward of one greedy completion per val prompt (all ranks; the first
        ``eval_iters`` batches unless ``every_prompt``); the mean reward and each function's go
        to ``eval_stats``."""
        if self.val_dl is None:
            return None
        if self._val_start is not None:
            self.val_dl.load_state_dict(self._val_start)
        sums: dict[str, Tensor] = {}
        with torch.random.fork_rng(devices=[]), self.precision.autocast():
            for i, batch in enumerate(self.val_dl):
                if not every_prompt and self.cfg.eval_iters is not None and i >= self.cfg.eval_iters:
                    break
                for k, v in self._eval_batch(batch).items():
                    sums[k] = sums[k] + v if k in sums else v
        names = sorted(sums)
        if not names:
            return None
        totals = D.all_reduce_sum(torch.stack([sums[k] for k in names]), self.dist).tolist()
        n = totals[names.index("_n")]
        self.eval_stats = {k: v / max(n, 1.0) for k, v in zip(names, totals, strict=True) if k != "_n"}
        return -self.eval_stats["reward"]

    def _eval_batch(self, batch: dict) -> dict[str, Tensor]:
        greedy = SamplingParams(0.0)
        groups = sample_groups(self.model, batch["ids"], 1, self.grpo.max_new, greedy, self.stop_ids, self.pad,
                               all_done=self._all_done())
        completions = completion_texts(self.tokenizer, groups, self.stop_ids, self.conversational)
        total, each = score(self.rewards, self.weights, batch["prompts"], completions, batch["columns"])
        out = {"_n": torch.tensor(float(len(total)), device=self.device),
               "reward": torch.tensor(sum(total), device=self.device)}
        for name, values in each.items():
            out[f"rewards/{name}"] = torch.tensor(sum(values), device=self.device)
        return out

    # checkpoints: the reference must be the one the run started with -------------------------
    def extra_state(self) -> dict:
        return {"ref_fingerprint": self._ref_print} if self._ref_print is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if not same_reference(state.get("ref_fingerprint"), self._ref_print):
            raise ValueError("the reference model differs from the one this run started with: build the GRPOTrainer "
                             "from the starting weights (the checkpoint then restores the trained ones), or pass "
                             "that model as ref_model")

