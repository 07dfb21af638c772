"""``ttk export``, ``ttk push``, ``ttk pull``, and ``--model PATH``: models from and for other tools.

A *source* is a run folder (``--run``: checkpoints + tokenizer + config.yaml) or a pretrained
model (``--model``: a transformers folder, a folder from ``ttk pull`` or a ``.gguf`` file).
For a pretrained model the chat template is the preset its own Jinja template renders like,
else chatml with a one-line warning.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

HF_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
GGUF_DTYPES = ("f32", "f16", "q8_0")


def is_pretrained(path: str | os.PathLike) -> bool:
    """A ``.gguf`` file or a folder with a ``config.json`` (transformers or native), not a run folder."""
    p = Path(path)
    return (p.suffix == ".gguf" and p.is_file()) or (p.is_dir() and (p / "config.json").is_file())


def load_pretrained_model(path, warn=True):
    """``(model, tokenizer, template)`` from a transformers folder, native folder or GGUF file."""
    from ..convert import template_for_model
    from ..model import Transformer
    from ..tokenizer import load_tokenizer

    if not is_pretrained(path):
        raise FileNotFoundError(f"--model {os.fspath(path)!r}: not a .gguf file nor a folder with config.json")
    model = Transformer.from_pretrained(path)
    tok = load_tokenizer(path)
    template, matched = template_for_model(path, tok)
    if warn and not matched:
        print(f"warning: {os.fspath(path)}'s chat template matches none of our presets (or it has none); "
              "using chatml (pick another with --template)", file=sys.stderr)
    return model, tok, template


def load_source(args, warn: bool = True):
    """``(model, tokenizer, template, run_config)`` from ``--run`` or ``--model``."""
    from .use import load_run, template_of

    if getattr(args, "model", None):
        model, tok, template = load_pretrained_model(args.model, warn)
        return model, tok, template, {}
    if is_pretrained(args.run) and not (Path(args.run) / "checkpoints").is_dir():
        raise FileNotFoundError(f"--run {args.run!r} is a pretrained model, not a run folder; use --model {args.run}")
    model, tok, run_config = load_run(args.run)
    return model, tok, template_of(run_config), run_config


def save_run_tokenizer(tok, out: Path) -> None:
    """Keep the tokenizer in a run folder: ours as tokenizer.json, a transformers one (from a
    pretrained model) as its tokenizer files, which ``load_tokenizer(out)`` reads back."""
    from ..tokenizer import ByteLevelTokenizer, RustBPETokenizer

    if isinstance(tok, (RustBPETokenizer, ByteLevelTokenizer)):
        tok.save(str(out / "tokenizer.json"))
        return
    from ..convert.hf_io import write_tokenizer

    write_tokenizer(tok, str(out))


def _sft_template(run_config: dict):
    """The template a run was fine-tuned with (None for a pretraining run)."""
    from ..sft import ChatTemplate

    t = (run_config.get("data") or {}).get("template")
    return ChatTemplate.from_dict(t) if isinstance(t, dict) else t


def _export_adapter(args) -> int:
    """A LoRA run's adapters alone: a PEFT folder or a llama.cpp LoRA GGUF (for the base's own export)."""
    from ..lora import adapters, save_peft
    from ..lora.gguf import save_gguf_adapter
    from .use import load_run

    if not args.run:
        raise ValueError(f"--format {args.format} exports the adapters of a LoRA run: give --run RUN")
    model, _, _ = load_run(args.run, merged=False)
    if not adapters(model):
        raise ValueError(f"{args.run} is not a LoRA run (no adapters); export its model with --format hf or gguf")
    if args.format == "peft":
        save_peft(model, args.out)
    else:
        save_gguf_adapter(model, args.out, dtype=args.dtype or "f32")
    print(f"export: {args.format} adapter -> {args.out} (for the base {model.adapter_info['base']})")
    return 0


def cmd_export(args) -> int:
    """Write a run's (or a pretrained model's) model as a transformers folder or a GGUF file, or a
    LoRA run's adapters as a PEFT folder or a llama.cpp LoRA GGUF."""
    import torch

    if args.format in ("peft", "lora-gguf"):
        return _export_adapter(args)
    model, tok, _, run_config = load_source(args, warn=False)
    template = args.template or _sft_template(run_config)  # None keeps a pretrained tokenizer's own
    if args.format == "hf":
        dtype = args.dtype or "f32"
        if dtype not in HF_DTYPES:
            raise ValueError(f"--dtype {dtype} is not for --format hf; choose one of {', '.join(HF_DTYPES)}")
        if dtype != "f32":
            model = copy.deepcopy(model).to(getattr(torch, HF_DTYPES[dtype]))
        model.save_pretrained(args.out, tokenizer=tok, template=template)
    else:
        dtype = args.dtype or "f16"
        if dtype not in GGUF_DTYPES:
            raise ValueError(f"--dtype {dtype} is not for --format gguf; choose one of {', '.join(GGUF_DTYPES)}")
        model.save_gguf(args.out, tokenizer=tok, template=template, dtype=dtype)
    print(f"export: {args.format} ({dtype}) -> {args.out}")
    return 0


def _run_metrics(run: str) -> tuple[dict, int | None]:
    """``(metrics, step)`` of the checkpoint a run folder loads from."""
    from ..model.loading import resolve_checkpoint
    from ..trainer.checkpoint import read_ckpt

    ckpt = read_ckpt(resolve_checkpoint(run), mmap=True)  # mmap: reads the numbers, not the weights
    metrics = {}
    for key in ("val_loss", "best_val_loss"):
        v = ckpt.get(key)
        if v is not None and math.isfinite(float(v)):
            metrics[key] = float(v)
    if "best_val_loss" in metrics:
        metrics["perplexity"] = math.exp(min(metrics["best_val_loss"], 50.0))
    return metrics, ckpt.get("step")


def cmd_push(args) -> int:
    """Upload a run's model (or a pretrained one) to the Hub with metrics and a model card."""
    from ..hf_hub import push_to_hub

    model, tok, _, run_config = load_source(args, warn=False)
    template = args.template or _sft_template(run_config)
    metrics, step = _run_metrics(args.run) if args.run else ({}, None)
    with _hub_errors(f"push to {args.repo}"):
        push_to_hub(args.repo, model, tokenizer=tok, metrics=metrics, step=step, private=not args.public,
                    template=template)
    print(f"push: {args.repo} ({'public' if args.public else 'private'}), step {step}")
    return 0


def cmd_pull(args) -> int:
    """Download a model repo (safetensors/GGUF only) into --out."""
    from ..hf_hub import pull_from_hub

    with _hub_errors(f"pull of {args.repo}"):
        path = pull_from_hub(args.repo, save_dir=args.out, revision=args.revision)
    print(f"pull: {args.repo} -> {path} (use it with --model {path})")
    return 0


@contextmanager
def _hub_errors(what: str):
    """Hub refusals (HTTP errors: no access, no such repo) and network failures as one-line errors."""
    from ..hf_hub import is_connection_error

    try:
        yield
    except Exception as e:
        names = {c.__name__ for c in type(e).__mro__}
        if "HfHubHTTPError" in names or is_connection_error(e):
            first = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"{what} failed: {type(e).__name__}: {first} (log in with "
                             "transformer_toolkit.hf_hub.login or set HF_TOKEN; check the repo name)") from e
        raise
