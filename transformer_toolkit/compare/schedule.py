"""Running the jobs of a compare: one after another, or several at once on several devices.

- ``devices=None``: in this process, one job after another (a paused job stops the rest).
- ``devices=[...]``: one worker process per entry (``"cuda:0"``, ``"cuda:1"``, or ``"cpu"``
  repeated), each job in a fresh process on a free device, the next job starting as soon as a
  device frees. A fresh process per job gives each its own peak-memory figure and keeps a crash
  (or an out-of-memory kill) to the one variant. CPU workers split the cores between them.
- Under ``torchrun`` (``WORLD_SIZE`` > 1): rank r runs jobs r, r + W, r + 2W, ... on its own
  GPU (``LOCAL_RANK``), with the torchrun variables hidden from the job, so each variant trains
  on one device instead of joining a data-parallel group; rank 0 waits for every job's result
  file, then writes the report (``wait_for_results``).

Each job writes its result into its run folder (``run.RESULT``), so the scheduler only passes
folders around and a killed compare leaves everything that finished on disk.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from multiprocessing.connection import wait

from .run import RESULT, Job, Shared, failed, finished, paused, read_result, run_job

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                 "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def torchrun_rank() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` under torchrun, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def jobs_of_rank(jobs: list[Job], rank: int, world: int) -> list[Job]:
    """Rank ``rank``'s share: every ``world``-th job from its own index (round-robin)."""
    return jobs[rank::world]


def run_sequential(jobs: list[Job], shared: Shared, device: str | None = None,
                   report: Callable[[int, Job, dict | None], None] | None = None) -> list[dict]:
    """Run each job in this process; stop after a paused one (Ctrl+C)."""
    results = []
    for i, job in enumerate(jobs):
        if report:
            report(i, job, None)
        result = run_job(job, shared, device)
        results.append(result)
        if report:
            report(i, job, result)
        if result["status"] == "paused":
            break
    return results


def _child(job: Job, shared: Shared, device: str, threads: int | None) -> None:
    for name in TORCHRUN_VARS:  # one variant, one device: never join a torchrun group
        os.environ.pop(name, None)
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_job(job, shared, device)


def run_workers(jobs: list[Job], shared: Shared, devices: list[str],
                report: Callable[[int, Job, dict | None], None] | None = None) -> list[dict]:
    """Run the jobs in fresh processes, at most one per entry of ``devices`` at a time."""
    ctx = mp.get_context("spawn")  # no fork of a process that may hold CUDA or OpenMP state
    n_cpu = sum(d == "cpu" for d in devices)
    threads = max(1, (os.cpu_count() or 1) // n_cpu) if n_cpu > 1 else None
    free, running, results = list(devices), {}, {}
    pending = list(enumerate(jobs))
    stopping = False
    try:
        while pending or running:
            while pending and free and not stopping:
                i, job = pending.pop(0)
                done = finished(job, shared)  # reused without starting a process
                if done is not None:
                    results[i] = done
                    if report:
                        report(i, job, done)
                    continue
                device = free.pop(0)
                if report:
                    report(i, job, None)
                p = ctx.Process(target=_child, args=(job, shared, device, threads if device == "cpu" else None),
                                name=f"compare-{job.variant.slug}")
                p.start()
                running[p.sentinel] = (p, i, job, device, time.time())
            if not running:
                break
            for sentinel in wait(list(running)):
                p, i, job, device, since = running.pop(sentinel)
                p.join()
                free.append(device)
                results[i] = _result_of(job, shared, p.exitcode, since)
                if report:
                    report(i, job, results[i])
                stopping = stopping or results[i]["status"] == "paused"
    except KeyboardInterrupt:
        # the workers got the same Ctrl+C: each finishes its step and writes pause.pt
        for p, i, job, _, since in running.values():
            p.join()
            results[i] = fresh_result(job, since) or paused(job, shared, None)
    return [results[i] for i in sorted(results)]


def fresh_result(job: Job, since: float) -> dict | None:
    """The job's result if it is final for this compare: done (a skipped job is not written
    again), or failed / paused and written at or after ``since``, not left from an earlier try."""
    result = read_result(job.folder)
    if result is None or result.get("status") == "done":
        return result
    written = os.path.getmtime(os.path.join(job.folder, RESULT))
    return result if written >= since - 1.0 else None  # 1 s: coarse file-system timestamps


def _result_of(job: Job, shared: Shared, exitcode: int | None, since: float) -> dict:
    result = fresh_result(job, since)
    if result is not None:
        return result
    return failed(job, shared, f"the worker process exited with code {exitcode} before writing a result "
                               "(killed, or out of memory?)")


def wait_for_results(jobs: list[Job], since: float, poll: float = 5.0,
                     log: Callable[[str], None] = print) -> list[dict]:
    """Rank 0 under torchrun: wait until every job has a result of this compare (done, or
    failed / paused since ``since``, the compare's start) on disk."""
    told = False
    while True:
        results = [fresh_result(j, since) for j in jobs]
        missing = [j for j, r in zip(jobs, results, strict=True) if r is None]
        if not missing:
            return results
        if not told:
            log(f"compare: waiting for {len(missing)} variant run(s) on the other ranks")
            told = True
        time.sleep(poll)
