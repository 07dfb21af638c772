"""From token files and text files to ``(train_dl, val_dl)``: the seed README's loader functions.

Every path goes through one token file: text is tokenised into it (constant memory), it is cut
at ``int(n * split)`` (train = head, val = tail) without copying, and each split becomes a
:class:`TokenLoader`. ``train_path``/``val_path`` also save the splits as ``.npy`` for later runs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable

from .config import DataConfig
from .corpus import tokenize_files
from .debug import print_debug
from .loader import TokenLoader, TokenWindows
from .tokens import TokenSpec, check_ids, token_spec, write_npy


def split_spec(spec: TokenSpec, cfg: DataConfig) -> tuple[TokenSpec, TokenSpec]:
    """Cut a token stream at ``int(n * split)``; both sides must hold at least one window."""
    n = spec.length
    cut = int(n * cfg.split)
    train, val = spec.slice(0, cut), spec.slice(cut, n)
    need = cfg.seq_len + 1
    if train.length < need or val.length < need:
        fit = max(0, min(train.length, val.length) - 1)
        raise ValueError(
            f"seq_len={cfg.seq_len} is too long for {spec.path!r}: a sample needs {need:,} tokens per split, but the "
            f"{n:,} tokens split {cfg.split} into train={train.length:,} and val={val.length:,} tokens. Use a "
            f"smaller seq_len (at most {fit:,} here), a split that leaves more on the short side, or more text")
    return train, val


def build_loaders(train: TokenSpec, val: TokenSpec, cfg: DataConfig, tokenizer=None, *,
                  rank: int | None = None, world_size: int | None = None) -> tuple[TokenLoader, TokenLoader]:
    """Train loader (shuffled, ``drop_last=cfg.drop_last``) and val loader (in order, keeps every window,
    and every iteration starts from its first batch so evaluations compare like with like)."""
    for name, spec in (("train", train), ("val", val)):
        if spec.length < cfg.seq_len + 1:
            raise ValueError(f"seq_len={cfg.seq_len} is longer than the {name} split {spec.path!r} "
                             f"({spec.length:,} tokens); use a smaller seq_len (at most {max(0, spec.length - 1):,}) "
                             "or more text")
    common = dict(seed=cfg.seed, num_workers=cfg.num_workers, pin_memory=cfg.pin_memory, rank=rank,
                  world_size=world_size)
    train_dl = TokenLoader(TokenWindows(train, cfg.seq_len, cfg.stride), cfg.batch_size, shuffle=cfg.shuffle,
                           drop_last=cfg.drop_last, **common)
    val_dl = TokenLoader(TokenWindows(val, cfg.seq_len, cfg.stride), cfg.batch_size, shuffle=False, drop_last=False,
                         rewind=True, **common)
    if len(train_dl) == 0:
        raise ValueError(f"the train split of {train.path!r} has {len(train_dl.dataset):,} windows of seq_len+1 tokens "
                         f"on this rank, fewer than batch_size={cfg.batch_size}: no full batch. Use a smaller "
                         "batch_size or seq_len, or set drop_last=False")
    if cfg.debug:
        print_debug(train_dl, tokenizer, cfg)
    return train_dl, val_dl


def _check_pair(train_path, val_path) -> None:
    if (train_path is None) != (val_path is None):
        raise ValueError("pass both train_path and val_path (where to save the .npy splits), or neither")


def _save_splits(train: TokenSpec, val: TokenSpec, train_path, val_path) -> tuple[TokenSpec, TokenSpec]:
    write_npy(train.open(), train_path)
    write_npy(val.open(), val_path)
    return token_spec(train_path), token_spec(val_path)


def from_binary(path, cfg: DataConfig, train_path=None, val_path=None, tokenizer=None):
    """``(train_dl, val_dl)`` from one token file (headed .bin, legacy raw uint16 .bin, or .npy).

    >>> train_dl, val_dl = from_binary("data.bin", cfg, tokenizer=tok)  # doctest: +SKIP

    With ``train_path``/``val_path`` the splits are also written as ``.npy`` (reuse them with
    :func:`from_npy_split`). With ``tokenizer`` every id is checked against its vocabulary.
    """
    _check_pair(train_path, val_path)
    spec = token_spec(path)
    if tokenizer is not None:
        check_ids(spec, tokenizer.vocab_size)
    train, val = split_spec(spec, cfg)
    if train_path is not None:
        train, val = _save_splits(train, val, train_path, val_path)
    return build_loaders(train, val, cfg, tokenizer)


def from_npy_split(train_path, val_path, cfg: DataConfig, tokenizer=None):
    """``(train_dl, val_dl)`` from token files already split (usually the ``.npy`` files a first run saved)."""
    train, val = token_spec(train_path), token_spec(val_path)
    if tokenizer is not None:
        check_ids(train, tokenizer.vocab_size)
        check_ids(val, tokenizer.vocab_size)
    return build_loaders(train, val, cfg, tokenizer)


_SESSION_DIRS: list[str] = []


def _cleanup_session_dirs(pid: int) -> None:
    if os.getpid() == pid:  # a forked worker must not delete its parent's files
        for d in _SESSION_DIRS:
            shutil.rmtree(d, ignore_errors=True)


def session_token_path() -> str:
    """A fresh token-file path in a temp folder removed when the interpreter exits."""
    if not _SESSION_DIRS:
        atexit.register(_cleanup_session_dirs, os.getpid())
    d = tempfile.mkdtemp(prefix="ttk-tokens-")
    _SESSION_DIRS.append(d)
    return os.path.join(d, "tokens.bin")


def loaders_from_writer(write: Callable[[str], object], cfg: DataConfig, tokenizer, train_path=None,
                        val_path=None):
    """Run ``write(token_path)`` to produce a token file, then split it and build the loaders.

    Without ``train_path`` the token file lives in a session temp folder; with it, the file is a
    temp next to ``train_path`` that is deleted once the ``.npy`` splits are written.
    """
    _check_pair(train_path, val_path)
    if train_path is None:
        out = session_token_path()
        write(out)
        return build_loaders(*split_spec(token_spec(out), cfg), cfg, tokenizer)
    folder = tempfile.mkdtemp(prefix=".ttk-tokens-", dir=os.path.dirname(os.path.abspath(train_path)))
    try:
        out = os.path.join(folder, "tokens.bin")
        write(out)
        train, val = _save_splits(*split_spec(token_spec(out), cfg), train_path, val_path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return build_loaders(train, val, cfg, tokenizer)


def from_files(paths, tokenizer, cfg: DataConfig, train_path=None, val_path=None, bos_id=None, eos_id=None,
               encoding: str = "utf-8"):
    """``(train_dl, val_dl)`` from text files, one document each (optionally wrapped in BOS/EOS).

    >>> train_dl, val_dl = from_files(["a.txt", "b.txt"], tok, cfg,
    ...                               bos_id=tok.bos_id, eos_id=tok.eos_id)  # doctest: +SKIP
    """
    return loaders_from_writer(
        lambda out: tokenize_files(paths, tokenizer, out, bos_id=bos_id, eos_id=eos_id, encoding=encoding),
        cfg, tokenizer, train_path, val_path)
