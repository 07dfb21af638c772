"""``ttk tokenizer``, ``ttk prepare`` and ``ttk train``: from text files to a pretrained run folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..store import runs
from ..store.checkpoint import latest_ckpt
from . import config as C
from .builtin import corpus_files, read_texts

TOKEN_SUFFIXES = (".bin", ".npy")


def cmd_tokenizer(args) -> int:
    """Train a byte-level BPE tokenizer on text files and save it as tokenizer.json."""
    from ..tokenizer import RustBPETokenizer

    paths = [p for f in args.files for p in corpus_files(f, args.max_mb)]
    tok = RustBPETokenizer().train(read_texts(paths), vocab_size=args.vocab_size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tok.save(args.out)
    print(f"tokenizer: vocab {tok.vocab_size} from {len(paths)} file(s) -> {args.out}")
    return 0


def cmd_prepare(args) -> int:
    """Tokenise text files into one token file, and optionally train/val .npy splits."""
    from ..data import DataConfig, from_binary, tokenize_files
    from ..tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    paths = [p for f in args.files for p in corpus_files(f, args.max_mb)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    n = tokenize_files(paths, tok, args.out, bos_id=tok.bos_id, eos_id=tok.eos_id)
    print(f"prepare: {n:,} tokens from {len(paths)} file(s) -> {args.out}")
    if args.split is not None:
        stem = os.path.splitext(args.out)[0]
        # seq_len/batch_size do not matter for the split itself, only the train fraction does
        from_binary(args.out, DataConfig(seq_len=1, batch_size=1, split=args.split),
                    train_path=f"{stem}.train.npy", val_path=f"{stem}.val.npy")
        print(f"prepare: split {args.split:g} -> {stem}.train.npy, {stem}.val.npy")
    return 0


def run_folder(args, run: dict) -> Path:
    out = Path(args.out or os.path.join("runs", run["name"]))
    runs.checkpoint_dir(out).mkdir(parents=True, exist_ok=True)
    return out


def resume_target(args, ckpt_dir: Path):
    """None (fresh), "auto" or a checkpoint path, from ``--resume``."""
    has_ckpt = latest_ckpt(ckpt_dir) is not None
    if args.resume == "none":
        if has_ckpt:
            raise ValueError(f"{ckpt_dir.parent} already holds checkpoints; use --resume auto to continue it, "
                             "or another --out")
        return None
    if args.resume == "auto":
        return "auto" if has_ckpt else None
    if not os.path.isfile(args.resume):
        raise FileNotFoundError(f"--resume {args.resume!r}: no such checkpoint")
    return args.resume


def tokenizer_for(run: dict, out: Path, texts):
    """The run's tokenizer: out/tokenizer.json when resuming, data.tokenizer when given, else trained."""
    from ..tokenizer import RustBPETokenizer, load_tokenizer

    saved = out / runs.TOKENIZER
    if saved.is_file():
        return load_tokenizer(saved)
    given = run["extras"]["tokenizer"]
    if given:
        tok = load_tokenizer(given)
    else:
        t0 = time.time()
        tok = RustBPETokenizer().train(texts(), vocab_size=int(run["extras"]["vocab_size"]))
        print(f"tokenizer: trained BPE, vocab {tok.vocab_size} ({time.time() - t0:.0f}s)")
    tok.save(str(saved))
    return tok


def pretrain_loaders(run: dict, out: Path):
    """(tokenizer, train_dl, val_dl); text corpora are tokenised once into out/data/tokens.bin."""
    from ..data import from_binary

    tok, tokens = token_file(run, out)
    train_dl, val_dl = from_binary(tokens, run["data"], tokenizer=tok)
    return tok, train_dl, val_dl


def token_file(run: dict, out: Path):
    """(tokenizer, token file): data.corpus itself when it is a token file, else the text
    corpus tokenised once into out/data/tokens.bin (with a tokenizer trained when none is given)."""
    from ..data import tokenize_files

    corpus, max_mb = run["extras"]["corpus"], float(run["extras"]["max_mb"])
    if isinstance(corpus, str) and corpus.endswith(TOKEN_SUFFIXES):
        if not os.path.isfile(corpus):
            raise FileNotFoundError(f"data.corpus token file {corpus!r} does not exist")
        if not run["extras"]["tokenizer"] and not (out / runs.TOKENIZER).is_file():
            raise ValueError("data.corpus is a token file: set data.tokenizer to the tokenizer that made it")
        tok, tokens = tokenizer_for(run, out, None), corpus
    else:
        paths = corpus_files(corpus, max_mb)
        tok = tokenizer_for(run, out, lambda: read_texts(paths))
        tokens = out / "data" / "tokens.bin"
        if not tokens.is_file():
            tokens.parent.mkdir(exist_ok=True)
            t0 = time.time()
            n = tokenize_files(paths, tok, tokens, bos_id=tok.bos_id, eos_id=tok.eos_id)
            print(f"prepare: {n:,} tokens from {len(paths)} file(s) ({time.time() - t0:.0f}s)")
    return tok, tokens


def train_config(run: dict, out: Path):
    """TrainConfig with checkpoints in out/checkpoints and logs in out."""
    return C.build(type(run["train"]), "train",
                   {**run["train"].to_dict(), "ckpt_dir": str(runs.checkpoint_dir(out)), "log_dir": str(out)})


def cmd_train(args, overrides: dict) -> int:
    """Pretrain: tokenizer -> token file -> model -> run folder; then print a few samples."""
    from ..model import Transformer
    from ..trainer import Trainer

    raw = C.merge(C.read_yaml(args.config) if args.config else C.read_yaml("quickstart"), overrides)
    if args.name:
        raw["name"] = args.name
    run = C.resolve(raw, "train")
    out = run_folder(args, run)
    resume = resume_target(args, runs.checkpoint_dir(out))
    tok, train_dl, val_dl = pretrain_loaders(run, out)
    model_cfg = C.model_config(run, tok.vocab_size)
    train_cfg = train_config(run, out)
    runs.write_config(C.resolved_dict(run, model_cfg, train_cfg), out)
    model = Transformer(model_cfg)
    t0 = time.time()
    summary = Trainer(model, train_dl, val_dl, tok.vocab_size, train_cfg, tokenizer=tok).train(resume_from=resume)
    val = summary.get("best_val_loss")
    print(f"train: step {summary['step']}, best val loss {val if val is None else round(val, 4)}, "
          f"{time.time() - t0:.0f}s -> {out}")
    if args.samples:
        show_samples(model, tok, args.samples, max_new=args.max_new)
    return 0


def show_samples(model, tok, prompts: list[str], max_new: int = 60) -> None:
    """Print a sampled completion of each prompt (seeded, so a run prints the same text twice)."""
    import torch

    from ..inference import complete

    g = torch.Generator().manual_seed(0)
    for p in prompts:
        print(f"--- {p!r}\n{complete(model, tok, p, max_new=max_new, temperature=0.8, top_k=50, generator=g)}")
