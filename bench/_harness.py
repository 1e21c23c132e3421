"""Shared pieces of the benchmarks that run a genvisor runtime in this process.

- `build_tiny_model`: the real tiny-wan pipeline, built in a subprocess so that the bench's own
  process (the control process) only imports torch when a bench needs it there.
- `running_runtime` / `EventLog`: an in-process `Runtime` over a fresh data directory, with its
  real worker process, and a bus subscriber that stamps each event when it arrives, so a bench
  waits on events (no polling) and times from `submit` to the event's receipt.
- `/proc` helpers for the worker's memory: current and peak RSS, resetting the peak
  (``/proc/PID/clear_refs``), and a sampler of address space (what ``RLIMIT_AS`` limits).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from supervisor.bus import Event, EventBus  # noqa: E402
from supervisor.core.settings import load_settings  # noqa: E402
from supervisor.runtime import Runtime  # noqa: E402

MODEL = "tiny-wan"
_STARTED = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def emit(figures: dict[str, Any]) -> None:
    """The bench's result: one JSON object on the last stdout line."""
    print(json.dumps(figures, sort_keys=True), flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (p90 of 15 values is the 14th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def build_tiny_model(root: Path) -> Path:
    out = root / MODEL
    code = (
        "import sys; from pathlib import Path; "
        "from actors.worker.tiny_wan import build_tiny_wan; "
        "print(build_tiny_wan(Path(sys.argv[1])).path)"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return out


def make_home(root: Path, name: str, model: Path) -> Path:
    home = root / name
    shutil.copytree(model, home / "models" / MODEL)
    return home


@dataclass(frozen=True, slots=True)
class Received:
    event: Event
    # When this bench's subscriber got it: perf_counter (for durations) and wall clock (to
    # compare with the `ts` the bus stamps at publication).
    perf: float
    wall: float


class EventLog:
    """Every event of a bus in arrival order, with waits on conditions (no polling)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._changed = anyio.Event()

    async def follow(self, bus: EventBus, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with bus.subscribe(since=0, buffer=100_000) as sub:
            task_status.started()
            async for event in sub:
                self.received.append(Received(event, time.perf_counter(), time.time()))
                self._changed.set()
                self._changed = anyio.Event()

    def of_job(self, job_id: str, *types: str) -> list[Received]:
        return [
            r
            for r in self.received
            if getattr(r.event.data, "job_id", None) == job_id
            and (not types or r.event.type.value in types)
        ]

    async def wait_for(self, condition: Callable[[], bool], what: str, limit: float) -> None:
        try:
            with anyio.fail_after(limit):
                while not condition():
                    await self._changed.wait()
        except TimeoutError:
            tail = [r.event.to_json()[:200] for r in self.received[-10:]]
            raise RuntimeError(f"timed out waiting for {what}; last events: {tail}") from None

    async def wait_job(self, job_id: str, *types: str, limit: float = 300.0) -> Received:
        await self.wait_for(lambda: bool(self.of_job(job_id, *types)), f"{types} {job_id}", limit)
        return self.of_job(job_id, *types)[0]


@asynccontextmanager
async def running_runtime(home: Path, **overrides: Any) -> AsyncIterator[tuple[Runtime, EventLog]]:
    """A runtime over `home` with its worker started and the supervisor settled."""
    runtime = Runtime(load_settings(overrides={"home": home, **overrides}))
    log = EventLog()
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        await tg.start(log.follow, runtime.bus)
        try:
            with anyio.fail_after(240):
                await runtime.supervisor.wait_settled()
            yield runtime, log
        finally:
            runtime.shutdown()
            with anyio.CancelScope(shield=True):
                await runtime.supervisor.finished()
            tg.cancel_scope.cancel()


def worker_pid(runtime: Runtime) -> int:
    ready = runtime.worker_ready
    if ready is None:
        raise RuntimeError("the worker has not reported ready")
    return ready.pid


# -- the worker's memory, from /proc ------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """The Vm* lines of /proc/PID/status, in bytes (VmRSS, VmHWM, VmSize, VmPeak, ...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Vm") and line.rstrip().endswith("kB"):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM, and ru_maxrss with it) to its current RSS.

    Linux >= 4.0, ``echo 5 > /proc/PID/clear_refs``; False where that is not permitted.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class AddressSpaceSampler:
    """Samples a process's VmSize every `interval` seconds in a thread; keeps the largest.

    A sampled maximum is a lower bound of the true peak (a spike between samples is missed).
    """

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vmsize-sampler", daemon=True)

    def _run(self) -> None:
        path = f"/proc/{self.pid}/status"
        while not self._stop.is_set():
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("VmSize:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
                            self.samples += 1
                            break
            except OSError:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> AddressSpaceSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
