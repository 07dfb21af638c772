"""The Trainer's persistent state: checkpoints written and resumed, Hub pushes of the weights.

A mixin of ``Trainer`` (kept apart so each file reads in one sitting); it uses the Trainer's
``model``, ``optimizer``, ``scaler``, ``stream``, ``cfg``, ``dist`` and step counters.

A model with frozen parameters (LoRA: only the adapters train) is checkpointed partially: the
checkpoint's ``model`` holds the trainable parameters only, ``frozen`` a fingerprint of the
others (checked on resume, which needs the same base weights in the model) and ``adapter`` the
model's ``adapter_info`` (the LoRA config and where the base weights came from). A subclass adds
state of its own through ``extra_state`` / ``load_extra_state`` (DPO's reference log-probs).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import torch

from ..store.checkpoint import (
    FORMAT,
    fingerprint,
    load_model_state,
    prune_step_ckpts,
    read_ckpt,
    save_checkpoint,
    set_aside_later,
)
from . import distributed as D
from .hub import cpu_snapshot
from .rng import rng_state, set_rng_state


class PersistMixin:
    # checkpoints ---------------------------------------------------------------------------
    def _init_partial(self) -> None:
        """Note which parameters train, when some do not (call before any sharding)."""
        params = dict(self.model.named_parameters())
        frozen = [p for p in params.values() if not p.requires_grad]
        self._trainable = {n for n, p in params.items() if p.requires_grad} if frozen else None
        self._fingerprint = fingerprint(frozen) if frozen else None

    def extra_state(self) -> dict:
        """More state to checkpoint (tensors, numbers, strings): a subclass's own."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what ``extra_state`` returned (``{}`` for a checkpoint without any)."""

    def save_checkpoint(self, kind: str = "step") -> Path:
        """Write ``best.pt``, ``pause.pt`` or ``step_N.pt`` (``kind`` = "best" | "pause" | "step")
        atomically into ``ckpt_dir``. Under torchrun every rank must call it; rank 0 writes.
        A second Ctrl+C during the write takes effect once the file is complete (signals.py)."""
        signals = getattr(self, "_signals", None)
        with signals.deferred() if signals is not None else contextlib.nullcontext():
            return self._save_checkpoint(kind)

    def _save_checkpoint(self, kind: str) -> Path:
        model_sd, optim_sd = D.full_state(self.model, self.optimizer)
        if self._trainable is not None:
            model_sd = {k: v for k, v in model_sd.items() if k in self._trainable}
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
                train_config=self.cfg.to_dict(), data_config=self.data_config, rng=rng, data=data,
                world_size=self.dist.world_size, frozen=self._fingerprint,
                adapter=getattr(self.model, "adapter_info", None), extra=self.extra_state())
            if kind == "step":  # this trajectory's: never a later step of an abandoned one
                prune_step_ckpts(self.cfg.ckpt_dir, self.cfg.keep_last_n, upto_step=self.step)
        D.barrier(self.dist)
        return path

    def _resume(self, path) -> None:
        ckpt = read_ckpt(path, map_location="cpu")
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            raise ValueError(f"{path} is not a Trainer checkpoint (no format={FORMAT!r}); to start from its "
                             "weights only, load them into the model and call train() without resume_from")
        self._check_partial(ckpt, path)
        partial = self._trainable is not None
        if D.is_sharded(self.model):
            D.load_full_state(self.model, self.optimizer, ckpt["model"], ckpt["optimizer"], strict=not partial)
        else:
            load_model_state(ckpt, self.model, path, strict=not partial)
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.load_extra_state(ckpt.get("extra") or {})
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.best_val_loss, self.val_loss = ckpt["step"], ckpt["best_val_loss"], ckpt.get("val_loss")
        self.elapsed = float(ckpt.get("elapsed", 0.0))  # older checkpoints: no time recorded
        changed = _changed(ckpt.get("train_config"), self.cfg.to_dict())
        changed += _changed(ckpt.get("data_config"), self.data_config, "data.")
        if changed:
            self.progress.message("resuming with changed settings: " + ", ".join(changed))
        rank, same_world = self.dist.rank, ckpt.get("world_size", 1) == self.dist.world_size
        if not same_world:
            warnings.warn(f"{path} was saved by {ckpt.get('world_size')} processes, this run has "
                          f"{self.dist.world_size}: resuming, but the data order and RNG will not match exactly",
                          stacklevel=3)
        self.stream.load_state_dict(ckpt["data"][rank if same_world else 0])
        set_rng_state(ckpt["rng"][rank if same_world else 0])  # last: replaying the data used the RNG
        self.progress.message(f"resumed from {path} at step {self.step} (best val loss {self.best_val_loss:.4f})")

    def _set_aside_later(self) -> None:
        """After resuming at ``self.step``: move the checkpoints of ``ckpt_dir`` from later steps
        (an abandoned trajectory) into ``ckpt_dir/abandoned/``, so "auto" never resumes them and
        pruning never weighs them against this run's (rank 0 moves; every rank calls)."""
        if self.dist.is_main:
            moved = set_aside_later(self.cfg.ckpt_dir, self.step)
            if moved:
                self.progress.message(f"resumed at step {self.step}, before {len(moved)} later checkpoint(s) of "
                                      f"another trajectory: moved {', '.join(p.name for p in moved)} to "
                                      f"{moved[0].parent}")
        D.barrier(self.dist)

    def _check_partial(self, ckpt: dict, path) -> None:
        """A partial checkpoint (trainable parameters only) resumes only onto the same frozen
        weights with the same trainable parameters, and a full one only onto a full model."""
        saved = ckpt.get("frozen")
        if self._trainable is None:
            if saved is not None:
                raise ValueError(f"{path} holds trainable parameters only (e.g. LoRA adapters) but every parameter "
                                 "of this model trains; apply the same adapters (apply_lora) to the base model first")
            return
        if saved is None:
            raise ValueError(f"{path} holds a full model but this one has frozen parameters (LoRA adapters); resume "
                             "it without adapters, or start the adapter run in a fresh checkpoint folder")
        keys = set(ckpt["model"])
        if keys != self._trainable:
            diff = sorted(keys ^ self._trainable)
            raise ValueError(f"{path} was saved with other trainable parameters ({', '.join(diff[:4])} differ); "
                             "use the adapter settings (lora r and targets) it was trained with")
        if saved.shape != self._fingerprint.shape or not torch.allclose(saved, self._fingerprint, rtol=1e-6):
            raise ValueError(f"{path} was trained on other frozen (base) weights than this model's; load the same "
                             "base model (the run's init) before resuming")

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
                info = getattr(self.model, "adapter_info", None)
                if info is not None:
                    from ..lora import apply_lora
                    apply_lora(snapshot, info["config"], base=info["base"])
                snapshot.load_state_dict(model_sd)
                snapshot.eval()
        else:
            snapshot = cpu_snapshot(self.model) if self.dist.is_main else None
        if snapshot is not None and getattr(snapshot, "adapter_info", None) is not None:
            from ..lora import merge_and_unload
            merge_and_unload(snapshot)  # the Hub gets the adapted model as an ordinary one
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



def _changed(saved: dict | None, now: dict | None, prefix: str = "") -> list[str]:
    """``["lr 0.001 -> 0.002", ...]``: the fields of ``saved`` whose value ``now`` differs
    (nothing when either side was not recorded)."""
    if not saved or now is None:
        return []
    return [f"{prefix}{k} {v!r} -> {now.get(k)!r}" for k, v in saved.items() if now.get(k) != v]
