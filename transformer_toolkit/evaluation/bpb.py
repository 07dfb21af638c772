"""Bits per byte: a model's loss on text, in a unit every tokenizer shares.

Loss per token depends on the tokenizer (a model with a bigger vocabulary packs more text into
each token), so models with different tokenizers are compared by the loss per byte of UTF-8
text: ``bits_per_byte = total nats / (ln 2 * bytes)`` (nanochat's ``val_bpb``; lm-eval's
``bits_per_byte`` of a rolling-perplexity task is the same number). Every token of a text is
scored exactly once, with the windows of lm-eval's ``loglikelihood_rolling`` (as much context
as the model holds, a BOS/EOS prefix before the first token), so a text scores the same here
and through lm-eval.

Each file (or named text) is a domain with its own figures, and ``"all"`` pools them (bytes
weighted). Token files (``.bin``/``.npy``) are scored as stored; their bytes are those of the
decoded text, predicting a special token (BOS/EOS between documents) counts neither nats nor
bytes, since it stands for no text, and a leading special token is the first token's context
(so a text and the token file ``ttk prepare`` writes of it score alike).

>>> bits_per_byte(model, tok, files=["wiki.txt", "code.py"])["all"]["bits_per_byte"]   # doctest: +SKIP
1.042
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from .scoring import BATCH_TOKENS, loglikelihoods, rolling_windows

TOKEN_SUFFIXES = (".bin", ".npy")
LN2 = math.log(2)


def prefix_id(tokenizer) -> int:
    """The token a text's first token is predicted after: BOS, else EOS (as lm-eval's ``hf``)."""
    for i in (getattr(tokenizer, "bos_id", None), getattr(tokenizer, "eos_id", None)):
        if i is not None:
            return int(i)
    raise ValueError("the tokenizer has neither a BOS nor an EOS id, so a text's first token has nothing to be "
                     "predicted after; use a tokenizer with one of them")


def score_ids(model, ids: Sequence[int], prefix: int, *, max_len: int | None = None,
              skip: Iterable[int] = (), batch_tokens: int = BATCH_TOKENS) -> tuple[float, int]:
    """``(nats, tokens)``: the negative log-likelihood of ``ids`` (every token, rolling windows
    of ``max_len``, default the model's context) and how many tokens it covers; predictions of
    the ids in ``skip`` are left out of both."""
    max_len = min(max_len or model.cfg.max_seq, model.cfg.max_seq)
    windows = rolling_windows(ids, prefix, max_len)
    skip = set(int(i) for i in skip)
    nats, count = 0.0, 0
    for (_, cont), logp in zip(windows, loglikelihoods(model, windows, max_len=max_len, per_token=True,
                                                       batch_tokens=batch_tokens), strict=True):
        if skip:
            keep = torch.tensor([t not in skip for t in cont], device=logp.device)
            logp = logp[keep]
        nats -= float(logp.double().sum())
        count += logp.numel()
    return nats, count


def _figures(nats: float, tokens: int, n_bytes: int) -> dict:
    loss = nats / tokens if tokens else math.nan
    return {"tokens": tokens, "bytes": n_bytes, "nats": nats, "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)) if tokens else math.nan,
            "bits_per_byte": nats / (LN2 * n_bytes) if n_bytes else math.nan}


def special_ids(tokenizer, ids: Iterable[int]) -> set[int]:
    """The ids among ``ids`` that stand for no text (their decoding without special tokens is empty)."""
    return {i for i in set(int(t) for t in ids) if tokenizer.decode([i], skip_special_tokens=True) == ""}


def score_text(model, tokenizer, text: str, *, max_len: int | None = None, max_tokens: int | None = None) -> dict:
    """The figures (tokens, bytes, nats, loss, perplexity, bits_per_byte) of one text."""
    ids = tokenizer.encode(text)
    n_bytes = len(text.encode("utf-8"))
    if max_tokens is not None and len(ids) > max_tokens:
        ids = ids[:max_tokens]
        n_bytes = len(tokenizer.decode(ids).encode("utf-8"))
    nats, count = score_ids(model, ids, prefix_id(tokenizer), max_len=max_len)
    return _figures(nats, count, n_bytes)


def score_tokens(model, tokenizer, ids: Sequence[int], *, max_len: int | None = None) -> dict:
    """The figures of a stream of token ids (a token file, a held-out split): its bytes are its
    decoded text's, and predictions of special tokens are left out."""
    ids = [int(t) for t in ids]
    skip = special_ids(tokenizer, ids)
    n_bytes = len(tokenizer.decode([t for t in ids if t not in skip]).encode("utf-8"))
    prefix = prefix_id(tokenizer)
    if ids and ids[0] in skip:  # the stream's own BOS is what its first token follows
        prefix, ids = ids[0], ids[1:]
    nats, count = score_ids(model, ids, prefix, max_len=max_len, skip=skip)
    return _figures(nats, count, n_bytes)


def score_file(model, tokenizer, path: str | os.PathLike, *, max_len: int | None = None,
               max_tokens: int | None = None) -> dict:
    """The figures of a text file, or of a token file (``.bin``/``.npy``, first ``max_tokens`` ids)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {os.fspath(path)!r} does not exist")
    if path.suffix in TOKEN_SUFFIXES:
        from ..data.tokens import open_tokens

        ids = open_tokens(path)[:max_tokens]
        bad = [i for i in ((int(ids.min()), int(ids.max())) if len(ids) else ()) if not 0 <= i < tokenizer.vocab_size]
        if bad:
            raise ValueError(f"{path} holds token id {bad[0]}, outside this tokenizer's vocabulary "
                             f"({tokenizer.vocab_size}); it was made with another tokenizer")
        return score_tokens(model, tokenizer, ids.tolist(), max_len=max_len)
    return score_text(model, tokenizer, path.read_text(encoding="utf-8", errors="replace"), max_len=max_len,
                      max_tokens=max_tokens)


def pooled(figures: Mapping[str, dict]) -> dict:
    """One entry for several domains: nats, tokens and bytes summed, the rest recomputed."""
    return _figures(sum(f["nats"] for f in figures.values()), sum(f["tokens"] for f in figures.values()),
                    sum(f["bytes"] for f in figures.values()))


def bits_per_byte(model, tokenizer, texts: str | Sequence[str] | Mapping[str, str] | None = None,
                  files: str | os.PathLike | Sequence[str | os.PathLike] | None = None, *,
                  max_len: int | None = None, max_tokens: int | None = None) -> dict:
    """``{domain: figures, ..., "all": pooled figures}`` for ``texts`` (one string, a list, or a
    ``{name: text}`` dict) and ``files`` (text or token files; the domain is the file name).
    Figures: ``tokens``, ``bytes``, ``nats``, ``loss`` (nats per token), ``perplexity`` (per
    token) and ``bits_per_byte``. ``max_len`` caps the window (default the model's context),
    ``max_tokens`` the tokens read from each source."""
    if texts is None and files is None:
        raise ValueError("give texts= (strings) or files= (text or token files) to score")
    out: dict[str, dict] = {}
    if isinstance(texts, str):
        texts = [texts]
    named = dict(texts) if isinstance(texts, Mapping) else {f"text{i}": t for i, t in enumerate(texts or [])}
    for name, text in named.items():
        out[name] = score_text(model, tokenizer, text, max_len=max_len, max_tokens=max_tokens)
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    for f in files or []:
        name = _unique(out, Path(f).name)
        out[name] = score_file(model, tokenizer, f, max_len=max_len, max_tokens=max_tokens)
    out["all"] = pooled(out)
    return out


def _unique(taken: Mapping[str, dict], name: str) -> str:
    """``name``, or ``name (2)`` ... when two files share a name."""
    candidate, n = name, 1
    while candidate in taken or candidate == "all":
        n += 1
        candidate = f"{name} ({n})"
    return candidate
