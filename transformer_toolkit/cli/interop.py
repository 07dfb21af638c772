"""``ttk export``, ``ttk push`` and ``ttk pull``: models for and from other tools.

The model comes from ``--run`` or ``--model`` (see source.py); an export or a push stores the
chat template a run was fine-tuned with (``--template`` overrides it), and a pretrained model
keeps its tokenizer's own.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

from ..store import runs
from .outputs import check_output, is_gguf, is_model_folder
from .source import load_source

HF_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
GGUF_DTYPES = ("f32", "f16", "q8_0")


def _export_adapter(args) -> int:
    """A LoRA run's adapters alone: a PEFT folder or a llama.cpp LoRA GGUF (for the base's own export)."""
    from ..lora import adapters, save_gguf_adapter, save_peft

    if not args.run:
        raise ValueError(f"--format {args.format} exports the adapters of a LoRA run: give --run RUN")
    model = load_source(args, merged=False).model
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

    source = [args.run or args.model]
    if args.format in ("hf", "peft"):
        check_output(args.out, source, f"a {'model' if args.format == 'hf' else 'PEFT adapter'} folder", folder=True,
                     looks_like=is_model_folder, force=args.force)
    else:
        check_output(args.out, source, "a GGUF file", looks_like=is_gguf, force=args.force)
    if args.format in ("peft", "lora-gguf"):
        return _export_adapter(args)
    loaded = load_source(args)
    model, tok = loaded.model, loaded.tokenizer
    template = args.template or loaded.template  # None keeps a pretrained tokenizer's own
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


def cmd_push(args) -> int:
    """Upload a run's model (or a pretrained one) to the Hub with metrics and a model card."""
    from ..hf_hub import push_to_hub

    loaded = load_source(args)
    template = args.template or loaded.template
    metrics, step = runs.metrics(loaded.checkpoint) if loaded.checkpoint else ({}, None)
    with _hub_errors(f"push to {args.repo}"):
        push_to_hub(args.repo, loaded.model, tokenizer=loaded.tokenizer, metrics=metrics, step=step,
                    private=not args.public, template=template)
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
