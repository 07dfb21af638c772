"""The SFT debug view: each sample's text coloured by what is trained, plus sanity checks."""

from __future__ import annotations

import sys

CYAN, GREEN, DIM, RESET = "\033[36m", "\033[32m", "\033[2m", "\033[0m"


def _colour(on: bool) -> bool:
    return on and hasattr(sys.stdout, "isatty") and sys.stdout.isatty()


def segments(ids, mask) -> list[tuple[list[int], bool]]:
    """Consecutive runs of tokens with the same mask bit."""
    runs: list[tuple[list[int], bool]] = []
    for i, m in zip(ids, mask, strict=True):
        if runs and runs[-1][1] == bool(m):
            runs[-1][0].append(int(i))
        else:
            runs.append(([int(i)], bool(m)))
    return runs


def print_debug(rows, tokenizer, cfg, dropped: int = 0, file=None) -> None:
    """Print ``cfg.debug_n`` rows of an ``SFTRows`` set: the formatted view line by line (cyan =
    context, loss 0; green = trained, loss 1) and the checks: trained tokens per row (``mask
    sum``), zero response tokens, x/y alignment and heavy padding."""
    out = file or sys.stdout
    colour = _colour(file is None)
    print(f"\n  🔍 SFT debug samples  template={cfg.template.preset}  seq_len={cfg.seq_len}  "
          f"batch_size={cfg.batch_size}  packing={cfg.packing}", file=out)
    for r in range(min(cfg.debug_n, len(rows))):
        ids, mask, doc = rows.row(r)
        used = doc >= 0
        batch = rows.__getitems__([r])
        x, y, loss_mask = batch[0][0], batch[1][0], batch[2][0]
        print(f"\n  sample {r + 1}  tokens={int(used.sum())}/{len(ids)}  mask sum={int(loss_mask.sum())}", file=out)
        print("  ── formatted view ──", file=out)
        for seg_ids, trained in segments(ids[used], mask[used]):
            text = tokenizer.decode(seg_ids, skip_special_tokens=False)
            for line in text.splitlines():
                shown = line.rstrip()
                if not shown:
                    continue
                tag = "← green (loss=1)" if trained else "← cyan  (loss=0)"
                if colour:
                    shown = (GREEN if trained else CYAN) + shown + RESET
                print(f"  {shown:50s}  {tag}", file=out)
        if int(loss_mask.sum()) == 0:
            print("  ✗  zero response tokens: no trained token in this row; check the schema and template", file=out)
        if bool((x[1:] == y[:-1]).all()):
            print("  ✓  x/y alignment correct (y = x shifted by 1)", file=out)
        else:
            bad = int((x[1:] != y[:-1]).nonzero()[0, 0])
            print(f"  ✗  x/y misaligned at position {bad + 1}", file=out)
    pad = rows.padding_fraction()
    print(f"\n  padding {pad:.0%} of all row tokens", file=out)
    if pad > 0.5:
        print(f"  ⚠  heavy padding: rows are mostly [PAD]; lower seq_len (now {cfg.seq_len}), use "
              "truncation_strategy='turn' with a smaller seq_len, or packing=True", file=out)
    if dropped:
        print(f"  ⚠  {dropped} sample(s) dropped: no trained token left after truncation", file=out)
