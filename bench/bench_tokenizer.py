"""Tokenizer benchmark: our RustBPETokenizer vs calling Hugging Face `tokenizers` directly.

Run (from the repository root)::

    python bench/bench_tokenizer.py ../shared/data/tinyshakespeare.txt
    python bench/bench_tokenizer.py CORPUS --repeat 4 --rounds 5 --vocab 8000

The corpus is read once (``--repeat`` concatenates it to make it larger). Both sides use the
same settings: byte-level pre-tokenizer (GPT-2 pattern, no prefix space), the full 256-byte
alphabet, the same 21 special tokens, BPE trainer with the same vocab size and min frequency.
Timed, alternating ours/raw within each round (order flipped every round), median reported:

1. training from the list of lines (``tok.train(lines)`` vs ``Tokenizer.train_from_iterator``);
2. encoding the lines as a batch to lists of ids (``tok.encode_batch`` vs raw
   ``encode_batch_fast``, the fastest raw call, and raw ``encode_batch``, the usual one, each
   followed by reading ``.ids`` as any caller must; the bare raw call, which leaves the ids
   inside Encoding objects, is listed too for transparency);
3. encoding the whole corpus as one string (``tok.encode(text)``, which cuts long text at safe
   points and encodes the pieces in parallel, vs raw ``encode(text)``); the ids are asserted
   equal before timing.

Writes bench/results/tokenizer_latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from transformer_toolkit.tokenizer import SPECIAL_TOKENS, RustBPETokenizer

RESULTS = Path(__file__).resolve().parent / "results"


def raw_train(lines: list[str], vocab: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus")
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=8000)
    args = ap.parse_args()

    with open(args.corpus, encoding="utf-8") as f:
        text = f.read() * args.repeat
    lines = text.splitlines(keepends=True)
    mb = len(text.encode()) / 1e6

    ours = RustBPETokenizer().train(lines, vocab_size=args.vocab)
    raw = raw_train(lines, args.vocab)
    assert ours.tokenizer.get_vocab() == raw.get_vocab(), "same settings must learn the same vocabulary"
    assert ours.encode(text) == raw.encode(text, add_special_tokens=False).ids

    cases = {
        "train": (lambda: RustBPETokenizer().train(lines, vocab_size=args.vocab),
                  {"raw train_from_iterator": lambda: raw_train(lines, args.vocab)}),
        "encode_batch(lines)": (
            lambda: ours.encode_batch(lines),
            {"raw encode_batch_fast + ids": lambda: [
                e.ids for e in raw.encode_batch_fast(lines, add_special_tokens=False)],
             "raw encode_batch + ids": lambda: [e.ids for e in raw.encode_batch(lines, add_special_tokens=False)],
             "raw encode_batch_fast (no ids)": lambda: raw.encode_batch_fast(lines, add_special_tokens=False)}),
        "encode(whole text)": (lambda: ours.encode(text),
                               {"raw encode + ids": lambda: raw.encode(text, add_special_tokens=False).ids}),
    }
    rows = []
    for name, (ours_fn, peers) in cases.items():
        times = {"ours": []} | {p: [] for p in peers}
        for r in range(args.rounds):
            order = [("ours", ours_fn), *peers.items()]
            for label, fn in (order if r % 2 == 0 else order[::-1]):
                times[label].append(timed(fn))
        t_ours = statistics.median(times["ours"])
        for peer in peers:
            t_peer = statistics.median(times[peer])
            rows.append({"case": name, "peer": peer, "ours_s": t_ours, "peer_s": t_peer,
                         "ours_MB_per_s": mb / t_ours, "peer_MB_per_s": mb / t_peer, "ratio": t_peer / t_ours})

    print(f"corpus {args.corpus} x{args.repeat}: {mb:.1f} MB, {len(lines)} lines, vocab {args.vocab}, "
          f"{args.rounds} rounds, {os.cpu_count()} cpus")
    print(f"{'case':22s} {'peer':32s} {'ours MB/s':>10s} {'peer MB/s':>10s} {'ours/peer':>10s}")
    for r in rows:
        print(f"{r['case']:22s} {r['peer']:32s} {r['ours_MB_per_s']:10.2f} {r['peer_MB_per_s']:10.2f} "
              f"{r['ratio']:9.2f}x")
    RESULTS.mkdir(exist_ok=True)
    out = {"date": datetime.now().isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "corpus": args.corpus, "repeat": args.repeat, "MB": mb,
           "vocab": args.vocab, "rounds": args.rounds, "rows": rows}
    (RESULTS / "tokenizer_latest.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
