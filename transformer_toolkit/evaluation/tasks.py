"""``evaluate_tasks``: score a model on named tasks, built-in or lm-evaluation-harness ones.

A task is a name (``"synthetic"``, ``"hellaswag"``) or a dict ``{"name": ..., options}``.
Built-in tasks (``builtin.py``) run here with no download; every other name goes to lm-eval
(``pip install -e ".[eval]"``) through the ``ttk`` adapter, in this process, with the tasks of
``include_path`` folders (your own YAMLs over local files) found first. Results come back in
lm-eval's layout (``{"results": {task: {"acc,none": ...}}, "configs": ..., ...}``), built-in
tasks included, so one table and one JSON file describe them all.

>>> out = evaluate_tasks(model, tok, ["synthetic", "bpb"], heldout=val_ids)   # doctest: +SKIP
>>> scores(out)                                                              # doctest: +SKIP
{'synthetic/exact_match': 0.94, 'synthetic/exact_match_follow_up': 0.9, 'bpb/bits_per_byte': 1.21, ...}
"""

from __future__ import annotations

import difflib
import math
import os
import time
from collections.abc import Callable, Sequence

from .builtin import BUILTIN, HIGHER_IS_BETTER

TaskSpec = str | dict


def parse_spec(spec: TaskSpec) -> tuple[str, dict]:
    """``(name, options)`` of a task given as a name or a ``{"name": ..., options}`` dict."""
    if isinstance(spec, str) and spec.strip():
        return spec.strip(), {}
    if isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"].strip():
        return spec["name"].strip(), {k: v for k, v in spec.items() if k != "name"}
    raise ValueError(f"a task is a name or a dict with a 'name' (and its options), got {spec!r}")


def evaluate_tasks(model, tokenizer, tasks: Sequence[TaskSpec], *, template=None,
                   heldout: Callable[[], Sequence[int]] | None = None, include_path=None, limit: int | None = None,
                   num_fewshot: int | None = None, batch_size: int = 16, apply_chat_template: bool = False,
                   log_samples: bool = False, bootstrap_iters: int = 0) -> dict:
    """Run ``tasks`` on ``model``; returns lm-eval's results dict (built-in tasks included).

    ``template``: the chat template of the synthetic task and of ``apply_chat_template``;
    ``heldout``: a function returning the held-out token ids (for ``bpb`` without data);
    ``include_path``: folders of lm-eval task YAMLs; ``limit``, ``num_fewshot``,
    ``apply_chat_template``, ``log_samples``, ``bootstrap_iters`` (0: no stderr) as lm-eval's."""
    specs = [parse_spec(s) for s in tasks]
    if not specs:
        raise ValueError("no tasks to evaluate; built-in tasks: " + ", ".join(BUILTIN))
    out = {"results": {}, "configs": {}, "versions": {}, "n-shot": {}, "higher_is_better": {}, "n-samples": {},
           "date": time.time()}
    harness = [(n, o) for n, o in specs if n not in BUILTIN]
    if harness:
        out = _merge(out, run_lm_eval(model, tokenizer, harness, template=template, include_path=include_path,
                                      limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
                                      apply_chat_template=apply_chat_template, log_samples=log_samples,
                                      bootstrap_iters=bootstrap_iters))
    for name, options in specs:
        if name in BUILTIN:
            opts = {"template": template, **options} if name == "synthetic" and template is not None else options
            for task, entry in BUILTIN[name](model, tokenizer, opts, heldout=heldout).items():
                out["results"][task] = entry
                out["configs"][task] = {"task": task, "builtin": True, **_plain(options)}
                out["versions"][task] = 1
                out["n-shot"][task] = 0
                out["higher_is_better"][task] = HIGHER_IS_BETTER[name]
                if "sample_len" in entry:
                    out["n-samples"][task] = {"original": entry["sample_len"], "effective": entry["sample_len"]}
    return out


def _plain(options: dict) -> dict:
    """Options as JSON-safe values (a ChatTemplate becomes its dict)."""
    return {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in options.items()}


def _merge(out: dict, other: dict) -> dict:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        elif key not in out:
            out[key] = value
    return out


def scores(results: dict) -> dict[str, float]:
    """The numbers of a results dict as ``{"task/metric": value}`` (no stderr, no counts)."""
    flat = {}
    for task, entry in results.get("results", {}).items():
        for key, value in entry.items():
            metric, _, filt = key.partition(",")
            if not filt or "stderr" in metric or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(float(value)):
                flat[f"{task}/{metric}" + ("" if filt == "none" else f"[{filt}]")] = float(value)
    return flat


# lm-evaluation-harness ---------------------------------------------------------------------
def _lm_eval():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError('lm-eval tasks need lm-evaluation-harness: pip install -e ".[eval]" (built-in tasks: '
                          f'{", ".join(BUILTIN)})') from e
    return lm_eval, TaskManager


def task_manager(names: Sequence[str], include_path=None):
    """A TaskManager that knows every name in ``names``: the ``include_path`` folders alone when
    they hold them all (fast), else with lm-eval's own ~15k tasks indexed too. An unknown name
    raises a ValueError listing the closest known names."""
    _, TaskManager = _lm_eval()
    paths = [os.fspath(p) for p in ([include_path] if isinstance(include_path, (str, os.PathLike))
                                    else include_path or [])]
    for p in paths:
        if not os.path.isdir(p) and not os.path.isfile(p):
            raise FileNotFoundError(f"task include path {p!r} does not exist")
    if paths:
        tm = TaskManager(include_path=paths, include_defaults=False)
        if all(n in tm.all_tasks for n in names):
            return tm
    tm = TaskManager(include_path=paths or None)
    missing = [n for n in names if n not in tm.all_tasks]
    if missing:
        known = list(tm.all_tasks) + list(BUILTIN)
        hints = []
        for n in missing:
            close = difflib.get_close_matches(n, known, n=5, cutoff=0.6)
            hints.append(f"{n!r}" + (f" (close: {', '.join(close)})" if close else ""))
        raise ValueError(f"unknown task {'; '.join(hints)}; built-in tasks: {', '.join(BUILTIN)}; lm-eval tasks: "
                         "`lm-eval ls tasks`, and your own YAMLs through include_path / --include-path")
    return tm


def run_lm_eval(model, tokenizer, specs: list[tuple[str, dict]], *, template=None, include_path=None,
                limit=None, num_fewshot=None, batch_size: int = 16, apply_chat_template: bool = False,
                log_samples: bool = False, bootstrap_iters: int = 0) -> dict:
    """lm-eval's ``simple_evaluate`` over the in-memory model (the ``ttk`` adapter). A spec's
    own ``limit`` / ``num_fewshot`` options override the arguments (one lm-eval call per
    distinct pair)."""
    lm_eval, _ = _lm_eval()
    from .harness import TTKLM

    tm = task_manager([n for n, _ in specs], include_path)
    lm = TTKLM(model=model, tokenizer=tokenizer, template=template, batch_size=batch_size)
    calls: dict[tuple, list[str]] = {}
    for name, options in specs:
        extra = sorted(set(options) - {"limit", "num_fewshot"})
        if extra:
            raise ValueError(f"task {name}: unknown option(s) {', '.join(extra)}; an lm-eval task takes limit and "
                             "num_fewshot (change anything else in its YAML, through include_path)")
        calls.setdefault((options.get("limit", limit), options.get("num_fewshot", num_fewshot)), []).append(name)
    out: dict = {}
    for (lim, shots), names in calls.items():
        try:
            res = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=tm, limit=lim, num_fewshot=shots,
                                          apply_chat_template=apply_chat_template, log_samples=log_samples,
                                          bootstrap_iters=bootstrap_iters)
        except Exception as e:
            named = _data_error(e, names, tm)
            if named is e:
                raise
            raise named from e
        out = _merge(out, res or {})
    return out


def _data_error(e: Exception, names: list[str], tm) -> Exception:
    """An error of a task's data (missing offline, or a local file that is not there) as one that
    names the dataset or file it needed; any other error as it was."""
    text = f"{type(e).__name__}: {e}"
    data_like = isinstance(e, (FileNotFoundError, ConnectionError, OSError)) or any(
        w in text for w in ("offline", "Offline", "DatasetNotFound", "Couldn't reach", "couldn't find", "does not "
                            "exist", "Unable to find", "LocalEntryNotFound"))
    if not data_like:
        return e
    for name in names:
        entry = tm.task_index.get(name)
        cfg = getattr(entry, "cfg", None) or {}
        path, subset = cfg.get("dataset_path"), cfg.get("dataset_name")
        files = (cfg.get("dataset_kwargs") or {}).get("data_files")
        local = [f for f in _flat_files(files) if not f.startswith(("hf://", "http")) and not os.path.exists(f)]
        if local:
            return FileNotFoundError(f"task {name} needs the data file {local[0]!r}, which does not exist "
                                     f"(dataset_kwargs.data_files in its YAML)")
        if path and path not in ("json", "csv", "parquet", "text", "arrow"):
            where = path + (f" ({subset})" if subset else "")
            return FileNotFoundError(
                f"task {name} needs the dataset {where}, which could not be loaded ({text.splitlines()[0][:160]}); "
                "offline, download it once where there is network (it stays in the datasets cache), or point the "
                "task at local files: copy its YAML, set dataset_path: json and dataset_kwargs: {data_files: "
                "{test: FILE.jsonl}}, and pass its folder as include_path / --include-path")
    return e


def _flat_files(files) -> list[str]:
    if files is None:
        return []
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [f for v in files.values() for f in _flat_files(v)]
    return [f for v in files for f in _flat_files(v)]
