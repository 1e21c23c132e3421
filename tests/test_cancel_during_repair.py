"""A cancel never waits behind a repair: a job whose model is being re-downloaded from a slow Hub
(the loopback Hub holds the damaged file's bytes back for DELAY_S) is cancelled at once: the
cancel answers and the job ends `cancelled` long before the download could have finished.

Real parts throughout: the runtime, its worker process, the model loader, huggingface_hub over a
socket to tests/hub_server.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hub_server import Fault, FaultKind, HubServer
from models_fixtures import MODEL, hub, hub_session, tiny_dir

from actors.model_loader import ModelLoader, Operation, PullModel, ResolvedModel, ResolveModel
from supervisor.core.params import GenerationParams
from supervisor.jobs import Job, JobStatus, new_job_id
from supervisor.supervision.messages import CancelRequest
from tests.runtime_harness import running_runtime

__all__ = ["hub", "hub_session", "tiny_dir"]

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TEXT = "text_encoder/model.safetensors"
# The Hub holds the repaired file back this long; huggingface_hub gives up on a silent read after
# 10 s and resumes (answered at once), so the repair ends about 10 s after it began.
DELAY_S = 15.0
CANCELLED_WITHIN_S = 5.0


async def test_cancel_of_a_job_waiting_on_a_slow_repair_ends_it_at_once(
    hub: HubServer, tmp_path: Path
) -> None:
    async with running_runtime(
        tmp_path / "home",
        hf_endpoint=hub.endpoint,
        hf_cache_dir=tmp_path / "hf",
        download_backoff_base=0.01,
        allow_fallback_models=False,
    ) as (runtime, log):
        await runtime.supervisor.wait_settled()
        loader = runtime.supervisor.child("model_loader")
        assert isinstance(loader, ModelLoader)
        pulled = await (await loader.ask(PullModel(MODEL), Operation, timeout=60)).result()
        assert pulled.ok, pulled.message
        path = (await loader.ask(ResolveModel(MODEL), ResolvedModel)).path
        text = (path / TEXT).resolve()
        os.truncate(text, text.stat().st_size - 100)  # damaged: the next resolve repairs it
        hub.add_fault(Fault(FaultKind.SLOW, path=TEXT, method="GET", times=1, delay_s=DELAY_S))

        params = GenerationParams(prompt="a kite", width=32, height=32, num_frames=5, steps=2)
        job = await runtime.submit(Job(id=new_job_id(), model=MODEL, params=params))
        await log.wait_for(
            lambda: any(
                e.data.availability.value == "repairing"  # type: ignore[attr-defined]
                for e in log.of_type("model.status")
            ),
            "the repair to start",
            limit=60,
        )
        await log.wait_for(lambda: bool(hub.gets(TEXT)), "the slow GET", limit=30)
        asked = time.monotonic()
        await runtime.supervisor.ask(CancelRequest(job.id), object, timeout=10.0)
        answered = time.monotonic() - asked
        # A guard well inside the hold: the download is still held back when the job ends.
        await log.wait_job(job.id, "job.cancelled", limit=CANCELLED_WITHIN_S)
        ended = time.monotonic() - asked
        stored = await runtime.store.get(job.id)
        assert stored is not None
        assert stored.status is JobStatus.CANCELLED
        assert not log.of_type("job.failed")
        # Figures, not thresholds (run with -s).
        print(f"cancel answered in {answered * 1000:.1f} ms, job cancelled after {ended:.2f} s")  # noqa: T201
