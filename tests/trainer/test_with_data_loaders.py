"""The Trainer on the real ``transformer_toolkit.data`` loaders: trains, and resumes exactly."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import VOCAB, make_cfg, pattern_tokens, tiny_model

from transformer_toolkit.trainer import Trainer

data = pytest.importorskip("transformer_toolkit.data")


def _loaders(tmp_path):
    path = tmp_path / "data.bin"
    if not path.exists():
        data.save_binary(pattern_tokens(8000), path, vocab_size=VOCAB)
    return data.from_binary(path, data.DataConfig(seq_len=16, batch_size=8, split=0.9, seed=7))


def test_trains_and_resumes_exactly_on_token_loaders(tmp_path):
    N = 6
    torch.manual_seed(0)
    model = tiny_model(dropout=0.1)
    train_dl, val_dl = _loaders(tmp_path)
    per_epoch = len(train_dl)
    cfg = make_cfg(tmp_path, max_steps=2 * N, save_every=N, eval_every=N, grad_accum_steps=per_epoch // 4,
                   lr=1e-2)
    straight = Trainer(model, train_dl, val_dl, VOCAB, cfg)
    result = straight.train()
    assert result["val_loss"] < 3.9  # ln(64) = 4.16 at init
    assert straight.stream.state_dict()["loader"]["epoch"] >= 2  # several epochs were crossed

    torch.manual_seed(99)
    model2 = tiny_model(dropout=0.1)
    train2, val2 = _loaders(tmp_path)
    resumed = Trainer(model2, train2, val2, VOCAB, make_cfg(tmp_path / "b", max_steps=2 * N, save_every=N,
                                                            eval_every=N, grad_accum_steps=per_epoch // 4, lr=1e-2))
    resumed.train(resume_from=str(tmp_path / "ckpt" / f"step_{N}.pt"))
    torch.testing.assert_close(model2.state_dict(), model.state_dict(), rtol=1e-5, atol=1e-6)
    assert resumed.val_loss == pytest.approx(straight.val_loss, rel=1e-6)
