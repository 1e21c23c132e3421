"""Supervision overhead: tiny-wan jobs through the runtime against the same work done directly.

    .venv/bin/python bench/overhead.py [-n 15]

Supervised: a `Job` (32x32, 5 frames, 2 steps) goes through `Runtime.submit` — job store,
supervisor, generator actor, channel, worker process — and is timed from `submit` to the
arrival of its ``job.succeeded`` event at a bus subscriber. Direct: in this process, the
worker's own `PipelineHost` loads the same pipeline and the worker's own `run_generation` does
the same encode → denoise (latent) → decode → save MP4 + sidecar, timed around the call. The
runs alternate (supervised, direct, supervised, ...) with the same seed per pair; the first
call of each (worker start-up and pipeline load) is excluded. While a direct call runs, this
process's event loop is blocked, so nothing of the runtime competes with it in this process.
Each measured run starts after `--gap` idle seconds (0.05): torch's threads, the worker's and
this process's, spin for a while after each run, and on a 2-core machine a run that starts
straight after the other path's measures that path's leftovers (back to back, `--gap 0`, the
supervised runs took 1-2 ms longer each and the direct ones did not).

Prints progress on stderr and one JSON object on its last stdout line: ``supervised_median_s``,
``direct_median_s``, ``ratio`` (of the medians), ``overhead_median_s`` (their difference),
``supervision_median_s`` (per supervised run, its wall time less its worker's stage time),
p90s, and where the supervised time goes (medians of: submit → job.started, job.started → the
worker's first progress, the worker's own stage timings, the last stage's end → job.succeeded
received).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from _harness import (
    MODEL,
    EventLog,
    Received,
    build_tiny_model,
    emit,
    make_home,
    median,
    progress,
    quantile,
    running_runtime,
)

from actors.worker.generation import JobRun, run_generation
from actors.worker.pipeline_host import PipelineHost
from actors.worker.protocol import Done, Generate
from supervisor.core.params import GenerationParams, PipelineOptions
from supervisor.jobs import Job, new_job_id

WIDTH, HEIGHT, FRAMES, STEPS = 32, 32, 5, 2


def _params(seed: int) -> GenerationParams:
    return GenerationParams(
        prompt="a lighthouse in fog",
        width=WIDTH,
        height=HEIGHT,
        num_frames=FRAMES,
        steps=STEPS,
        seed=seed,
    )


class Direct:
    """The worker's own code, called in this process."""

    def __init__(self, model: Path, out: Path) -> None:
        self.model = model
        self.out = out
        self.host = PipelineHost()
        self.options = PipelineOptions(device="cpu")

    def run(self, seed: int) -> tuple[float, float]:
        """Wall seconds of one job (load included when nothing is loaded) and the stage sum."""
        started = time.perf_counter()
        # The worker calls `ensure` before every job too (a no-op once loaded).
        self.host.ensure(self.model, self.options)
        request = Generate(
            job_id=new_job_id(),
            params=_params(seed),
            options=self.options,
            output_dir=str(self.out),
        )
        result = run_generation(
            JobRun(request=request, host=self.host, emit=lambda _msg: None, model_name=MODEL)
        )
        wall = time.perf_counter() - started
        if not isinstance(result, Done):
            raise RuntimeError(f"direct run failed: {result!r}")
        return wall, sum(result.timings.values())


async def _wait_end(log: EventLog, job_id: str, seen: int) -> Received:
    """The job's first terminal event, looking only at events not looked at before.

    Not `EventLog.wait_job`: that scans every event received so far at each arrival, so the
    bench's own subscriber would cost more per job the longer it runs (with ~15 events a job,
    hundreds of events a wake by the last pairs), on this process's loop and on the CPUs the
    worker computes on, and would be measured as supervision overhead."""
    cursor = seen
    found: list[Received] = []

    def ended() -> bool:
        nonlocal cursor
        received = log.received
        while not found and cursor < len(received):
            r = received[cursor]
            cursor += 1
            if r.event.type.value in _ENDS and getattr(r.event.data, "job_id", None) == job_id:
                found.append(r)
        return bool(found)

    await log.wait_for(ended, f"the end of {job_id}", limit=120)
    return found[0]


_ENDS = frozenset({"job.succeeded", "job.failed"})


async def _supervised(runtime: Any, log: EventLog, seed: int) -> dict[str, float]:
    job = Job(id=new_job_id(), model=MODEL, params=_params(seed))
    seen = len(log.received)
    submitted_wall = time.time()
    submitted = time.perf_counter()
    await runtime.submit(job)
    submit_call = time.perf_counter() - submitted
    end = await _wait_end(log, job.id, seen)
    if end.event.type.value != "job.succeeded":
        raise RuntimeError(f"supervised job failed: {end.event.to_json()}")
    wall = end.perf - submitted
    started = log.of_job(job.id, "job.started")[0].event.ts
    steps = log.of_job(job.id, "job.progress")
    first_progress = steps[0].event.ts
    stored = await runtime.store.get(job.id)
    timings = stored.result["timings"]
    compute = sum(timings.values())
    # The save stage's own progress event is published when the worker starts saving.
    save_started = next(r.event.ts for r in steps if r.event.data.stage.value == "save")
    return {
        "wall": wall,
        "submit_call": submit_call,
        "dispatch": started - submitted_wall,
        "to_first_progress": first_progress - started,
        "compute": compute,
        "tail": end.wall - (save_started + timings["save"]),
    }


async def main(n: int, gap: float) -> dict[str, Any]:
    # Other processes on this machine slow both paths alike (the runs alternate); noted anyway.
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="genvisor-overhead-") as tmp:
        root = Path(tmp)
        progress("building tiny-wan")
        model = build_tiny_model(root / "build")
        home = make_home(root, "home", model)
        direct = Direct(home / "models" / MODEL, root / "direct-out")
        progress("starting the runtime (worker process start-up)")
        async with running_runtime(home) as (runtime, log):
            first = await _supervised(runtime, log, seed=0)
            load_direct, _ = direct.run(seed=0)
            progress(
                f"first calls, excluded: supervised {first['wall']:.3f}s, direct {load_direct:.3f}s"
            )
            supervised: list[dict[str, float]] = []
            direct_runs: list[tuple[float, float]] = []
            for i in range(1, n + 1):
                await anyio.sleep(gap)
                supervised.append(await _supervised(runtime, log, seed=i))
                await anyio.sleep(gap)
                direct_runs.append(direct.run(seed=i))
                progress(
                    f"pair {i}/{n}: supervised {supervised[-1]['wall']:.3f}s, "
                    f"direct {direct_runs[-1][0]:.3f}s"
                )
    s_wall = [r["wall"] for r in supervised]
    d_wall = [w for w, _ in direct_runs]
    s_med, d_med = median(s_wall), median(d_wall)
    paired = [s / d for s, d in zip(s_wall, d_wall, strict=True)]

    def med(key: str) -> float:
        return round(median([r[key] for r in supervised]), 6)

    return {
        "n": n,
        "supervised_median_s": round(s_med, 6),
        "direct_median_s": round(d_med, 6),
        "ratio": round(s_med / d_med, 4),
        "paired_ratio_median": round(median(paired), 4),
        "supervised_p90_s": round(quantile(s_wall, 0.9), 6),
        "direct_p90_s": round(quantile(d_wall, 0.9), 6),
        "overhead_median_s": round(s_med - d_med, 6),
        # Per run, its wall time less its own worker's stage time: what supervision adds to
        # that very run, free of the direct runs' noise (their torch threads and this 2-core
        # machine's drift move `overhead_median_s` by several ms from one run to the next).
        "supervision_median_s": round(median([r["wall"] - r["compute"] for r in supervised]), 6),
        "supervised_breakdown_median_s": {
            "submit_call": med("submit_call"),
            "submit_to_started": med("dispatch"),
            "started_to_first_progress": med("to_first_progress"),
            "worker_stages": med("compute"),
            "save_end_to_succeeded_received": med("tail"),
        },
        "direct_stages_median_s": round(median([c for _, c in direct_runs]), 6),
        "excluded_first_s": {
            "supervised": round(first["wall"], 4),
            "direct": round(load_direct, 4),
        },
        "size": f"{WIDTH}x{HEIGHT}x{FRAMES}, {STEPS} steps",
        "loadavg_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "gap_s": gap,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="measured pairs (after the first)")
    parser.add_argument(
        "--gap",
        type=float,
        default=0.05,
        help="idle seconds before each measured run (0: back to back, as before 2026-11-30)",
    )
    args = parser.parse_args()
    figures = anyio.run(main, args.n, args.gap)
    emit(figures)
    sys.exit(0)
