"""Throughput of one worker against two (`devices = "cpu:0,cpu:1"`) on a queue of small jobs.

    .venv/bin/python bench/scale.py [--jobs 24]

Each configuration runs in a runtime over a fresh data directory: first one warm-up job per
worker (so that no pipeline load is timed), then `--jobs` small tiny-wan jobs submitted at once,
timed from the first `Runtime.submit` to the arrival of the last ``job.succeeded``. Torch runs
one thread per worker (``OMP_NUM_THREADS=1``, inherited by the worker processes), so the two
workers do not fight over this machine's cores. ``ratio`` = two workers' jobs/s over one's; the
goal (issue 17) is 1.6 or more on a 2-core machine.

Prints progress on stderr and one JSON object on its last stdout line:
``{"one_worker_jobs_per_s", "two_workers_jobs_per_s", "ratio", ...}``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import anyio  # noqa: E402
from _harness import build_tiny_model, emit, make_home, progress, running_runtime  # noqa: E402

from supervisor.core.params import GenerationParams  # noqa: E402
from supervisor.jobs import Job, new_job_id  # noqa: E402

PARAMS = {"width": 64, "height": 64, "num_frames": 9, "steps": 8}


def _job(seed: int) -> Job:
    params = GenerationParams(prompt="a small boat", seed=seed, **PARAMS)  # type: ignore[arg-type]
    return Job(id=new_job_id(), model="tiny-wan", params=params)


async def _throughput(home: Path, jobs: int, **overrides: Any) -> dict[str, Any]:
    async with running_runtime(home, **overrides) as (runtime, log):
        workers = len(runtime.jobs.lanes)
        warm = [_job(1000 + i) for i in range(workers)]
        for job in warm:
            await runtime.submit(job)
        for job in warm:
            await log.wait_job(job.id, "job.succeeded", limit=300)
        queue = [_job(i) for i in range(jobs)]
        start = time.perf_counter()
        for job in queue:
            await runtime.submit(job)
        for job in queue:
            await log.wait_job(job.id, "job.succeeded", limit=600)
        elapsed = time.perf_counter() - start
        devices = sorted(
            {str(r.event.data.device) for j in queue for r in log.of_job(j.id, "job.started")}  # type: ignore[attr-defined]
        )
    progress(f"{workers} worker(s): {jobs} jobs in {elapsed:.2f} s on {devices}")
    return {"workers": workers, "seconds": elapsed, "jobs_per_s": jobs / elapsed}


async def main(jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="genvisor-scale-") as tmp:
        root = Path(tmp)
        model = build_tiny_model(root)
        one = await _throughput(make_home(root, "one", model), jobs, device="cpu")
        two = await _throughput(make_home(root, "two", model), jobs, devices="cpu:0,cpu:1")
    return {
        "one_worker_jobs_per_s": round(one["jobs_per_s"], 3),
        "two_workers_jobs_per_s": round(two["jobs_per_s"], 3),
        "ratio": round(two["jobs_per_s"] / one["jobs_per_s"], 3),
        "jobs": jobs,
        "job": PARAMS,
        "torch_threads_per_worker": int(os.environ["OMP_NUM_THREADS"]),
        "cpu_count": os.cpu_count(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24)
    emit(anyio.run(main, parser.parse_args().jobs))
