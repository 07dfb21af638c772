"""Prompt loaders: TRL's prompt-only rows -> batches of prompt ids with their other columns.

A row is ``{"prompt": str | [messages], **columns}``; the columns (``answer``, ``pattern``, ...)
travel with the prompt to the reward functions. A batch is a dict ``{"ids": [1-D tensors],
"prompts": [as given], "columns": {name: [values]}}``; the GRPO trainer turns it into rollouts.
Order, sharding over ranks and exact resume are the ``TokenLoader``'s, as for every other loader.

>>> train_dl, val_dl = from_prompt_samples(rows, tok, PromptDataConfig(batch_size=8))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import warnings

import torch

from ..data.loader import TokenLoader
from ..sft.chat import chat_stop_ids, encode_chat
from .config import PromptDataConfig


class PromptRows:
    """Encoded prompts and their columns; ``__getitems__`` gives one batch dict."""

    def __init__(self, ids: list[list[int]], prompts: list, columns: dict[str, list], stop_ids: list[int],
                 conversational: bool):
        self.ids = [torch.tensor(i, dtype=torch.long) for i in ids]
        self.prompts, self.columns = prompts, columns
        self.stop_ids, self.conversational = stop_ids, conversational
        self.seq_len = max((len(i) for i in ids), default=0)  # the TokenLoader reads it

    def __len__(self) -> int:
        return len(self.ids)

    def __getitems__(self, indices) -> dict:
        idx = [int(i) for i in indices]
        return {"ids": [self.ids[i] for i in idx], "prompts": [self.prompts[i] for i in idx],
                "columns": {k: [v[i] for i in idx] for k, v in self.columns.items()}}


def _encode(prompt, tokenizer, cfg: PromptDataConfig) -> list[int]:
    if isinstance(prompt, list):
        return encode_chat(cfg.template, tokenizer, prompt)
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string or a list of messages, got {type(prompt).__name__}")
    if cfg.strings == "chat":
        return encode_chat(cfg.template, tokenizer, [{"role": "user", "content": prompt}])
    return tokenizer.encode(prompt)


def encode_rows(rows: list[dict], tokenizer, cfg: PromptDataConfig, source: str) -> PromptRows:
    """Encode every row's prompt; rows whose prompt is longer than ``max_prompt_len`` are
    skipped (counted, with a warning). Every row must have the same columns."""
    if not rows:
        raise ValueError(f"{source}: no prompts")
    ids, prompts, columns, skipped = [], [], {}, 0
    names = None
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or "prompt" not in row:
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{source}, row {n}: needs a 'prompt' (TRL's prompt-only format: "
                             f"{{'prompt': ..., 'answer': ...}}); got {got}")
        keys = sorted(k for k in row if k != "prompt")
        if names is None:
            names = keys
            columns = {k: [] for k in keys}
        elif keys != names:
            raise ValueError(f"{source}, row {n}: columns {keys} differ from the first row's {names}; give every "
                             "row the same columns")
        enc = _encode(row["prompt"], tokenizer, cfg)
        if not enc or len(enc) > cfg.max_prompt_len:
            skipped += 1
            continue
        ids.append(enc)
        prompts.append(row["prompt"])
        for k in keys:
            columns[k].append(row[k])
    if skipped:
        warnings.warn(f"{source}: skipped {skipped} of {len(rows)} prompts longer than max_prompt_len="
                      f"{cfg.max_prompt_len} tokens (the model's max_seq minus max_new); raise max_seq or lower "
                      "max_new", stacklevel=3)
    if not ids:
        raise ValueError(f"{source}: no prompt fits max_prompt_len={cfg.max_prompt_len}")
    conversational = isinstance(prompts[0], list)
    return PromptRows(ids, prompts, columns, chat_stop_ids(cfg.template, tokenizer), conversational)


def from_prompt_samples(rows: list[dict], tokenizer=None, cfg: PromptDataConfig | None = None,
                        val_rows: list[dict] | None = None):
    """``(train_dl, val_dl)``: ``val_rows`` when given, else a ``1 - split`` share of ``rows``
    (``val_dl`` is None when that share is empty)."""
    cfg = cfg or PromptDataConfig(tokenizer=tokenizer)
    tokenizer = tokenizer if tokenizer is not None else cfg.tokenizer
    if tokenizer is None:
        raise ValueError("no tokenizer: pass one to the loader or set PromptDataConfig(tokenizer=...)")
    if val_rows is None:
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        n_train = len(rows) if cfg.split >= 1.0 else min(len(rows) - 1, max(1, round(len(rows) * cfg.split)))
        rows, val_rows = [rows[i] for i in order[:n_train]], [rows[i] for i in order[n_train:]]
    train = encode_rows(rows, tokenizer, cfg, "prompts")
    train_dl = TokenLoader(train, min(cfg.batch_size, len(train)), shuffle=cfg.shuffle, drop_last=True, seed=cfg.seed)
    val_dl = None
    if val_rows:
        val = encode_rows(val_rows, tokenizer, cfg, "val prompts")
        val_dl = TokenLoader(val, min(cfg.batch_size, len(val)), shuffle=False, drop_last=False, rewind=True,
                             seed=cfg.seed)
    return train_dl, val_dl


def read_prompt_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``.json`` file (a list, or ``{"data": [...]}``) or a ``.jsonl`` file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            if path.endswith(".jsonl"):
                return [json.loads(line) for line in f if line.strip()]
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    data = data.get("data") if isinstance(data, dict) else data
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rows (or one row per line in a .jsonl file)")
    return data


def from_prompt_json(path: str | os.PathLike, tokenizer=None, cfg: PromptDataConfig | None = None):
    """From one ``.json`` / ``.jsonl`` file of prompt rows."""
    return from_prompt_samples(read_prompt_rows(path), tokenizer, cfg)
