"""One variant at one seed: an ordinary run folder, trained under the budget, then measured.

``run_job(job, shared)`` trains ``job.config`` (a resolved run config, as a run folder's
config.yaml holds it) on the shared token file, with the budget turned into this variant's own
``max_steps`` (tokens, FLOPs) or ``max_time`` (time), and writes ``compare.json`` beside the
checkpoints: the measured figures and the validation curve. The folder is then a run like any
``ttk train`` makes, so ``ttk generate/chat/eval/export --run FOLDER`` work on it.

Resuming: a folder whose ``compare.json`` says done (for the same plan) is skipped; one with
checkpoints and no result continues from its newest checkpoint, exactly (the Trainer's resume).
A variant that fails (cannot be built, diverges, runs out of memory) gets ``status: failed``
and its error; the next run of the compare tries it again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..data import DataConfig, from_binary
from ..data.tokens import open_tokens
from ..model import Transformer, TransformerConfig
from ..store import runs
from ..store.checkpoint import latest_ckpt
from ..tokenizer import load_tokenizer
from ..trainer import TrainConfig, Trainer
from ..trainer.mfu import flops_per_token, peak_flops
from . import measure
from .plan import Budget, Variant, budget_steps

RESULT = "compare.json"
NO_STEP_LIMIT = 10**12  # max_steps of a time budget: the clock ends the run
# train fields that may differ between the first run of a folder and its resume
RUNTIME_FIELDS = ("device", "progress")


@dataclass
class Shared:
    """What every job of a compare shares."""

    tokens: str  # the token file all variants train on
    tokenizer: str  # its tokenizer (tokenizer.json)
    heldout: str  # the held-out split as a token file (bits per byte)
    budget: Budget
    evals: int = 10
    bpb_tokens: int = 50_000
    decode_tokens: int = 32
    tasks: list = field(default_factory=list)
    # this CPU's measured matmul peak (FLOP/s) per dtype name ("torch.bfloat16"): MFU on a CPU
    cpu_peak: dict = field(default_factory=dict)


@dataclass
class Job:
    variant: Variant
    seed: int
    folder: str
    config: dict | None  # the resolved run config; None when the variant could not be built
    error: str | None = None


def read_result(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / RESULT
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _plan_of(job: Job, shared: Shared) -> dict:
    """What decides a job's result: a done result for another plan is not reused."""
    return {"config": job.config, "budget": str(shared.budget), "evals": shared.evals, "tasks": shared.tasks}


def _base_result(job: Job, shared: Shared, status: str) -> dict:
    return {"variant": job.variant.name, "family": job.variant.family, "size": job.variant.size,
            "overrides": job.variant.overrides, "seed": job.seed, "folder": os.fspath(job.folder), "status": status,
            "plan": _plan_of(job, shared)}


def failed(job: Job, shared: Shared, error: str) -> dict:
    return {**_base_result(job, shared, "failed"), "error": error}


def paused(job: Job, shared: Shared, step: int | None) -> dict:
    return {**_base_result(job, shared, "paused"), "step": step}


def first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def finished(job: Job, shared: Shared) -> dict | None:
    """The job's result when it finished earlier under the same plan (reused as it is), else
    None. A finished run of another plan is refused, so old and new runs never mix in a report."""
    done = read_result(job.folder)
    if not done or done.get("status") != "done":
        return None
    if done.get("plan") != _plan_of(job, shared):
        raise ValueError(f"{job.folder} holds a finished run of another plan (a changed config, budget or task "
                         "list); use another --out, or delete that folder to train it again")
    return {**done, "skipped": True}


def run_job(job: Job, shared: Shared, device: str | None = None) -> dict:
    """Train and measure one job (or reuse its finished result); returns the result dict with
    ``status`` "done", "failed" or "paused" (Ctrl+C: the Trainer writes pause.pt, or the
    measurements after training stop; the next run resumes, then measures)."""
    done = finished(job, shared)
    if done is not None:
        return done
    folder = Path(job.folder)
    started = time.time()
    if job.error is not None:
        result = failed(job, shared, job.error)
    else:
        try:
            result = _train_and_measure(job, shared, device)
        except KeyboardInterrupt:  # outside the Trainer's own handler (while measuring, or not interruptible)
            result = paused(job, shared, None)
        except Exception as e:  # one variant's failure (a bad value, divergence, out of memory) is reported
            result = failed(job, shared, first_line(e))
    result.update(pid=os.getpid(), started_at=started, finished_at=time.time())
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / RESULT, json.dumps(result, indent=1, default=_json_default) + "\n")
    return result


def _json_default(value: Any):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _final_config(job: Job, shared: Shared, model, device: str | None) -> tuple[dict, int, float]:
    """The run's config.yaml: the budget as max_steps or max_time, evals spread along the run,
    checkpoints where the run folder expects them. Also tokens per step and FLOPs per token."""
    cfg = json.loads(json.dumps(job.config))  # a deep copy
    data, train = cfg["data"], cfg["train"]
    tokens_per_step = int(data["batch_size"]) * int(data["seq_len"]) * int(train["grad_accum_steps"])
    fpt = flops_per_token(model, int(data["seq_len"]))
    steps = budget_steps(shared.budget, tokens_per_step, fpt)
    if steps is None:
        train.update(max_steps=NO_STEP_LIMIT, max_time=shared.budget.value)
    else:
        every = max(1, steps // shared.evals)
        train.update(max_steps=steps, max_time=None, eval_every=every, save_every=every,
                     log_every=max(1, min(int(train["log_every"]), every)))
    train.update(ckpt_dir=os.fspath(runs.checkpoint_dir(job.folder)), log_dir=os.fspath(job.folder))
    if device is not None:
        train["device"] = device
    return cfg, tokens_per_step, fpt


def _comparable(cfg: dict) -> dict:
    return {**cfg, "train": {k: v for k, v in cfg["train"].items() if k not in RUNTIME_FIELDS}}


def _write_config(folder: Path, cfg: dict) -> None:
    old = runs.read_config(folder)
    if old and _comparable(old) != _comparable(cfg):
        raise ValueError(f"{folder} was started with another config; use another --out, or delete that "
                         "folder to train it again")
    runs.write_config(cfg, folder)


def _keep_tokenizer(folder: Path, shared: Shared, tok) -> None:
    """The run folder holds its own tokenizer.json, as every run folder does."""
    target = folder / runs.TOKENIZER
    if target.is_file():
        return
    if os.path.isfile(shared.tokenizer):
        tmp = folder / f"{runs.TOKENIZER}.tmp"
        shutil.copyfile(shared.tokenizer, tmp)
        os.replace(tmp, target)
    else:
        runs.save_tokenizer(tok, folder)


def build(job: Job, shared: Shared, device: str | None = None) -> tuple[Trainer, Any, int, float]:
    """The job's run folder (config.yaml, tokenizer.json) and its Trainer, not yet trained;
    also the tokenizer, tokens per step and FLOPs per token."""
    folder = Path(job.folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(job.seed)  # the same initial weights for a seed, whatever ran before in this process
    model = Transformer(TransformerConfig.from_dict(job.config["model"]))
    cfg, tokens_per_step, fpt = _final_config(job, shared, model, device)
    _write_config(folder, cfg)
    tok = load_tokenizer(shared.tokenizer)
    _keep_tokenizer(folder, shared, tok)
    data_cfg = DataConfig(**{k: v for k, v in cfg["data"].items() if k in DataConfig.model_fields})
    train_dl, val_dl = from_binary(shared.tokens, data_cfg, tokenizer=tok)
    trainer = Trainer(model, train_dl, val_dl, tok.vocab_size, TrainConfig(**cfg["train"]), tokenizer=tok,
                      data_config=cfg["data"])  # checkpoints record the data settings, as ttk train's do
    return trainer, tok, tokens_per_step, fpt


def _train_and_measure(job: Job, shared: Shared, device: str | None) -> dict:
    folder = Path(job.folder)
    trainer, tok, tokens_per_step, fpt = build(job, shared, device)
    model, train_cfg = trainer.model, trainer.cfg
    dev = trainer.device
    measure.reset_peak_memory(dev)
    summary = trainer.train(resume_from="auto" if latest_ckpt(train_cfg.ckpt_dir) else None)
    peak, peak_kind = measure.peak_memory(dev)
    if summary["paused"]:
        return paused(job, shared, summary["step"])
    result = _base_result(job, shared, "done")
    model.eval()
    records = measure.read_metrics(folder)
    tok_s = measure.training_speed(records)
    peak_device = peak_flops(dev) or (shared.cpu_peak.get(str(trainer.precision.dtype)) if dev.type == "cpu" else None)
    total, active = measure.parameters(model)
    heldout = open_tokens(shared.heldout)
    val_loss = summary["val_loss"]
    result.update({
        "device": str(dev), "params": total, "active_params": active, "steps": summary["step"],
        "tokens": summary["step"] * tokens_per_step, "flops_per_token": fpt,
        "flops": summary["step"] * tokens_per_step * fpt, "elapsed": summary["elapsed"],
        "tok_s": tok_s, "mfu": tok_s * fpt / peak_device if tok_s and peak_device else None,
        "peak_memory": peak, "peak_memory_kind": peak_kind, "kv_bytes_per_token": measure.kv_bytes_per_token(model),
        "decode_tok_s": measure.decode_tokens_per_s(model, [int(t) for t in heldout[:8]], shared.decode_tokens),
        "val_loss": val_loss if val_loss is not None and math.isfinite(val_loss) else None,
        "bits_per_byte": _bits_per_byte(model, tok, shared),
        "tasks": _tasks(model, tok, shared, heldout),
        "curve": measure.curve(records, tokens_per_step, fpt),
    })
    return result


def _bits_per_byte(model, tok, shared: Shared) -> float | None:
    from ..evaluation import bits_per_byte

    with torch.no_grad():
        bpb = bits_per_byte(model, tok, files=[shared.heldout], max_tokens=shared.bpb_tokens)["all"]["bits_per_byte"]
    return bpb if math.isfinite(bpb) else None


def _tasks(model, tok, shared: Shared, heldout) -> dict[str, float]:
    if not shared.tasks:
        return {}
    from ..evaluation import evaluate_tasks, scores

    return scores(evaluate_tasks(model, tok, shared.tasks, heldout=lambda: heldout.tolist()))
