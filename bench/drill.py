"""Fault drill: every recovery path genvisor claims, proved against running servers.

    .venv/bin/python bench/drill.py        (or `make drill`)

Starts `genvisor serve` processes on free loopback ports, each over a fresh data directory (a
main one, two for genvisor's own foundations (second servers, damaged stores, kill -9 and event
numbers, hostile Origins and text), one under a 2 GiB memory cap, one with a cap too small to
load, one pointed at a loopback Hugging Face Hub), injects each fault from outside (signals,
files, mounts, hostile clients) while jobs flow, and checks what genvisor did. Prints a table
(fault, expected, observed, recovery time, jobs lost) and ends with one line:

    drill: N faults, N survived, 0 jobs lost, 0 events lost unannounced

Exit status 1 when anything falls short. Needs root (chattr, mount) for the output-folder
faults. Progress goes to stderr.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from drill_env import GENVISOR, Server, say  # noqa: E402
from drill_foundation_faults import run_foundation_faults  # noqa: E402
from drill_image_faults import hostile_uploads, image_job_oom  # noqa: E402
from drill_io_faults import (  # noqa: E402
    hostile_requests,
    output_full,
    output_read_only,
    stalled_websocket,
)
from drill_memory_faults import oom_at_decode, oom_at_denoise, oom_at_load  # noqa: E402
from drill_model_faults import REPO_ID, file_faults, hub_down, hub_flaky_pull, models_toml  # noqa: E402
from drill_process_faults import server_kill, worker_hang, worker_kills  # noqa: E402
from drill_report import FaultResult, print_table, run_fault, summary_line  # noqa: E402

from tests.hub_server import HubRepo, HubServer  # noqa: E402
from tests.registry_entries import local_tiny_entry  # noqa: E402

# The worker starts in ~0.9 GiB of address space; loading the heavy model (~490 MB of float32
# weights) needs ~1.1 GiB more (measured), tiny-wan almost nothing.
LOAD_CAP = "1536MiB"
HEAVY_MODEL = "tiny-wan-heavy"
HEAVY_WEIGHTS_MB = "490"


def _home(root: Path, name: str, tiny: Path) -> Path:
    home = root / name
    shutil.copytree(tiny, home / "models" / "tiny-wan")
    return home


def _main_server(root: Path, tiny: Path, name: str = "main") -> Server:
    return Server(name, _home(root, name, tiny), {
        "GENVISOR_RESTART_BACKOFF_BASE": "0.05",
        "GENVISOR_STALL_TIMEOUT": "2",
        "GENVISOR_HEARTBEAT_INTERVAL": "0.25",
        # Tiny jobs: one thread is faster than two fighting over two cores.
        "OMP_NUM_THREADS": "1",
    })  # fmt: skip


def _stop(servers: list[Server]) -> None:
    for srv in servers:
        srv.close()


def run(root: Path) -> list[FaultResult]:
    results: list[FaultResult] = []
    tiny = root / "tiny-wan"
    subprocess.run([GENVISOR, "models", "make-tiny", "--out", str(tiny), "--json"], check=True,
                   capture_output=True)  # fmt: skip
    servers: list[Server] = []
    try:
        main = _main_server(root, tiny)
        servers.append(main)
        main.start()
        main.wait_serving()
        for fault, expected, body in (
            ("worker SIGKILL mid-denoise x3, then 4th", "restart x3, 4th: halted; reset; serving",
             worker_kills),
            ("worker hang (SIGSTOP)", "WORKER.HUNG, restart, job retried", worker_hang),
            ("outputs folder read-only (chattr +i)", "FS.* error, no partial files, next ok",
             output_read_only),
            ("outputs folder full (tmpfs)", "FS.* error, no partial files, next ok", output_full),
            ("200 malformed/hostile requests", "no 5xx, nothing queued", hostile_requests),
            ("WS client stops reading, 10k events", "reader gapless; bus.lagged + replay",
             stalled_websocket),
            ("server SIGKILL, jobs queued+running", "restart: all jobs complete once",
             server_kill),
        ):  # fmt: skip
            results.append(run_fault(FaultResult(fault, expected), lambda r, b=body: b(main, r)))
        main.close()

        # Issue 13's foundations, on servers of their own over fresh data folders.
        results += run_foundation_faults(lambda name: _main_server(root, tiny, name), servers)

        memory_home = _home(root, "memory", tiny)
        subprocess.run([sys.executable, "-m", "actors.worker.tiny_rebuild",
                        str(memory_home / "models" / "tiny-wan-i2v"), "i2v"],
                       check=True, capture_output=True)  # fmt: skip
        memory = Server("memory", memory_home,
                        {"GENVISOR_DEVICE_MEMORY_LIMIT": "2GiB"})  # fmt: skip
        servers.append(memory)
        memory.start()
        memory.wait_serving()
        results.append(run_fault(
            FaultResult("OOM at decode (2 GiB cap, 832x480x17)", "recovers (VAE tiling)"),
            lambda r: oom_at_decode(memory, r)))  # fmt: skip
        results.append(run_fault(
            FaultResult("OOM at denoise (2 GiB cap, 1280x1280x33)",
                        "ladder recovers, or clear VRAM.EXHAUSTED"),
            lambda r: oom_at_denoise(memory, r)))  # fmt: skip
        results.append(run_fault(
            FaultResult("image job, OOM under 2 GiB (uploaded first frame, 832x480x17)",
                        "recovers by the ladder, same input, MP4"),
            lambda r: image_job_oom(memory, r)))  # fmt: skip
        results.append(run_fault(
            FaultResult("hostile uploads (bomb, PDF as .png, 21 MiB, truncated, no file)",
                        "413/422 naming file; nothing stored or queued"),
            lambda r: hostile_uploads(memory, r, memory_home)))  # fmt: skip
        memory.close()

        load_home = _home(root, "load", tiny)
        subprocess.run([GENVISOR, "models", "make-tiny", "--out",
                        str(load_home / "models" / HEAVY_MODEL), "--weights-mb", HEAVY_WEIGHTS_MB],
                       check=True, capture_output=True)  # fmt: skip
        heavy_file = root / "heavy-models.toml"
        heavy_file.write_text(local_tiny_entry(
            HEAVY_MODEL, "tiny-wan widened to ~490 MB of weights: loading it needs ~1 GB",
            weights_bytes=490_000_000))  # fmt: skip
        load = Server("load", load_home, {"GENVISOR_DEVICE_MEMORY_LIMIT": LOAD_CAP,
                                          "GENVISOR_MODELS_FILE": str(heavy_file)})  # fmt: skip
        servers.append(load)
        load.start()
        results.append(run_fault(
            FaultResult(f"OOM at load ({LOAD_CAP} cap, {HEAVY_WEIGHTS_MB} MB weights)",
                        "VRAM.EXHAUSTED at load, numbers; model degraded; small ok"),
            lambda r: oom_at_load(load, r, HEAVY_MODEL)))  # fmt: skip
        load.close()

        models_file = root / "models.toml"
        models_file.write_text(models_toml())
        with HubServer(HubRepo(REPO_ID, tiny)) as hub:
            hubbed = Server("hub", _home(root, "hub", tiny), {
                "GENVISOR_MODELS_FILE": str(models_file),
                "GENVISOR_HF_ENDPOINT": hub.endpoint,
                "GENVISOR_HF_CACHE_DIR": str(root / "hub" / "hf_cache"),
                "GENVISOR_DOWNLOAD_BACKOFF_BASE": "0.05",
                "OMP_NUM_THREADS": "1",
            })  # fmt: skip
            servers.append(hubbed)
            hubbed.start()
            hubbed.wait_serving()
            results.append(run_fault(
                FaultResult("Hub down (503 always), offline mode", "clear one-line errors"),
                lambda r: hub_down(hubbed, hub, r)))  # fmt: skip
            results.append(run_fault(
                FaultResult("Hub 503 x3 + dropped connection in pull", "retried, resumed, ok"),
                lambda r: hub_flaky_pull(hubbed, hub, r)))  # fmt: skip
            results.append(run_fault(
                FaultResult("model file truncated / bit-flipped / deleted",
                            "repaired from the Hub, job succeeds"),
                lambda r: file_faults(hubbed, hub, r)))  # fmt: skip
            hubbed.close()
    finally:
        _stop(servers)
    for srv in servers:
        events = srv.feed.unannounced if srv.feed is not None else []
        if events and results:
            results[-1].events_unannounced += sum(b - a + 1 for a, b in events)
            results[-1].notes.append(f"{srv.name}: unannounced gaps {events[:5]}")
    return results


def main() -> int:
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="genvisor-drill-") as tmp:
        results = run(Path(tmp))
    print_table(results)
    line, ok = summary_line(results)
    print(f"(drill took {time.monotonic() - began:.0f}s)")
    print(line, flush=True)
    say(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
