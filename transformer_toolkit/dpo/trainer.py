"""DPOTrainer: the Trainer loop with a preference loss in place of next-token cross-entropy.

Only the objective changes (``compute_loss`` / ``count_tokens``): each micro-batch holds N pairs
as 2N rows (chosen then rejected, one forward), the loss of a step is the mean over every pair
of the accumulated batch on every rank, and checkpoints, exact resume, Ctrl+C pauses, DDP/FSDP2
and logging are the Trainer's. The statistics TRL logs are recorded per pair: ``chosen_reward``,
``rejected_reward``, ``margin`` (their difference) and ``accuracy`` (the share of pairs whose
chosen reward is the larger); they go to metrics.jsonl and TensorBoard, accuracy and margin to
the progress line.

>>> trainer = DPOTrainer(model, train_dl, val_dl, tok.vocab_size, TrainConfig(max_steps=200),   # doctest: +SKIP
...                      dpo=DPOConfig(beta=0.1, loss="sigmoid"))
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from ..lora import adapters, disabled
from ..trainer import Trainer
from ..trainer.batches import Batch, unpack
from ..trainer.reference import frozen_copy, frozen_eval, place, same_reference
from .config import DPOConfig
from .loss import preference_loss, sequence_logps


def _has_data_ref(loader) -> bool:
    return bool(getattr(getattr(loader, "dataset", None), "has_ref", False))


class DPOTrainer(Trainer):
    """``DPOTrainer(model, train_dl, val_dl, vocab_size, cfg, tokenizer=None, dpo=DPOConfig(...))``;
    batches from ``dpo.from_preference_*``. ``ref_model``: the reference for ``reference="model"``
    (default: a frozen copy of ``model`` as it is now). See ``Trainer`` for the rest."""

    loss_is_nll = False
    progress_stats = ("accuracy", "margin")

    def __init__(self, model: nn.Module, train_dl, val_dl, vocab_size: int, cfg=None, tokenizer=None, *,
                 dpo: DPOConfig | dict | None = None, ref_model: nn.Module | None = None, uploader=None,
                 data_config: dict | None = None):
        self.dpo = dpo if isinstance(dpo, DPOConfig) else DPOConfig(**(dpo or {}))
        self.reference = self._pick_reference(model, train_dl, ref_model)
        # the reference copy is made before the Trainer moves, shards or wraps the model
        ref, self._ref_print = frozen_copy(model, ref_model) if self.reference == "model" else (None, None)
        super().__init__(model, train_dl, val_dl, vocab_size, cfg, tokenizer, uploader=uploader,
                         data_config=data_config)
        self.ref_model = None if ref is None else place(ref, self)
        self._ref_table: Tensor | None = None  # (pairs, 2) for reference="precomputed" without data columns

    def _pick_reference(self, model: nn.Module, train_dl, ref_model) -> str:
        ref, has_adapters = self.dpo.reference, bool(adapters(model))
        if ref == "auto":
            ref = ("none" if self.dpo.loss == "simpo" else "precomputed" if _has_data_ref(train_dl)
                   else "adapter" if has_adapters else "model")
        if ref == "adapter" and not has_adapters:
            raise ValueError("reference='adapter' needs a model with LoRA adapters (apply_lora); use reference='model' "
                             "for a frozen copy of the starting weights")
        if ref_model is not None and ref != "model":
            raise ValueError(f"ref_model is given but the reference is {ref!r}; set DPOConfig(reference='model')")
        return ref

    # the objective -------------------------------------------------------------------------
    def count_tokens(self, batch: Batch) -> Tensor:
        """The number of pairs: the loss is the mean over pairs."""
        if batch.loss_mask is None or batch.x.shape[0] % 2:
            raise ValueError("DPOTrainer needs preference batches (2N rows: N chosen then N rejected, with a loss "
                             "mask on the responses); build them with transformer_toolkit.dpo.from_preference_*")
        return torch.tensor(batch.x.shape[0] // 2, dtype=torch.float32, device=batch.x.device)

    def compute_loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        out = model(batch.x)
        logits, aux = out if isinstance(out, tuple) else (out, None)
        logps, lengths = sequence_logps(logits, batch.y, batch.loss_mask)
        ref = None if self.reference == "none" else self.reference_logps(batch)
        loss, chosen, rejected = preference_loss(logps, ref, lengths, self.dpo)
        self.record("chosen_reward", chosen.sum())
        self.record("rejected_reward", rejected.sum())
        self.record("margin", (chosen - rejected).sum())
        self.record("accuracy", (chosen > rejected).float().sum())
        aux = torch.zeros((), device=batch.x.device) if aux is None else aux.float()
        return loss.sum(), aux

    # the reference -------------------------------------------------------------------------
    def _logps(self, model: nn.Module, batch: Batch) -> Tensor:
        out = model(batch.x)
        logits = out[0] if isinstance(out, tuple) else out
        return sequence_logps(logits, batch.y, batch.loss_mask)[0]

    def reference_logps(self, batch: Batch) -> Tensor:
        """The ``(2N,)`` reference log-probs of a batch's rows."""
        if self.reference == "precomputed":
            if batch.extra and "ref_logps" in batch.extra:
                return batch.extra["ref_logps"]
            if self._ref_table is None:
                self._ref_table = self._precompute()
            rows = self._ref_table.to(batch.x.device)[batch.extra["pair_index"]]  # (N, 2)
            return torch.cat([rows[:, 0], rows[:, 1]])
        if self.reference == "adapter":
            with frozen_eval(self.model), disabled(self.model):
                return self._logps(self.eval_model, batch)
        with frozen_eval(self.ref_model):
            return self._logps(self.ref_model, batch)

    def _precompute(self) -> Tensor:
        """Reference log-probs of every train and val pair under the starting weights."""
        if self.step > 0:
            raise ValueError("reference='precomputed': the reference log-probs are computed before the first step and "
                             "kept in checkpoints; this checkpoint has none (resume it with the reference it was "
                             "trained with)")
        sets = [dl.dataset for dl in (self.train_dl, self.val_dl) if dl is not None]
        if not all(hasattr(ds, "__getitems__") and hasattr(ds, "offset") for ds in sets):
            raise ValueError("reference='precomputed' needs the loaders of transformer_toolkit.dpo (or the data's "
                             "ref_chosen_logps / ref_rejected_logps columns)")
        table = torch.full((max(ds.offset + len(ds) for ds in sets), 2), math.nan, dtype=torch.float32)
        size = max(1, getattr(self.train_dl, "batch_size", 8))
        with frozen_eval(self.model):
            for ds in sets:
                for a in range(0, len(ds), size):
                    batch = unpack(ds.__getitems__(range(a, min(a + size, len(ds))))).to(self.device)
                    with self.precision.autocast():
                        logps = self._logps(self.eval_model, batch).float().cpu()
                    table[batch.extra["pair_index"].cpu()] = logps.view(2, -1).T
        return table

    def extra_state(self) -> dict:
        state = {"ref_logps": self._ref_table} if self._ref_table is not None else {}
        if self._ref_print is not None:
            state["ref_fingerprint"] = self._ref_print
        return state

    def load_extra_state(self, state: dict) -> None:
        """The precomputed table comes back; a frozen-copy reference must be the one the run started with."""
        self._ref_table = state.get("ref_logps", self._ref_table)
        if not same_reference(state.get("ref_fingerprint"), self._ref_print):
            raise ValueError("the reference model differs from the one this run started with: build the DPOTrainer "
                             "from the starting weights (the run's init; the checkpoint then restores the trained "
                             "ones), or pass that model as ref_model")
