"""``ttk tokenizer``, ``ttk prepare`` and ``ttk train``: from text files to a pretrained run folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..store import runs
from . import config as C
from . import runfolder as R
from .builtin import corpus_files, read_texts
from .outputs import check_output, is_npy, is_token_file, is_tokenizer_json

TOKEN_SUFFIXES = (".bin", ".npy")


def cmd_tokenizer(args) -> int:
    """Train a byte-level BPE tokenizer on text files and save it as tokenizer.json."""
    from ..tokenizer import RustBPETokenizer

    paths = [p for f in args.files for p in corpus_files(f, args.max_mb)]
    out = Path(args.out) / runs.TOKENIZER if Path(args.out).is_dir() else Path(args.out)
    check_output(out, paths, "a tokenizer.json", looks_like=is_tokenizer_json, force=args.force)
    size = sum(os.path.getsize(p) for p in paths)  # caps a --vocab-size the corpus cannot fill
    tok = RustBPETokenizer().train(read_texts(paths), vocab_size=args.vocab_size, corpus_bytes=size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(out)
    print(f"tokenizer: vocab {tok.vocab_size} from {len(paths)} file(s) -> {out}")
    return 0


def cmd_prepare(args) -> int:
    """Tokenise text files into one token file, and optionally train/val .npy splits."""
    from ..data import DataConfig, from_binary, tokenize_files
    from ..tokenizer import load_tokenizer

    paths = [p for f in args.files for p in corpus_files(f, args.max_mb)]
    stem = os.path.splitext(args.out)[0]
    outputs = {args.out: ("a token file", is_token_file)}
    if args.split is not None:
        outputs |= {f"{stem}.{part}.npy": ("a .npy token file", is_npy) for part in ("train", "val")}
    for out, (what, looks_like) in outputs.items():
        check_output(out, [*paths, args.tokenizer], what, looks_like=looks_like, force=args.force)
    tok = load_tokenizer(args.tokenizer)
    n = tokenize_files(paths, tok, args.out, bos_id=tok.bos_id, eos_id=tok.eos_id)
    print(f"prepare: {n:,} tokens from {len(paths)} file(s) -> {args.out}")
    if args.split is not None:
        # seq_len/batch_size do not matter for the split itself, only the train fraction does
        from_binary(args.out, DataConfig(seq_len=1, batch_size=1, split=args.split),
                    train_path=f"{stem}.train.npy", val_path=f"{stem}.val.npy")
        print(f"prepare: split {args.split:g} -> {stem}.train.npy, {stem}.val.npy")
    return 0


def tokenizer_for(run: dict, out: Path, texts, wanted: dict, resuming: bool):
    """The run's tokenizer: out/tokenizer.json when it was made from ``wanted`` (see
    runfolder.reusable), else data.tokenizer when given, else one trained on ``texts()``."""
    from ..tokenizer import RustBPETokenizer, load_tokenizer

    saved = out / runs.TOKENIZER
    if R.reusable(out, runs.TOKENIZER, wanted, resuming):
        return load_tokenizer(saved)
    given = run["extras"]["tokenizer"]
    if given:
        tok = load_tokenizer(given)
    else:
        t0 = time.time()
        tok = RustBPETokenizer().train(texts(), vocab_size=int(run["extras"]["vocab_size"]))
        print(f"tokenizer: trained BPE, vocab {tok.vocab_size} ({time.time() - t0:.0f}s)")
    tok.save(str(saved))
    runs.record_made_from(out, runs.TOKENIZER, wanted)
    return tok


def pretrain_loaders(run: dict, out: Path, resuming: bool):
    """(tokenizer, train_dl, val_dl); text corpora are tokenised once into out/data/tokens.bin
    (again when the corpus or the tokenizer changed since)."""
    from ..data import from_binary

    tok, tokens = token_file(run, out, resuming)
    train_dl, val_dl = from_binary(tokens, run["data"], tokenizer=tok)
    return tok, train_dl, val_dl


def token_file(run: dict, out: Path, resuming: bool):
    """(tokenizer, token file): data.corpus itself when it is a token file, else the text
    corpus tokenised once into out/data/tokens.bin (again when the corpus or the tokenizer
    changed since), with a tokenizer trained when none is given. ``resuming``: checkpoints
    trained with out's tokenizer exist, so it may not be replaced."""
    from ..data import tokenize_files
    from ..tokenizer import load_tokenizer

    ex = run["extras"]
    corpus, max_mb, given = ex["corpus"], float(ex["max_mb"]), ex["tokenizer"]
    tok_from = {"tokenizer": os.path.abspath(given), "digest": R.input_digest(given)} if given else None
    if isinstance(corpus, str) and corpus.endswith(TOKEN_SUFFIXES):
        if not os.path.isfile(corpus):
            raise FileNotFoundError(f"data.corpus token file {corpus!r} does not exist")
        if not given and not (out / runs.TOKENIZER).is_file():
            raise ValueError("data.corpus is a token file: set data.tokenizer to the tokenizer that made it")
        if given:
            tok = tokenizer_for(run, out, None, tok_from, resuming)
        else:  # the folder's own tokenizer, the one a rerun's token file was made with
            tok = load_tokenizer(out / runs.TOKENIZER)
        tokens = corpus
    else:
        paths = corpus_files(corpus, max_mb)
        texts = {"corpus": corpus, **R.files_record(paths), "vocab_size": int(ex["vocab_size"])}
        tok = tokenizer_for(run, out, lambda: read_texts(paths), tok_from or texts, resuming)
        tokens = out / "data" / "tokens.bin"
        tokens_from = {"corpus": corpus, **R.files_record(paths), "tokenizer": R.input_digest(out / runs.TOKENIZER)}
        if not R.reusable(out, "data/tokens.bin", tokens_from, resuming=False):
            tokens.parent.mkdir(exist_ok=True)
            t0 = time.time()
            n = tokenize_files(paths, tok, tokens, bos_id=tok.bos_id, eos_id=tok.eos_id)
            runs.record_made_from(out, "data/tokens.bin", tokens_from)
            print(f"prepare: {n:,} tokens from {len(paths)} file(s) ({time.time() - t0:.0f}s)")
    return tok, tokens


def cmd_train(args, overrides: dict) -> int:
    """Pretrain: tokenizer -> token file -> model -> run folder; then print a few samples."""
    import torch

    from ..model import Transformer
    from ..trainer import Trainer

    with R.open_run(args, overrides, "train", "quickstart") as (run, _, out):
        resume = R.resume_target(args, runs.checkpoint_dir(out))
        tok, train_dl, val_dl = pretrain_loaders(run, out, resuming=resume is not None)
        model_cfg = C.model_config(run, tok.vocab_size)
        train_cfg = R.train_config(run, out)
        torch.manual_seed(train_cfg.seed)  # the initial weights are part of what a seed reproduces
        model = Transformer(model_cfg)
        t0 = time.time()
        trainer = Trainer(model, train_dl, val_dl, tok.vocab_size, train_cfg, tokenizer=tok,
                          data_config=R.data_settings(run))
        summary = trainer.train(resume_from=resume, on_start=R.config_writer(run, out, model_cfg, train_cfg))
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
