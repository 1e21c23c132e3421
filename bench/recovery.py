"""Out-of-memory recovery: its cost, the learned rung's cost, and the memory estimate's error.

    .venv/bin/python bench/recovery.py [--rounds 1]

Everything runs under ``device_memory_limit = "2GiB"`` (``RLIMIT_AS`` on the CPU worker), with
tiny-wan at 480x832x17, 2 steps. Each round starts runtimes at once, each over a fresh data
directory with its own worker process:

- *recovering*: plain jobs; the first one runs out of memory and recovers (or pre-flight
  starts it at a rung), the second identical one starts at the learned rung;
- *direct*: the same jobs submitted with VAE tiling and slicing already on (the working rung),
  so no recovery and nothing learned interferes.

The four jobs alternate (recovering 1, direct 1, recovering 2, direct 2; a second round runs
the direct runtime first) and each is timed from `Runtime.submit` to the arrival of its
``job.succeeded`` event. ``first_ratio`` = recovering 1 / direct 1 (both include the pipeline
load of a fresh worker); ``second_ratio`` = recovering 2 / direct 2 (both on a loaded pipeline).

Memory: before each job the worker's peak RSS is reset (``/proc/PID/clear_refs``, so its
``ru_maxrss`` — the job result's ``peak_memory_bytes`` — and VmHWM become per-job figures) and
its RSS is read; a job's measured peak is ``VmHWM after - RSS before``. A worker that has run
jobs keeps freed heap which the next job reuses without new RSS, so the figure for (c) comes
from a third, *probe* runtime: its pipeline is loaded by a 32x32 job, then it runs a 240x416x17
job (the calibration sample) and the second request's own params and options (the target),
never an out-of-memory attempt. ``estimate_error_pct`` = (estimate_peak for those params and
options - measured) / measured. Address space (what the cap limits) is sampled every 5 ms
beside it. Calibration: `supervisor.recovery.calibration.fit_scales` on the one sample, then
the target is estimated again with the fitted scales (the target is not part of the fit).

Prints progress on stderr and one JSON object on its last stdout line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from _harness import (
    MODEL,
    AddressSpaceSampler,
    EventLog,
    build_tiny_model,
    emit,
    make_home,
    median,
    proc_status,
    progress,
    reset_peak_rss,
    running_runtime,
    worker_pid,
)

from supervisor.core.params import GenerationParams, PipelineOptions
from supervisor.jobs import Job, new_job_id
from supervisor.recovery.calibration import PeakSample, fit_scales
from supervisor.recovery.preflight import (
    Estimate,
    MemoryProfile,
    estimate_peak,
    load_memory_profiles,
    with_scales,
)
from supervisor.recovery.weights_header import ModelWeights, summarize_weights
from supervisor.runtime import Runtime

CAP = "2GiB"
WIDTH, HEIGHT, FRAMES, STEPS = 832, 480, 17, 2
WORKING_RUNG = PipelineOptions(device="cpu", vae_tiling=True, vae_slicing=True)
MiB = 1024**2


def _params(seed: int, *, width: int = WIDTH, height: int = HEIGHT) -> GenerationParams:
    return GenerationParams(
        prompt="a harbour at night",
        width=width,
        height=height,
        num_frames=FRAMES,
        steps=STEPS,
        seed=seed,
    )


def _job(params: GenerationParams, options: PipelineOptions | None = None) -> Job:
    return Job(id=new_job_id(), model=MODEL, params=params, options=options or PipelineOptions())


async def _run(runtime: Runtime, log: EventLog, job: Job, label: str) -> dict[str, Any]:
    pid = worker_pid(runtime)
    reset = reset_peak_rss(pid)
    before = proc_status(pid)
    with AddressSpaceSampler(pid) as sampler:
        started = time.perf_counter()
        await runtime.submit(job)
        end = await log.wait_job(job.id, "job.succeeded", "job.failed", limit=170)
    if end.event.type.value != "job.succeeded":
        raise RuntimeError(f"{label} failed: {end.event.to_json()[:600]}")
    # A memory recovery on a CPU re-runs in a fresh worker: its figures are the new process's.
    restarted = worker_pid(runtime) != pid
    if restarted:
        pid = worker_pid(runtime)
        before = proc_status(pid)
        reset = False
    after = proc_status(pid)
    stored = await runtime.store.get(job.id)
    assert stored is not None
    assert stored.result is not None
    wall = end.perf - started
    retries = log.of_job(job.id, "job.retrying")
    denoise_steps = [
        r
        for r in log.of_job(job.id, "job.progress")
        if r.event.data.stage.value == "denoise" and r.event.data.step  # type: ignore[attr-defined]
    ]
    result = stored.result
    progress(
        f"{label}: {wall:.1f}s, retries {len(retries)}, "
        f"changes {[(c.rung, c.origin.value) for c in stored.changes]}, "
        f"peak RSS +{(after['VmHWM'] - before['VmRSS']) / MiB:.0f} MiB"
    )
    return {
        "wall_s": wall,
        # Up to the first failure's job.retrying event: the attempt that ran out of memory.
        "until_retry_s": retries[0].perf - started if retries else None,
        "retries": [r.event.data.error_code for r in retries],  # type: ignore[attr-defined]
        "changes": [(c.rung, c.origin.value, c.decode_only) for c in stored.changes],
        "denoise_steps_run": len(denoise_steps),
        "timings": result["timings"],
        "params_used": GenerationParams.model_validate(result["params_used"]),
        "options_used": PipelineOptions.model_validate(result["options_used"]),
        "peak_reset": reset,
        "worker_restarted": restarted,
        "rss_before": before["VmRSS"],
        "peak_rss": after["VmHWM"],
        "result_peak": int(result["peak_memory_bytes"]),
        "vmsize_before": before["VmSize"],
        "vmsize_peak_sampled": sampler.peak,
        "vmsize_samples": sampler.samples,
    }


def _measured(run: dict[str, Any]) -> int:
    return int(run["peak_rss"] - run["rss_before"])


def _estimate(profile: MemoryProfile, weights: ModelWeights, run: dict[str, Any]) -> Estimate:
    return estimate_peak(profile, weights, run["options_used"], run["params_used"])


def _pct(estimate: int, measured: int) -> float:
    return round(100.0 * (estimate - measured) / measured, 1)


async def _round(root: Path, model: Path, index: int) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    async with AsyncExitStack() as stack:
        progress(f"round {index}: starting three runtimes (fresh data dirs, cap {CAP})")

        async def start(name: str) -> tuple[Runtime, EventLog]:
            home = make_home(root, f"{name}-{index}", model)
            return await stack.enter_async_context(running_runtime(home, device_memory_limit=CAP))

        rec, direct, probe = await start("recovering"), await start("direct"), await start("probe")
        order = [("recovering", rec, None), ("direct", direct, WORKING_RUNG)]
        if index % 2 == 0:
            order.reverse()
        for attempt in (1, 2):
            for name, (runtime, log), options in order:
                job = _job(_params(index), options)
                label = f"round {index} {name} {attempt}"
                runs[f"{name}_{attempt}"] = await _run(runtime, log, job, label)
        runs["recovering_2"]["learned"] = [s.rung.value for s in rec[0].strategies.all()]
        # The probe: a fresh worker whose pipeline is loaded by a tiny job, then one job at a
        # smaller size (the calibration sample), then the second request's own parameters and
        # options, each with its peak reset first; no out-of-memory attempt came before them.
        used = runs["recovering_2"]
        options = used["options_used"]
        tiny = _params(index, width=32, height=32).model_copy(update={"num_frames": 5})
        await _run(*probe, _job(tiny, options), f"round {index} probe pipeline load")
        small = _params(index, width=416, height=240)
        runs["probe_sample"] = await _run(
            *probe, _job(small, options), f"round {index} probe calibration sample"
        )
        runs["probe_target"] = await _run(
            *probe,
            _job(used["params_used"], options),
            f"round {index} probe at the second request's parameters",
        )
    return runs


async def main(rounds: int) -> dict[str, Any]:
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="genvisor-recovery-") as tmp:
        root = Path(tmp)
        progress("building tiny-wan")
        model = build_tiny_model(root / "build")
        weights = summarize_weights(model)
        all_runs = [await _round(root, model, i) for i in range(1, rounds + 1)]
    profile = with_scales(load_memory_profiles()[MODEL], 1.0, 1.0)

    def med(key: str) -> float:
        return median([r[key]["wall_s"] for r in all_runs])

    first_rec, first_dir = med("recovering_1"), med("direct_1")
    second_rec, second_dir = med("recovering_2"), med("direct_2")

    # (c) on the last round: the estimate for the second request's parameters and options, and
    # the peak of the same job in the probe's clean worker.
    last = all_runs[-1]
    second, target, sample = last["recovering_2"], last["probe_target"], last["probe_sample"]
    estimate = _estimate(profile, weights, target)
    measured = _measured(target)
    calibration = fit_scales(
        [PeakSample.from_estimate(_estimate(profile, weights, sample), _measured(sample))]
    )
    calibrated = _estimate(calibration.apply(profile), weights, target)
    first = last["recovering_1"]
    requested = _params(len(all_runs))
    return {
        "first_ratio": round(first_rec / first_dir, 4),
        "second_ratio": round(second_rec / second_dir, 4),
        "estimate_error_pct": _pct(estimate.peak, measured),
        "rounds": rounds,
        "first_recovering_s": round(first_rec, 3),
        "first_direct_s": round(first_dir, 3),
        "second_recovering_s": round(second_rec, 3),
        "second_direct_s": round(second_dir, 3),
        "second_vs_first_direct_ratio": round(second_rec / first_dir, 4),
        # Which rungs each round's first request went through (they differ from run to run).
        "first_request_rungs_per_round": [
            [c[0] for c in r["recovering_1"]["changes"]] for r in all_runs
        ],
        "runs_s": [{k: round(v["wall_s"], 3) for k, v in sorted(r.items())} for r in all_runs],
        "runs_stage_s": [
            {k: {s: round(t, 2) for s, t in v["timings"].items()} for k, v in sorted(r.items())}
            for r in all_runs
        ],
        "first_request": {
            "retries": first["retries"],
            "until_retry_s": first["until_retry_s"] and round(first["until_retry_s"], 3),
            "changes": first["changes"],
            "denoise_steps_run": first["denoise_steps_run"],
            "output_changed": first["params_used"] != requested,
        },
        "second_request": {
            "retries": second["retries"],
            "changes": second["changes"],
            "learned": second["learned"],
            "output_changed": second["params_used"] != requested,
        },
        "estimate": {
            "job": "the second request's params and options, run again in a clean worker",
            "params_used": second["params_used"].model_dump(mode="json", exclude={"prompt"}),
            "options_used": second["options_used"].model_dump(mode="json"),
            "estimate_bytes": estimate.peak,
            "estimate_terms": estimate.as_dict(),
            "measured_bytes": measured,
            "measured_how": (
                "probe worker (pipeline loaded by a 32x32 job, no OOM before): VmHWM after the "
                "job - VmRSS before it, peak reset just before (clear_refs)"
            ),
            "peak_reset": target["peak_reset"],
            # Valid only if neither probe job hit the cap (a recovery changes what ran).
            "probe_valid": not (target["retries"] or sample["retries"]),
            "result_peak_memory_bytes_minus_rss_before": target["result_peak"]
            - target["rss_before"],
            "address_space_growth_sampled_bytes": target["vmsize_peak_sampled"]
            - target["vmsize_before"],
            "estimate_vs_address_space_pct": _pct(
                estimate.peak, target["vmsize_peak_sampled"] - target["vmsize_before"]
            ),
            # The same figure on the recovering runtime's own second job: its worker keeps heap
            # from the earlier attempts, which the job reuses without new RSS (an undercount).
            "second_request_own_measured_bytes": _measured(second),
            "second_request_own_error_pct": _pct(
                _estimate(profile, weights, second).peak, _measured(second)
            ),
        },
        "calibration": {
            "fitted_on": "one sample: the probe's 240x416x17 job, same options as the target",
            "sample_error_pct_before": _pct(
                _estimate(profile, weights, sample).peak, _measured(sample)
            ),
            "denoise_scale": round(calibration.denoise_scale, 4),
            "decode_scale": round(calibration.decode_scale, 4),
            "calibrated_estimate_bytes": calibrated.peak,
            "calibrated_error_pct": _pct(calibrated.peak, measured),
        },
        "cap": CAP,
        "size": f"{HEIGHT}x{WIDTH}x{FRAMES}, {STEPS} steps",
        "loadavg_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds of four jobs (~2 min each)")
    args = parser.parse_args()
    figures = anyio.run(main, args.rounds)
    emit(figures)
    sys.exit(0)
