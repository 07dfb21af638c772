"""The seed README's trainer examples, unchanged in shape, at a tiny size on the CPU."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import pattern_tokens

from transformer_toolkit.model import Transformer, TransformerConfig
from transformer_toolkit.trainer import TrainConfig, Trainer, load_ckpt

data = pytest.importorskip("transformer_toolkit.data")


def test_full_example_then_generation_then_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README writes to ./checkpoints
    data.save_binary(pattern_tokens(6000), "data.bin", vocab_size=64)
    cfg_data = data.DataConfig(seq_len=16, batch_size=8, split=0.9, stride=None)
    train_dl, val_dl = data.from_binary("data.bin", cfg_data, train_path="train.npy", val_path="val.npy")
    vocab = 64
    DEVICE = torch.device("cpu")
    model = Transformer(TransformerConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, attn="gqa",
                                          ffn="swiglu", hidden_dim=64, norm="rmsnorm", pos_enc="rope", dropout=0.1,
                                          tie_weights=False, max_seq=16)).to(DEVICE)
    trainer = Trainer(model, train_dl, val_dl, vocab, TrainConfig(
        max_steps=8,
        warmup_steps=2,
        eval_every=4,
        lr=3e-3,
        grad_accum_steps=4,
        mixed_precision=True,
        save_best=True,
        save_step_ckpts=True,
        save_every=4,
        plot=False,
    ))
    trainer.train()
    assert {p.name for p in (tmp_path / "checkpoints").glob("*.pt")} == {"best.pt", "step_4.pt", "step_8.pt"}

    # Generation section: same config but dropout 0.0, load_ckpt, generate
    infer = Transformer(TransformerConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, attn="gqa",
                                          ffn="swiglu", hidden_dim=64, norm="rmsnorm", pos_enc="rope", dropout=0.0,
                                          tie_weights=False, max_seq=16)).to(DEVICE)
    load_ckpt("checkpoints/best.pt", infer)
    infer.eval()
    out = infer.generate(torch.tensor([[1, 2, 3]]), max_new=5, temperature=0.8, top_k=40)
    assert out.shape == (1, 8)

    # "resume from a checkpoint": the README's call on a trainer configured for more steps
    train_dl, val_dl = data.from_npy_split("train.npy", "val.npy", cfg_data)
    more = Trainer(model, train_dl, val_dl, vocab, TrainConfig(max_steps=10, warmup_steps=2, eval_every=5, plot=False))
    assert more.train(resume_from="checkpoints/step_8.pt")["step"] == 10


@pytest.mark.filterwarnings("ignore:attn=.flash.")
def test_moe_example_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = Transformer(TransformerConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, attn="flash", ffn="moe",
                                          n_experts=4, top_k=2, moe_aux_weight=0.01, pos_enc="rope", dropout=0.1,
                                          tie_weights=False, max_seq=16))
    batches = [(torch.randint(0, 64, (4, 16)), torch.randint(0, 64, (4, 16))) for _ in range(8)]
    trainer = Trainer(model, batches, batches[:2], 64, TrainConfig(max_steps=3, lr=3e-4, plot=False))
    assert trainer.train()["step"] == 3
    aux = [r["aux"] for r in trainer.metrics.records if r["event"] == "train"]
    assert aux and all(a > 0 for a in aux)
