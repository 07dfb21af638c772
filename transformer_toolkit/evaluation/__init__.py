"""Evaluation: how good a model is, in the numbers the field uses.

- ``bits_per_byte(model, tok, texts=..., files=...)``: loss per UTF-8 byte (and per-token
  perplexity) per file and pooled, comparable across tokenizers (``bpb.py``).
- ``evaluate_tasks(model, tok, ["synthetic", "bpb", "hellaswag", ...])``: built-in tasks
  (no download) and any lm-evaluation-harness task, in lm-eval's results layout (``tasks.py``);
  ``scores(results)`` flattens it to ``{"task/metric": value}``.
- ``write_results(results, folder)``: the JSON file and markdown table (``results.py``).
- ``harness.TTKLM``: the lm-eval model ``ttk`` (imports lm-eval; ``pip install -e ".[eval]"``).
- ``loglikelihoods`` / ``generate_until``: the batched scoring and generation under all of it.

Nothing here imports lm-eval until an lm-eval task is asked for.
"""

from __future__ import annotations

from .bpb import bits_per_byte, score_file, score_text, score_tokens
from .builtin import BUILTIN
from .results import bpb_results, markdown_table, side_by_side, write_results
from .scoring import loglikelihoods, rolling_windows
from .tasks import evaluate_tasks, parse_spec, scores
from .until import generate_until

__all__ = ["BUILTIN", "bits_per_byte", "bpb_results", "evaluate_tasks", "generate_until", "loglikelihoods",
           "markdown_table", "parse_spec", "rolling_windows", "score_file", "score_text", "score_tokens", "scores",
           "side_by_side", "write_results"]
