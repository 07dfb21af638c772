"""``PromptCache``: the engine of one ``generate``/``stream`` call, kept for the next call."""

from __future__ import annotations

from torch import Tensor

from .engine import Engine


class PromptCache:
    """The KV cache of one ``generate``/``stream`` call, kept for the next call.

    A chat renders the whole conversation again every turn, so each prompt starts with the
    previous prompt and reply. Pass the same ``PromptCache`` to successive calls and each one
    prefills only the tokens after the longest prefix it shares with what the cache already
    holds: the conversation's earlier turns are not recomputed (``ChatSession`` does this).
    An eager call allocates ``PROMPT_CACHE_ROOM`` slots more than it needs, so the next turn
    usually fits and fills the same buffers in place; otherwise the prefix is copied over.
    A prefill in two chunks computes the same function as one over the whole prompt: greedy
    fp32 tokens are identical (tested for every attention and position kind). In bf16 the keys
    and values of the previous reply were computed by decode steps, whose kernels round
    differently from a prefill's, so near-ties can go either way, as between any two kernels
    (a bf16 prefill split in two gives the very logits of a whole one). The cache is
    not used when the model's weights, dtype or device changed since it was filled, when the
    batch size differs, or for ``moe_ec`` models (expert choice routes over the whole prompt).

    What it holds is an ``Engine`` (one slot per row of the batch): the engine keeps track of
    the ids each row's cache holds as it decodes, so a stream stopped at any token leaves an
    exact record.
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        """Forget what is cached (the next call prefills its whole prompt)."""
        self.engine: Engine | None = None
        self.weights: tuple | None = None
        self.reused = 0  # prompt tokens the last call took from the cache

    @property
    def cache(self) -> list | None:
        """The held KV cache (one ``LayerCache`` per layer), or None."""
        return None if self.engine is None else self.engine.cache

    @property
    def ids(self) -> Tensor | None:
        """``(B, n)``: the token ids at cache positions ``0..n-1`` of every row."""
        e = self.engine
        return None if e is None else e.tokens[:, :min(e.lengths)]

    def __len__(self) -> int:
        return 0 if self.engine is None else min(self.engine.lengths)

    def held(self, weights: tuple | None, batch: int) -> Engine | None:
        """The held engine if these very weights filled it at this batch size, else None."""
        e = self.engine
        return e if e is not None and weights is not None and self.weights == weights and e.slots == batch else None

    def keep(self, engine: Engine, weights: tuple | None, reused: int) -> None:
        """Hold ``engine`` (filled by ``weights``) for the next call."""
        self.engine, self.weights, self.reused = engine, weights, reused
