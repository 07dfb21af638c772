"""The Trainer's persistent state: checkpoints written and resumed, Hub pushes of the weights.

A mixin of ``Trainer`` (kept apart so each file reads in one sitting); it uses the Trainer's
``model``, ``optimizer``, ``scaler``, ``stream``, ``cfg``, ``dist`` and step counters.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from ..store.checkpoint import FORMAT, load_model_state, prune_step_ckpts, read_ckpt, save_checkpoint
from . import distributed as D
from .hub import cpu_snapshot
from .rng import rng_state, set_rng_state


class PersistMixin:
    # checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, kind: str = "step") -> Path:
        """Write ``best.pt``, ``pause.pt`` or ``step_N.pt`` (``kind`` = "best" | "pause" | "step")
        atomically into ``ckpt_dir``. Under torchrun every rank must call it; rank 0 writes."""
        model_sd, optim_sd = D.full_state(self.model, self.optimizer)
        rng = D.gather_objects(rng_state(), self.dist)
        data = D.gather_objects(self.stream.state_dict(), self.dist)
        name = f"step_{self.step}.pt" if kind == "step" else f"{kind}.pt"
        path = Path(self.cfg.ckpt_dir) / name
        if self.dist.is_main:
            cfg = getattr(self.model, "cfg", None)
            save_checkpoint(
                path, kind=kind, model=model_sd, optimizer=optim_sd,
                scaler=self.scaler.state_dict() if self.scaler else None,
                step=self.step, best_val_loss=self.best_val_loss, val_loss=self.val_loss, elapsed=self.elapsed,
                model_config=cfg.to_dict() if hasattr(cfg, "to_dict") else None,
                train_config=self.cfg.to_dict(), rng=rng, data=data, world_size=self.dist.world_size)
            if kind == "step":
                prune_step_ckpts(self.cfg.ckpt_dir, self.cfg.keep_last_n)
        D.barrier(self.dist)
        return path

    def _resume(self, path) -> None:
        ckpt = read_ckpt(path, map_location="cpu")
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            raise ValueError(f"{path} is not a Trainer checkpoint (no format={FORMAT!r}); to start from its "
                             "weights only, load them into the model and call train() without resume_from")
        if D.is_sharded(self.model):
            D.load_full_state(self.model, self.optimizer, ckpt["model"], ckpt["optimizer"])
        else:
            load_model_state(ckpt, self.model, path)
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.best_val_loss, self.val_loss = ckpt["step"], ckpt["best_val_loss"], ckpt.get("val_loss")
        self.elapsed = float(ckpt.get("elapsed", 0.0))  # older checkpoints: no time recorded
        changed = {k: (v, self.cfg.to_dict().get(k)) for k, v in (ckpt.get("train_config") or {}).items()
                   if self.cfg.to_dict().get(k) != v}
        if changed:
            self.progress.message("resuming with changed settings: " +
                                  ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        rank, same_world = self.dist.rank, ckpt.get("world_size", 1) == self.dist.world_size
        if not same_world:
            warnings.warn(f"{path} was saved by {ckpt.get('world_size')} processes, this run has "
                          f"{self.dist.world_size}: resuming, but the data order and RNG will not match exactly",
                          stacklevel=3)
        self.stream.load_state_dict(ckpt["data"][rank if same_world else 0])
        set_rng_state(ckpt["rng"][rank if same_world else 0])  # last: replaying the data used the RNG
        self.progress.message(f"resumed from {path} at step {self.step} (best val loss {self.best_val_loss:.4f})")

    # hub -----------------------------------------------------------------------------------
    def _push(self, reason: str) -> None:
        """Queue a Hub push of the weights as they are now (every rank calls; rank 0 uploads)."""
        if not self.cfg.hf_repo:
            return
        if D.is_sharded(self.model):
            model_sd, _ = D.full_state(self.model, self.optimizer)
            cls = type(self.model)  # fully_shard swaps in a subclass named FSDP<Model>; rebuild the original
            cls = cls.__bases__[-1] if cls.__name__.startswith("FSDP") else cls
            snapshot = cls(self.model.cfg) if self.dist.is_main else None
            if snapshot is not None:
                snapshot.load_state_dict(model_sd)
                snapshot.eval()
        else:
            snapshot = cpu_snapshot(self.model) if self.dist.is_main else None
        if self.hub is not None and snapshot is not None:
            metrics = {"step": self.step, "val_loss": self.val_loss, "best_val_loss": self.best_val_loss}
            if self.val_loss is not None and math.isfinite(self.val_loss) and self.val_loss < 50:
                metrics["perplexity"] = math.exp(self.val_loss)
            self.hub.push(snapshot, self.step, metrics, reason)

    def _weights_finite(self) -> bool:
        bad = torch.zeros((), device=self.device)
        for p in self.model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            bad += (~torch.isfinite(local.detach())).any()
        return D.all_reduce_sum(bad, self.dist).item() == 0

