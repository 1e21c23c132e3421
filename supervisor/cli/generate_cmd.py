"""`genvisor generate PROMPT`: submit a job to the running server, follow it, save the MP4.

Progress comes from the server's event stream (WebSocket), read from the bus seq current just
before the submission, so no event of the job can be missed; a dropped stream is resumed from
the last seq seen. The outcome is the job's terminal event: succeeded (the video is downloaded),
failed (its user-facing message is printed, exit 1) or cancelled (exit 1).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from supervisor.cli.api_error_output import print_api_error, print_user_error
from supervisor.cli.argument_types import HelpWithDefaults
from supervisor.cli.event_stream import EventFollower
from supervisor.cli.server_client import (
    add_url_argument,
    request_json,
    server_url,
    token_headers,
)
from supervisor.core.exceptions import ServerUnavailable

__all__ = ["register", "run"]

TERMINAL = frozenset({"job.succeeded", "job.failed", "job.cancelled"})


# Options whose default is the model's own (its registry entry's `defaults`).
_MODEL_DEFAULTS = {
    "width": "width",
    "height": "height",
    "frames": "num_frames",
    "steps": "steps",
    "guidance": "guidance_scale",
    "fps": "fps",
}


def _model_defaults() -> tuple[str, dict[str, object]] | None:
    """The default model of the local settings and its defaults (read only for `--help`)."""
    try:
        from actors.models.registry import load_registry
        from supervisor.core.settings import CONFIG_DIR, load_settings

        settings = load_settings()
        entry = load_registry(CONFIG_DIR, [settings.models_file]).get(settings.default_model)
    except Exception:  # noqa: BLE001 - help still prints, without the figures
        return None
    return entry.name, entry.defaults.model_dump()


class _GenerateHelp(HelpWithDefaults):
    """The size, frames, steps, ... options default to the model's own values: `--help` says
    so, with the default model's figures (the registry is read only when help is shown)."""

    _known: tuple[str, dict[str, object]] | None = None

    def _get_help_string(self, action: argparse.Action) -> str | None:
        key = _MODEL_DEFAULTS.get(action.dest)
        if key is None:
            return super()._get_help_string(action)
        if _GenerateHelp._known is None:
            _GenerateHelp._known = _model_defaults() or ("", {})
        model, defaults = _GenerateHelp._known
        value = defaults.get(key)
        figure = f"; {value} for {model}" if model and value is not None else ""
        return f"{action.help} (default: the model's own{figure})"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "generate",
        help="generate a video on the running server and save it",
        formatter_class=_GenerateHelp,
    )
    p.add_argument("prompt", help="what the video shows")
    p.add_argument("--model", help="model name (default: the server's default model)")
    p.add_argument("--width", type=int, help="width in pixels (a multiple of 16)")
    p.add_argument("--height", type=int, help="height in pixels (a multiple of 16)")
    p.add_argument("--frames", type=int, help="number of frames (4k+1: 5, 9, ..., 17, 81)")
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--seed", type=int, help="random seed (default: a random one)")
    p.add_argument("--negative", help="negative prompt: what the video should not show")
    p.add_argument("--guidance", type=float, help="guidance scale")
    p.add_argument("--fps", type=int, help="frames per second of the MP4")
    p.add_argument(
        "--no-output-changes",
        action="store_true",
        help="fail rather than let recovery change the output (size, frames, steps)",
    )
    p.add_argument(
        "--image",
        type=Path,
        help="the first frame (PNG, JPEG or WebP): uploaded, then the job starts from it "
        "(image-to-video models; `genvisor models list` shows each model's modes)",
    )
    p.add_argument(
        "--last-image", type=Path, help="the last frame, with --image (first-last-frame models)"
    )
    p.add_argument(
        "--fit",
        choices=["crop", "pad", "stretch"],
        help="how the images meet the size: crop (default), pad or stretch",
    )
    p.add_argument("--out", help="where to save the MP4 (default: ./<job id>.mp4)")
    add_url_argument(p)
    p.set_defaults(func=run)


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": args.prompt}
    for option, key in (
        ("model", "model"),
        ("width", "width"),
        ("height", "height"),
        ("frames", "frames"),
        ("steps", "steps"),
        ("seed", "seed"),
        ("negative", "negative_prompt"),
        ("guidance", "guidance"),
        ("fps", "fps"),
    ):
        value = getattr(args, option)
        if value is not None:
            body[key] = value
    if args.no_output_changes:
        body["allow_output_changes"] = False
    return body


def run(args: argparse.Namespace) -> int:
    from supervisor.cli.generate_progress import JobProgressView

    code, state = request_json(args, "GET", "/v1/state")
    if code != 200:
        print_api_error(code, state)
        return 1
    since = int(state.get("bus", {}).get("last_seq", 0))
    body = request_body(args)
    for option, key in ((args.image, "image"), (args.last_image, "last_image")):
        if option is not None:
            uploaded = _upload(args, option, key)
            if uploaded is None:
                return 1
            body[key] = uploaded
    if args.fit is not None:
        body["fit"] = args.fit
    code, accepted = request_json(args, "POST", "/v1/jobs", json=body)
    if code != 202:
        print_api_error(code, accepted)
        return 1
    job_id: str = accepted["id"]
    params = accepted.get("params", {})
    view = JobProgressView(job_id, accepted.get("model", "?"), params)
    view.queued(accepted.get("queue_position"))
    follower = EventFollower(args, since=since, on_reconnect=view.reconnecting)
    outcome: dict[str, Any] | None = None
    with view:
        for event in follower:
            if event.get("data", {}).get("job_id") != job_id:
                continue
            view.show(event)
            if event["type"] in TERMINAL:
                outcome = event
                break
    if outcome is None:  # the stream ended without the job's end: ask the job itself
        return _from_job_view(args, job_id)
    if outcome["type"] == "job.failed":
        print_user_error(outcome["data"].get("error") or {})
        return 1
    if outcome["type"] == "job.cancelled":
        print(f"genvisor: job {job_id} was cancelled", file=sys.stderr)
        return 1
    return _download(args, job_id)


def _upload(args: argparse.Namespace, path: Path, field: str) -> str | None:
    """Upload one image (POST /v1/inputs); its id, or None once the refusal is printed."""
    option = "--" + field.replace("_", "-")
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"genvisor: {option} {path}: {exc.strerror or exc}", file=sys.stderr)
        return None
    code, stored = request_json(
        args, "POST", "/v1/inputs", files={"file": (path.name, data)}, timeout=60.0
    )
    if code not in (200, 201):
        print_api_error(code, stored)
        return None
    return str(stored["id"])


def _from_job_view(args: argparse.Namespace, job_id: str) -> int:
    code, job = request_json(args, "GET", f"/v1/jobs/{quote(job_id, safe='')}")
    if code != 200:
        print_api_error(code, job)
        return 1
    if job["status"] == "succeeded":
        return _download(args, job_id)
    if job["status"] == "failed" and job.get("error"):
        print_user_error(job["error"])
    else:
        print(f"genvisor: job {job_id} is {job['status']}", file=sys.stderr)
    return 1


def output_path(args: argparse.Namespace, job_id: str) -> Path:
    if args.out is None:
        return Path.cwd() / f"{job_id}.mp4"
    out = Path(args.out).expanduser()
    return out / f"{job_id}.mp4" if out.is_dir() else out


def _download(args: argparse.Namespace, job_id: str) -> int:
    target = output_path(args, job_id)
    partial = target.with_name(f".{target.name}.part")
    url = server_url(args)
    try:
        with (
            httpx.Client(base_url=url, headers=token_headers(), timeout=60.0) as client,
            client.stream("GET", f"/v1/jobs/{quote(job_id, safe='')}/output") as response,
        ):
            if response.status_code != 200:
                response.read()
                print_api_error(response.status_code, _json_or_text(response))
                return 1
            with partial.open("wb") as fh:
                for chunk in response.iter_bytes():
                    fh.write(chunk)
    except httpx.TransportError as exc:
        partial.unlink(missing_ok=True)
        raise ServerUnavailable(url=url, reason=type(exc).__name__) from None
    except OSError as exc:
        partial.unlink(missing_ok=True)
        print(f"genvisor: cannot save the video to {target}: {exc.strerror}", file=sys.stderr)
        return 1
    # Renamed only once complete: a file at `target` is always a whole video.
    os.replace(partial, target)
    print(f"saved {target} ({target.stat().st_size} bytes)")
    return 0


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"detail": response.text}
