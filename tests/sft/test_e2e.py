"""End to end: SFT a tiny model from scratch on a synthetic task, then chat with it greedily.

Reversing a short list of words has one right answer per prompt, and the held-out prompts are
word orders never seen in training, so a high exact-match rate needs the template, the loss
masks, the SFT loop and generation with stop tokens all to work together.
"""

from __future__ import annotations

import torch

from transformer_toolkit import (
    ChatSession,
    ChatTemplate,
    RustBPETokenizer,
    SFTDataConfig,
    SFTTrainer,
    TrainConfig,
    Transformer,
    TransformerConfig,
    from_sft_strings,
)
from transformer_toolkit.sft.synthetic import WORDS, exact_match, synthetic_tasks, user_prompts


def test_sft_from_scratch_then_chat(tmp_path):
    torch.manual_seed(0)
    train = synthetic_tasks(4000, seed=0, tasks=("reverse",))
    held_out = synthetic_tasks(50, seed=1, tasks=("reverse",), exclude=user_prompts(train))

    template = ChatTemplate("chatml")
    texts = [template.format_messages(s["messages"])[0] for s in train[:300]] + [" ".join(WORDS)] * 20
    tok = RustBPETokenizer().train(texts, vocab_size=330)
    cfg = SFTDataConfig(tokenizer=tok, seq_len=48, batch_size=32, template=template)
    train_dl, val_dl = from_sft_strings(train, tok, cfg)

    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, max_seq=64,
                                          hidden_dim=128))
    trainer = SFTTrainer(model, train_dl, val_dl, tok.vocab_size, TrainConfig(
        max_steps=1000, warmup_steps=30, lr=3e-3, min_lr=3e-4, weight_decay=0.0, grad_accum_steps=1,
        eval_every=1000, eval_iters=2, save_every=1000, log_every=1000, precision="fp32", save_step_ckpts=False,
        ckpt_dir=str(tmp_path / "ckpt"), progress="none", plot=False, interruptible=False), tokenizer=tok)
    result = trainer.train()
    assert result["best_val_loss"] < 0.2

    session = ChatSession(model, tok, template=template, max_new=16, temperature=0)

    def answer(prompt: str) -> str:
        session.reset()
        return session.ask(prompt)

    accuracy = exact_match(answer, held_out)
    print(f"exact match on held-out prompts: {accuracy:.0%}")
    assert accuracy >= 0.9

    # The seed README's chat() function, verbatim, on the same model.
    namespace = {"template": template, "tok": tok, "model": model, "cfg_model": model.cfg, "torch": torch,
                 "DEVICE": torch.device("cpu")}
    exec(README_CHAT, namespace)
    readme_score = exact_match(lambda p: namespace["chat"](p, temperature=0.0, max_new=20), held_out[:10])
    assert readme_score >= 0.9


README_CHAT = """
def chat(
    prompt:      str,
    system:      str   = None,
    history:     list  = None,
    max_new:     int   = 200,
    temperature: float = 0.8,
    top_k:       int   = 50,
) -> str:
    msgs = []
    if system:
        msgs.append({"role": "system", "content": system})
    if history:
        msgs.extend(history)
    msgs.append({"role": "user", "content": prompt})

    # format and append assistant header to prime generation
    full_text, _ = template.format_messages(msgs)
    primed       = full_text + template.assistant_header

    ids = tok.encode(primed)
    # truncate from left if too long — keep most recent context
    if len(ids) > cfg_model.max_seq:
        ids = ids[-cfg_model.max_seq:]

    x = torch.tensor([ids], dtype=torch.long).to(DEVICE)
    with torch.no_grad():
        out = model.generate(x, max_new=max_new, temperature=temperature, top_k=top_k)

    new_ids  = out[0][len(ids):].tolist()
    response = tok.decode(new_ids, skip_special_tokens=False)

    # strip end-of-turn marker
    closer = template.assistant_closer.strip()
    if closer and closer in response:
        response = response[:response.index(closer)]

    return response.strip()
"""
