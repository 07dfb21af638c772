"""Run metrics: ``metrics.jsonl`` (always), TensorBoard (when chosen) and ``loss.png`` (when
matplotlib is installed), all in ``log_dir``. Only rank 0 creates one of these.

Each JSONL record is one event: ``{"event": "train", "step", "loss", "lr", "tok_s", ...}`` every
``log_every`` steps, ``{"event": "eval", "step", "val_loss", "ppl", "best"}`` at every eval and
``{"event": "tasks", "step", "TASK/METRIC": score, ...}`` when the run scores eval tasks.
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

from ..atomic import atomic_write_text, temp_path_for
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
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

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
        below them, when the run scores eval tasks, each task score against steps, and the
        ``panel`` statistics of train and eval records (e.g. GRPO's reward)."""
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
        tasks: dict[str, list[tuple[int, float]]] = {}
        for r in self.records:
            if r["event"] == "tasks":
                for k, v in r.items():
                    if k not in ("event", "step", "time") and isinstance(v, (int, float)):
                        tasks.setdefault(k, []).append((r["step"], v))
        for name in self.panel:
            for event in ("train", "eval"):
                points = [(r["step"], r[name]) for r in self.records if r["event"] == event and r.get(name) is not None]
                if points:
                    tasks[f"{event} {name}"] = points
        fig = Figure(figsize=(7, 6.5 if tasks else 4), dpi=100)
        axes = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2]) if tasks else [fig.subplots()]
        ax = axes[0]
        if train:
            ax.plot(*zip(*train, strict=True), label="train", linewidth=1)
        if val:
            ax.plot(*zip(*val, strict=True), label="val", marker="o", markersize=3)
        ax.set_ylabel("loss")
        if tasks:
            for name, points in tasks.items():
                axes[1].plot(*zip(*points, strict=True), label=name, marker="o", markersize=3)
            axes[1].set_ylabel("score")
            axes[1].legend(fontsize="small")
        for a in axes:
            a.grid(alpha=0.3)
        axes[-1].set_xlabel("step")
        ax.legend()
        fig.tight_layout()
        tmp = temp_path_for(self.dir / "loss.png")  # a name of its own: see atomic.py
        fig.savefig(tmp, format="png")
        os.replace(tmp, self.dir / "loss.png")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
