"""Several variants at once: two CPU worker processes (--parallel 2), and the torchrun share of
each rank, run as two real processes with torchrun's environment variables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_compare_runs import compare, config, corpus, results  # noqa: F401 (corpus is a fixture)

from transformer_toolkit.cli import main
from transformer_toolkit.compare.schedule import jobs_of_rank

REPO = Path(__file__).resolve().parents[2]


def test_ranks_take_the_jobs_round_robin():
    jobs = list(range(7))
    shares = [jobs_of_rank(jobs, r, 3) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(j for s in shares for j in s) == jobs


def test_two_cpu_workers_run_variants_side_by_side(tmp_path, corpus, capsys):  # noqa: F811
    variants = [{"name": "mha", "model.attn": "mha"}, {"name": "mqa", "model.attn": "mqa"}]
    cfg = config(tmp_path, corpus, variants, budget="tokens=8192")
    rc = main(["compare", "--config", str(cfg), "--out", str(tmp_path / "par"), "--parallel", "2"])
    assert rc == 0
    runs = results(tmp_path / "par")["runs"]
    assert [r["status"] for r in runs] == ["done", "done"]
    assert len({r["pid"] for r in runs} | {os.getpid()}) == 3  # each in its own worker process
    a, b = sorted(runs, key=lambda r: r["started_at"])
    assert b["started_at"] < a["finished_at"], "the second variant must start before the first ends"
    # the same figures as one after another in this process: same data, same seeds
    capsys.readouterr()
    assert compare(capsys, cfg, tmp_path / "seq")[0] == 0
    for par, seq in zip(runs, results(tmp_path / "seq")["runs"], strict=True):
        assert abs(par["val_loss"] - seq["val_loss"]) < 1e-3 * seq["val_loss"]
    assert "Ran 2 at a time on cpu" in (tmp_path / "par" / "report.md").read_text()
    # run again: the finished runs are reused without starting a worker
    rc = main(["compare", "--config", str(cfg), "--out", str(tmp_path / "par"), "--parallel", "2"])
    assert rc == 0 and capsys.readouterr().out.count("finished earlier, reused") == 2


def test_torchrun_ranks_split_the_variants_and_rank_0_reports(tmp_path, corpus):  # noqa: F811
    variants = [{"name": "v0", "model.attn": "mha"}, {"name": "v1", "model.attn": "mqa"}]
    cfg = config(tmp_path, corpus, variants)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "transformer_toolkit", "compare", "--config", str(cfg),
                               "--out", str(out), "--parallel"], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "[1/2] v0" in logs[0] and "[2/2] v1" not in logs[0]  # rank 0 ran job 0 only
    assert "[2/2] v1" in logs[1] and "report ->" not in logs[1]  # rank 1 ran job 1 and wrote no report
    runs = results(out)["runs"]
    assert [(r["variant"], r["status"]) for r in runs] == [("v0", "done"), ("v1", "done")]
