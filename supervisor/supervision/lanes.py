"""Lanes: one device, its supervised worker (a generator child) and the job running there.

With one device (the default, `devices = "auto"`) there is one lane, its child is `generator`
and everything is as it always was. With a `devices` list there is a lane per device, its child
`generator:<device>` (each with its own restart intensity), and each waiting job is placed on a
lane by fit (supervisor/supervision/placement.py). A lane whose worker exceeded its restart
intensity is out of service until an operator resets that device; the others keep serving.

Invariant: lanes are changed only from the supervisor's loop (through `JobFlow`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from actors.actor import Actor
from supervisor.jobs import Job
from supervisor.recovery.memory import MemoryRecovery
from supervisor.supervision.placement import DeviceView

__all__ = ["GENERATOR", "Lane", "lane_child_id", "torch_device"]

GENERATOR = "generator"


def lane_child_id(device: str) -> str:
    """The child id of the worker on `device` in a devices list ("generator:cpu:1")."""
    return f"{GENERATOR}:{device}"


def torch_device(device: str) -> str:
    """What the worker is given: "cpu" for every "cpu:N" (one host's CPUs), else the device."""
    return "cpu" if device.split(":", 1)[0] == "cpu" else device


@dataclass(eq=False, slots=True)
class Lane:
    device: str  # the label: "cpu:1", "cuda:0" (or the resolved device with one lane)
    child_id: str  # "generator" (one lane) or "generator:<device>"
    generator: Callable[[], Actor | None]
    memory: MemoryRecovery | None = None
    running: Job | None = None
    in_service: bool = True  # False: its worker halted; `reset --device` brings it back

    @property
    def torch_device(self) -> str:
        return torch_device(self.device)

    def actor(self) -> Actor | None:
        """The lane's generator when it runs (None while it starts, restarts or is down)."""
        generator = self.generator()
        return generator if generator is not None and generator.running else None

    def loaded_model(self) -> str | None:
        generator = self.actor()
        model = generator.describe().get("model") if generator is not None else None
        return model if isinstance(model, str) else None

    def on_device(self, job: Job) -> Job:
        """The job's options pointed at this lane's device (a copy when they change)."""
        if job.options.device == self.torch_device:
            return job
        options = job.options.model_copy(update={"device": self.torch_device})
        return dataclasses.replace(job, options=options)

    def view(self, job: Job, *, preflight: bool) -> DeviceView:
        """This lane as placement sees it for `job` (pre-flight only for a first attempt)."""
        fit = None
        if preflight and self.memory is not None:
            fit = self.memory.preview(self.on_device(job))
        return DeviceView(
            device=self.device,
            fit=fit,
            in_service=self.in_service and self.actor() is not None,
            queue=1 if self.running is not None else 0,
            loaded_model=self.loaded_model(),
            busy=self.running is not None,
        )
