"""``ttk serve``: an OpenAI-compatible HTTP server and a web chat page for one or more models."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible server (/v1/chat/completions, /v1/completions) "
                                     "and a web chat page at /, for one or more models")
    p.add_argument("--run", action="append", default=[], help="a run folder or .pt checkpoint (repeatable)")
    p.add_argument("--model", action="append", default=[],
                   help="a pretrained model: transformers folder, ttk pull folder or .gguf file (repeatable)")
    p.add_argument("--name", action="append", default=[],
                   help="the API's model id of each model, in the order given (default: its file or folder name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("TTK_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $TTK_API_KEY, else none)")
    p.add_argument("--template", help="chat template for every model (default: each one's own, else chatml)")
    p.add_argument("--slots", type=int, default=8, help="requests decoded together per model (default 8)")
    p.add_argument("--ctx", type=int, help="context per request in tokens (default: min(max_seq, 2048)); "
                                           "the KV cache holds slots x ctx positions")
    p.add_argument("--dtype", choices=("f32", "bf16"), default="f32", help="weights in memory (default f32)")
    p.add_argument("--max-requests", type=int, default=64,
                   help="requests in flight (decoding or waiting) beyond which the server answers 429")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (413 beyond)")


def _sources(args) -> list[tuple[str, str]]:
    """``(kind, path)`` of every model, ``--run`` ones first."""
    sources = [("run", r) for r in args.run] + [("model", m) for m in args.model]
    if not sources:
        raise ValueError("give a model to serve: --run DIR or --model PATH (either repeatable)")
    if args.name and len(args.name) != len(sources):
        raise ValueError(f"--name given {len(args.name)} times for {len(sources)} models; name each or none")
    return sources


def _default_name(path: str, taken: set[str]) -> str:
    p = Path(path)
    name = p.stem if p.suffix in (".gguf", ".pt") else p.name
    if name == "checkpoints" or p.suffix == ".pt":  # a checkpoint inside a run: name the run
        name = p.parent.parent.name if p.parent.name == "checkpoints" else p.parent.name
    base, k = name, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    return name


def load_served(args):
    """The ``ServedModel`` of every ``--run`` / ``--model``."""
    import torch

    from ..serve.models import ServedModel
    from .source import chat_template, load_source

    served, taken = [], set()
    for i, (kind, path) in enumerate(_sources(args)):
        one = argparse.Namespace(run=path if kind == "run" else None, model=path if kind == "model" else None)
        loaded = load_source(one)
        model, tok, template = loaded.model, loaded.tokenizer, chat_template(loaded, args.template)
        if args.dtype == "bf16":
            model = model.to(torch.bfloat16)
        name = args.name[i] if args.name else _default_name(path, taken)
        taken.add(name)
        ctx = args.ctx or min(model.cfg.max_seq, 2048)
        served.append(ServedModel(name, model.eval(), tok, template, slots=args.slots, ctx=ctx))
    return served


def cmd_serve(args) -> int:
    """Load the models and serve them until Ctrl-C."""
    from ..serve.app import _fastapi, create_app

    _fastapi()
    import uvicorn

    served = load_served(args)
    app = create_app(served, api_key=args.api_key, max_requests=args.max_requests, max_body=args.max_body)
    names = ", ".join(f"{m.name} (context {m.ctx}, {args.slots} slots)" for m in served)
    where = f"http://{args.host}:{args.port}"
    print(f"serve: {names}\nserve: chat page at {where}/ , OpenAI API at {where}/v1"
          + (" (API key required)" if args.api_key else ""), file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
