"""The ``ttk`` lm-eval model gives lm-eval's own ``hf`` model's numbers on the same weights.

One tiny model, exported with ``save_pretrained``, runs the same three local tasks (multiple
choice, rolling perplexity, generation) through lm-eval twice: as ``hf`` on the export and as
``ttk`` on the run-free export folder. Every per-sample log-likelihood agrees within 1e-4, every
generated string is equal, and so is every metric. Offline: the tasks read local JSONL files.
"""

from __future__ import annotations

import random
import warnings

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from eval_helpers import sentence, tiny_model, tiny_tokenizer, write_tasks  # noqa: E402

from transformer_toolkit.evaluation.harness import TTKLM  # noqa: E402

TASKS = ["t_mc", "t_roll", "t_gen"]


def _greedy_answer(model, tok, prompt: str) -> str:
    ids = model.generate(tok.encode(prompt), max_new=12, temperature=0, stop_ids=[tok.eos_id, 8]).tolist()
    text = tok.decode(ids[len(tok.encode(prompt)):], skip_special_tokens=True)
    for stop in (".", "park"):
        text = text.split(stop)[0]
    return text


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("harness")
    tok, model = tiny_tokenizer(), tiny_model()
    model.save_pretrained(tmp / "hf", tokenizer=tok, template="chatml")
    rng = random.Random(2)
    prompts = [sentence(rng, n) for n in (3, 5, 5, 8, 60)]  # the last one is cut to fit 64 - 12 tokens
    # half the answers are the model's own greedy continuation: accuracy must come out 0.5 on both sides
    docs = [{"prompt": p, "answer": _greedy_answer(model, tok, p) if i % 2 == 0 else "no"}
            for i, p in enumerate(prompts[:4])]
    docs.append({"prompt": prompts[4], "answer": "?"})
    tasks = write_tasks(tmp / "tasks", docs)
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tasks), include_defaults=False)
    return tmp, tm


def _run(model, model_args, tm, **kw):
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=TASKS, task_manager=tm, device="cpu",
                                   batch_size=4, log_samples=True, bootstrap_iters=0, **kw)


def _responses(res, task):
    return [s["filtered_resps"] for s in sorted(res["samples"][task], key=lambda s: s["doc_id"])]


def test_same_numbers_as_lm_evals_hf_model(setup):
    tmp, tm = setup
    hf = _run("hf", {"pretrained": str(tmp / "hf"), "dtype": "float32"}, tm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = _run("ttk", {"run": str(tmp / "hf")}, tm)
    truncation = [w for w in caught if "left truncation" in str(w.message)]
    assert len(truncation) == 1  # several requests were too long; said once

    for a, b in zip(_responses(hf, "t_mc"), _responses(ours, "t_mc"), strict=True):
        for (ll_a, greedy_a), (ll_b, greedy_b) in zip(a, b, strict=True):
            assert abs(ll_a - ll_b) < 1e-4 and greedy_a == greedy_b
    for a, b in zip(_responses(hf, "t_roll"), _responses(ours, "t_roll"), strict=True):
        assert abs(a[0] - b[0]) < 1e-4
    assert _responses(hf, "t_gen") == _responses(ours, "t_gen")
    assert hf["results"]["t_gen"]["exact_match,none"] == ours["results"]["t_gen"]["exact_match,none"] == 0.4
    for task in TASKS:
        for key, value in hf["results"][task].items():
            if isinstance(value, float):
                assert ours["results"][task][key] == pytest.approx(value, rel=1e-5), (task, key)
    assert hf["results"]["t_mc"]["acc,none"] == ours["results"]["t_mc"]["acc,none"]


def test_chat_template_prompts_match_transformers(setup):
    tmp, tm = setup
    kw = dict(apply_chat_template=True)
    hf = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(tmp / "hf"), "dtype": "float32"},
                                 tasks=["t_gen"], task_manager=tm, device="cpu", log_samples=True, bootstrap_iters=0,
                                 limit=3, **kw)
    ours = lm_eval.simple_evaluate(model=TTKLM(run=str(tmp / "hf")), tasks=["t_gen"], task_manager=tm,
                                   log_samples=True, bootstrap_iters=0, limit=3, **kw)
    prompts = [s["arguments"] for s in hf["samples"]["t_gen"]]
    assert "<|im_start|>user" in str(prompts[0])  # the template was really applied
    assert prompts == [s["arguments"] for s in ours["samples"]["t_gen"]]
    assert _responses(hf, "t_gen") == _responses(ours, "t_gen")


def test_adapter_options_and_registration(setup):
    tmp, _ = setup
    from lm_eval.api.registry import get_model

    assert get_model("ttk") is TTKLM
    with pytest.raises(ValueError, match="not options of the ttk model.*batch_tokens"):
        TTKLM(run=str(tmp / "hf"), pretrianed="x")
    with pytest.raises(ValueError, match="run=PATH"):
        TTKLM()
    with pytest.raises(FileNotFoundError, match="no run folder, checkpoint"):
        TTKLM(run=str(tmp / "nowhere"))
    with pytest.raises(ValueError, match="at most max_seq=32"):
        TTKLM(model=tiny_model(max_seq=32), tokenizer=tiny_tokenizer(), max_length=64)
    lm = TTKLM(model=tiny_model(max_seq=32), tokenizer=tiny_tokenizer(), max_length=16)
    assert lm.max_length == 16 and lm.prefix_token_id == tiny_tokenizer().bos_id
    assert lm.apply_chat_template([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n" \
                                                                           "<|im_start|>assistant\n"
    # an assistant message left open, to be continued (lm-eval's multiple choice with a chat template)
    assert lm.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes "}],
                                  add_generation_prompt=False).endswith("assistant\nyes")
