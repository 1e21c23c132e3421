"""Image jobs (issue 15): an uploaded first frame through a real out-of-memory and its recovery,
and hostile uploads that must leave nothing behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drill_env import SMALL, Server
from drill_report import FaultResult

from tests.image_files import bomb_png, noise_png

__all__ = ["hostile_uploads", "image_job_oom"]

# As drill_memory_faults.DECODE: 832x480x17 does not fit under a 2 GiB cap as asked.
IMAGE_JOB = {**SMALL, "model": "tiny-wan-i2v", "width": 832, "height": 480, "frames": 17}


def _upload(srv: Server, data: bytes, name: str = "frame.png") -> Any:
    return srv.http.post("/v1/inputs", files={"file": (name, data)})


def image_job_oom(srv: Server, result: FaultResult) -> None:
    """Upload a first frame, run an image job that runs out of memory under the cap: it must
    recover (a ladder rung), produce its MP4, and keep naming the same input."""
    srv.wait_serving()
    uploaded = _upload(srv, noise_png(416, 240))
    if uploaded.status_code not in (200, 201):
        result.fail(f"upload answered {uploaded.status_code}: {uploaded.text[:200]}")
        return
    input_id = uploaded.json()["id"]
    feed = srv.events()
    job = srv.submit({**IMAGE_JOB, "image": input_id})
    result.jobs_accepted += 1
    done = srv.wait_job(job, limit=240)
    retries = [e["data"] for e in feed.of_job(job, "job.retrying")]
    view = srv.job(job)
    changes = [c.get("rung") for c in view.get("changes") or []]
    video = srv.http.get(f"/v1/jobs/{job}/output")
    result.observed = (
        f"{done['type']}; retries {[r['error_code'] for r in retries]}; changes {changes}; "
        f"inputs {view.get('inputs')}; MP4 {video.status_code} {len(video.content)} B"
    )
    result.jobs_lost += len(srv.lost_jobs([job], limit=5))
    if done["type"] != "job.succeeded":
        result.fail("the image job did not recover")
    elif not retries:
        result.fail("no out-of-memory happened: the fault was not reproduced")
    if (view.get("inputs") or {}).get("image") != input_id:
        result.fail("the job no longer names its input")
    if video.status_code != 200 or video.content[4:8] != b"ftyp":
        result.fail("no MP4")
    result.survived = not result.notes


def hostile_uploads(srv: Server, result: FaultResult, home: Path) -> None:
    """A decompression bomb, a PDF named .png, a body past the limit, a truncated image, a
    multipart without `file`, an image on a text model: no 5xx, nothing stored, nothing queued."""
    srv.wait_serving()
    before_jobs = srv.http.get("/v1/jobs").json()["counts"]
    inputs = home / "inputs"
    before = set(inputs.iterdir()) if inputs.exists() else set()
    answers = {
        "bomb": _upload(srv, bomb_png()).status_code,
        "pdf": _upload(srv, b"%PDF-1.7\n" + b"0" * 2000, name="cat.png").status_code,
        "huge": _upload(srv, b"\x89PNG\r\n\x1a\n" + b"\x00" * (21 * 1024 * 1024)).status_code,
        "truncated": _upload(srv, noise_png(64, 64)[:300]).status_code,
        "no file": srv.http.post("/v1/inputs", files={"other": ("a", b"x")}).status_code,
        "not multipart": srv.http.post("/v1/inputs", content=b"raw").status_code,
        "image on text model": srv.http.post(
            "/v1/jobs", json={**SMALL, "image": "sha256:" + "a" * 64}
        ).status_code,
    }
    after = set(inputs.iterdir()) if inputs.exists() else set()
    after_jobs = srv.http.get("/v1/jobs").json()["counts"]
    result.observed = ", ".join(f"{k}: {v}" for k, v in answers.items())
    if any(code >= 500 for code in answers.values()):
        result.fail("a 5xx")
    if any(code < 400 for code in answers.values()):
        result.fail("a hostile upload was accepted")
    if after != before:
        result.fail(f"files stored: {sorted(p.name for p in after - before)}")
    if after_jobs != before_jobs:
        result.fail("a job was queued")
    result.survived = not result.notes
