"""The inference engine: a model, a KV cache of ``slots`` rows, and what each row holds.

Every sequence being decoded owns one row (a *slot*) of one pre-allocated cache. The engine
knows, on the host, how many positions each row holds and which token ids they are
(``tokens``), so it can

- **batch independent requests** (continuous batching): ``admit`` prefills a new request into a
  free slot between steps, ``decode`` advances every active slot by one token, each at its own
  position, in one forward, and ``release`` frees a finished or cancelled slot at once;
- **reuse a prefix**: a free slot keeps what it held, and a new prompt that starts with the same
  tokens is admitted into it and prefills only the rest (a chat's next turn; requests sharing a
  system prompt). Not for ``moe_ec`` models, whose expert choice routes over the whole prompt;
- **decode a batch in lockstep** (``generate``): ``start_all`` / ``restart_all`` prefill every
  row at one position, which lets a compiled or CUDA-graph step (fixed shapes) run the steps;
- **sample groups** (``sample_groups``, GRPO rollouts): ``start_groups`` prefills each prompt
  once and copies its keys and values to the rows of its group.

The active slots always occupy the first rows of the cache (``release`` swaps the last active
row into the hole), so a step runs over one contiguous view of the cache and never gathers it.
The engine is not thread-safe: one thread drives it (``Batcher`` does, for a server).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .steps import EagerStep


class Engine:
    """Decode state over ``cache`` (from ``model.make_cache(slots, max_len)``). ``step``: a
    ``CompiledStep`` or ``GraphStep`` for steps where every slot decodes at one position."""

    def __init__(self, model, cache: list, step=None):
        self.model, self.cache, self.fixed = model, cache, step
        first = cache[0].buffers[0]
        self.slots, self.max_len, self.device = first.shape[0], cache[0].max_len, first.device
        self.eager = EagerStep(model, cache)
        self.tokens = torch.zeros(self.slots, self.max_len, dtype=torch.long, device=self.device)
        self.lengths = [0] * self.slots  # positions each row's cache holds: tokens[row, :length]
        self.slot_at = list(range(self.slots))  # row -> slot id (stable while rows move)
        self.row_of = list(range(self.slots))  # slot id -> row
        self.active = 0  # rows [0, active) are decoding
        self.reuse = getattr(model.cfg, "ffn", None) != "moe_ec"

    @classmethod
    def create(cls, model, slots: int, max_len: int, device=None) -> Engine:
        """An engine with its own eager cache of ``slots`` x ``max_len`` positions."""
        return cls(model, model.make_cache(slots, max_len=max_len, device=device))

    def reset(self) -> None:
        """Forget every slot's state (after a failed step): nothing decoding, nothing held."""
        self.active = 0
        self.lengths = [0] * self.slots
        self.slot_at = list(range(self.slots))
        self.row_of = list(range(self.slots))

    # what the rows hold --------------------------------------------------------------------
    def held(self, slot: int) -> Tensor:
        """The token ids whose keys and values slot ``slot`` holds, in position order."""
        row = self.row_of[slot]
        return self.tokens[row, :self.lengths[row]]

    def active_slots(self) -> list[int]:
        """The decoding slots, in the order ``decode`` takes and returns its rows."""
        return self.slot_at[:self.active]

    def _shared(self, row: int, ids: Tensor) -> int:
        """How many leading ``ids`` (1-D) row ``row`` holds, at most ``len(ids) - 1`` (a prefill
        needs one token to give logits)."""
        n = min(self.lengths[row], ids.shape[0] - 1)
        if n <= 0 or not self.reuse:
            return 0
        same = self.tokens[row, :n] == ids[:n].to(self.device)
        return n if bool(same.all()) else int(same.to(torch.int8).argmin())

    def _compatible(self, other: Engine) -> bool:
        """Whether ``other``'s buffers can be copied into this engine's (same layers, shapes but
        the length, dtype and device)."""
        if len(other.cache) != len(self.cache):
            return False
        for mine, theirs in zip(self.cache, other.cache, strict=True):
            for a, b in zip(mine.buffers, theirs.buffers, strict=True):
                if (a.shape[:-2], a.shape[-1], a.dtype, a.device) != (b.shape[:-2], b.shape[-1], b.dtype, b.device):
                    return False
        return True

    # moving rows ---------------------------------------------------------------------------
    def _swap(self, a: int, b: int) -> None:
        """Exchange rows ``a`` and ``b``: their cached positions, ids and slot ids."""
        if a == b:
            return
        n = max(self.lengths[a], self.lengths[b])
        for layer in self.cache:
            for buf in layer.buffers:
                rows = buf[[a, b], ..., :n, :]  # a copy (advanced indexing)
                buf[[b, a], ..., :n, :] = rows
        self.tokens[[b, a], :n] = self.tokens[[a, b], :n]
        self.lengths[a], self.lengths[b] = self.lengths[b], self.lengths[a]
        sa, sb = self.slot_at[a], self.slot_at[b]
        self.slot_at[a], self.slot_at[b] = sb, sa
        self.row_of[sa], self.row_of[sb] = b, a

    def _rows(self, start: int, stop: int, length: int | None = None) -> list:
        if start == 0 and stop == self.slots and length is None:
            return self.cache
        return [layer.view(slice(start, stop), length) for layer in self.cache]

    def _prefill(self, start: int, stop: int, ids: Tensor, reused: int) -> Tensor:
        """Rows ``start:stop`` already hold ``ids[:, :reused]``; run the rest through the model.
        Returns the last position's logits ``(rows, V)``."""
        ids = ids.to(self.device)
        for row in range(start, stop):  # until the forward is done, only the reused prefix is sure
            self.lengths[row] = reused
        logits, _ = self.model(ids[:, reused:], cache=self._rows(start, stop), start_pos=reused, logits_to_keep=1)
        self.tokens[start:stop, reused:ids.shape[1]] = ids[:, reused:]
        for row in range(start, stop):
            self.lengths[row] = ids.shape[1]
        return logits[:, -1]

    # continuous batching: independent requests ---------------------------------------------
    def admit(self, ids: Tensor) -> tuple[int, Tensor, int]:
        """Prefill the prompt ``ids`` (1-D) into a free slot. The slot is the free one holding
        the longest prefix of ``ids``; when another row (a decoding one, say a request with the
        same system prompt) holds a longer one, that prefix is copied over first. Returns
        ``(slot, logits of its next token (V,), prompt tokens reused)``."""
        if self.active == self.slots:
            raise RuntimeError("every slot is decoding; release one first")
        if not 0 < ids.shape[0] <= self.max_len:
            raise ValueError(f"a prompt of {ids.shape[0]} tokens does not fit a slot of {self.max_len} positions")
        shared = [self._shared(row, ids) for row in range(self.slots)]
        # the free row with the longest shared prefix; among equals the one holding the least, so
        # what other rows hold stays for later prompts
        best = max(range(self.active, self.slots), key=lambda r: (shared[r], -self.lengths[r], r == self.active))
        self._swap(best, self.active)
        shared[best], shared[self.active] = shared[self.active], shared[best]
        row = self.active
        donor = max(range(self.slots), key=lambda r: shared[r])
        reused = shared[donor]
        if reused > shared[row]:
            self._copy_prefix(donor, row, reused)
        self.active += 1
        logits = self._prefill(row, row + 1, ids[None], reused)
        return self.slot_at[row], logits[0], reused

    def _copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Row ``dst`` takes the first ``n`` cached positions (and ids) of row ``src``."""
        for layer in self.cache:
            for buf in layer.buffers:
                buf[dst, ..., :n, :] = buf[src, ..., :n, :]
        self.tokens[dst, :n] = self.tokens[src, :n]
        self.lengths[dst] = n

    def release(self, slot: int) -> None:
        """Stop decoding ``slot``; it keeps what it holds for a later prompt to reuse."""
        row = self.row_of[slot]
        if row >= self.active:
            raise ValueError(f"slot {slot} is not decoding")
        self.active -= 1
        self._swap(row, self.active)

    def decode(self, tokens: Tensor) -> Tensor:
        """Feed one token per active slot (``(active,)``, in ``active_slots()`` order) at each
        slot's next position; returns the logits of the token after it, ``(active, V)``."""
        n = self.active
        pos = self.lengths[:n]
        if max(pos) >= self.max_len:
            raise RuntimeError(f"a slot is full ({self.max_len} positions); release or restart it")
        tokens = tokens.to(self.device)
        shared = pos[0] if all(p == pos[0] for p in pos) else None
        if shared is not None and self.fixed is not None and n == self.slots:
            logits = self.fixed(tokens[:, None], shared)
        else:
            logits = self.eager(tokens[:, None], shared if shared is not None else pos)
        if shared is not None:
            self.tokens[:n, shared] = tokens
        else:
            self.tokens[torch.arange(n, device=self.device), torch.tensor(pos, device=self.device)] = tokens
        for row in range(n):
            self.lengths[row] += 1
        return logits[:, -1]

    # lockstep: one batch of rows at one position (generate) ----------------------------------
    def start_all(self, window: Tensor, donor: Engine | None = None) -> tuple[Tensor, int]:
        """Prefill ``window`` ``(slots, T)``, one row per slot, every slot decoding from then
        on. Rows reuse the prefix that all of them share with what ``donor`` holds in the same
        rows (this engine itself, or an earlier one whose cache is copied from). Returns
        ``(logits (slots, V), tokens reused)``."""
        if window.shape[0] != self.slots:
            raise ValueError(f"a window of {window.shape[0]} rows for an engine of {self.slots} slots")
        reused = 0
        if donor is not None and donor.slots == self.slots and (donor is self or self._compatible(donor)):
            reused = min(donor._shared(row, window[row]) for row in range(self.slots))
        if reused and donor is not self:
            for mine, theirs in zip(self.cache, donor.cache, strict=True):
                for a, b in zip(mine.buffers, theirs.buffers, strict=True):
                    a[..., :reused, :] = b[..., :reused, :]
            self.tokens[:, :reused] = donor.tokens[:, :reused]
        self.active = self.slots
        return self._prefill(0, self.slots, window, reused), reused

    def restart_all(self, window: Tensor) -> Tensor:
        """Prefill every slot afresh from position 0 with ``window`` ``(slots, T)`` (a window
        that slid past the context); returns the logits ``(slots, V)``."""
        return self._prefill(0, self.slots, window, 0)

    # groups: several completions per prompt (GRPO rollouts) ----------------------------------
    def start_groups(self, prompts: list[Tensor], group: int) -> Tensor:
        """Prefill each of ``prompts`` (1-D ids, any lengths) once and copy its cached keys and
        values to ``group`` rows: prompt ``p`` fills rows ``p * group ... (p + 1) * group - 1``,
        every slot decoding from then on at its prompt's length. Returns the logits of each row's
        next token ``(slots, V)``.

        The prompts go through one forward, right-padded to the longest: causal attention keeps
        each real position from seeing the padding after it, so the logits at a prompt's last
        token are exact, and the padded positions a row holds past its length are masked until
        its own decode steps overwrite them. One forward whatever the lengths also keeps the
        ranks of an FSDP run in step (each forward gathers the sharded weights)."""
        P = len(prompts)
        if P * group != self.slots:
            raise ValueError(f"{P} prompts x group {group} != the engine's {self.slots} slots")
        lengths = [int(p.shape[0]) for p in prompts]
        T = max(lengths)
        if min(lengths) < 1 or T > self.max_len:
            raise ValueError(f"prompt lengths {min(lengths)}..{T} must be in [1, {self.max_len}] (the slot size)")
        window = torch.zeros(P, T, dtype=torch.long, device=self.device)
        for i, p in enumerate(prompts):
            window[i, :lengths[i]] = p.to(self.device)
        logits, _ = self.model(window, cache=self._rows(0, P), start_pos=0)  # (P, T, V)
        last = torch.tensor(lengths, device=self.device) - 1
        logits = logits[torch.arange(P, device=self.device), last]  # (P, V)
        src = torch.arange(P, device=self.device).repeat_interleave(group)  # row -> its prompt's row
        for layer in self.cache:
            for buf in layer.buffers:
                buf[..., :T, :] = buf[src, ..., :T, :]  # the right side is a copy (advanced indexing)
        self.tokens[:, :T] = window[src]
        self.lengths = [lengths[r // group] for r in range(self.slots)]
        self.active = self.slots
        return logits[src]
