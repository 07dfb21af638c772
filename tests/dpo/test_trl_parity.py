"""Parity with TRL: on the same model (ours, and its transformers export) and the same batch (our
pairs collated by TRL's own ``DataCollatorForPreference``), our ``DPOTrainer.compute_loss`` and
its gradient equal what TRL's ``DPOTrainer.compute_loss`` computes, for sigmoid, hinge and IPO;
SimPO equals TRL's ``CPOTrainer`` (its ``get_batch_logps`` and ``cpo_loss``)."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from dpo_helpers import small_bpe, standard, tiny_model

from transformer_toolkit.convert.hf_weights import to_hf
from transformer_toolkit.dpo import DPOConfig, DPOTrainer, PreferenceDataConfig, from_preference_samples
from transformer_toolkit.trainer import TrainConfig
from transformer_toolkit.trainer.batches import unpack

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Our reference and policy models (the policy a perturbed copy), both exported, and one batch."""
    tmp = tmp_path_factory.mktemp("parity")
    tok = small_bpe()
    ref = tiny_model(tok.vocab_size)
    policy = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    ref.save_pretrained(tmp / "ref", tokenizer=tok)
    policy.save_pretrained(tmp / "policy", tokenizer=tok)
    cfg = PreferenceDataConfig(seq_len=32, batch_size=4, split=1.0, shuffle=False)
    train_dl, _ = from_preference_samples(standard(6), tok, cfg)
    return tmp, tok, ref, policy, train_dl


def _trl_batch(train_dl):
    """TRL's collator on our pairs (prompt ids = the tokens before each response)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    ds = train_dl.dataset
    examples = []
    for p in ds.pairs[:4]:
        start = int(p.chosen_mask.argmax())
        assert int(p.rejected_mask.argmax()) == start and (p.chosen_ids[:start] == p.rejected_ids[:start]).all()
        examples.append({"prompt_ids": p.chosen_ids[:start].tolist(), "chosen_ids": p.chosen_ids[start:].tolist(),
                         "rejected_ids": p.rejected_ids[start:].tolist()})
    return DataCollatorForPreference(pad_token_id=ds.pad_id)(examples)


def _ours(setup, dpo: DPOConfig):
    tmp, tok, ref, policy, train_dl = setup
    model = copy.deepcopy(policy)
    trainer = DPOTrainer(model, train_dl, None, tok.vocab_size,
                         TrainConfig(max_steps=1, precision="fp32", progress="none", ckpt_dir=str(tmp / "ck"),
                                     interruptible=False, plot=False),
                         dpo=dpo, ref_model=copy.deepcopy(ref) if dpo.reference == "model" else None)
    return trainer, model


def _grads_in_hf_names(model, family="llama"):
    grads = {k: p.grad for k, p in model.named_parameters()}
    grads["head.weight"] = model.head.weight.grad
    return to_hf(grads, family, model.cfg.n_layers, model.cfg.tie_weights, model.cfg)


@pytest.mark.parametrize("loss", ["sigmoid", "hinge", "ipo"])
def test_loss_and_gradient_equal_trl(setup, loss):
    tmp, tok, _, _, train_dl = setup
    trl_batch = _trl_batch(train_dl)
    ours_batch = unpack(train_dl.dataset.__getitems__(range(4)))
    # our batches are TRL's layout: N chosen rows then N rejected, right-padded
    assert torch.equal(ours_batch.x, trl_batch["input_ids"][:, :-1])
    assert torch.equal(ours_batch.loss_mask, trl_batch["completion_mask"][:, 1:].float())

    trainer, model = _ours(setup, DPOConfig(beta=0.3, loss=loss, reference="model"))
    model.train()
    ours_loss = trainer.compute_loss(model, ours_batch)[0] / trainer.count_tokens(ours_batch)
    ours_loss.backward()

    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp / "policy")
    hf_policy = transformers.AutoModelForCausalLM.from_pretrained(tmp / "policy", dtype=torch.float32)
    hf_ref = transformers.AutoModelForCausalLM.from_pretrained(tmp / "ref", dtype=torch.float32)
    args = trl.DPOConfig(output_dir=str(tmp / "trl"), beta=0.3, loss_type=[loss], report_to=[], use_cpu=True,
                         bf16=False, per_device_train_batch_size=4, max_length=None)
    dataset = datasets.Dataset.from_list(standard(4))
    trl_trainer = trl.DPOTrainer(model=hf_policy, ref_model=hf_ref, args=args, train_dataset=dataset,
                                 processing_class=hf_tok)
    hf_policy.train()
    trl_loss = trl_trainer.compute_loss(trl_trainer.model, trl_batch)
    trl_loss.backward()

    torch.testing.assert_close(ours_loss.detach(), trl_loss.detach(), rtol=0, atol=1e-5)
    assert trl_loss.item() > 0.0
    theirs = {n: p.grad for n, p in hf_policy.named_parameters()}
    mine = _grads_in_hf_names(model)
    assert set(theirs) == set(mine)
    for name, g in theirs.items():
        torch.testing.assert_close(mine[name], g, rtol=0, atol=1e-5, msg=name)
    assert sum(g.abs().sum() for g in theirs.values()) > 0
    # our statistics are TRL's (rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies)
    logged = trl_trainer._metrics["train"]
    for ours_name, trl_name in (("chosen_reward", "rewards/chosen"), ("rejected_reward", "rewards/rejected"),
                                ("margin", "rewards/margins"), ("accuracy", "rewards/accuracies")):
        assert trainer.stats[ours_name].item() / 4 == pytest.approx(logged[trl_name][-1], abs=1e-5)


def test_simpo_equals_trl_cpo(setup):
    from trl.experimental.cpo import CPOTrainer

    tmp, tok, _, _, train_dl = setup
    trl_batch = _trl_batch(train_dl)
    ours_batch = unpack(train_dl.dataset.__getitems__(range(4)))
    trainer, model = _ours(setup, DPOConfig(beta=2.0, loss="simpo", simpo_gamma=0.7))
    assert trainer.reference == "none" and trainer.ref_model is None
    ours_loss = trainer.compute_loss(model, ours_batch)[0] / 4
    ours_loss.backward()

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp / "policy", dtype=torch.float32)
    logits = hf(trl_batch["input_ids"], attention_mask=trl_batch["attention_mask"]).logits
    labels = trl_batch["input_ids"].masked_fill(trl_batch["completion_mask"] == 0, -100)
    logps = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    fake = types.SimpleNamespace(alpha=0.0, beta=2.0, loss_type="simpo", simpo_gamma=0.7, label_smoothing=0.0,
                                 accelerator=types.SimpleNamespace(device=torch.device("cpu")))
    losses, _, _ = CPOTrainer.cpo_loss(fake, *logps.chunk(2))
    losses.mean().backward()
    torch.testing.assert_close(ours_loss.detach(), losses.mean().detach(), rtol=0, atol=1e-5)
    mine = _grads_in_hf_names(model)
    for name, p in hf.named_parameters():
        torch.testing.assert_close(mine[name], p.grad, rtol=0, atol=1e-5, msg=name)
