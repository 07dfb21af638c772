"""Console output in the README's look: header, step lines with a bar, eval lines.

On a terminal the current step line is redrawn in place (a live bar) and kept every
``log_every`` steps; elsewhere (CI, a log file) one plain line is printed every ``log_every``.
"""

from __future__ import annotations

import math
import sys
import time

BAR_WIDTH = 24


def fmt_duration(seconds: float) -> str:
    """``45s``, ``4m``, ``1h12m``: as precise as an ETA deserves."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{round(s / 60)}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def fmt_rate(tokens_per_s: float) -> str:
    if tokens_per_s >= 1e6:
        return f"{tokens_per_s / 1e6:.2f}M"
    if tokens_per_s >= 1e3:
        return f"{tokens_per_s / 1e3:.1f}k"
    return f"{tokens_per_s:.0f}"


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = min(width, int(width * done / max(1, total)))
    return "█" * filled + "░" * (width - filled)


class Progress:
    """Prints what the trainer reports; ``mode`` is "bar", "lines" or "none"."""

    def __init__(self, mode: str = "auto", stream=None):
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self._live = False  # a redrawn line is on screen and needs a newline before other output
        self._last_draw = 0.0

    def _print(self, text: str) -> None:
        if self.mode == "none":
            return
        if self._live:
            self.stream.write("\n")
            self._live = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def header(self, cfg, precision: str, device, world_size: int, n_params: str) -> None:
        self._print("")
        self._print("  ⚡ Transformer Toolkit Trainer")
        self._print(f"  steps={cfg.max_steps}  lr={cfg.lr:g}  warmup={cfg.warmup_steps}  accum={cfg.grad_accum_steps}")
        self._print(f"  mixed_precision={cfg.mixed_precision}  grad_clip={cfg.grad_clip:g}")
        self._print(f"  device={device}  precision={precision}  world={world_size}  params={n_params}")
        self._print("")

    def message(self, text: str) -> None:
        self._print(f"  {text}")

    def step_line(self, step: int, total: int, loss: float, lr: float, tok_s: float, eta_s: float,
                  mfu: float | None = None, stats: dict[str, float] | None = None) -> str:
        extra = f"  mfu {100 * mfu:.1f}%" if mfu is not None else ""
        shown = "".join(f"  {k} {v:.3g}" for k, v in (stats or {}).items())
        return (f"  step {step:>6}/{total}  {bar(step, total)}  loss {loss:.4f}{shown}  lr {lr:.1e}  "
                f"tok/s {fmt_rate(tok_s)}{extra}  eta {fmt_duration(eta_s)}")

    def step(self, line: str, keep: bool) -> None:
        """Show a step line: kept (a new line) when ``keep``, else redrawn in place (bar mode only,
        at most 10 times a second so drawing never costs training time)."""
        if self.mode == "none" or (self.mode == "lines" and not keep):
            return
        if self.mode == "bar":
            now = time.monotonic()
            if not keep and now - self._last_draw < 0.1:
                return
            self._last_draw = now
            self.stream.write("\r\033[K" + line + ("\n" if keep else ""))
            self.stream.flush()
            self._live = not keep
            return
        self._print(line)

    def eval_line(self, step: int, val_loss: float, prev: float | None, is_best: bool, nll: bool = True,
                  stats: dict[str, float] | None = None) -> None:
        ppl = f"  ppl {math.exp(val_loss) if val_loss < 50 else float('inf'):.2f}" if nll else ""
        ppl += "".join(f"  {k} {v:.3g}" for k, v in (stats or {}).items())
        delta = ""
        if prev is not None and math.isfinite(prev):
            d = val_loss - prev
            delta = f"  {'▼' if d <= 0 else '▲'}{abs(d):.4f}"
        best = "  ★ best" if is_best else ""
        self._print("")
        self._print(f"  ● eval  step {step}  val_loss {val_loss:.4f}{ppl}{delta}{best}")
        self._print("")
