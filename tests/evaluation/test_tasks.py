"""evaluate_tasks: built-in tasks offline, lm-eval tasks from local YAMLs, results files, and
errors that name the unknown task or the missing data."""

from __future__ import annotations

import json
import random

import pytest
from eval_helpers import sentence, tiny_model, tiny_tokenizer, write_tasks

from transformer_toolkit.evaluation import evaluate_tasks, markdown_table, scores, side_by_side, write_results
from transformer_toolkit.evaluation.builtin import replies
from transformer_toolkit.sft import ChatSession
from transformer_toolkit.sft.synthetic import synthetic_tasks


def test_synthetic_task_scores_replies_exactly_as_chat_session(tmp_path):
    tok, model = tiny_tokenizer(), tiny_model()
    samples = synthetic_tasks(6, seed=5)
    # answers this untrained model really gives, for half the samples: the score must be 0.5
    session = ChatSession(model, tok, max_new=8, temperature=0)
    for s in samples[::2]:
        session.reset()
        s["messages"][-1]["content"] = session.ask(s["messages"][0]["content"])
    path = tmp_path / "held.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    out = evaluate_tasks(model, tok, [{"name": "synthetic", "data": str(path), "max_new": 8}])
    entry = out["results"]["synthetic"]
    assert entry["exact_match,none"] == 0.5 and entry["sample_len"] == 6
    assert out["higher_is_better"]["synthetic"]["exact_match"] is True

    # the batched replies are a fresh ChatSession's, alone and after another exchange
    prompts = [s["messages"][0]["content"] for s in samples]
    chats = [[{"role": "user", "content": p}] for p in prompts]
    first = replies(model, tok, "chatml", chats, 8)
    second_chats = [[*chats[1], {"role": "assistant", "content": first[1]}, *chats[0]]]
    expected = []
    for p in prompts:
        session.reset()
        expected.append(session.ask(p))
    assert first == expected
    session.reset()
    session.ask(prompts[1])
    assert replies(model, tok, "chatml", second_chats, 8) == [session.ask(prompts[0])]


def test_bpb_task_on_files_and_on_a_held_out_split(tmp_path):
    tok, model = tiny_tokenizer(), tiny_model()
    rng = random.Random(0)
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(sentence(rng, 30))
    out = evaluate_tasks(model, tok, [{"name": "bpb", "data": [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]}])
    assert set(out["results"]) == {"bpb", "bpb/a.txt", "bpb/b.txt"}
    ids = tok.encode(sentence(rng, 50))
    held = evaluate_tasks(model, tok, ["bpb"], heldout=lambda: ids)
    flat = scores(held)
    assert set(flat) == {"bpb/bits_per_byte", "bpb/byte_perplexity", "bpb/perplexity", "bpb/loss"}
    assert flat["bpb/byte_perplexity"] == pytest.approx(2 ** flat["bpb/bits_per_byte"])
    with pytest.raises(ValueError, match="no held-out split"):
        evaluate_tasks(model, tok, ["bpb"])


def test_lm_eval_tasks_from_local_files_and_results_files(tmp_path):
    pytest.importorskip("lm_eval")
    tok, model = tiny_tokenizer(), tiny_model()
    tasks = write_tasks(tmp_path / "tasks", [{"prompt": "one two", "answer": "x"}])
    out = evaluate_tasks(model, tok, ["t_mc", {"name": "synthetic", "n": 3}, {"name": "t_roll", "limit": 2}],
                         include_path=tasks)
    assert {"t_mc", "t_roll", "synthetic"} <= set(out["results"])
    assert out["n-samples"]["t_roll"]["effective"] == 2 and out["n-samples"]["t_mc"]["effective"] == 10
    json_path, md_path = write_results(out, tmp_path / "eval")
    again, _ = write_results(out, tmp_path / "eval")  # same second: a second file, not an overwrite
    assert again != json_path and json.loads(json_path.read_text())["results"]["t_mc"]["acc,none"] >= 0
    table = md_path.read_text()
    assert "| t_mc | acc |" in table and "| synthetic | exact_match |" in table
    assert "| t_mc | acc |" in markdown_table(out)
    both = side_by_side({"A": out, "B": out})
    assert both.splitlines()[0] == "| Task | Metric | A | B |"


def test_unknown_task_lists_close_names(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    import lm_eval.tasks

    from transformer_toolkit.evaluation import tasks as T

    # lm-eval's own ~15k tasks take ~20 s to index: this test looks at the include path alone
    monkeypatch.setattr(T, "_lm_eval", lambda: (None, lambda **kw: lm_eval.tasks.TaskManager(
        include_path=kw.get("include_path"), include_defaults=False)))
    folder = write_tasks(tmp_path / "tasks", [{"prompt": "a", "answer": "b"}])
    with pytest.raises(ValueError, match=r"unknown task 't_rol' \(close: t_roll\)"):
        evaluate_tasks(tiny_model(), tiny_tokenizer(), ["t_rol"], include_path=folder)
    with pytest.raises(ValueError, match="unknown task 'synthtic' .*close: synthetic"):
        evaluate_tasks(tiny_model(), tiny_tokenizer(), ["synthtic"], include_path=folder)
    with pytest.raises(ValueError, match="a task is a name or a dict"):
        evaluate_tasks(tiny_model(), tiny_tokenizer(), [{"limit": 3}])
    with pytest.raises(FileNotFoundError, match="include path"):
        evaluate_tasks(tiny_model(), tiny_tokenizer(), ["t_mc"], include_path=tmp_path / "nope")


def test_missing_local_data_names_the_file(tmp_path):
    pytest.importorskip("lm_eval")
    folder = write_tasks(tmp_path / "tasks", [{"prompt": "a", "answer": "b"}])
    (folder / "mc.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"task t_mc needs the data file .*mc\.jsonl"):
        evaluate_tasks(tiny_model(), tiny_tokenizer(), ["t_mc"], include_path=folder)
