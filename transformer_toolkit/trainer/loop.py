"""The Trainer: one loop for pretraining and SFT, on one device or many under torchrun.

>>> trainer = Trainer(model, train_dl, val_dl, tok.vocab_size, TrainConfig(max_steps=3000))  # doctest: +SKIP
>>> trainer.train()                                    # or train(resume_from="auto" | path)  # doctest: +SKIP

One optimizer step = ``grad_accum_steps`` micro-batches fetched first, then forward/backward
each. The objective is the mean loss over every trained token of the whole accumulated batch
(all micro-batches, all ranks): each micro-batch's summed token losses are divided by that
total, so accumulation and data parallelism never change what is optimised, with or without a
loss mask. The MoE ``aux_loss`` (already weighted by ``moe_aux_weight`` in the model) is added
once per step as the mean over micro-batches.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..store.checkpoint import latest_ckpt
from . import distributed as D
from .batches import Batch, BatchStream, check_batch, is_stateful, unpack
from .config import TrainConfig
from .hostmem import keep_freed_memory
from .hub import HubWorker, default_uploader
from .loss import cross_entropy_sum
from .metrics import MetricsLog
from .mfu import flops_per_token, peak_flops
from .optim import build_optimizer, lr_at
from .persist import PersistMixin
from .precision import resolve_device, resolve_precision
from .progress import Progress
from .signals import StopSignals

IGNORE_INDEX = -100  # labels with this value are never trained (PyTorch's cross_entropy convention)


class TrainingDiverged(RuntimeError):
    """The loss was NaN/inf for ``max_bad_steps`` optimizer steps in a row."""


class Trainer(PersistMixin):
    """Train ``model`` on ``train_dl``, evaluating on ``val_dl`` (may be None), per ``cfg``.

    ``tokenizer`` is only used for Hub uploads; ``uploader`` replaces
    ``transformer_toolkit.hf_hub.push_to_hub`` (same keyword signature), e.g. in tests.
    ``data_config``: the settings the loaders were built with (a plain dict, e.g.
    ``DataConfig.to_dict()``); checkpoints keep it, so a resume lists the ones that changed
    (``data.seq_len 64 -> 128``) with the changed ``TrainConfig`` fields.

    Another objective subclasses this and overrides ``compute_loss`` / ``count_tokens`` (see
    ``dpo.DPOTrainer``); ``record`` adds its own statistics to the logs.
    """

    loss_is_nll = True  # the loss is nats per token: evals also report perplexity
    progress_stats: tuple[str, ...] = ()  # recorded statistics shown on the progress line too

    def __init__(self, model: nn.Module, train_dl, val_dl, vocab_size: int, cfg: TrainConfig | dict | None = None,
                 tokenizer=None, *, uploader=None, data_config: dict | None = None):
        cfg = TrainConfig() if cfg is None else cfg
        self.cfg = TrainConfig(**cfg) if isinstance(cfg, dict) else cfg
        self.data_config = data_config
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.dist = D.init_distributed()
        self.device = resolve_device(self.cfg.device)
        self.precision = resolve_precision(self.cfg, self.device)
        if self.device.type == "cpu" and self.cfg.reuse_host_memory:
            keep_freed_memory()  # no page faults on each step's buffers: 1.08-1.20x on shape a
        self.model = model.to(self.device)
        self._check_model(vocab_size)
        self._init_partial()
        D.check_sharded(train_dl, "train_dl", self.dist)
        D.check_sharded(val_dl, "val_dl", self.dist)
        self.train_dl, self.val_dl = train_dl, val_dl
        self.stream = BatchStream(train_dl)
        # Every eval replays the same val batches, so val losses are comparable across evals and runs.
        self._val_start = val_dl.state_dict() if is_stateful(val_dl) else None

        fsdp = self.dist.enabled and self.cfg.parallel == "fsdp"
        if fsdp:
            D.shard_fsdp(self.model)
        self.eval_model = torch.compile(self.model) if self.cfg.compile else self.model
        ddp = self.dist.enabled and not fsdp
        self.train_model = D.wrap_ddp(self.eval_model, self.device) if ddp else self.eval_model
        self.optimizer = build_optimizer(self.model, self.cfg)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]  # for clipping
        self.scaler = self.precision.make_scaler()

        main = self.dist.is_main
        self.progress = Progress(self.cfg.progress if main else "none")
        self.log_dir = Path(self.cfg.log_dir or self.cfg.ckpt_dir)
        self.metrics = MetricsLog(self.log_dir, self.cfg.tensorboard, self.cfg.plot) if main else None
        self.uploader = None
        if self.cfg.hf_repo and main:
            self.uploader = uploader if uploader is not None else default_uploader()
        self.hub: HubWorker | None = None

        self.tasks, self.task_scores = None, None
        if self.cfg.eval_tasks:  # built now: a bad task name fails before the first step
            from ..evaluation.training import TrainingTasks

            self.tasks = TrainingTasks(self.cfg.eval_tasks, tokenizer, val_dl)
        self.step, self.best_val_loss, self.val_loss = 0, math.inf, None
        self.elapsed = 0.0  # seconds spent in the training loop, over every resume (for max_time)
        self._clock = time.perf_counter()
        self._bad_steps, self._checked_batch, self._stop_requested = 0, False, False
        self._signals: StopSignals | None = None
        self._mfu_flops, self._peak_flops = None, peak_flops(self.device)
        self.stats: dict[str, Tensor] = {}  # sums that compute_loss records (see record)
        self.eval_stats: dict[str, float] = {}

    # setup ---------------------------------------------------------------------------------
    def _check_model(self, vocab_size: int) -> None:
        for name, p in self.model.named_parameters():
            if p.is_floating_point() and p.dtype != torch.float32:
                raise ValueError(f"parameter {name} is {p.dtype}; the Trainer keeps fp32 master weights and lowers "
                                 "precision with autocast. Build the model in fp32 (no .half() / .to(bfloat16)) and "
                                 "set mixed_precision=True or precision='bf16'")
        model_vocab = getattr(getattr(self.model, "cfg", None), "vocab_size", None)
        if model_vocab is not None and vocab_size > model_vocab:
            raise ValueError(f"vocab_size={vocab_size} (the tokenizer's) is larger than the model's vocab_size="
                             f"{model_vocab}; build the model with TransformerConfig(vocab_size={vocab_size})")
        self.n_vocab = model_vocab or vocab_size
        if hasattr(self.model, "grad_checkpoint"):
            self.model.grad_checkpoint = self.cfg.grad_checkpoint
        elif self.cfg.grad_checkpoint:
            raise ValueError(f"grad_checkpoint=True but {type(self.model).__name__} has no grad_checkpoint switch")

    # the loss: override these two for another objective -----------------------------------
    def compute_loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """``(sum of the trained tokens' losses, aux_loss)`` for one micro-batch (not a mean:
        the step divides by the token count of the whole accumulated batch)."""
        x, y, loss_mask, doc_ids = batch[:4]
        out = model(x) if doc_ids is None else model(x, doc_ids=doc_ids)
        logits, aux = out if isinstance(out, tuple) else (out, None)
        # the log-softmax runs in fp32 under autocast without an fp32 copy of the logits
        loss = cross_entropy_sum(logits, y, IGNORE_INDEX, weights=loss_mask)
        aux = torch.zeros((), device=x.device) if aux is None else aux.float()
        return loss, aux

    def count_tokens(self, batch: Batch) -> Tensor:
        """How many tokens of this micro-batch are trained (the loss's denominator)."""
        keep = batch.y != IGNORE_INDEX
        if batch.loss_mask is not None:
            return (batch.loss_mask.to(torch.float32) * keep).sum()
        return keep.sum().to(torch.float32)

    def record(self, name: str, total: Tensor) -> None:
        """Add ``total`` (a sum over this micro-batch's units, e.g. pairs) to statistic ``name``:
        the step reports it divided by the step's ``count_tokens`` over every rank (a mean per
        unit), in metrics.jsonl and TensorBoard; evals report it over the val batches. Reduced
        with the loss in the step's one all-reduce, so it costs no extra host sync."""
        total = total.detach().float()
        self.stats[name] = self.stats[name] + total if name in self.stats else total

    def _reduce_stats(self, head: list[Tensor], count: Tensor) -> tuple[list[float], dict[str, float]]:
        """All-reduce ``head`` and the recorded statistics in one call; statistics per unit of ``count``."""
        names = sorted(self.stats)
        values = torch.stack([*head, *(self.stats[k].to(head[0].dtype) for k in names)])
        values = D.all_reduce_sum(values, self.dist).tolist()
        n = max(float(count), 1e-12)
        return values[:len(head)], {k: v / n for k, v in zip(names, values[len(head):], strict=True)}

    # one optimizer step --------------------------------------------------------------------
    def _prepare(self, batch) -> Batch:
        batch = unpack(batch)
        if not self._checked_batch:
            check_batch(batch, getattr(getattr(self.model, "cfg", None), "max_seq", None), self.n_vocab)
            self._checked_batch = True
        return batch.to(self.device)

    def _train_step(self, lr: float, stop: bool) -> dict:
        cfg, accum, world = self.cfg, self.cfg.grad_accum_steps, self.dist.world_size
        batches = [self._prepare(self.stream.next()) for _ in range(accum)]
        n_tokens = torch.stack([self.count_tokens(b) for b in batches]).sum()
        n_tokens = D.all_reduce_sum(n_tokens, self.dist).clamp(min=1)
        self.stats = {}
        # DDP averages gradients over ranks, hence world / n: the sum over ranks is then the mean.
        scale = world / n_tokens
        ce_acc = torch.zeros((), device=self.device)
        aux_acc = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            with D.sync_context(self.train_model, i == accum - 1):
                with self.precision.autocast():
                    loss_sum, aux = self.compute_loss(self.train_model, batch)
                loss = loss_sum * scale + aux / accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            ce_acc += loss_sum.detach() * scale
            aux_acc += aux.detach() / accum
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self._params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        # max_time is decided here, in the step's one collective, so that every rank ends on the same step
        time_up = cfg.max_time is not None and time.perf_counter() - self._clock >= cfg.max_time
        # The one host sync of the step: the NaN guard must decide before the update.
        gnorm, n = torch.stack([norm.detach().float(), n_tokens.float()]).tolist()
        flags = [torch.tensor(float(stop), device=self.device), torch.tensor(float(time_up), device=self.device)]
        (ce, aux, stop_votes, time_votes), stats = self._reduce_stats([ce_acc, aux_acc, *flags], n)
        ce, aux = ce / world, aux / world
        ok = math.isfinite(ce) and math.isfinite(aux) and (self.scaler is not None or math.isfinite(gnorm))
        if ok:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if self.scaler:
                self.scaler.step(self.optimizer)  # skips the update itself when fp16 grads overflowed
            else:
                self.optimizer.step()
            if self.optimizer.defaults.get("fused"):
                # The fused kernel writes the weights without bumping their version counters, which
                # is how decoding tells new weights from old (fast_decode's cached layouts, PromptCache,
                # GRPO's rollouts between steps): bump them, at no cost
                torch.autograd.graph.increment_version(self._params)
        if self.scaler:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = sum(b.x.numel() for b in batches) * world
        return {"loss": ce, "aux": aux, "grad_norm": gnorm, "ok": ok, "stop": stop_votes > 0, "tokens": tokens,
                "seq_len": batches[0].x.shape[1], "stats": stats, "time_up": time_votes > 0}

    # evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss per trained token over ``eval_iters`` val batches (all ranks), or None.

        Runs under a forked CPU RNG: an eval (e.g. a shuffled val DataLoader drawing its order)
        never moves the training RNG, so ``eval_every`` does not change the training run."""
        if self.val_dl is None:
            return None
        with torch.random.fork_rng(devices=[]):
            return self._evaluate()

    def _evaluate(self) -> float | None:
        if self._val_start is not None:
            self.val_dl.load_state_dict(self._val_start)
        self.eval_model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.stats = {}
        try:
            for i, batch in enumerate(self.val_dl):
                if self.cfg.eval_iters is not None and i >= self.cfg.eval_iters:
                    break
                batch = self._prepare(batch)
                with self.precision.autocast():
                    loss_sum, _ = self.compute_loss(self.eval_model, batch)
                total += torch.stack([loss_sum.double(), self.count_tokens(batch).double()])
        finally:
            self.eval_model.train()
        count = D.all_reduce_sum(total[1:].clone(), self.dist).item()
        (loss_sum,), self.eval_stats = self._reduce_stats([total[0]], count)
        self.stats = {}
        return loss_sum / count if count > 0 else None

    def _eval_and_keep_best(self) -> None:
        val = self.evaluate()
        if val is None:
            return
        prev, self.val_loss = self.val_loss, val
        is_best = math.isfinite(val) and val < self.best_val_loss
        if is_best:
            self.best_val_loss = val
        self.progress.eval_line(self.step, val, prev, is_best, self.loss_is_nll, self.eval_stats)
        if self.metrics:
            ppl = {"ppl": math.exp(val) if val < 50 else math.inf} if self.loss_is_nll else {}
            self.metrics.log("eval", self.step, val_loss=val, **ppl, best=is_best, elapsed=round(self.elapsed, 3),
                             **self.eval_stats)
            self.metrics.plot()
        if is_best and self.cfg.save_best:
            if self._weights_finite():
                self.save_checkpoint("best")
                if self.cfg.hf_push_best:
                    self._push("best")
            else:
                warnings.warn(f"step {self.step}: the weights hold NaN/inf; best.pt not written", RuntimeWarning,
                              stacklevel=2)

    def _score_tasks(self) -> None:
        """Score the eval tasks (TrainConfig.eval_tasks) now: a progress line, a metrics record
        (metrics.jsonl, TensorBoard, loss.png's second panel) and eval/tasks_step_N.json/.md."""
        folder = self.log_dir / "eval" if self.metrics else None  # rank 0 writes
        self.task_scores = self.tasks.run(self.model, self.step, self.precision.autocast, folder)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in self.task_scores.items())
        self.progress.message(f"step {self.step} tasks: {shown}")
        if self.metrics:
            self.metrics.log("tasks", self.step, **self.task_scores)
            self.metrics.plot()

    # the loop ------------------------------------------------------------------------------
    def train(self, resume_from: str | None = None, on_start: Callable[[], None] | None = None) -> dict:
        """Train to ``cfg.max_steps`` (or ``cfg.max_time``, if that comes first). ``resume_from``:
        None (continue from this trainer's state, step 0 for a new one), a checkpoint path, or
        "auto" (the newest of pause.pt / step_N.pt in ``ckpt_dir``; a fresh start when there is
        none). Resuming from a checkpoint older than others in ``ckpt_dir`` starts a new
        trajectory: the later ones are moved aside (to ``ckpt_dir/abandoned/``), never deleted
        nor resumed by "auto".

        ``on_start`` is called once the state is restored and steps are about to run (``ttk``
        writes the run's config.yaml there, so a start that fails leaves it as it was).
        Returns a summary dict."""
        cfg = self.cfg
        path = None
        if resume_from == "auto":
            path = D.broadcast_object(latest_ckpt(cfg.ckpt_dir) if self.dist.is_main else None, self.dist)
            if path is None:
                self.progress.message(f"no checkpoint in {cfg.ckpt_dir}: starting fresh")
        elif resume_from is not None:
            path = resume_from
        if path is not None:
            self._resume(path)
            if resume_from != "auto":  # "auto" takes the newest: nothing comes after it but a best.pt it will redo
                self._set_aside_later()
        elif self.step == 0:
            self._seed()
        if self.step >= cfg.max_steps or self._time_up():
            done = f"max_time={cfg.max_time:g}s" if self.step < cfg.max_steps else f"max_steps={cfg.max_steps}"
            self.progress.message(f"already at step {self.step}, {self.elapsed:.0f}s trained: {done} reached, "
                                  "nothing to train")
            D.barrier(self.dist)  # the last collective of a run must be one a teardown survives
            return self._summary(paused=False)
        if on_start is not None and self.dist.is_main:
            on_start()
        if self.metrics:
            self.metrics.start(None if (path is None and self.step == 0) else self.step)
        n_params = getattr(self.model, "n_params", None)
        self.progress.header(cfg, self.precision.name, self.device, self.dist.world_size,
                             n_params() if callable(n_params) else "?")
        if self.val_dl is None:
            self.progress.message("no val_dl: no evals and no best.pt")
        if self.uploader is not None:
            self.hub = HubWorker(self.uploader, cfg.hf_repo, cfg.hf_private, self.tokenizer)
        self.model.train()
        try:
            with StopSignals(cfg.interruptible, self._on_signal) as signals:
                self._signals = signals  # a checkpoint being written defers a second signal
                paused = self._loop(signals)
        except BaseException:
            self._close(wait=False)  # an abort must not wait for uploads in flight
            raise
        finally:
            self._signals = None
        self._close(wait=True)
        D.barrier(self.dist)  # the last collective of a run must be one a teardown survives (see barrier)
        return self._summary(paused)

    def _close(self, wait: bool) -> None:
        if self.hub is not None:
            self.hub.close(wait)
            self.hub = None
        if self.metrics:
            self.metrics.close()

    def request_stop(self) -> None:
        """Pause like a first Ctrl+C: finish the current step, save pause.pt, return from train()
        (for callbacks, notebooks and tests; under torchrun any rank may ask)."""
        self._stop_requested = True

    def _on_signal(self, name: str) -> None:
        self.progress.message(f"⏸ {name}: finishing this step, then saving pause.pt (send it again to abort)")

    def _seed(self) -> None:
        seed = self.cfg.seed + self.dist.rank  # distinct dropout masks per rank
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self.stream.seed(seed + 1_000_003)  # the data loader's own stream, distinct from the model's

    def _loop(self, signals: StopSignals) -> bool:
        cfg, start_step = self.cfg, self.step
        t_start = time.perf_counter()
        self._clock = t_start - self.elapsed  # elapsed = now - _clock, continuing a resumed run's time
        losses, tokens, step_time, stats = [], 0, 0.0, []  # since the last kept log line
        push_every = cfg.hub_push_interval
        while self.step < cfg.max_steps:
            lr = lr_at(self.step, cfg, self.elapsed)
            t0 = time.perf_counter()
            out = self._train_step(lr, signals.requested or self._stop_requested)
            now = time.perf_counter()
            self.step += 1
            self.elapsed = now - self._clock  # evals and saves included: wall-clock time
            last = self.step == cfg.max_steps or out["time_up"]
            self._guard(out, lr)
            if out["ok"]:
                losses.append(out["loss"])
                stats.append(out["stats"])
            # tok/s counts training steps only (not evals or saves); the ETA counts everything.
            tokens, step_time = tokens + out["tokens"], step_time + (now - t0)
            keep = self.step % cfg.log_every == 0 or last
            if self.progress.mode != "none" or keep:
                tok_s = tokens / max(step_time, 1e-9)
                loss = sum(losses) / len(losses) if losses else out["loss"]
                means = {k: sum(s[k] for s in stats) / len(stats) for k in (stats[0] if stats else {})}
                eta = (now - t_start) / (self.step - start_step) * (cfg.max_steps - self.step)
                if cfg.max_time is not None:
                    eta = min(eta, max(0.0, cfg.max_time - self.elapsed))
                shown = {k: means[k] for k in self.progress_stats if k in means}
                self.progress.step(self.progress.step_line(self.step, cfg.max_steps, loss, lr, tok_s, eta,
                                                           self._mfu(tok_s, out["seq_len"]), shown), keep)
            if keep:
                if self.metrics and losses:
                    self.metrics.log("train", self.step, loss=loss, lr=lr, tok_s=round(tok_s), aux=out["aux"],
                                     grad_norm=out["grad_norm"], elapsed=round(self.elapsed, 3), **means)
                losses, tokens, step_time, stats = [], 0, 0.0, []
            if self.step % cfg.eval_every == 0 or last:
                self._eval_and_keep_best()
            if self.tasks is not None and (self.step % (cfg.eval_tasks_every or cfg.eval_every) == 0 or last):
                self._score_tasks()
            if cfg.save_step_ckpts and (self.step % cfg.save_every == 0 or last):
                self.save_checkpoint("step")
            if push_every and self.step % push_every == 0:
                self._push("every_n")
            stop = out["stop"] if self.dist.enabled else (signals.requested or self._stop_requested)
            if stop and not last:
                self._stop_requested = False
                path = self.save_checkpoint("pause")
                self.progress.message(f"paused at step {self.step}: saved {path}; resume with "
                                      f"trainer.train(resume_from={str(path)!r})")
                if cfg.hf_push_on_pause:
                    self._push("pause")
                return True
            if last:
                break
        if cfg.hf_push_end:
            self._push("end")
        self.progress.message(f"done: {self.step} steps, best val loss {self.best_val_loss:.4f}")
        return False

    def _guard(self, out: dict, lr: float) -> None:
        """NaN guard: a step with a NaN/inf loss was not applied; too many in a row end the run."""
        if out["ok"]:
            self._bad_steps = 0
            return
        self._bad_steps += 1
        warnings.warn(f"step {self.step}: loss {out['loss']} / grad norm {out['grad_norm']} is not finite; "
                      f"update skipped ({self._bad_steps} in a row)", RuntimeWarning, stacklevel=3)
        if self._bad_steps >= self.cfg.max_bad_steps:
            raise TrainingDiverged(
                f"training stopped at step {self.step}: the loss was NaN/inf for {self._bad_steps} steps in a row "
                f"(lr {lr:.2e}). Lower lr or warm up longer, keep grad_clip on, try precision='bf16' instead of "
                f"fp16, and check the data; then resume from the last good checkpoint in {self.cfg.ckpt_dir}")

    def _time_up(self) -> bool:
        return self.cfg.max_time is not None and self.elapsed >= self.cfg.max_time

    def _mfu(self, tok_s: float, seq_len: int) -> float | None:
        if self._peak_flops is None:
            return None
        if self._mfu_flops is None:
            self._mfu_flops = flops_per_token(self.model, seq_len)
        return tok_s * self._mfu_flops / (self._peak_flops * self.dist.world_size)

    def _summary(self, paused: bool) -> dict:
        return {"step": self.step, "best_val_loss": self.best_val_loss, "val_loss": self.val_loss, "paused": paused,
                "tasks": self.task_scores, "elapsed": self.elapsed}
