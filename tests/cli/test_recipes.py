"""Recipes are package data: ``--config NAME`` must work from an installed wheel, in any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cli_helpers import run_main

from transformer_toolkit.cli import config as C

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "transformer_toolkit"


def test_repo_recipes_folder_is_the_package_folder():
    # recipes/ at the repository root is a link, so the README's `--config recipes/x.yaml` and the
    # shipped recipes can never differ
    assert (REPO / "recipes").resolve() == (PACKAGE / "recipes").resolve()
    shipped = sorted(p.stem for p in (PACKAGE / "recipes").glob("*.yaml"))
    assert C.recipe_names() == shipped
    assert {"quickstart", "gpt2-small", "llama-small", "moe-small", "mla-small", "sft"} <= set(shipped)


@pytest.mark.parametrize("spelling", ["llama-small", "llama-small.yaml", "recipes/llama-small.yaml"])
def test_recipe_by_name_from_any_directory(tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here
    assert C.read_yaml(spelling)["name"] == "llama-small"


def test_existing_local_file_wins_over_shipped_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "llama-small.yaml").write_text("name: mine\nmodel: {dim: 32}\n")
    assert C.read_yaml("recipes/llama-small.yaml")["name"] == "mine"
    assert C.read_yaml("llama-small")["name"] == "llama-small"  # a bare name is the shipped recipe


def test_unknown_recipe_names_the_closest_and_lists_them(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"did you mean 'llama-small'.*shipped recipes: .*quickstart"):
        C.read_yaml("lama-small")
    # a path elsewhere is a path: a missing one is an error, not a silent fallback to a recipe
    with pytest.raises(FileNotFoundError, match="does not exist"):
        C.read_yaml(tmp_path / "elsewhere" / "llama-small.yaml")
    rc, _, err = run_main(capsys, "train", "--config", "lama-small")
    assert rc == 2 and "did you mean 'llama-small'" in err and len(err.strip().splitlines()) == 1


def _build_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the project (pyproject, README, LICENSE, package), so the
    shared working tree gets no build/ or egg-info folders."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(PACKAGE, src / "transformer_toolkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(dist)!r}))"
    r = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return dist / r.stdout.strip().splitlines()[-1]


def test_wheel_ships_recipes_and_cli_finds_them_outside_the_repo(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for recipe in C.recipe_names():
        assert f"transformer_toolkit/recipes/{recipe}.yaml" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # an installed wheel is its unpacked files
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import transformer_toolkit as t, transformer_toolkit.cli.config as C; print(t.__file__); "
             "print(C.read_yaml('recipes/llama-small.yaml')['name'], C.read_yaml('moe-small')['name'])")
    r = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    where, names_read = r.stdout.strip().splitlines()
    assert Path(where).is_relative_to(site)  # the unpacked wheel, not the editable checkout
    assert names_read == "llama-small moe-small"
    # the command itself: the recipe is found, then the typo in the override is reported
    r = subprocess.run([sys.executable, "-m", "transformer_toolkit", "train", "--config", "llama-small",
                        "--model.dimm", "8"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "did you mean 'dim'" in r.stderr, r.stderr
