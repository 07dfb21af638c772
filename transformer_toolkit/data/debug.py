"""The loader debug view: a few samples of the first train batch, decoded, with an x/y alignment check."""

from __future__ import annotations

SHOW_IDS = 5
SHOW_CHARS = 50


def _ids(row: list[int]) -> str:
    head = ", ".join(str(i) for i in row[:SHOW_IDS])
    if len(row) <= SHOW_IDS:
        return f"[{head}]"
    return f"[{head} ...] ... +{len(row) - SHOW_IDS}"


def _text(tokenizer, row: list[int]) -> str:
    text = tokenizer.decode(row)
    return repr(text[:SHOW_CHARS] + "..." if len(text) > SHOW_CHARS else text)


def alignment(x: list[int], y: list[int]) -> str:
    """The ✓ line when ``y`` is ``x`` shifted by one, else a ✗ line naming the first mismatch."""
    for j in range(len(x) - 1):
        if x[j + 1] != y[j]:
            return f"✗  x/y misaligned at position {j}: y[{j}]={y[j]} but x[{j + 1}]={x[j + 1]}"
    return "✓  x/y alignment correct (y = x shifted by 1)"


def print_debug(loader, tokenizer, cfg, x=None, y=None) -> None:
    """Print ``cfg.debug_n`` samples of the loader's first batch (or of the given ``x, y``).

    Reading the batch directly does not move the loader's position. Without a tokenizer only
    the ids are shown.
    """
    if x is None:
        x, y = loader.first_batch()
    print("\n  🔍 Debug samples (train)")
    print(f"  seq_len={cfg.seq_len}  stride={cfg.window_stride}  batch_size={cfg.batch_size}")
    for k in range(min(cfg.debug_n, x.shape[0])):
        xs, ys = x[k].tolist(), y[k].tolist()
        print(f"\n  sample {k + 1}")
        print(f"  x ids : {_ids(xs)}")
        print(f"  y ids : {_ids(ys)}")
        if tokenizer is not None:
            print(f"  x text: {_text(tokenizer, xs)}")
            print(f"  y text: {_text(tokenizer, ys)}")
        print(f"  {alignment(xs, ys)}")
    print()
