"""Run metrics: ``metrics.jsonl`` (always), TensorBoard (when chosen) and ``loss.png`` (when
matplotlib is installed), all in ``log_dir``. Only rank 0 creates one of these.

Each JSONL record is one event: ``{"event": "train", "step", "loss", "lr", "tok_s", ...}`` every
``log_every`` steps and ``{"event": "eval", "step", "val_loss", "ppl", "best"}`` at every eval.
On resume the file is cut back to the records up to the resumed step, so a crash that happened
after the checkpoint leaves no duplicated steps and the plot continues the same curve.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path

from ..optional import require


class MetricsLog:
    def __init__(self, log_dir: str | os.PathLike, tensorboard: bool = False, plot: bool = True):
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self.plot_enabled = plot
        self.panel: tuple[str, ...] = ()  # statistics drawn under the loss (e.g. GRPO's reward)
        self.records: list[dict] = []
        self._tb = None
        if tensorboard:
            tensorboard = require("torch.utils.tensorboard", "tensorboard=True", "tb", package="tensorboard")
            self._tb = tensorboard.SummaryWriter(log_dir=str(self.dir / "tb"))

    def start(self, resume_step: int | None) -> None:
        """Fresh run: an empty log. Resume: keep the records up to ``resume_step``."""
        kept = []
        if resume_step is not None and self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a crash
                        continue
                    if rec.get("step", 0) <= resume_step:
                        kept.append(rec)
        self.records = kept
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)

    def log(self, event: str, step: int, **values) -> None:
        # NaN/inf become null: strict JSON has no such numbers (json.dumps would write NaN).
        values = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}
        rec = {"event": event, "step": step, "time": round(time.time(), 3), **values}
        self.records.append(rec)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{event}/{k}", v, step)
            self._tb.flush()

    def plot(self) -> None:
        """Redraw ``loss.png``: train loss (per log) and val loss (per eval) against steps, and
        under it the ``panel`` statistics (train and eval records that have them), if any."""
        if not self.plot_enabled:
            return
        try:
            # The object API, not pyplot: no window, no change to the user's matplotlib backend.
            Figure = require("matplotlib.figure", "loss.png", "viz").Figure
        except ImportError as e:
            self.plot_enabled = False
            warnings.warn(f"{e} (plot disabled)", stacklevel=2)
            return
        train = [(r["step"], r["loss"]) for r in self.records if r["event"] == "train" and r["loss"] is not None]
        val = [(r["step"], r["val_loss"]) for r in self.records if r["event"] == "eval" and r["val_loss"] is not None]
        shown = [k for k in self.panel if any(r.get(k) is not None for r in self.records)]
        fig = Figure(figsize=(7, 6 if shown else 4), dpi=100)
        ax, *below = fig.subplots(2 if shown else 1, 1, sharex=True, squeeze=False)[:, 0]
        if below:
            self._plot_panel(below[0], shown)
        if train:
            ax.plot(*zip(*train, strict=True), label="train", linewidth=1)
        if val:
            ax.plot(*zip(*val, strict=True), label="val", marker="o", markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = self.dir / "loss.tmp.png"
        fig.savefig(tmp)
        os.replace(tmp, self.dir / "loss.png")

    def _plot_panel(self, ax, names: list[str]) -> None:
        for name in names:
            for event, style in (("train", {"linewidth": 1}), ("eval", {"marker": "o", "markersize": 3})):
                points = [(r["step"], r[name]) for r in self.records if r["event"] == event and r.get(name) is not None]
                if points:
                    ax.plot(*zip(*points, strict=True), label=f"{event} {name}", **style)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
