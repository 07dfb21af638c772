"""Generate until a stop sequence, many prompts at a time (lm-eval's ``generate_until``).

The prompts run on one inference ``Engine`` (continuous batching): each prompt is prefilled
alone into a free cache slot (no padding, whatever the lengths), every decoding row then
advances one token per step in one forward, each at its own position, and a row that ends
(a stop id, a completed stop string, ``max_new`` tokens) frees its slot at once for the next
prompt. Each row thus sees exactly its prompt and its own tokens at their positions: its greedy
reply is the one it gets decoded alone. Prompts are taken in token order, so prompts that
start alike (the few-shot examples of a task) follow each other and the engine prefills only
what a new prompt adds to a prefix that a slot already holds.

>>> replies = generate_until(model, [ids_a, ids_b], decode=tok.decode, stop_texts=["\\n"],
...                          stop_ids=[tok.eos_id], max_new=32)              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..inference import Engine, sample_next
from ..model.kernels import decode_kernels


def generate_until(model, prompts: Sequence[Sequence[int]], *, decode: Callable[[list[int]], str],
                   max_new: int, stop_ids: Sequence[int] = (), stop_texts: Sequence[str] = (),
                   temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                   batch_size: int = 16, generator: torch.Generator | None = None) -> list[list[int]]:
    """The new token ids of each prompt: up to ``max_new``, ending before the first stop id
    (which is not included) and no later than the token that completes a stop string (the
    caller cuts the decoded text at it). ``temperature=0`` is greedy. ``batch_size`` rows
    decode together. Every prompt plus ``max_new`` must fit the model's context."""
    out: list[list[int]] = [[] for _ in prompts]
    if max_new <= 0 or not prompts:
        return out
    for i, p in enumerate(prompts):
        if not 0 < len(p) <= model.cfg.max_seq - max_new:
            raise ValueError(f"prompt {i} has {len(p)} tokens: it needs 1 to max_seq - max_new = "
                             f"{model.cfg.max_seq - max_new} (cut it from the left first)")
    prompts = [[int(t) for t in p] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])  # shared prefixes side by side
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), decode_kernels(model):
            engine = Engine.create(model, slots=max(1, min(batch_size, len(prompts))),
                                   max_len=max(len(p) for p in prompts) + max_new)
            rows = _Rows(decode, max_new, {int(t) for t in stop_ids}, stop_texts)
            _run(engine, [(i, prompts[i]) for i in order], rows, (temperature, top_k, top_p, generator))
    finally:
        model.train(was_training)
    for i, ids in rows.new.items():
        out[i] = ids
    return out


class _Rows:
    """The tokens each request has produced, and when it is done."""

    def __init__(self, decode, max_new: int, stops: set[int], stop_texts: Sequence[str]):
        self.decode, self.max_new, self.stops = decode, max_new, stops
        self.stop_texts = [s for s in stop_texts if s]
        # A stop string that was not there one token ago ends in the newest token's text, so a
        # tail of the row covers it (every token adds at least a character, or a byte of one).
        self.tail = max((len(s) for s in self.stop_texts), default=0) + 4
        self.new: dict[int, list[int]] = {}

    def add(self, i: int, token: int) -> bool:
        """Record request ``i``'s next token; True when the request is done (and the token,
        unless it is a stop id, kept)."""
        if token in self.stops:
            return True
        ids = self.new.setdefault(i, [])
        ids.append(token)
        if len(ids) == self.max_new:
            return True
        return any(s in self.decode(ids[-self.tail:]) for s in self.stop_texts)


def _run(engine: Engine, queue: list[tuple[int, list[int]]], rows: _Rows, sampling: tuple) -> None:
    """Admit the queued prompts into free slots, decode every active slot one token per step,
    release each as it ends, until the queue is empty and nothing decodes."""
    owner: dict[int, int] = {}  # slot -> request index
    logits: dict[int, torch.Tensor] = {}  # slot -> logits of its next token (V,)
    queue = queue[::-1]  # popped from the end
    while queue or logits:
        while queue and engine.active < engine.slots:
            i, ids = queue.pop()
            rows.new[i] = []
            slot, first, _ = engine.admit(torch.tensor(ids, dtype=torch.long))
            owner[slot], logits[slot] = i, first
        slots = list(logits)
        sampled = sample_next(torch.stack([logits[s] for s in slots]), *sampling).tolist()
        fed: dict[int, int] = {}
        for slot, token in zip(slots, sampled, strict=True):
            if rows.add(owner[slot], token):
                engine.release(slot)
            else:
                fed[slot] = token
        logits = {}
        if fed:
            active = engine.active_slots()  # the order decode takes and returns its rows
            step = engine.decode(torch.tensor([fed[s] for s in active], dtype=torch.long))
            logits = {s: step[r] for r, s in enumerate(active)}
