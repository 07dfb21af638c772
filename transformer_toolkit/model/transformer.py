"""The decoder: embedding -> (residual positions) -> n_layers x Block -> norm -> head.

>>> cfg = TransformerConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, max_seq=64)
>>> model = Transformer(cfg)
>>> logits, aux_loss = model(torch.zeros(2, 8, dtype=torch.long))
>>> logits.shape, aux_loss.shape
(torch.Size([2, 8, 256]), torch.Size([]))
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from . import debug as _debug
from .attention import AttnContext
from .cache import LayerCache
from .config import TransformerConfig
from .kernels import Linear, compute_dtype
from .moe import Experts
from .position import alibi_bias
from .variants import ATTENTION, FFN, NORM, POS_ENC


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + ffn(norm(x))``; returns the
    new residual stream and the feed-forward's auxiliary loss (None for a dense one)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = NORM[cfg.norm](cfg.dim, cfg.eps)
        self.attn = ATTENTION[cfg.attn](cfg)
        self.ffn_norm = NORM[cfg.norm](cfg.dim, cfg.eps)
        self.ffn = FFN[cfg.ffn].from_config(cfg)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, ctx: AttnContext, cache: LayerCache | None = None) -> tuple[Tensor, Tensor | None]:
        x = x + self.drop(self.attn(self.attn_norm(x), ctx, cache))
        y, aux = self.ffn(self.ffn_norm(x), ctx.continuing)
        return x + self.drop(y), aux


class Transformer(nn.Module):
    """A decoder-only transformer built from one ``TransformerConfig``.

    ``model(tokens)`` returns ``(logits, aux_loss)``: logits ``(B, T, vocab_size)`` and a 0-dim
    MoE load-balancing loss (the mean over MoE layers, already scaled by ``moe_aux_weight``;
    exactly 0.0 for dense models). Add it to the training loss.
    """

    def __init__(self, cfg: TransformerConfig | dict, debug: bool = False):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = TransformerConfig(**cfg)
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        # at most one is set: a position table added to the residual stream (learned, sinusoidal),
        # RoPE tables or ALiBi slopes (used inside attention)
        self.pos, self.rope, slopes = POS_ENC[cfg.pos_enc](cfg)
        if slopes is not None:
            self.register_buffer("alibi_slopes", slopes, persistent=False)
        else:
            self.alibi_slopes = None
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = NORM[cfg.norm](cfg.dim, cfg.eps)
        self.head = Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight
        self.grad_checkpoint = False  # recompute each block in backward (set by the trainer)
        self.kernel_mode = None  # set inside kernels.decode_kernels; passed to attention in AttnContext
        self.register_load_state_dict_pre_hook(_fill_tied_head)
        self.init_weights()
        self.debug = debug
        if debug:
            _debug.print_summary(self)

    # initialisation -----------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std) for embeddings, linears and experts (GPT-2); the output projection
        of every residual branch (``o_proj``, ``down_proj``) scaled by 1/sqrt(2 * n_layers) so
        the residual stream's variance does not grow with depth; biases 0, norm scales 1.
        The head (tied or not) then gives logits of std ~ init_std * sqrt(dim) at init, so the
        loss starts at ~ln(vocab_size)."""
        std = self.cfg.init_std
        resid_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                last = name.rsplit(".", 1)[-1]
                nn.init.normal_(module.weight, 0.0, resid_std if last in ("o_proj", "down_proj") else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, Experts):
                nn.init.normal_(module.gate_proj, 0.0, std)
                nn.init.normal_(module.up_proj, 0.0, std)
                nn.init.normal_(module.down_proj, 0.0, resid_std)
            elif hasattr(module, "weight") and isinstance(module.weight, nn.Parameter) and module.weight.dim() == 1:
                nn.init.ones_(module.weight)  # norms
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if self.pos is not None and isinstance(getattr(self.pos, "weight", None), nn.Parameter):
            nn.init.normal_(self.pos.weight, 0.0, std)

    # forward ------------------------------------------------------------------------------
    def _context(self, T: int, start: int, device: torch.device) -> AttnContext:
        """Positions and masks for queries at ``start..start+T-1`` over keys ``0..start+T-1``."""
        if isinstance(start, Tensor):
            raise TypeError("a tensor start_pos needs a cache (see _static_context)")
        rope = self.rope(start, T) if self.rope is not None else None
        S = start + T
        continuing = start > 0
        if self.alibi_slopes is not None:
            q_pos = torch.arange(start, S, device=device)
            k_pos = torch.arange(S, device=device)
            bias = alibi_bias(self.alibi_slopes, q_pos, k_pos)  # (H, T, S)
            bias = bias.masked_fill(k_pos[None, None, :] > q_pos[None, :, None], float("-inf"))
            return AttnContext(start, rope, bias.unsqueeze(0).to(compute_dtype(self.embed.weight)), False, continuing)
        if T == 1 or start == 0:
            return AttnContext(start, rope, None, T > 1, continuing)
        q_pos = torch.arange(start, S, device=device)
        causal = torch.arange(S, device=device)[None, :] <= q_pos[:, None]  # (T, S), True = attend
        return AttnContext(start, rope, causal, False, continuing)

    def _static_context(self, B: int, T: int, start: Tensor, cache_len: int) -> tuple[AttnContext, Tensor]:
        """Context for a cached step whose position is a tensor: keys are the whole cache
        buffer (``cache_len`` slots) and a mask hides the slots after each query. Every shape
        is independent of the position, and nothing reads it on the host, so the step can be
        captured once in a CUDA graph and replayed at any position. ``start`` holds one
        position (every row there) or one per row (``(B,)``: rows at different positions, as
        the requests of a continuous batch; the mask and ALiBi bias are then per row).
        Returns the context and the ``(B, T)`` positions."""
        per_row = start.numel() > 1
        q_pos = start.reshape(-1, 1) + torch.arange(T, device=start.device)  # (B or 1, T)
        positions = q_pos.expand(B, T)
        k_pos = torch.arange(cache_len, device=start.device)
        visible = k_pos <= q_pos[..., None]  # (B or 1, T, S), True = attend
        visible = visible.unsqueeze(1) if per_row else visible[0]  # (B, 1, T, S) or (T, S)
        rope = self.rope(0, T, positions) if self.rope is not None else None
        if self.alibi_slopes is not None:
            bias = alibi_bias(self.alibi_slopes, q_pos if per_row else q_pos[0], k_pos)
            bias = bias.masked_fill(~visible, float("-inf")).to(compute_dtype(self.embed.weight))
            return AttnContext(start, rope, bias if per_row else bias.unsqueeze(0), False, True), positions
        return AttnContext(start, rope, visible, False, True), positions

    def _packed_context(self, doc_ids: Tensor) -> tuple[AttnContext, Tensor]:
        """Context for rows packed with several documents: ``doc_ids (B, T)`` numbers them.

        A token attends only to earlier tokens of its own document (block-diagonal causal
        mask) and its position restarts at 0 where its document starts, so each document is
        computed exactly as if it were alone in the row. Returns the context and the positions.
        """
        B, T = doc_ids.shape
        idx = torch.arange(T, device=doc_ids.device).expand(B, T)
        new_doc = torch.ones_like(doc_ids, dtype=torch.bool)
        new_doc[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
        first = torch.where(new_doc, idx, torch.zeros_like(idx)).cummax(dim=1).values  # start of own document
        positions = idx - first  # (B, T)
        same = doc_ids[:, :, None] == doc_ids[:, None, :]
        mask = (same & (idx[:, None, :] <= idx[:, :, None])).unsqueeze(1)  # (B, 1, T, T), True = attend
        rope = self.rope(0, T, positions) if self.rope is not None else None
        if self.alibi_slopes is not None:  # distances within a document are row distances
            bias = alibi_bias(self.alibi_slopes, idx[0], idx[0]).unsqueeze(0)  # (1, H, T, T)
            mask = bias.masked_fill(~mask, float("-inf")).to(compute_dtype(self.embed.weight))
        return AttnContext(0, rope, mask, False, False), positions

    def forward(self, tokens: Tensor, cache: list[LayerCache] | None = None,
                start_pos: int | Tensor = 0, doc_ids: Tensor | None = None,
                logits_to_keep: int = 0) -> tuple[Tensor, Tensor]:
        """tokens ``(B, T)`` -> ``(logits (B, T, vocab), aux_loss ())``.

        With ``cache`` (from ``make_cache``), the tokens are positions ``start_pos..`` of a
        sequence whose earlier positions are already cached; their keys and values are added.
        ``start_pos`` may be a long tensor for a step with position-independent shapes (CUDA
        graphs): one element, or one per row (``(B,)``: each row continues its own sequence at
        its own position, as the requests of a continuous batch do; attention then covers the
        whole cache buffer, masked per row). It is not bounds-checked then.
        With ``doc_ids`` ``(B, T)`` (packed SFT rows), tokens attend only within their document
        and positions restart at each document (``moe_ec`` still routes over the whole row).
        ``logits_to_keep=n`` (n > 0): logits of the last ``n`` positions only, ``(B, n, vocab)``;
        a prefill needs only the last, and the head over every prompt position can be a fifth
        of its work at a large vocabulary.
        """
        B, T = tokens.shape
        static = isinstance(start_pos, Tensor)
        if static and cache is None:
            raise ValueError("a tensor start_pos is for cached decoding: pass the cache too")
        if not static and start_pos + T > self.cfg.max_seq:
            raise ValueError(f"sequence of {start_pos + T} tokens is longer than max_seq={self.cfg.max_seq}; "
                             f"crop the input or build the model with a larger max_seq")
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0 (0 = every position), got {logits_to_keep}")
        if doc_ids is not None and (cache is not None or static or start_pos):
            raise ValueError("doc_ids (packed rows) is for training and scoring full rows, not for cached decoding")
        self.ensure_positions(cache[0].max_len if static else start_pos + T)
        x = self.embed(tokens)  # (B, T, dim)
        if doc_ids is not None:
            ctx, positions = self._packed_context(doc_ids.to(tokens.device))
            if self.pos is not None:
                x = x + self.pos(0, T, positions)
        elif static:
            ctx, positions = self._static_context(B, T, start_pos.to(tokens.device), cache[0].max_len)
            if self.pos is not None:
                x = x + self.pos(0, T, positions)
        else:
            ctx = self._context(T, start_pos, tokens.device)
            if self.pos is not None:
                x = x + self.pos(start_pos, T)
        ctx.kernels = self.kernel_mode
        x = self.drop(x)
        trace = _debug.ForwardTrace(tokens, x) if self.debug and cache is None else None
        aux_total, n_aux = None, 0
        for i, block in enumerate(self.blocks):
            layer_cache = cache[i] if cache is not None else None
            x_in = x
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                x, aux = checkpoint(block, x, ctx, layer_cache, use_reentrant=False)
            else:
                x, aux = block(x, ctx, layer_cache)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
                n_aux += 1
            if trace is not None:
                trace.block(i, x_in, x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.head(self.norm(x))
        if trace is not None:
            trace.finish(logits)
        aux_loss = aux_total / n_aux if n_aux else torch.zeros((), device=tokens.device)
        return logits, aux_loss

    def ensure_positions(self, n: int) -> None:
        """Build the RoPE or sinusoidal tables for positions ``0..n-1`` if they are not yet
        (they grow on demand: see ``position.INITIAL_ROWS``)."""
        for table in (self.rope, self.pos):
            if table is not None and hasattr(table, "ensure"):
                table.ensure(min(n, self.cfg.max_seq))

    # inference ----------------------------------------------------------------------------
    def make_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> list[LayerCache]:
        """One pre-allocated cache per layer for ``batch`` sequences of up to ``max_len`` tokens."""
        max_len = max_len or self.cfg.max_seq
        self.ensure_positions(max_len)  # here, not in a compiled or captured step that uses the cache
        dtype = dtype or self.embed.weight.dtype
        device = device or self.embed.weight.device
        return [LayerCache(b.attn.cache_shapes(batch, max_len), dtype, device) for b in self.blocks]

    def generate(self, tokens: Tensor, max_new: int = 100, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, stop_ids=None, pad_id: int | None = None,
                 generator: torch.Generator | None = None, compile: bool = False, prompt_cache=None) -> Tensor:
        """Sample ``max_new`` tokens after ``tokens`` ``(B, T)`` and return ``(B, T + max_new)``
        (shorter only if every row hit one of ``stop_ids``). ``compile=True``: a compiled decode
        step (faster per token after a one-time compile); ``prompt_cache``: a ``PromptCache``
        (``transformer_toolkit.inference``) that lets the next call skip recomputing a shared
        prompt prefix."""
        from ..inference.decoding import generate

        return generate(self, tokens, max_new, temperature, top_k, top_p, stop_ids, pad_id, generator, compile,
                        prompt_cache)

    def stream(self, tokens: Tensor, max_new: int = 100, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, stop_ids=None, pad_id: int | None = None,
               generator: torch.Generator | None = None, compile: bool = False,
               prompt_cache=None) -> Iterator[Tensor]:
        """Like ``generate`` but yields each new ``(B,)`` token tensor as soon as it is sampled."""
        from ..inference.decoding import stream

        return stream(self, tokens, max_new, temperature, top_k, top_p, stop_ids, pad_id, generator, compile,
                      prompt_cache)

    # weights and parameters ---------------------------------------------------------------
    # from_checkpoint, from_pretrained, save_pretrained and save_gguf are entry points of the I/O
    # layer (transformer_toolkit.store), which sits above the model: each imports it when called.
    # They are the only upward imports of model/ (see the import-linter contracts in pyproject.toml).
    @classmethod
    def from_checkpoint(cls, path, map_location="cpu") -> Transformer:
        """Rebuild from a .pt checkpoint or a run folder (``store.load_model``; the checkpoint holds
        its config). ``map_location``: where the weights go (default CPU, memory-mapped)."""
        from ..store import load_model
        return load_model(path, map_location=map_location)

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, **overrides) -> Transformer:
        """Load a transformers folder (Llama / Mistral / Qwen2 / SmolLM / GPT-2 / Mixtral, safetensors),
        a folder from ``push_to_hub``/``pull_from_hub``, a ``.gguf`` file or a Hub repo id
        (``store.load_model``); ``overrides`` replace config fields (e.g. ``max_seq=512``)."""
        from ..store import load_model
        return load_model(path, dtype=dtype, **overrides)

    def save_pretrained(self, path, tokenizer=None, template=None) -> str:
        """Write a folder that ``transformers.AutoModelForCausalLM.from_pretrained`` and
        ``AutoTokenizer.from_pretrained`` load; ``template`` (a preset name or ChatTemplate) becomes
        the tokenizer's chat template. Raises ValueError naming the fields that have no
        transformers counterpart."""
        from ..store import save_pretrained
        return save_pretrained(self, path, tokenizer=tokenizer, template=template)

    def save_gguf(self, path, tokenizer=None, template=None, dtype: str = "f16") -> str:
        """Write a GGUF file for llama.cpp (``dtype`` "f16", "f32" or "q8_0")."""
        from ..store import save_gguf
        return save_gguf(self, path, tokenizer=tokenizer, template=template, dtype=dtype)

    def n_params(self, exclude_embeddings: bool = False) -> str:
        """Parameter count as a string such as ``"30.21M"`` (shared tensors counted once)."""
        return _debug.fmt_count(self.num_parameters(exclude_embeddings))

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (shared tensors counted once)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embeddings else n

    def state_dict_for_save(self) -> dict[str, Tensor]:
        """The state dict without the duplicate ``head.weight`` when weights are tied."""
        sd = self.state_dict()
        if self.cfg.tie_weights:
            sd.pop("head.weight", None)
        return sd

    def load_state_dict_with_tie(self, state_dict: dict[str, Tensor], strict: bool = True):
        """Load a state dict saved with or without ``head.weight`` and keep the tie."""
        result = self.load_state_dict(state_dict, strict=strict)
        if self.cfg.tie_weights:
            self.head.weight = self.embed.weight
        return result

    def debug_gradients(self) -> None:
        """After ``loss.backward()``: per-parameter gradient norms with NaN/zero/explosion flags."""
        _debug.print_gradients(self)

    def debug_weights(self) -> None:
        """Per-parameter weight statistics."""
        _debug.print_weights(self)


def _fill_tied_head(module: Transformer, state_dict, prefix, *args) -> None:
    # A tied checkpoint may omit head.weight (state_dict_for_save); plain load_state_dict then
    # takes it from the embedding so strict loading still works.
    if module.cfg.tie_weights and prefix + "head.weight" not in state_dict and prefix + "embed.weight" in state_dict:
        state_dict[prefix + "head.weight"] = state_dict[prefix + "embed.weight"]

