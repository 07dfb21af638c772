"""``ttk compare`` end to end on a tiny corpus: the report, failures, resume, data order, the
time budget and the bad input that must stop everything before training."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from transformer_toolkit.cli import main
from transformer_toolkit.compare import power_law
from transformer_toolkit.compare import run as R

BASE = {"name": "tiny",
        "model": {"dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64},
        "train": {"lr": 3e-3, "warmup_steps": 2, "grad_accum_steps": 1, "eval_iters": 2, "progress": "none",
                  "plot": False, "mixed_precision": False, "interruptible": False},
        "compare": {"budget": "tokens=2048", "evals": 4, "bpb_tokens": 2000, "decode_tokens": 4}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = random.Random(0)
    words = "def class return import self value data list dict for while if else print range len".split()
    text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) for _ in range(1500))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def config(tmp_path: Path, corpus: Path, variants: list[dict], **compare) -> Path:
    raw = json.loads(json.dumps(BASE))
    raw["data"] = {"corpus": str(corpus), "vocab_size": 300, "seq_len": 32, "batch_size": 8}
    raw["compare"].update(variants=variants, **compare)
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def compare(capsys, cfg: Path, out: Path, *extra) -> tuple[int, str, str]:
    rc = main(["compare", "--config", str(cfg), "--out", str(out), "--in-process", *map(str, extra)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_report_table_words_and_a_failed_variant(tmp_path, corpus, capsys):
    variants = [{"name": "mha", "model.attn": "mha"}, {"name": "mqa", "model.attn": "mqa"},
                {"name": "bad", "model.n_heads": 3}]  # 32 is not divisible by 3: cannot be built
    cfg, out = config(tmp_path, corpus, variants), tmp_path / "out"
    rc, stdout, _ = compare(capsys, cfg, out, "--seeds", 2)
    assert rc == 0
    report = results(out)
    rows = {r["variant"]: r for r in report["variants"]}
    assert rows["mha"]["seeds"] == [1337, 1338] and rows["mqa"]["val_loss"]["n"] == 2
    assert rows["bad"]["seeds"] == [] and "divisible by n_heads" in rows["bad"]["failed"][0]["error"]
    assert rows["mha"]["kv_bytes_per_token"]["mean"] == 2 * 2 * 16 * 4  # k and v, 2 heads of 16, fp32, 1 layer
    assert rows["mqa"]["kv_bytes_per_token"]["mean"] == 2 * 1 * 16 * 4
    for r in (rows["mha"], rows["mqa"]):
        assert r["tokens"]["mean"] == 2048 and r["steps"]["mean"] == 8
        assert r["bits_per_byte"]["mean"] > 0 and r["decode_tok_s"]["mean"] > 0 and r["peak_memory"]["mean"] > 0
        assert len(r["curve"]) == 4 and r["curve"][-1]["tokens"] == 2048
        if not torch.cuda.is_available():  # on a CPU: against its measured matmul peak
            assert 0 < r["mfu"]["mean"] < 1
    md = (out / "report.md").read_text()
    assert "| mha | " in md and "| mqa | " in md and "| bad: failed: " in md and "divisible by n_heads" in md
    assert "pooled standard deviation" in md and ("exceeds the seed spread" in md or "within the seed spread" in md)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<td>mha</td>" in html and 'src="http' not in html
    for png in ("loss_vs_tokens.png", "loss_vs_flops.png", "loss_vs_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # each run is an ordinary run folder
    folder = out / "runs" / "mha" / "seed-1337"
    rc = main(["generate", "--run", str(folder), "--prompt", "def", "--max-new", "3"])
    assert rc == 0
    # run again: everything is reused, nothing trains
    rc, stdout, _ = compare(capsys, cfg, out, "--seeds", 2)
    assert rc == 0 and stdout.count("finished earlier, reused") == 4


def test_one_seed_says_the_spread_is_unknown(tmp_path, corpus, capsys):
    cfg = config(tmp_path, corpus, [{"model.attn": "mha"}, {"model.attn": "mqa"}])
    rc, stdout, _ = compare(capsys, cfg, tmp_path / "out")
    assert rc == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "spread of the final validation loss is unknown" in md and "--seeds 3" in md


def test_unknown_field_fails_before_anything_is_read_or_trained(tmp_path, corpus, capsys):
    cfg = config(tmp_path, corpus, [{"model.attn": "mha"}, {"name": "typo", "model.n_kv_head": 1}])
    rc, _, err = compare(capsys, cfg, tmp_path / "out")
    assert rc == 2
    assert "variant 'typo': unknown field 'model.n_kv_head' (did you mean 'n_kv_heads'?)" in err
    assert not (tmp_path / "out").exists()  # not even the tokenizer
    rc, _, err = compare(capsys, cfg, tmp_path / "out", "--vary", "model.atn=gqa,mla")
    assert rc == 2 and "unknown field 'model.atn'" in err


def _jobs(tmp_path, corpus, capsys, variants, **compare_settings):
    """(jobs, shared) as ttk compare plans them."""
    from transformer_toolkit.cli import compare as cli_compare
    from transformer_toolkit.cli import config as C
    from transformer_toolkit.compare import expand, parse_budget

    raw = yaml.safe_load(config(tmp_path, corpus, variants, **compare_settings).read_text())
    section = raw.pop("compare")
    run = C.resolve(raw)
    s = cli_compare.settings(section, type("Args", (), {"vary": None, "budget": None, "seeds": None,
                                                        "tasks": None})())
    tok, shared = cli_compare.shared_data(run, tmp_path / "out", s, parse_budget(s.budget))
    jobs = cli_compare.jobs_for(raw, expand(s.variants), 2, tmp_path / "out", shared, tok.vocab_size)
    return jobs, shared


def test_every_variant_sees_the_same_batches_in_the_same_order(tmp_path, corpus, capsys):
    jobs, shared = _jobs(tmp_path, corpus, capsys, [{"model.attn": "mha"}, {"model.attn": "mla",
                                                                            "model.latent_dim": 8}])
    first = {}
    for job in jobs:
        trainer = R.build(job, shared)[0]
        batches = iter(trainer.train_dl)
        first[(job.variant.name, job.seed)] = [next(batches)[0] for _ in range(3)]
    for seed in (1337, 1338):
        for a, b in zip(first[("attn=mha", seed)], first[("attn=mla, latent_dim=8", seed)], strict=True):
            assert torch.equal(a, b)
    assert not torch.equal(first[("attn=mha", 1337)][0], first[("attn=mha", 1338)][0])  # seeds differ


def test_time_budget_stops_each_run_on_the_clock(tmp_path, corpus, capsys):
    cfg = config(tmp_path, corpus, [{"model.attn": "mqa"}])
    rc, _, _ = compare(capsys, cfg, tmp_path / "out", "--budget", "time=1.5s")
    assert rc == 0
    run = results(tmp_path / "out")["runs"][0]
    assert run["status"] == "done" and run["elapsed"] >= 1.5 and run["steps"] >= 1
    saved = yaml.safe_load((Path(run["folder"]) / "config.yaml").read_text())
    assert saved["train"]["max_time"] == 1.5 and saved["train"]["max_steps"] == R.NO_STEP_LIMIT


def _final_weights(folder: Path) -> dict:
    steps = sorted((folder / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem[5:]))
    return torch.load(steps[-1], weights_only=True)["model"]


def test_killed_compare_reuses_finished_runs_and_resumes_the_interrupted_one_exactly(tmp_path, corpus, capsys,
                                                                                      monkeypatch):
    variants = [{"name": "first", "model.attn": "mha"}, {"name": "second", "model.attn": "mqa"}]
    cfg = config(tmp_path, corpus, variants, budget="tokens=4096")
    straight = tmp_path / "straight"
    assert compare(capsys, cfg, straight)[0] == 0

    class StopsAt5(R.Trainer):  # Ctrl+C during the second variant, at step 5 of 16
        def _train_step(self, lr, stop):
            if self.step == 4 and "second" in self.cfg.log_dir:
                self.request_stop()
            return super()._train_step(lr, stop)

    out = tmp_path / "out"
    monkeypatch.setattr(R, "Trainer", StopsAt5)
    rc, stdout, _ = compare(capsys, cfg, out)
    assert rc == 130 and "paused at step 5" in stdout and not (out / "report.md").exists()
    assert (out / "runs" / "second" / "seed-1337" / "checkpoints" / "pause.pt").is_file()
    monkeypatch.undo()
    first_result = (out / "runs" / "first" / "seed-1337" / R.RESULT).stat().st_mtime_ns
    rc, stdout, _ = compare(capsys, cfg, out)
    assert rc == 0 and "[1/2] first, seed 1337: finished earlier, reused" in stdout
    assert (out / "runs" / "first" / "seed-1337" / R.RESULT).stat().st_mtime_ns == first_result
    resumed = _final_weights(out / "runs" / "second" / "seed-1337")
    reference = _final_weights(straight / "runs" / "second" / "seed-1337")
    torch.testing.assert_close(resumed, reference, rtol=1e-5, atol=1e-6)
    runs = {r["variant"]: r for r in results(out)["runs"]}
    assert runs["second"]["val_loss"] == pytest.approx(results(straight)["runs"][1]["val_loss"], rel=1e-5)
    # a changed plan is refused rather than mixed with the old runs
    rc, _, err = compare(capsys, cfg, out, "--budget", "tokens=8192")
    assert rc == 2 and "another plan" in err


def test_three_sizes_give_a_scaling_fit_per_family_and_tasks_join_the_table(tmp_path, corpus, capsys):
    cfg = config(tmp_path, corpus, [], budget="tokens=1024", evals=2,
                 tasks=[{"name": "bpb", "max_tokens": 2000}])
    out = tmp_path / "out"
    rc, stdout, _ = compare(capsys, cfg, out, "--vary", "model.attn=mha,mqa", "--vary", "model.dim=16,32,48")
    assert rc == 0
    report = results(out)
    rows = {r["variant"]: r for r in report["variants"]}
    assert list(rows) == [f"attn={a}, dim={d}" for a in ("mha", "mqa") for d in (16, 32, 48)]
    assert set(report["scaling"]) == {"attn=mha", "attn=mqa"}
    for family in ("attn=mha", "attn=mqa"):
        entry = report["scaling"][family]
        flops = [p["flops"] for p in entry["points"]]
        assert len(flops) == 3 and flops == sorted(flops) and flops[0] < flops[-1]  # bigger models, more compute
        losses = np.array([p["val_loss"] for p in entry["points"]])
        if "fit" in entry:  # the law explains the points better than their mean does
            fit = entry["fit"]
            assert entry["basis"] == "final losses" and fit["points"] == 3
            assert fit["rmse"] < losses.std()
            predicted = power_law(flops, fit["a"], fit["b"], fit["c"])
            assert np.sqrt(((predicted - losses) ** 2).mean()) == pytest.approx(fit["rmse"], rel=1e-6)
        else:  # a tiny run whose loss does not fall with size has no law, and says why
            assert "do not fall" in entry["error"]
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "## Scaling" in md and "![loss against compute](scaling.png)" in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4
    # the task's score is a column, and scores the same held-out tokens as the bits-per-byte column
    header = next(line for line in md.splitlines() if line.startswith("| Variant"))
    assert "bpb/bits_per_byte" in header
    for r in rows.values():
        assert r["tasks"]["bpb/bits_per_byte"]["mean"] == pytest.approx(r["bits_per_byte"]["mean"], rel=1e-5)


def test_ctrl_c_while_measuring_pauses_and_the_next_run_measures_without_training_again(tmp_path, corpus, capsys,
                                                                                        monkeypatch):
    cfg = config(tmp_path, corpus, [{"name": "only", "model.attn": "mqa"}])
    out = tmp_path / "out"
    real = R.measure.decode_tokens_per_s

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl+C after training, outside the Trainer's own handler

    monkeypatch.setattr(R.measure, "decode_tokens_per_s", interrupted)
    rc, stdout, _ = compare(capsys, cfg, out)
    assert rc == 130 and "paused" in stdout and not (out / "report.md").exists()
    folder = out / "runs" / "only" / "seed-1337"
    assert json.loads((folder / R.RESULT).read_text())["status"] == "paused"
    trained = _final_weights(folder)
    monkeypatch.setattr(R.measure, "decode_tokens_per_s", real)
    rc, stdout, _ = compare(capsys, cfg, out)
    assert rc == 0
    run = results(out)["runs"][0]
    assert run["status"] == "done" and run["steps"] == 8 and run["decode_tok_s"] > 0
    assert [p["step"] for p in run["curve"]] == [2, 4, 6, 8]  # the resume added no second final eval
    torch.testing.assert_close(_final_weights(folder), trained, rtol=0, atol=0)


def test_cpu_matmul_peak_is_a_plausible_rate():
    from transformer_toolkit.compare.measure import matmul_peak

    peak = matmul_peak(torch.float32, sizes=(256,), repeats=2)
    # 2 n^3 FLOPs in at least a nanosecond and at most the machine's real speed: between 1 MFLOP/s and 100 TFLOP/s
    assert 1e6 < peak < 1e14
