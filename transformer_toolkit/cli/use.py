"""``ttk sft``, ``ttk generate``, ``ttk chat`` and ``ttk eval``: fine-tune and use a run."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from ..store import load, runs
from . import config as C
from .builtin import synthetic_split
from .source import chat_template, load_source
from .train import resume_target, run_folder, train_config


def add_lora(model, run: dict):
    """Adapters per the run's ``lora:`` section (none without one) on the run's init, recorded as
    their base (``apply_lora``: a local path made absolute, a Hub repo id as it is)."""
    if run["lora"] is None:
        return model
    if not run["init"]:
        raise ValueError("lora: adapters need a base model to adapt; give --init RUN or --model PATH "
                         "(or --lora.r 0 to train every weight)")
    from ..lora import apply_lora

    return apply_lora(model, run["lora"], base=run["init"])


def cmd_sft(args, overrides: dict) -> int:
    """Fine-tune on conversations (built-in synthetic tasks or a JSON file), report exact match."""
    from ..model import Transformer
    from ..sft import ChatSession, SFTTrainer, from_sft_json, from_sft_strings
    from ..sft.synthetic import exact_match
    from ..tokenizer import RustBPETokenizer, load_tokenizer

    raw = C.merge(C.read_yaml(args.config or "sft"), overrides)
    if args.name:
        raw["name"] = args.name
    if args.init and args.model:
        raise ValueError("give --init or --model, not both (they mean the same)")
    if args.init or args.model:
        raw["init"] = args.init or args.model
    run = C.resolve(raw, "sft")
    out = run_folder(args, run)
    resume = resume_target(args, runs.checkpoint_dir(out))
    ex, data_cfg = run["extras"], run["data"]
    corpus = ex["corpus"]
    if corpus == "builtin:synthetic":
        train, held_out = synthetic_split(int(ex["n_samples"]), int(ex["n_eval"]), ex["tasks"],
                                          multi_turn=float(ex["multi_turn"]))
    elif isinstance(corpus, str) and os.path.isfile(corpus):
        train, held_out = None, []
    else:
        raise FileNotFoundError(f"data.corpus {corpus!r}: not builtin:synthetic nor an existing JSON/JSONL file")

    model = None
    if run["init"]:  # a run, a checkpoint or a pretrained model; the recipe's template is what is trained
        init = load(run["init"])
        model, tok = init.model.train(), init.tokenizer
    elif (out / runs.TOKENIZER).is_file() or ex["tokenizer"]:
        tok = load_tokenizer(out / runs.TOKENIZER if (out / runs.TOKENIZER).is_file() else ex["tokenizer"])
    else:
        template = data_cfg.template
        texts = [template.format_messages(s["messages"])[0] for s in (train or [])[:1000]]
        if not texts:
            from ..sft.loaders import read_json_samples
            texts = [template.format_messages(s["messages"])[0] for s in read_json_samples(corpus)[:1000]]
        tok = RustBPETokenizer().train(texts, vocab_size=int(ex["vocab_size"]))
    runs.save_tokenizer(tok, out)

    data_cfg = C.build(type(data_cfg), "data", {**data_cfg.model_dump(exclude={"tokenizer"}), "tokenizer": tok})
    train_dl, val_dl = from_sft_strings(train, tok, data_cfg) if train is not None else \
        from_sft_json(corpus, tok, data_cfg)
    if model is None:
        model = Transformer(C.model_config(run, tok.vocab_size))
    add_lora(model, run)
    train_cfg = train_config(run, out)
    runs.write_config(C.resolved_dict(run, model.cfg, train_cfg), out)
    t0 = time.time()
    summary = SFTTrainer(model, train_dl, val_dl, tok.vocab_size, train_cfg, tokenizer=tok).train(resume_from=resume)
    best = summary.get("best_val_loss")
    print(f"sft: step {summary['step']}, best val loss {best if best is None else round(best, 4)}, "
          f"{time.time() - t0:.0f}s -> {out}")
    if held_out:
        session = ChatSession(model, tok, template=data_cfg.template, max_new=24, temperature=0)

        def answer(prompt: str) -> str:
            session.reset()
            return session.ask(prompt)

        prompts = [s["messages"][-2]["content"] for s in held_out]
        asked_first = dict(zip(prompts, prompts[1:] + prompts[:1], strict=True))  # another held-out question

        def follow_up(prompt: str) -> str:  # the question comes second, after another exchange
            session.reset()
            session.ask(asked_first[prompt])
            return session.ask(prompt)

        print(f"exact match: {exact_match(answer, held_out):.0%} on {len(held_out)} held-out prompts; "
              f"{exact_match(follow_up, held_out):.0%} as the second question of a chat")
    return 0


def cmd_generate(args) -> int:
    """Sample a completion of ``--prompt`` from a run's model."""
    import torch

    from ..inference import complete

    loaded = load_source(args)
    model, tok = loaded.model, loaded.tokenizer

    g = torch.Generator().manual_seed(args.seed)
    print(complete(model, tok, args.prompt, max_new=args.max_new, temperature=args.temperature, top_k=args.top_k,
                   stop_ids=[tok.eos_id] if tok.eos_id is not None else None, generator=g, compile=args.compile))
    return 0


def print_reply(session, line: str) -> None:
    """Stream the reply to ``line``. Ctrl-C stops the reply, not the chat: what was shown stays
    in the history and the next question follows it."""
    pieces = session.ask_stream(line)
    try:
        for piece in pieces:
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        pieces.close()
        print(" [stopped]", end="")
    print()


def cmd_chat(args) -> int:
    """A REPL over ChatSession: /reset, /system TEXT, /exit. Piped stdin: one message per line,
    only the replies are printed."""
    from ..sft import ChatSession

    loaded = load_source(args)
    session = ChatSession(loaded.model, loaded.tokenizer, template=chat_template(loaded, args.template),
                          system=args.system, max_new=args.max_new, temperature=args.temperature, top_k=args.top_k,
                          compile=args.compile)
    tty = sys.stdin.isatty()
    if tty:
        print("chat: /reset forgets the conversation, /system TEXT sets the system prompt, /exit quits; "
              "Ctrl-C stops a reply")
    while True:
        if tty:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            session.reset()
            continue
        if line.startswith("/system"):
            session.system = line[len("/system"):].strip() or None
            session.reset()
            continue
        if not tty:  # piped: exactly one line per reply, so a script can pair questions and answers
            print(session.ask(line).replace("\n", " "), flush=True)
            continue
        print_reply(session, line)
    return 0


def cmd_eval(args) -> int:
    """Perplexity of a run's model on a text file or a token file (.bin/.npy)."""
    import torch
    import torch.nn.functional as F

    from ..data.tokens import open_tokens

    loaded = load_source(args)
    model, tok = loaded.model, loaded.tokenizer
    if not os.path.isfile(args.data):
        raise FileNotFoundError(f"--data {args.data!r} does not exist")
    if Path(args.data).suffix in (".bin", ".npy"):
        ids = torch.as_tensor(open_tokens(args.data)[: args.max_tokens].astype("int64"))
    else:
        text = Path(args.data).read_text(encoding="utf-8", errors="replace")
        ids = torch.tensor(tok.encode(text)[: args.max_tokens], dtype=torch.long)
    T = min(args.seq_len or model.cfg.max_seq, model.cfg.max_seq)
    if len(ids) < 2:
        raise ValueError(f"{args.data} holds fewer than 2 tokens; nothing to evaluate")
    total, count = 0.0, 0
    with torch.no_grad():
        for a in range(0, len(ids) - 1, T):
            x = ids[a: a + T + 1]
            if len(x) < 2:
                break
            logits, _ = model(x[:-1].unsqueeze(0))
            total += F.cross_entropy(logits[0].float(), x[1:], reduction="sum").item()
            count += len(x) - 1
    loss = total / count
    print(f"eval: {count:,} tokens, loss {loss:.4f}, perplexity {math.exp(min(loss, 50)):.2f}")
    return 0
