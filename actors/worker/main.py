"""Entry of the worker process: `python -m actors.worker --channel-fd N [--device D] ...`.

Three threads:
- the main thread runs Load and Generate requests one at a time;
- a reader thread takes frames off the channel: Cancel flags the running (or a queued) job at
  once, everything else is queued for the main thread;
- a heartbeat thread sends `Heartbeat` every interval, also while a job runs, so a control
  side that stops hearing them knows the process is stopped or wedged.

If the channel closes (the control process is gone, even by `kill -9`) the worker exits at
once: nobody can use results. That EOF, the `Shutdown` message and the control side's SIGKILL
are the only ways it ends: SIGINT and SIGTERM are ignored (see `_ignore_stop_signals`).
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import diffusers
import psutil
import torch
from pydantic import BaseModel

from actors.worker.channel import BlockingChannel, ChannelClosed
from actors.worker.generation import JobRun, run_generation
from actors.worker.memory_cap import address_space_bytes, apply_memory_cap, parse_size
from actors.worker.pipeline_host import PipelineHost
from actors.worker.protocol import (
    Cancel,
    Cancelled,
    ControlMessage,
    Failed,
    Generate,
    Heartbeat,
    Load,
    Loaded,
    Ping,
    Ready,
    Shutdown,
)
from supervisor.errors.report import ErrorReport, Stage

__all__ = ["main"]


class Worker:
    def __init__(self, channel: BlockingChannel, device: str, interval: float) -> None:
        self.channel = channel
        self.device = device
        self.interval = interval
        self.host = PipelineHost()
        self.model_name = ""
        # SimpleQueue: the reader thread's hand-off of a job to this thread is on every job's
        # path, and needs no task tracking.
        self.inbox: queue.SimpleQueue[ControlMessage] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._current: JobRun | None = None
        self._cancelled_early: set[str] = set()
        self._load_failed = False
        self._process = psutil.Process()

    # --- heartbeat thread ---------------------------------------------------------------
    def heartbeat(self) -> Heartbeat:
        allocated = peak = None
        if self.device.startswith("cuda"):
            allocated = int(torch.cuda.memory_allocated(self.device))
            peak = int(torch.cuda.max_memory_allocated(self.device))
        current = self._current
        return Heartbeat(
            ts=time.time(),
            rss_bytes=int(self._process.memory_info().rss),
            device_allocated=allocated,
            device_peak=peak,
            busy_job_id=current.job_id if current else None,
            last_progress_ts=current.last_progress_ts if current else None,
        )

    def heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.interval):
            self._send_or_exit(self.heartbeat())

    # --- reader thread ------------------------------------------------------------------
    def reader_loop(self) -> None:
        while True:
            try:
                msg = self.channel.receive()
            except ChannelClosed:
                # The control process is gone: no one can receive results; leave at once.
                os._exit(0)
            if isinstance(msg, Cancel):
                self._cancel(msg.job_id)
            elif isinstance(msg, Ping):
                self._send_or_exit(self.heartbeat())
            else:
                if isinstance(msg, Shutdown) and self._current is not None:
                    self._current.cancel.set()
                self.inbox.put(msg)

    def _cancel(self, job_id: str) -> None:
        with self._lock:
            if self._current is not None and self._current.job_id == job_id:
                self._current.cancel.set()
            else:
                self._cancelled_early.add(job_id)

    def _send_or_exit(self, msg: BaseModel) -> None:
        try:
            self.channel.send(msg)
        except OSError:
            os._exit(0)

    # --- main thread --------------------------------------------------------------------
    def serve(self) -> None:
        while True:
            msg = self.inbox.get()
            if isinstance(msg, Shutdown):
                return
            try:
                if isinstance(msg, Load):
                    self._load(msg)
                elif isinstance(msg, Generate):
                    self._generate(msg)
            except Exception as exc:
                # A bug outside a job's stages: report it and keep serving.
                job_id = msg.job_id if isinstance(msg, Generate) else None
                report = ErrorReport.from_exception(
                    exc, stage=Stage.WORKER, device=self.device, job_id=job_id
                )
                self._finish(Failed(job_id=job_id, report=report))

    def _load(self, msg: Load) -> None:
        self._load_failed = False
        try:
            result = self.host.ensure(Path(msg.model_path), msg.options, msg.pipeline_class)
        except Exception as exc:
            # Invariant: the control side pipelines Load then Generate; it has this failure as
            # the job's, so the Generate that follows is dropped, not answered with a second
            # failure that could land on the job's next attempt (same job id).
            self._load_failed = True
            report = ErrorReport.from_exception(
                exc, stage=Stage.LOAD, device=msg.options.device, context={"model": msg.model_name}
            )
            self._send_or_exit(Failed(job_id=None, report=report))
            return
        self.model_name = msg.model_name or Path(msg.model_path).name
        self._send_or_exit(
            Loaded(
                model=self.model_name,
                options=result.options,
                load_s=result.load_s,
                reloaded=result.reloaded,
            )
        )

    def _generate(self, msg: Generate) -> None:
        with self._lock:
            if self._load_failed:  # see _load: the job's failure is already reported
                self._load_failed = False
                self._cancelled_early.discard(msg.job_id)
                return
            if msg.job_id in self._cancelled_early:
                self._cancelled_early.discard(msg.job_id)
                self._send_or_exit(Cancelled(job_id=msg.job_id))
                return
            run = JobRun(
                request=msg,
                host=self.host,
                emit=self.channel.send,
                model_name=self.model_name,
                emit_with_next=self.channel.send_with_next,
            )
            self._current = run
        try:
            if self.host.model_path is None:
                raise RuntimeError("no model loaded: send Load before Generate")
            self.host.ensure(self.host.model_path, msg.options)
        except Exception as exc:
            report = ErrorReport.from_exception(
                exc, stage=Stage.LOAD, device=msg.options.device, job_id=msg.job_id
            )
            self._finish(Failed(job_id=msg.job_id, report=report))
            return
        self._finish(run_generation(run))

    def _finish(self, msg: BaseModel) -> None:
        with self._lock:
            self._current = None
        self._send_or_exit(msg)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m actors.worker")
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    parser.add_argument("--memory-limit", default="", help="e.g. 2GiB; empty for no cap")
    return parser.parse_args(argv)


def _ignore_stop_signals() -> None:
    """Invariant: the control process alone stops this process. A SIGINT or SIGTERM meant for
    the whole service (a terminal's Ctrl-C, systemd's default KillMode=control-group signals
    every process of the unit) would otherwise kill the worker before the control process
    stops it, and the generator would report a crash and the supervisor restart it during the
    shutdown. The worker's own session (`spawn`) keeps process-group signals away already."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    _ignore_stop_signals()
    channel = BlockingChannel.from_fd(args.channel_fd)
    baseline = address_space_bytes()
    limit: int | None = None
    try:
        if args.memory_limit:
            limit = parse_size(args.memory_limit)
            apply_memory_cap(limit, args.device)
    except Exception as exc:
        report = ErrorReport.from_exception(exc, stage=Stage.STARTUP, device=args.device)
        channel.send(Failed(job_id=None, report=report))
        return 2
    worker = Worker(channel, args.device, args.heartbeat_interval)
    worker._send_or_exit(
        Ready(
            pid=os.getpid(),
            device=args.device,
            torch_version=torch.__version__,
            diffusers_version=diffusers.__version__,
            memory_limit_bytes=limit,
            baseline_address_space_bytes=baseline,
        )
    )
    threading.Thread(target=worker.heartbeat_loop, name="heartbeat", daemon=True).start()
    threading.Thread(target=worker.reader_loop, name="channel-reader", daemon=True).start()
    worker.serve()
    worker.stopping.set()
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
