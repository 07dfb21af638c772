"""Shared pieces of the evaluation tests: a tiny tokenizer and model, and local lm-eval tasks.

The tasks are YAML files over JSONL files written next to them, so lm-eval runs them offline
(``dataset_path: json``); each covers one request type: multiple choice (``loglikelihood``),
rolling perplexity (``loglikelihood_rolling``) and generation (``generate_until``).
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import torch

from transformer_toolkit import RustBPETokenizer, Transformer, TransformerConfig

# a tiny `ttk train` run: command-line overrides
TINY = ["--model.dim", "32", "--model.n_layers", "1", "--model.n_heads", "2", "--model.hidden_dim", "64",
        "--data.seq_len", "32", "--train.max_steps", "2", "--train.eval_every", "2", "--train.eval_iters", "1",
        "--train.progress", "none", "--train.plot", "false", "--train.interruptible", "false", "--samples"]
WORDS = "the cat sat on a mat dog ran in park sun was out one two three four five six seven eight".split()


@functools.cache
def tiny_tokenizer() -> RustBPETokenizer:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(10)) + ".\n" for _ in range(400)]
    return RustBPETokenizer().train(lines, vocab_size=300)


def tiny_model(max_seq: int = 64, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(vocab_size=tiny_tokenizer().vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, attn="gqa",
               max_seq=max_seq) | kw
    return Transformer(TransformerConfig(**cfg)).eval()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_tasks(folder: Path, gen_docs: list[dict]) -> Path:
    """Three task YAMLs (t_mc, t_roll, t_gen) and their data under ``folder``; returns it."""
    rng = random.Random(1)
    folder.mkdir(parents=True, exist_ok=True)
    # a few contexts longer than the model's 64 tokens: both models must truncate the same way
    mc = [{"question": sentence(rng, rng.choice([4, 9, 15, 80])), "choices": [sentence(rng, k) for k in (1, 2, 4)],
           "answer": rng.randrange(3)} for _ in range(10)]
    # texts up to ~3 windows of 64 tokens, and a text ending in spaces
    roll = [{"text": sentence(rng, n)} for n in (3, 20, 70, 150)] + [{"text": "one two  "}]
    for name, docs in (("mc", mc), ("roll", roll), ("gen", gen_docs)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n"
    (folder / "mc.yaml").write_text(
        "task: t_mc\n" + common.format(path=folder / "mc.jsonl") +
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: answer\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (folder / "roll.yaml").write_text(
        "task: t_roll\n" + common.format(path=folder / "roll.jsonl") +
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    (folder / "gen.yaml").write_text(
        "task: t_gen\n" + common.format(path=folder / "gen.jsonl") +
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['.', 'park']\n  max_gen_toks: 12\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return folder
