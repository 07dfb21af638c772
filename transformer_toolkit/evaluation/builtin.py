"""Built-in tasks: they need no download and no lm-eval.

- ``synthetic``: exact match of greedy chat replies on held-out prompts of the checkable SFT
  tasks (reverse a word list, add two numbers; ``sft/synthetic.py``), asked alone and as the
  second question of a chat. Options: ``data`` (a JSON/JSONL file of conversations to score
  instead; the answer is each one's last assistant message), ``n`` (50), ``seed`` (1),
  ``tasks`` ([reverse, add]), ``template`` (chatml: a preset name or a ``ChatTemplate`` dict),
  ``max_new`` (24).
- ``bpb``: bits per byte (and per-token perplexity) on held-out text: the run's held-out token
  split by default, or ``data`` (text or token files, each its own domain). Option ``max_tokens``
  (200000 per source).

Each returns entries of lm-eval's ``results`` layout, ``{task: {"metric,none": value, ...}}``
(``bpb`` adds one ``bpb/FILE`` entry per file when it scores several).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

HIGHER_IS_BETTER = {"synthetic": {"exact_match": True, "exact_match_follow_up": True},
                    "bpb": {"bits_per_byte": False, "perplexity": False, "byte_perplexity": False}}


def held_out_conversations(options: dict) -> list[dict]:
    """The conversations the synthetic task scores: ``data``'s, or generated ones."""
    if options.get("data"):
        from ..sft.loaders import read_json_samples
        from ..sft.render import to_messages

        samples = [{"messages": to_messages(s)} for s in read_json_samples(options["data"])]
    else:
        from ..sft.synthetic import TASKS, synthetic_tasks

        samples = synthetic_tasks(int(options.get("n", 50)), seed=int(options.get("seed", 1)),
                                  tasks=tuple(options.get("tasks") or TASKS))
    good = [s for s in samples if len(s["messages"]) >= 2 and s["messages"][-1]["role"] == "assistant"
            and s["messages"][-2]["role"] == "user"]
    if not good:
        raise ValueError(f"synthetic: {options.get('data')!r} holds no conversation ending in a user question and an "
                         "assistant answer to score")
    return good


def synthetic(model, tokenizer, options: dict, **_) -> dict:
    """Exact match of greedy replies, asked alone and after another held-out exchange."""
    from ..sft.synthetic import exact_match

    samples = held_out_conversations(options)
    template = options.get("template") or "chatml"
    max_new = int(options.get("max_new", 24))
    prompts = [s["messages"][-2]["content"] for s in samples]
    alone = dict(zip(prompts, replies(model, tokenizer, template, [[_user(p)] for p in prompts], max_new),
                     strict=True))
    first = prompts[1:] + prompts[:1]  # each question follows another held-out exchange
    chats = [[_user(q), {"role": "assistant", "content": alone[q]}, _user(p)] for q, p in zip(first, prompts,
                                                                                               strict=True)]
    second = dict(zip(prompts, replies(model, tokenizer, template, chats, max_new), strict=True))
    return {"synthetic": {"alias": "synthetic", "sample_len": len(samples),
                          "exact_match,none": exact_match(alone.__getitem__, samples),
                          "exact_match_follow_up,none": exact_match(second.__getitem__, samples)}}


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def replies(model, tokenizer, template, conversations: list[list[dict]], max_new: int) -> list[str]:
    """Greedy replies to each conversation (its last message a user question), exactly as a fresh
    ``ChatSession`` gives them (same prompt ids, stop ids, cut at the closer), but batched."""
    from ..sft import ChatSession, ChatTemplate
    from .until import generate_until

    if isinstance(template, dict):
        template = ChatTemplate.from_dict(template)
    session = ChatSession(model, tokenizer, template=template, max_new=max_new, temperature=0)
    closer = session.template.assistant_closer.strip()
    prompts = [session.prompt_ids(c, max_new) for c in conversations]

    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=False)

    out = []
    for new in generate_until(model, prompts, decode=decode, max_new=max_new, stop_ids=session.stop_ids(),
                              stop_texts=[closer] if closer else []):
        text = decode(new)
        out.append((text[:text.index(closer)] if closer and closer in text else text).strip())
    return out


def bpb(model, tokenizer, options: dict, heldout: Callable[[], Sequence[int]] | None = None, **_) -> dict:
    """Bits per byte on ``data`` files, or on the held-out split ``heldout()`` returns."""
    from .bpb import bits_per_byte, score_tokens

    max_tokens = int(options.get("max_tokens", 200_000))
    data = options.get("data")
    if data:
        figures = bits_per_byte(model, tokenizer, files=data, max_tokens=max_tokens)
    else:
        if heldout is None:
            raise ValueError("bpb: no held-out split here (an SFT run, or a model outside a run folder); "
                             "give the task data files: {name: bpb, data: [FILE, ...]}")
        figures = {"heldout": score_tokens(model, tokenizer, list(heldout())[:max_tokens])}
    out = {"bpb": _bpb_entry(figures.pop("all", None) or figures["heldout"], "bpb")}
    domains = {name: f for name, f in figures.items() if name != "heldout"}
    if len(domains) > 1:  # each file's own figures beside the pooled ones
        out.update({f"bpb/{name}": _bpb_entry(f, name) for name, f in domains.items()})
    return out


def _bpb_entry(f: dict, alias: str) -> dict:
    import math

    return {"alias": alias, "tokens": f["tokens"], "bytes": f["bytes"], "bits_per_byte,none": f["bits_per_byte"],
            "byte_perplexity,none": 2 ** f["bits_per_byte"] if math.isfinite(f["bits_per_byte"]) else math.nan,
            "perplexity,none": f["perplexity"], "loss,none": f["loss"]}


BUILTIN = {"synthetic": synthetic, "bpb": bpb}
