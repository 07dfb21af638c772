"""``ttk eval``: bits per byte of several runs side by side, tasks, results files, errors."""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import re
import subprocess
import sys

import pytest
from eval_helpers import TINY, sentence

from transformer_toolkit.cli import main


def run_main(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs with different tokenizers (vocab 300 and 400) and two text files."""
    tmp = tmp_path_factory.mktemp("cli_eval")
    rng = random.Random(0)
    (tmp / "corpus.txt").write_text("\n".join(sentence(rng, 12) for _ in range(600)))
    (tmp / "a.txt").write_text(sentence(rng, 80))
    (tmp / "b.txt").write_text(sentence(rng, 40) + " naïve café")
    with contextlib.redirect_stdout(io.StringIO()):
        for name, vocab in (("r300", 300), ("r400", 400)):
            assert main(["train", "--out", str(tmp / name), "--data.corpus", str(tmp / "corpus.txt"),
                         "--data.vocab_size", str(vocab), *TINY]) == 0
    return tmp


def test_one_run_one_file_prints_one_line(runs, capsys):
    rc, out, err = run_main(capsys, "eval", "--run", runs / "r300", "--data", runs / "a.txt")
    assert rc == 0, err
    m = re.fullmatch(r"eval: ([\d,]+) tokens, ([\d,]+) bytes, loss ([\d.]+), bits per byte ([\d.]+), "
                     r"perplexity ([\d.]+)\n", out)
    assert m, out
    tokens, n_bytes = (int(g.replace(",", "")) for g in m.groups()[:2])
    loss, bpb, ppl = (float(g) for g in m.groups()[2:])
    assert n_bytes == len((runs / "a.txt").read_bytes())
    assert bpb == pytest.approx(loss * tokens / (math.log(2) * n_bytes), rel=1e-3)
    assert ppl == pytest.approx(math.exp(loss), rel=1e-3)
    assert "results of" in err and list((runs / "r300" / "eval").glob("results_*.json"))


def test_runs_with_different_tokenizers_side_by_side(runs, capsys, tmp_path):
    rc, out, err = run_main(capsys, "eval", "--run", runs / "r300", "--run", runs / "r400",
                            "--data", runs / "a.txt", runs / "b.txt", "--out", tmp_path / "res")
    assert rc == 0, err
    lines = out.splitlines()
    header = f"| data | {runs / 'r300'} | {runs / 'r400'} |"
    assert lines[0].startswith("bits per byte") and lines[1] == header
    rows = {line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:4]] for line in lines[3:6]}
    assert set(rows) == {"a.txt", "b.txt", "all"}
    assert all(0 < v < 20 for vals in rows.values() for v in vals)
    for name in ("r300", "r400"):  # with --out and several models: one folder each
        assert len(list((tmp_path / "res" / name).glob("results_*.md"))) == 1


def test_tasks_on_the_held_out_split(runs, capsys):
    rc, out, err = run_main(capsys, "eval", "--run", runs / "r300", "--tasks", "bpb")
    assert rc == 0, err
    assert "| bpb | bits_per_byte |" in out


def test_bad_command_lines(runs, capsys):
    rc, _, err = run_main(capsys, "eval", "--run", runs / "r300")
    assert rc == 2 and "nothing to evaluate" in err
    rc, _, err = run_main(capsys, "eval", "--data", runs / "a.txt")
    assert rc == 2 and "--run RUN" in err
    rc, _, err = run_main(capsys, "eval", "--model", runs / "r300", "--data", runs / "a.txt")
    assert rc == 2 and "goes to --run" in err
    rc, _, err = run_main(capsys, "eval", "--run", runs / "r300", "--data", runs / "missing.txt")
    assert rc == 2 and "missing.txt" in err


def test_offline_task_data_is_named(runs):
    pytest.importorskip("lm_eval")
    (runs / "tasks").mkdir(exist_ok=True)
    (runs / "tasks" / "hub.yaml").write_text(
        "task: t_hub\ndataset_path: nobody-here/missing-dataset\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "transformer_toolkit", "eval", "--run", str(runs / "r300"), "--tasks",
                        "t_hub", "--include-path", str(runs / "tasks")], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    assert "task t_hub needs the dataset nobody-here/missing-dataset" in r.stderr.splitlines()[-1]
