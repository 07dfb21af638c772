"""The training step: what is optimised (accumulation, masks, MoE aux), evaluation, output."""

from __future__ import annotations

import copy
import io
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from trainer_helpers import SEQ, VOCAB, ToyLoader, loaders, make_cfg, pattern_tokens, tiny_model

from transformer_toolkit.trainer import Trainer
from transformer_toolkit.trainer.progress import Progress


def test_loss_goes_down_on_learnable_data(tmp_path):
    torch.manual_seed(0)
    train_dl, val_dl = loaders()
    trainer = Trainer(tiny_model(), train_dl, val_dl, VOCAB, make_cfg(tmp_path, max_steps=60, eval_every=30, lr=1e-2))
    result = trainer.train()
    evals = [r["val_loss"] for r in trainer.metrics.records if r["event"] == "eval"]
    assert result["step"] == 60 and not result["paused"]
    assert evals[0] < math.log(VOCAB) - 0.5 and evals[-1] < evals[0]  # from ~4.16 at init
    assert result["best_val_loss"] == min(evals)


def _captured_grads(trainer: Trainer) -> list[dict]:
    """Record the gradients the optimizer is about to apply, for every step."""
    grads, step = [], trainer.optimizer.step

    def spy(*a, **k):
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
        return step(*a, **k)

    trainer.optimizer.step = spy
    return grads


def test_accumulation_4x8_equals_batch_32(tmp_path):
    runs = {}
    for accum, batch in ((4, 8), (1, 32)):
        torch.manual_seed(0)
        model = tiny_model()
        train_dl, val_dl = loaders(batch_size=batch)
        cfg = make_cfg(tmp_path / f"a{accum}", max_steps=6, grad_accum_steps=accum, save_step_ckpts=False)
        trainer = Trainer(model, train_dl, val_dl, VOCAB, cfg)
        trainer.train()
        runs[accum] = (model.state_dict(), [r["loss"] for r in trainer.metrics.records if r["event"] == "train"])
    torch.testing.assert_close(runs[4][0], runs[1][0], rtol=1e-5, atol=1e-6)
    assert runs[4][1] == pytest.approx(runs[1][1], rel=1e-5)


def test_masked_loss_is_normalised_over_the_whole_accumulated_batch(tmp_path):
    """Micro-batches with very different numbers of trained tokens: the gradient is that of
    sum(masked token losses) / total trained tokens, not a mean of per-micro-batch means."""
    torch.manual_seed(0)

    def mask_fn(x, y):  # row i trains its first (i * 3 + 1) tokens: uneven counts per micro-batch
        cols = torch.arange(x.shape[1])[None, :]
        rows = torch.arange(x.shape[0])[:, None] * 3 + 1 + (x[:, :1] % 5)
        return (cols < rows).float()

    model = tiny_model()
    reference = copy.deepcopy(model)
    train_dl, val_dl = loaders(batch_size=2, mask_fn=mask_fn)
    cfg = make_cfg(tmp_path, max_steps=1, grad_accum_steps=3, grad_clip=0.0)
    trainer = Trainer(model, train_dl, val_dl, VOCAB, cfg)
    it = iter(ToyLoader(train_dl.tokens, 2, mask_fn=mask_fn))  # the same batches the trainer gets
    micro = [next(it) for _ in range(3)]
    grads = _captured_grads(trainer)
    trainer.train()
    total = sum(m.sum() for _, _, m in micro)
    loss = 0.0
    for x, y, m in micro:
        logits, aux = reference(x)
        loss = loss + (F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none") * m.flatten()).sum()
    (loss / total).backward()
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[0][name], p.grad, rtol=1e-4, atol=1e-7)


def test_moe_aux_loss_is_added_exactly_once(tmp_path):
    torch.manual_seed(0)
    model = tiny_model(ffn="moe", n_experts=4, top_k=2, moe_aux_weight=0.5)
    reference = copy.deepcopy(model)
    train_dl, val_dl = loaders(batch_size=4)
    cfg = make_cfg(tmp_path, max_steps=1, grad_accum_steps=2, grad_clip=0.0)
    trainer = Trainer(model, train_dl, val_dl, VOCAB, cfg)
    grads = _captured_grads(trainer)
    trainer.train()
    it = iter(ToyLoader(train_dl.tokens, 4))
    ce_sum, aux_mean, n = 0.0, 0.0, 0
    for _ in range(2):
        x, y = next(it)
        logits, aux = reference(x)
        ce_sum = ce_sum + F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        aux_mean, n = aux_mean + aux / 2, n + y.numel()
    assert aux_mean.item() > 0
    (ce_sum / n + aux_mean).backward()
    router = [name for name, _ in reference.named_parameters() if "router" in name or "gate" in name]
    assert router
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[0][name], p.grad, rtol=1e-4, atol=1e-7)
    record = next(r for r in trainer.metrics.records if r["event"] == "train")
    assert record["aux"] == pytest.approx(aux_mean.item(), rel=1e-5)
    assert record["loss"] == pytest.approx((ce_sum / n).item(), rel=1e-5)  # logged loss is CE, like val_loss


def test_evaluate_is_the_token_mean_over_eval_iters_batches(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    train_dl, val_dl = loaders()
    trainer = Trainer(model, train_dl, val_dl, VOCAB, make_cfg(tmp_path, eval_iters=3))
    batches = list(ToyLoader(val_dl.tokens, 8, shuffle=False))[:3]
    with torch.no_grad():
        expected = torch.stack([F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()) for x, y in batches]).mean()
    assert trainer.evaluate() == pytest.approx(expected.item(), rel=1e-5)
    assert trainer.evaluate() == pytest.approx(expected.item(), rel=1e-5)  # the same batches every eval
    assert model.training


@pytest.mark.parametrize("kind", ["list", "dataloader"])
def test_plain_iterables_work_and_cycle_epochs(tmp_path, kind):
    torch.manual_seed(0)
    tokens = pattern_tokens(800)
    batches = list(ToyLoader(tokens, 4, shuffle=False))  # 12 batches: 20 steps need two epochs
    if kind == "dataloader":
        ds = [(x[i], y[i]) for x, y in batches for i in range(len(x))]
        train = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)
    else:
        train = batches
    trainer = Trainer(tiny_model(), train, batches[:2], VOCAB, make_cfg(tmp_path, max_steps=20, eval_every=10))
    assert trainer.train()["step"] == 20
    assert trainer.stream.epoch >= 1


def test_output_looks_like_the_readme(tmp_path, capsys):
    torch.manual_seed(0)
    train_dl, val_dl = loaders()
    cfg = make_cfg(tmp_path, max_steps=12, eval_every=4, log_every=4, progress="lines")
    Trainer(tiny_model(), train_dl, val_dl, VOCAB, cfg).train()
    out = capsys.readouterr().out
    assert "⚡ Transformer Toolkit Trainer" in out and "steps=12  lr=0.003  warmup=3  accum=1" in out
    assert "mixed_precision=False  grad_clip=1" in out and "precision=fp32" in out
    steps = [line for line in out.splitlines() if line.strip().startswith("step ")]
    assert len(steps) == 3  # one plain line per log_every when not a terminal
    assert all(s in steps[0] for s in ("step      4/12", "█", "░", "loss ", "lr ", "tok/s ", "eta "))
    evals = [line for line in out.splitlines() if "● eval" in line]
    assert len(evals) == 3 and "★ best" in evals[0] and "val_loss" in evals[0] and "ppl" in evals[0]
    assert ("▼" in evals[1]) or ("▲" in evals[1])


def test_live_bar_redraws_in_place_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    progress = Progress("auto", stream)
    assert progress.mode == "bar"
    progress.step("a", keep=False)
    progress.step("b", keep=True)
    assert stream.getvalue() == "\r\033[Ka\r\033[Kb\n"


def test_metrics_jsonl_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    torch.manual_seed(0)
    train_dl, val_dl = loaders()
    Trainer(tiny_model(), train_dl, val_dl, VOCAB, make_cfg(tmp_path, plot=True)).train()
    records = [json.loads(line) for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [3, 6, 9, 12]
    assert [r["step"] for r in records if r["event"] == "eval"] == [6, 12]
    assert all({"loss", "lr", "tok_s", "grad_norm"} <= set(r) for r in records if r["event"] == "train")
    assert (tmp_path / "ckpt" / "loss.png").stat().st_size > 1000


def test_bad_inputs_fail_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="larger than the model's vocab_size"):
        Trainer(tiny_model(), [], None, VOCAB + 1, make_cfg(tmp_path))
    with pytest.raises(ValueError, match="fp32 master weights"):
        Trainer(tiny_model().to(torch.bfloat16), [], None, VOCAB, make_cfg(tmp_path))
    long = [(torch.zeros(2, SEQ + 1, dtype=torch.long),) * 2]
    with pytest.raises(ValueError, match="max_seq"):
        Trainer(tiny_model(), long, None, VOCAB, make_cfg(tmp_path)).train()
    with pytest.raises(ValueError, match="no batches"):
        Trainer(tiny_model(), [], None, VOCAB, make_cfg(tmp_path)).train()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_keeps_fp32_master_weights(tmp_path, precision):
    torch.manual_seed(0)
    model = tiny_model()
    train_dl, val_dl = loaders()
    trainer = Trainer(model, train_dl, val_dl, VOCAB, make_cfg(tmp_path, precision=precision, max_steps=6))
    result = trainer.train()
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < math.log(VOCAB)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(s.dtype == torch.float32 for st in trainer.optimizer.state.values() for k, s in st.items()
               if k != "step")
    assert (trainer.scaler is not None) == (precision == "fp16")


def test_grad_checkpoint_gives_the_same_gradients(tmp_path):
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = tiny_model()
        trainer = Trainer(model, *loaders(), VOCAB, make_cfg(tmp_path / str(flag), max_steps=1, grad_checkpoint=flag))
        assert model.grad_checkpoint is flag
        captured = _captured_grads(trainer)
        trainer.train()
        grads.append(captured[0])
    torch.testing.assert_close(grads[0], grads[1])


def test_packed_batches_pass_doc_ids_to_the_model(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    x, y = next(iter(ToyLoader(pattern_tokens(), 4)))
    doc = (torch.arange(SEQ) >= 6).long().expand(4, SEQ).contiguous()  # two documents per row
    mask = torch.ones(4, SEQ)
    mask[:, 5] = 0  # the token that would predict across the document edge is not trained
    batches = [(x, y, mask, doc)]
    trainer = Trainer(model, batches, batches, VOCAB, make_cfg(tmp_path))
    with torch.no_grad():
        token_losses = F.cross_entropy(model(x, doc_ids=doc)[0].flatten(0, 1), y.flatten(), reduction="none")
        plain = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten(), reduction="none")
    expected = (token_losses * mask.flatten()).sum() / mask.sum()
    assert trainer.evaluate() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(expected.item() - ((plain * mask.flatten()).sum() / mask.sum()).item()) > 1e-4
    assert trainer.train()["step"] == 12


@pytest.mark.skipif(os.environ.get("TTK_TEST_COMPILE") != "1", reason="torch.compile takes ~20 s on 2 CPU cores; "
                    "set TTK_TEST_COMPILE=1 to run")
def test_compile_trains_and_saves_plain_state_dicts(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    result = Trainer(model, *loaders(), VOCAB, make_cfg(tmp_path, compile=True, max_steps=6, eval_every=3)).train()
    assert result["val_loss"] < math.log(VOCAB)
    ckpt = torch.load(tmp_path / "ckpt" / "step_6.pt", weights_only=True)
    assert set(ckpt["model"]) == set(tiny_model().state_dict())  # no "_orig_mod." prefixes
