"""The progress display of `genvisor generate`: a rich progress bar fed by the job's events.

The bar shows the stage, step/total, elapsed time and the ETA of the denoising loop; events a
person must read (queue position, each attempt, retries with their reason and the change they
apply, the outcome) are printed as lines above the bar, so they also appear in a log or a pipe
where the bar itself is not animated.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["JobProgressView", "change_text"]


class JobProgressView:
    """Renders one job's events; use as a context manager around the event loop."""

    def __init__(self, job_id: str, model: str, params: dict[str, Any]) -> None:
        self.job_id = job_id
        self._said_position: int | None = None
        self.console = Console(highlight=False)
        self.progress = Progress(
            TextColumn("[bold]{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task: TaskID = self.progress.add_task("queued", total=params.get("steps"))
        self.stage = "queued"
        self._started = False
        size = f"{params.get('width')}x{params.get('height')}x{params.get('num_frames')}"
        self.console.print(
            f"job {job_id}: {model}, {size}, {params.get('steps')} steps, seed {params.get('seed')}"
        )

    def __enter__(self) -> JobProgressView:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def queued(self, position: int | None) -> None:
        if position and position != self._said_position:
            self._said_position = position
            self.console.print(f"queued at position {position}")

    def reconnecting(self, since: int | None, why: str) -> None:
        self.progress.console.print(f"[dim]event stream: {why}; resuming after seq {since}[/]")

    def show(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        data: dict[str, Any] = event.get("data", {})
        out = self.progress.console
        if kind == "job.queued" and data.get("position"):
            # The submit's answer already said it, unless the job moved (a retry, a restart).
            self.queued(int(data["position"]))
        elif kind == "job.started":
            options = ", ".join(f"{k}={v}" for k, v in (data.get("options") or {}).items() if v)
            out.print(
                f"attempt {data.get('attempt')} started on {data.get('model')}"
                + (f" ({options})" if options else "")
            )
            self.progress.reset(self.task, description="load")
            self._started = True
        elif kind == "job.progress":
            self._progress(data)
        elif kind == "job.retrying":
            change = change_text(data.get("change")) if data.get("change") else ""
            reason = str(data.get("reason") or "")
            # The reason often is the change's own sentence: it is said once.
            out.print(
                f"[yellow]retrying[/] (attempt {data.get('attempt')}): {reason}"
                f" [{data.get('error_code')}]"
                + (f"; change: {change}" if change and change not in reason else "")
            )
        elif kind == "job.succeeded":
            changes = "; ".join(change_text(c) for c in data.get("changes") or [])
            out.print(
                f"[green]succeeded[/] in {float(data.get('duration_s', 0.0)):.1f} s"
                + (f" with changes: {changes}" if changes else "")
            )
        elif kind == "job.failed":
            self._hide_unstarted_bar()
            out.print("[red]failed[/]")
        elif kind == "job.cancelled":
            self._hide_unstarted_bar()
            out.print("[yellow]cancelled[/]")

    def _hide_unstarted_bar(self) -> None:
        """A job that ended before it started (refused by pre-flight, cancelled while waiting)
        leaves no empty "queued 0/2 steps" bar under its last words."""
        if not self._started:
            self.progress.update(self.task, visible=False)

    def _progress(self, data: dict[str, Any]) -> None:
        stage = str(data.get("stage"))
        if stage != self.stage:
            self.progress.console.print(f"stage {stage}")
            self.stage = stage
        step, total = data.get("step"), data.get("total_steps")
        update: dict[str, Any] = {"description": stage}
        if total:
            update["total"] = total
        if step is not None:
            update["completed"] = step
        self.progress.update(self.task, **update)
        if step is not None and total and not self.console.is_terminal:
            # Without a terminal the bar is not redrawn: each step is a line of the log.
            self.progress.console.print(f"{stage} step {step}/{total}")


def change_text(change: Any) -> str:
    """A change as a person reads it: its sentence (the JSON form keeps the data)."""
    if isinstance(change, dict) and change.get("text"):
        return str(change["text"])
    return str(change)
