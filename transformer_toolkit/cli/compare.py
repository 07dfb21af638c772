"""``ttk compare``: a fair comparison of architecture variants, from one run config.

The config is the YAML ``ttk train`` takes, plus an optional ``compare:`` section (see
``compare.plan.CompareConfig``); ``--vary``, ``--budget``, ``--seeds`` and dotted overrides on the
command line add to it. The corpus is tokenised once into ``OUT/data``; every variant is then an
ordinary run folder ``OUT/runs/<variant>/seed-<seed>`` trained on that token file, and the
report goes to ``OUT``. Run the same command again to resume: finished runs are reused.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import config as C
from .train import token_file

DEFAULT = "compare-attention"


def _log(text: str) -> None:
    print(text, flush=True)


def parse_vary(items: list[str]) -> dict[str, list]:
    """``["model.attn=gqa,mla"]`` -> ``{"model.attn": ["gqa", "mla"]}`` (values read as YAML)."""
    out = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        if not sep or "." not in key or not values:
            raise ValueError(f"--vary {item!r}: write SECTION.FIELD=V1,V2,..., e.g. --vary model.attn=gqa,mla")
        out[key.strip()] = [C._yaml_value(v.strip()) for v in values.split(",")]
    return out


def settings(section: dict | None, args):
    """The compare settings: the config's ``compare:`` section, then the command line."""
    from ..compare import CompareConfig

    s = dict(section or {})
    if args.vary:
        s["vary"] = {**(s.get("vary") or {}), **parse_vary(args.vary)}
    for key in ("budget", "seeds"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.tasks:
        s["tasks"] = [t for item in args.tasks for t in item.split(",") if t.strip()]
    try:
        return CompareConfig(**s)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"compare: {C._first_error(e) if hasattr(e, 'errors') else e}") from None


def known_fields() -> dict[str, set]:
    from ..data import DataConfig
    from ..model import TransformerConfig
    from ..trainer import TrainConfig

    return {"model": set(TransformerConfig.model_fields), "train": set(TrainConfig.model_fields),
            "data": set(DataConfig.model_fields) | set(C.PRETRAIN_EXTRAS)}


def shared_data(run: dict, out: Path, s, budget):
    """Tokenise once: (tokenizer, Shared) with the token file, tokenizer and held-out split."""
    from ..compare import Shared
    from ..data.sources import split_spec
    from ..data.tokens import token_spec, write_npy

    (out / "data").mkdir(parents=True, exist_ok=True)
    # runs trained with this folder's tokenizer exist: it may not be replaced under them
    tok, tokens = token_file(run, out, resuming=(out / "runs").is_dir())
    heldout = out / "data" / "heldout.npy"
    if not heldout.is_file():
        write_npy(split_spec(token_spec(tokens), run["data"])[1].open(), heldout)
    tokenizer = out / "tokenizer.json"
    return tok, Shared(tokens=os.path.abspath(tokens), tokenizer=os.path.abspath(tokenizer),
                       heldout=os.path.abspath(heldout), budget=budget, evals=s.evals, bpb_tokens=s.bpb_tokens,
                       decode_tokens=s.decode_tokens, tasks=list(s.tasks), cpu_peak=cpu_peaks())


def cpu_peaks() -> dict[str, float]:
    """The CPU's matmul peak per training dtype, measured once here before any worker starts
    (workers measuring side by side would each see a share of the cores); none with CUDA."""
    import torch

    from ..compare.measure import matmul_peak

    if torch.cuda.is_available():
        return {}
    return {str(dt): matmul_peak(dt) for dt in (torch.float32, torch.bfloat16)}


def jobs_for(raw: dict, variants, seeds: int, out: Path, shared, vocab_size: int) -> list:
    """One job per variant and seed; a variant whose config does not build carries its error."""
    from ..compare import Job

    jobs = []
    shared_paths = {"data.corpus": shared.tokens, "data.tokenizer": shared.tokenizer}
    base_seed = C.resolve(C.merge(raw, shared_paths), "train")["train"].seed  # of a variant that cannot resolve
    for v in variants:
        for k in range(seeds):
            config, error, seed = None, None, None
            try:
                run = C.resolve(C.merge(raw, {**v.overrides, **shared_paths}), "train")
                model_cfg = C.model_config(run, vocab_size)
                seed = run["train"].seed + k
                config = C.resolved_dict(run, model_cfg, run["train"])
                config["train"]["seed"] = seed
                config["data"]["seed"] += k  # seed k: its own data order, the same for every variant
                config["name"] = f"{raw.get('name') or 'compare'}: {v.name} (seed {seed})"
            except ValueError as e:
                error = str(e).splitlines()[0]
                seed = base_seed + k
            jobs.append(Job(v, seed, os.fspath(out / "runs" / v.slug / f"seed-{seed}"), config, error))
    return jobs


def devices(parallel: str | None) -> list[str] | None:
    """The worker devices of --parallel: one per CUDA device, or N workers."""
    import torch

    if parallel is None:
        return None
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if parallel == "auto":
        if n_cuda == 0:
            raise ValueError("--parallel alone runs one variant per CUDA device, and there is none; on a CPU give "
                             "a worker count (--parallel 2), or run under torchrun")
        return [f"cuda:{i}" for i in range(n_cuda)]
    if not parallel.isdigit() or int(parallel) < 1:
        raise ValueError(f"--parallel {parallel!r}: give a worker count >= 1, or nothing (one per CUDA device)")
    n = int(parallel)
    return [f"cuda:{i % n_cuda}" for i in range(n)] if n_cuda else ["cpu"] * n


def _progress(jobs: list):
    number = {id(j): i + 1 for i, j in enumerate(jobs)}  # a rank's share keeps the numbers of the whole plan

    def report(_, job, result: dict | None) -> None:
        head = f"compare: [{number[id(job)]}/{len(jobs)}] {job.variant.name}, seed {job.seed}"
        if result is None:
            _log(f"{head} -> {job.folder}")
        elif result.get("skipped"):
            _log(f"{head}: finished earlier, reused")
        elif result["status"] == "done":
            loss = result.get("val_loss")
            _log(f"{head}: done, {result['steps']} steps, val loss {'-' if loss is None else f'{loss:.4f}'}, "
                 f"{result['elapsed']:.0f}s")
        elif result["status"] == "failed":
            _log(f"{head}: FAILED: {result['error']}")
        else:
            _log(f"{head}: paused at step {result.get('step')}")
    return report


def _summary(raw: dict, run: dict, s, budget, jobs, shared, where: str) -> str:
    from ..data.tokens import token_spec

    m = run["model"]
    n_train = token_spec(shared.tokens).length - token_spec(shared.heldout).length
    return (f"{len({j.variant.name for j in jobs})} variant(s) x {s.seeds} seed(s), each trained under the budget "
            f"{budget} on the same tokenised data ({n_train:,} training and {token_spec(shared.heldout).length:,} "
            f"held-out tokens of {run['extras']['corpus']}) in the same order from the same seeds. Base model: "
            f"dim {m.dim}, {m.n_layers} layer(s), {m.n_heads} heads, attn {m.attn}, ffn {m.ffn}. {where}")


def plan(args, overrides: dict):
    """Everything decided before any data is read: ``(raw config without its compare section,
    settings, variants, resolved base run, budget)``. An override naming no field fails here."""
    from ..compare import Budget, check_fields, expand, parse_budget

    raw = C.merge(C.read_yaml(args.config or DEFAULT), overrides)
    if raw.get("init"):
        raise ValueError("ttk compare trains every variant from scratch; remove init from the config")
    s = settings(raw.pop("compare", None), args)
    variants = expand(s.variants, s.vary, s.sizes)
    known = known_fields()
    for v in variants:
        check_fields(v, known)
    run = C.resolve(raw, "train")
    budget = parse_budget(s.budget) if s.budget else Budget("steps", run["train"].max_steps)
    return raw, s, variants, run, budget


def cmd_compare(args, overrides: dict) -> int:
    """Plan, check every variant, tokenise once, train each variant (resuming), write the report."""
    from ..compare import write_report
    from ..compare.run import finished
    from ..compare.schedule import jobs_of_rank, run_sequential, run_workers, torchrun_rank, wait_for_results

    raw, s, variants, run, budget = plan(args, overrides)
    out = Path(args.out or os.path.join("runs", run["name"]))
    ranks = torchrun_rank()
    rank = ranks[0] if ranks else 0
    ready = out / "data" / "READY"
    if rank == 0:
        tok, shared = shared_data(run, out, s, budget)
        ready.touch()
    else:  # rank 0 tokenises; the others wait for its files
        while not ready.is_file():
            time.sleep(2)
        tok, shared = shared_data(run, out, s, budget)
    jobs = jobs_for(raw, variants, s.seeds, out, shared, tok.vocab_size)
    for job in jobs:  # a finished run of another plan is refused before anything trains
        finished(job, shared)
    _log(f"compare: {len(variants)} variant(s) x {s.seeds} seed(s), budget {budget} -> {out}")
    started = time.time()
    if ranks:
        _, world, local = ranks
        import torch

        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        results = run_workers(jobs_of_rank(jobs, rank, world), shared, [device], _progress(jobs))
        where = f"Ran under torchrun, {world} ranks, one variant per device at a time."
    elif args.in_process:
        results = run_sequential(jobs, shared, None, _progress(jobs))
        where = "Ran one after another in one process."
    else:
        workers = devices(args.parallel) or ["auto"]
        results = run_workers(jobs, shared, workers, _progress(jobs))
        where = (f"Ran {len(workers)} at a time on {', '.join(sorted(set(workers)))}" if len(workers) > 1
                 else "Ran one after another, each in its own process") + "."
        if workers.count("cpu") > 1:
            where += " The CPU workers shared its cores, so speed and time figures are lower than alone."
    if any(r["status"] == "paused" for r in results):
        _log("compare: paused; run the same command again to resume")
        return 130
    if rank != 0:
        return 0
    if ranks:
        results = wait_for_results(jobs, started, log=_log)
    meta = {"name": run["name"], "budget": str(budget), "seeds": s.seeds, "bpb_tokens": s.bpb_tokens,
            "decode_tokens": s.decode_tokens, "command": "ttk " + " ".join(sys.argv[1:]),
            "summary": _summary(raw, run, s, budget, jobs, shared, where)}
    report = write_report(out, meta, variants, results)
    from ..compare.report import markdown, table

    _log(markdown(*table(report["variants"])))
    for line in report["spread"]["val_loss"]:
        _log(f"  {line}")
    _log(f"compare: report -> {out / 'report.md'}, {out / 'report.html'}, {out / 'results.json'}")
    return 0 if any(r["status"] == "done" for r in results) else 1
