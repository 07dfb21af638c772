"""Data pipeline benchmark: batch sampling from a memmap and corpus tokenising, each beside a baseline.

Run (from the repository root)::

    python bench/bench_data.py                                   # generated 32 MB corpus
    python bench/bench_data.py --corpus /work/shared/data/tinyshakespeare.txt
    python bench/bench_data.py --quick                           # smoke run, a few seconds

1. Sampling (seq 1024, batch 32 by default): our ``TokenLoader`` over a token file
   (vectorised ``__getitems__`` gather, deterministic shuffled order) with ``num_workers`` 0 and 2,
   beside the nanoGPT loader: a fresh ``np.memmap`` per batch, ``torch.randint`` offsets and a
   ``torch.stack`` of per-row slices. Batches/s and tokens/s (medians over rounds).
2. Tokenising: ``tokenize_files`` (read, safe cuts, ``encode_batch``, checked writes to disk)
   beside calling ``tokenizer.encode_batch`` alone on the same pieces already in memory, for
   the byte-level tokenizer and a byte-level BPE trained on the first 2 MB of the corpus.

The table is printed and the numbers are written to ``bench/results/data_latest.json`` and
``bench/results/data_<timestamp>.json`` (``--quick``: ``data_quick_*``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from transformer_toolkit.data.corpus import CHUNK_BYTES, default_group_chars, read_chunks, tokenize_files
from transformer_toolkit.data.loader import TokenLoader, TokenWindows
from transformer_toolkit.data.tokens import token_spec
from transformer_toolkit.tokenizer import ByteLevelTokenizer, RustBPETokenizer

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = "the king queen said unto thee thou art good lord of my heart and will not be 42 1.5 héllo".split()


def generate_corpus(path: Path, megabytes: float) -> None:
    rng = np.random.default_rng(0)
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < megabytes * 1e6:
            words = rng.choice(WORDS, 20_000)
            seps = rng.choice([" ", " ", " ", " ", "\n", ".\n\n", ", "], 20_000)
            block = "".join(w + s for w, s in zip(words, seps, strict=True))
            f.write(block)
            written += len(block.encode())


def nanogpt_batch(path: str, offset: int, batch: int, seq: int):
    """nanoGPT's ``get_batch``: a new memmap each call (its fix for a memory leak), random offsets, stack."""
    data = np.memmap(path, dtype=np.uint16, mode="r", offset=offset)
    ix = torch.randint(len(data) - seq, (batch,))
    x = torch.stack([torch.from_numpy(data[i:i + seq].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + seq].astype(np.int64)) for i in ix])
    return x, y


def time_batches(make_iter, n: int, warmup: int) -> float:
    """Seconds per batch for ``n`` batches after ``warmup`` (the iterator restarts when exhausted)."""
    it = make_iter()
    for _ in range(warmup):
        try:
            next(it)
        except StopIteration:
            it = make_iter()
    t = time.perf_counter()
    done = 0
    while done < n:
        try:
            next(it)
            done += 1
        except StopIteration:
            it = make_iter()
    return (time.perf_counter() - t) / n


def bench_sampling(bin_path: str, batch: int, seq: int, n: int, rounds: int) -> dict:
    spec = token_spec(bin_path)
    ds = TokenWindows(spec, seq)
    loaders = {w: TokenLoader(ds, batch, num_workers=w, rank=0, world_size=1) for w in (0, 2)}
    sides = {
        "ours_workers0": lambda: iter(loaders[0]),
        "ours_workers2": lambda: iter(loaders[2]),
        "nanogpt": lambda: iter(lambda: nanogpt_batch(bin_path, spec.offset, batch, seq), None),
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))  # alternate to spread machine noise
        for k in order:
            times[k].append(time_batches(sides[k], n, warmup=5))
    out = {}
    for k, ts in times.items():
        s = statistics.median(ts)
        out[k] = {"batches_per_s": 1 / s, "tokens_per_s": batch * seq / s, "rounds_s_per_batch": ts}
    return out


def bench_tokenise(corpus: str, tok, name: str, rounds: int, workdir: str) -> dict:
    size = os.path.getsize(corpus)
    pieces = list(read_chunks(corpus))
    group = default_group_chars()
    groups, cur, chars = [], [], 0
    for p in pieces:  # the same grouping tokenize_files uses
        if cur and chars + len(p) > group:
            groups.append(cur)
            cur, chars = [], 0
        cur.append(p)
        chars += len(p)
    groups.append(cur)
    res = {"tokenize_files": [], "encode_batch_only": []}
    n_tokens = 0
    for _ in range(rounds):
        t = time.perf_counter()
        n_tokens = tokenize_files([corpus], tok, os.path.join(workdir, f"{name}.bin"))
        res["tokenize_files"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for g in groups:
            tok.encode_batch(g)
        res["encode_batch_only"].append(time.perf_counter() - t)
    return {k: {"mb_per_s": size / 1e6 / statistics.median(v), "rounds_s": v} for k, v in res.items()} | {
        "tokens": n_tokens, "corpus_mb": size / 1e6, "vocab_size": tok.vocab_size}


def fmt_table(sampling: dict, tokenise: dict, batch: int, seq: int) -> str:
    lines = [f"sampling: batch {batch} x seq {seq} from a uint16 memmap", f"{'loader':<16}{'batches/s':>12}"
             f"{'Mtokens/s':>12}{'vs nanoGPT':>12}"]
    base = sampling["nanogpt"]["batches_per_s"]
    for k, v in sampling.items():
        lines.append(f"{k:<16}{v['batches_per_s']:>12.1f}{v['tokens_per_s'] / 1e6:>12.2f}"
                     f"{v['batches_per_s'] / base:>11.2f}x")
    lines += ["", "tokenising (MB of text per second)", f"{'tokenizer':<12}{'tokenize_files':>16}"
              f"{'encode_batch only':>20}{'overhead':>10}"]
    for name, v in tokenise.items():
        a, b = v["tokenize_files"]["mb_per_s"], v["encode_batch_only"]["mb_per_s"]
        lines.append(f"{name:<12}{a:>16.1f}{b:>20.1f}{b / a - 1:>9.0%}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", help="a UTF-8 text file (default: generate one)")
    ap.add_argument("--mb", type=float, default=32.0, help="size of the generated corpus in MB")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batches", type=int, default=200, help="batches timed per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = ap.parse_args()
    if args.quick:
        args.mb, args.batches, args.rounds, args.seq = 2.0, 20, 1, 256
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="bench-data-") as work:
        corpus = args.corpus
        if corpus is None:
            corpus = os.path.join(work, "corpus.txt")
            generate_corpus(Path(corpus), args.mb)
        byte_tok = ByteLevelTokenizer()
        print(f"corpus {corpus}: {os.path.getsize(corpus) / 1e6:.1f} MB; torch {torch.__version__}, "
              f"{os.cpu_count()} cpus", flush=True)
        with open(corpus, encoding="utf-8") as f:
            sample = f.read(2_000_000)
        bpe = RustBPETokenizer().train([sample], vocab_size=2000 if args.quick else 8000)
        print("tokenising ...", flush=True)
        tokenise = {name: bench_tokenise(corpus, tok, name, args.rounds, work)
                    for name, tok in (("byte-level", byte_tok), ("bpe", bpe))}
        print("sampling ...", flush=True)
        sampling = bench_sampling(os.path.join(work, "byte-level.bin"), args.batch, args.seq, args.batches,
                                  args.rounds)
    print()
    print(fmt_table(sampling, tokenise, args.batch, args.seq))
    report = {
        "date": datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "corpus": args.corpus or f"generated {args.mb} MB",
        "batch": args.batch, "seq": args.seq, "chunk_bytes": CHUNK_BYTES, "sampling": sampling,
        "tokenising": tokenise,
    }
    RESULTS.mkdir(exist_ok=True)
    prefix = "data_quick" if args.quick else "data"  # a smoke run never replaces the real data_latest.json
    text = json.dumps(report, indent=2)
    (RESULTS / f"{prefix}_{datetime.now().strftime('%Y%m%d_%H%M%S')}.json").write_text(text + "\n")
    (RESULTS / f"{prefix}_latest.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
