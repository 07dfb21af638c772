"""Shared bits of the CLI tests: tiny overrides and an in-process runner."""

from __future__ import annotations

import subprocess
import sys

from transformer_toolkit.cli import main

QUIET = ["--train.progress", "none", "--train.plot", "false", "--train.interruptible", "false"]
TINY_MODEL = ["--model.dim", "32", "--model.n_layers", "1", "--model.n_heads", "2", "--model.hidden_dim", "64"]


def run_main(capsys, *argv) -> tuple[int, str, str]:
    """``main(argv)`` in process; returns (status, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def run_module(*argv, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    """``python -m transformer_toolkit ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "transformer_toolkit", *map(str, argv)], input=stdin,
                          capture_output=True, text=True, cwd=cwd, timeout=120)
