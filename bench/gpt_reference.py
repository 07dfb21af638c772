"""A plain-PyTorch GPT trained with nanoGPT's CPU recipe: the same-run peer of bench_nanogpt.py.

nanoGPT is not installed here and its code is not copied. This is an independent, minimal
GPT-2 style model and loop written to the recipe's description, so the benchmark can time the
recipe on the same machine, at the same moment, as our Trainer (a shared 2-core machine's speed
drifts by tens of percent over minutes, so a number measured another day is no fair peer).

Recipe: char-level vocabulary built from the text (65 symbols for tiny Shakespeare), 90/10
split, random-offset batches (12 x 64), 4 layers / 4 heads / dim 128, LayerNorm without bias,
one fused qkv projection, exact GELU, learned positions, tied head, no dropout; AdamW (fused)
betas (0.9, 0.99), weight decay 0.1 on matrices, lr 1e-3 with 100 warmup steps and cosine to
1e-4 at 2000; grad clip 1.0; every 250 iters (from 0) the mean loss of 20 batches of each split.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(dim, bias=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.ln2 = nn.LayerNorm(dim, bias=False)
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.fc_out = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, dim: int = 128, n_layers: int = 4, n_heads: int = 4, seq: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq, dim)
        self.blocks = nn.ModuleList(Block(dim, n_heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(dim, bias=False)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("proj.weight", "fc_out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def train_reference(text: str, iters: int = 2000, batch: int = 12, seq: int = 64, seed: int = 1337,
                    eval_interval: int = 250, eval_iters: int = 20) -> dict:
    """Train the recipe; return the final val loss (mean of eval_iters batches) and the wall time."""
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    cut = int(0.9 * len(data))
    splits = {"train": data[:cut], "val": data[cut:]}
    torch.manual_seed(seed)

    def get_batch(split):
        d = splits[split]
        ix = torch.randint(len(d) - seq, (batch,))
        return torch.stack([d[i:i + seq] for i in ix]), torch.stack([d[i + 1:i + 1 + seq] for i in ix])

    model = GPT(len(chars), seq=seq)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99), fused=True)

    def lr_at(it):
        if it < 100:
            return 1e-3 * (it + 1) / 101
        ratio = min(1.0, (it - 100) / (iters - 100))
        return 1e-4 + 0.5 * (1 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)

    @torch.no_grad()
    def estimate():
        model.eval()
        out = {s: torch.stack([F.cross_entropy(model(x).flatten(0, 1), y.flatten())
                               for x, y in (get_batch(s) for _ in range(eval_iters))]).mean().item() for s in splits}
        model.train()
        return out

    t0 = time.perf_counter()
    losses = {}
    for it in range(iters + 1):
        if it % eval_interval == 0 or it == iters:
            losses = estimate()
        if it == iters:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        x, y = get_batch("train")
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the recipe logs every iteration
    wall = time.perf_counter() - t0
    return {"val_loss": losses["val"], "train_loss": losses["train"], "wall_s": round(wall, 2),
            "ms_per_step": round(1000 * wall / iters, 2), "vocab": len(chars),
            "params": sum(p.numel() for p in model.parameters())}
