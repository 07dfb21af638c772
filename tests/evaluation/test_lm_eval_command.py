"""``lm_eval --model ttk`` from the shell, and ``ttk eval --tasks``, give the same scores.

lm-eval 0.4.13 discovers no plugins, so the package installs ``transformer_toolkit_lm_eval.pth``
(setup.py puts it in both the regular and the editable wheel); Python runs its line at startup
and ``transformer_toolkit_lm_eval`` registers ``ttk`` once lm-eval loads its models. The tests
build both wheels from a copy of the sources, then run lm-eval's own ``lm_eval`` executable in a
fresh process whose user site-packages folder holds the .pth file, exactly as an install leaves it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from eval_helpers import TINY, sentence, write_tasks  # noqa: E402

from transformer_toolkit.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PTH = "transformer_toolkit_lm_eval.pth"
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "transformer_toolkit",
           "transformer_toolkit_lm_eval.py", PTH]


def _env(**extra) -> dict:
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1", **extra}


def test_both_wheels_install_the_hook(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    code = ("from setuptools import build_meta as b; "
            "print(b.build_wheel('../whl')); print(b.build_editable('../editable'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for folder in ("whl", "editable"):
        (wheel,) = (tmp_path / folder).glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            assert z.read(PTH) == (ROOT / PTH).read_bytes() == b"import transformer_toolkit_lm_eval\n"
            assert folder == "editable" or "transformer_toolkit_lm_eval.py" in z.namelist()


def test_the_hook_imports_nothing_heavy():
    code = ("import sys, transformer_toolkit_lm_eval as h; "
            "assert not {'torch', 'lm_eval', 'transformer_toolkit'} & set(sys.modules), sorted(sys.modules); "
            "assert h._Finder in sys.meta_path")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_lm_eval_command_and_ttk_eval_agree(tmp_path):
    lm_eval_exe = shutil.which("lm_eval")
    if lm_eval_exe is None:
        pytest.skip("lm-eval's lm_eval command is not on PATH")
    rng = random.Random(0)
    (tmp_path / "corpus.txt").write_text("\n".join(sentence(rng, 12) for _ in range(400)))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--out", str(tmp_path / "run"), "--data.corpus", str(tmp_path / "corpus.txt"),
                     "--data.vocab_size", "300", *TINY]) == 0
    tasks = write_tasks(tmp_path / "tasks", [{"prompt": "the cat", "answer": "sat"}, {"prompt": "one", "answer": "x"}])
    # an installed .pth file, as site.py finds it in the user site-packages at startup
    user_base = tmp_path / "userbase"
    r = subprocess.run([sys.executable, "-c", "import site; print(site.getusersitepackages())"],
                       env=_env(PYTHONUSERBASE=str(user_base)), capture_output=True, text=True, timeout=60)
    user_site = Path(r.stdout.strip())
    assert user_site.is_relative_to(user_base) and site.ENABLE_USER_SITE
    user_site.mkdir(parents=True)
    shutil.copy(ROOT / PTH, user_site / PTH)

    r = subprocess.run([lm_eval_exe, "--model", "ttk", "--model_args", f"run={tmp_path / 'run'}", "--tasks", "t_mc",
                        "t_gen", "--include_path", str(tasks), "--limit", "4", "--output_path", str(tmp_path / "out")],
                       cwd=tmp_path, env=_env(PYTHONUSERBASE=str(user_base)), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (results,) = (tmp_path / "out").rglob("results_*.json")
    theirs = json.loads(results.read_text())["results"]

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["eval", "--run", str(tmp_path / "run"), "--tasks", "t_mc", "t_gen", "--include-path", str(tasks),
                     "--limit", "4", "--out", str(tmp_path / "ttk_out")]) == 0
    (ours_file,) = (tmp_path / "ttk_out").glob("results_*.json")
    ours = json.loads(ours_file.read_text())["results"]
    for task, metric in (("t_mc", "acc,none"), ("t_mc", "acc_norm,none"), ("t_gen", "exact_match,none")):
        assert theirs[task][metric] == ours[task][metric]
