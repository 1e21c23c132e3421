"""Uploaded images: the checks (by content, before decoding), the content-addressed store, the
fit rules; then the API on a real server: upload, an image job on the tiny image model, and
every refusal naming its field with nothing stored or queued."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from actors.worker.image_fit import fit_image, open_input
from supervisor.core.params import Fit
from supervisor.jobs.image_checks import ImageRejected, inspect_image
from supervisor.jobs.input_store import InputStore
from tests.image_files import bomb_png, plain_png, turned_jpeg
from tests.runtime_harness import make_home
from tests.server_process import (
    GENVISOR,
    ServerProcess,
    read_events_until,
    running_server,
    server_env,
)

MAX_PIXELS = 40_000_000


# -- the checks ----------------------------------------------------------------------------------


def test_png_jpeg_webp_are_taken_by_content() -> None:
    assert inspect_image(plain_png(), max_pixels=MAX_PIXELS).format == "png"
    webp = io.BytesIO()
    Image.new("RGBA", (16, 16), (0, 0, 255, 128)).save(webp, format="WEBP")
    facts = inspect_image(webp.getvalue(), max_pixels=MAX_PIXELS)
    assert (facts.format, facts.mode) == ("webp", "RGBA")


def test_exif_orientation_gives_the_upright_size() -> None:
    facts = inspect_image(turned_jpeg(), max_pixels=MAX_PIXELS)
    assert (facts.format, facts.width, facts.height) == ("jpeg", 20, 40)


def test_a_decompression_bomb_is_refused_on_its_header() -> None:
    bomb = bomb_png()
    assert len(bomb) < 200_000
    with pytest.raises(ImageRejected) as caught:
        inspect_image(bomb, max_pixels=MAX_PIXELS)
    assert caught.value.too_large
    assert "30000x30000" in caught.value.message


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"GIF89a" + b"\x00" * 64, "not a PNG, JPEG or WebP"),
        (b"just some text, named photo.png", "not a PNG, JPEG or WebP"),
        (b"", "empty"),
    ],
)
def test_other_content_is_refused_whatever_its_name(data: bytes, words: str) -> None:
    with pytest.raises(ImageRejected, match=words):
        inspect_image(data, max_pixels=MAX_PIXELS)


def test_a_truncated_jpeg_is_refused_before_it_is_stored() -> None:
    out = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    with pytest.raises(ImageRejected, match="damaged or cut short"):
        inspect_image(out.getvalue()[: len(out.getvalue()) // 2], max_pixels=MAX_PIXELS)


# -- the store -----------------------------------------------------------------------------------


def test_the_same_bytes_are_one_input(tmp_path: Path) -> None:
    store = InputStore(tmp_path / "inputs")
    data = plain_png()
    first = store.put(data, inspect_image(data, max_pixels=MAX_PIXELS))
    again = store.put(data, inspect_image(data, max_pixels=MAX_PIXELS))
    assert first.id == again.id
    assert first.id.startswith("sha256:")
    assert (first.created, again.created) == (True, False)
    assert store.path(first.id).read_bytes() == data
    assert store.get(first.id) == again
    assert store.get("sha256:../../etc/passwd") is None
    with pytest.raises(ValueError, match="not an input id"):
        store.path("../jobs.sqlite3")
    assert store.remove_unused({first.id}, older_than=1e12) == []
    assert store.remove_unused(set(), older_than=0) == []  # too recent to be anyone's leftover
    assert store.remove_unused(set(), older_than=1e12) == [first.id]
    assert store.get(first.id) is None


# -- fitting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fit", list(Fit))
def test_every_fit_gives_the_exact_size(fit: Fit) -> None:
    image = Image.new("RGB", (90, 30), (255, 0, 0))
    fitted = fit_image(image, 32, 32, fit)
    assert fitted.size == (32, 32)
    corner = fitted.getpixel((0, 0))
    # pad keeps the whole image (black bars above and below); crop and stretch fill the frame.
    assert corner == (0, 0, 0) if fit is Fit.PAD else corner != (0, 0, 0)


def test_a_stored_input_is_read_upright_and_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "turned"
    path.write_bytes(turned_jpeg())
    assert open_input(path).size == (20, 40)
    rgba = tmp_path / "alpha"
    Image.new("RGBA", (8, 8), (0, 0, 255, 0)).save(rgba, format="PNG")
    read = open_input(rgba)
    assert read.mode == "RGB"
    assert read.getpixel((0, 0)) == (0, 0, 0)


# -- the API on a real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    home = make_home(tmp_path_factory.mktemp("inputs"), tiny_model)
    cmd = [
        sys.executable,
        "-m",
        "actors.worker.tiny_rebuild",
        str(home / "models" / "tiny-wan-i2v"),
        "i2v",
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    cmd = [GENVISOR, "models", "make-tiny", "--variant", "a14b-i2v"]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True, env=server_env(home))
    with running_server(home, GENVISOR_MAX_INPUT_BYTES="200000") as srv:
        yield srv


def _upload(srv: ServerProcess, data: bytes, name: str = "frame.png") -> httpx.Response:
    return httpx.post(f"{srv.url}/v1/inputs", files={"file": (name, data)}, timeout=30)


def _job(srv: ServerProcess, **body: object) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/v1/jobs", json={"prompt": "a harbour", "steps": 2, **body}, timeout=30
    )


def _fields(response: httpx.Response) -> list[str]:
    return [e["field"] for e in response.json()["errors"]]


@pytest.mark.slow
def test_an_image_job_runs_from_an_uploaded_first_frame(server: ServerProcess) -> None:
    first = _upload(server, plain_png((64, 32)))
    assert first.status_code == 201, first.text
    again = _upload(server, plain_png((64, 32)), name="another-name.png")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    input_id = first.json()["id"]
    assert httpx.get(f"{server.url}/v1/inputs/{input_id}").json()["width"] == 64
    accepted = _job(server, model="tiny-wan-i2v", image=input_id, frames=5)
    assert accepted.status_code == 202, accepted.text
    # No size asked: the image's aspect (2:1) at the model's default area (32x32), in 16s.
    assert (accepted.json()["params"]["width"], accepted.json()["params"]["height"]) == (48, 16)
    job_id = accepted.json()["id"]
    done = read_events_until(
        f"{server.ws_url}/v1/events?since=0",
        lambda e: e["type"] in ("job.succeeded", "job.failed") and e["data"]["job_id"] == job_id,
        limit=120,
    )
    assert done["type"] == "job.succeeded", done
    started = read_events_until(
        f"{server.ws_url}/v1/events?since=0",
        lambda e: e["type"] == "job.started" and e["data"]["job_id"] == job_id,
        limit=30,
    )
    assert started["data"]["inputs"] == {"image": input_id, "last_image": None, "fit": "crop"}
    job = httpx.get(f"{server.url}/v1/jobs/{job_id}").json()
    assert job["inputs"] == {"image": input_id, "last_image": None, "fit": "crop"}
    video = httpx.get(f"{server.url}/v1/jobs/{job_id}/output")
    assert video.status_code == 200
    assert video.content[4:8] == b"ftyp"


@pytest.mark.slow
def test_refusals_name_the_field_and_nothing_is_stored_or_queued(server: ServerProcess) -> None:
    before_jobs = httpx.get(f"{server.url}/v1/jobs").json()["counts"]
    before_inputs = {p.name for p in (server.home / "inputs").iterdir()}
    bomb = _upload(server, bomb_png())
    assert bomb.status_code == 413
    assert _fields(bomb) == ["file"]
    wrong = _upload(server, b"%PDF-1.7 not an image", name="cat.png")
    assert wrong.status_code == 422
    assert _fields(wrong) == ["file"]
    huge = _upload(server, b"\x89PNG" + b"\x00" * 250_000)
    assert huge.status_code == 413, huge.text
    cut = _upload(server, turned_jpeg()[:-200])
    assert cut.status_code == 422
    assert "damaged" in cut.text
    stored = _upload(server, plain_png()).json()["id"]
    image_on_text = _job(server, model="tiny-wan", image=stored)
    assert image_on_text.status_code == 422
    assert _fields(image_on_text) == ["image"]
    assert "tiny-wan-i2v" in image_on_text.text  # the models that take an image are named
    text_on_image = _job(server, model="tiny-wan-i2v")
    assert text_on_image.status_code == 422
    assert _fields(text_on_image) == ["image"]
    last_on_i2v = _job(server, model="tiny-wan-i2v", image=stored, last_image=stored)
    assert last_on_i2v.status_code == 422
    assert _fields(last_on_i2v) == ["last_image"]
    assert "tiny-wan-a14b-i2v" in last_on_i2v.text
    unknown = _job(server, model="tiny-wan-i2v", image="sha256:" + "0" * 64)
    assert unknown.status_code == 422
    assert _fields(unknown) == ["image"]
    not_an_id = _job(server, model="tiny-wan-i2v", image="../jobs.sqlite3")
    assert not_an_id.status_code == 422
    assert httpx.get(f"{server.url}/v1/jobs").json()["counts"] == before_jobs
    after_inputs = {p.name for p in (server.home / "inputs").iterdir()}
    assert after_inputs - before_inputs <= {
        stored.removeprefix("sha256:"),
        f"{stored.removeprefix('sha256:')}.json",
    }


@pytest.mark.slow
def test_the_cli_uploads_first_and_last_frames_and_saves_the_video(
    server: ServerProcess, tmp_path: Path
) -> None:
    first, last = tmp_path / "first.png", tmp_path / "last.jpg"
    first.write_bytes(plain_png((32, 32), (250, 250, 0)))
    Image.new("RGB", (40, 40), (0, 90, 250)).save(last, format="JPEG")
    out = tmp_path / "clip.mp4"
    cmd = [
        GENVISOR, "generate", "a lighthouse", "--model", "tiny-wan-a14b-i2v", "--frames", "5",
        "--steps", "2", "--image", str(first), "--last-image", str(last), "--fit", "pad",
        "--url", server.url, "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[4:8] == b"ftyp"
    missing = subprocess.run(
        [GENVISOR, "generate", "x", "--model", "tiny-wan-i2v", "--image", str(tmp_path / "no.png"),
         "--url", server.url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "--image" in missing.stderr
    assert "Traceback" not in missing.stderr
