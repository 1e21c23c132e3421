"""Devices in and out of service: the supervisor's part of failure staying local.

With a `devices` list a worker (generator child) that exceeds its restart intensity takes only
its device out of service: the supervisor becomes degraded with the reason `device:<device>`,
the other devices keep serving, and its job was already retried elsewhere (as a worker crash).
`genvisor reset --device <device>` (POST /v1/supervisor/reset?device=) restarts that worker with
a fresh restart budget; the reason clears when it has started. With one device nothing here
applies: a worker past its intensity halts the supervisor, as it always did. A child that failed
for good (a device out of service) is not waited for when the others have started.

Invariant: called only from the supervisor's loop (it is a part of `Supervisor`).
"""

from __future__ import annotations

from abc import abstractmethod

from supervisor.supervision.child_status import ChildRecord, ChildState
from supervisor.supervision.job_flow import JobFlow
from supervisor.supervision.messages import ResetRefused
from supervisor.supervision.state_machine import State, Trigger

__all__ = ["DeviceService"]


class DeviceService:
    """The device side of `Supervisor` (which provides the attributes and methods below)."""

    jobs: JobFlow | None
    children: dict[str, ChildRecord]
    degraded_reasons: dict[str, str]

    @property
    @abstractmethod
    def state(self) -> State: ...

    @abstractmethod
    def _fire(self, trigger: Trigger, *, reason: str, error_code: str | None = None) -> None: ...

    @abstractmethod
    def _settle(self) -> None: ...

    @abstractmethod
    def _unsettle(self) -> None: ...

    @abstractmethod
    def _start_child(self, record: ChildRecord) -> None: ...

    @abstractmethod
    def _reset(self, reason: str) -> State: ...

    def _out_of_service(self, child_id: str, why: str, code: str | None) -> bool:
        """With several devices, a worker past its restart intensity takes its device out of
        service (degraded, reason `device:<device>`) while another still serves; False when it
        was the last one (then the supervisor halts, as with one device)."""
        jobs = self.jobs
        lane = jobs.lane_of_child(child_id) if jobs is not None else None
        if jobs is None or lane is None or not jobs.placing:
            return False
        if not any(other.in_service for other in jobs.lanes if other is not lane):
            return False
        lane.in_service = False
        key = f"device:{lane.device}"
        self.degraded_reasons[key] = (
            f"the worker on {lane.device} halted ({why}); "
            f"`genvisor reset --device {lane.device}` brings it back"
        )
        self._fire(Trigger.DISMISS_DEGRADED, reason=f"{key} out of service: {why}", error_code=code)
        self._settle_unless_starting()
        return True

    def _all_back_in_service(self) -> None:
        """A whole reset: every device in service again (each reason clears when its worker
        has started)."""
        for lane in self.jobs.lanes if self.jobs is not None else ():
            lane.in_service = True

    def _device_back(self, child_id: str) -> None:
        """A device's worker started again after its reset: back in service."""
        lane = self.jobs.lane_of_child(child_id) if self.jobs is not None else None
        if lane is None or self.degraded_reasons.pop(f"device:{lane.device}", None) is None:
            return
        lane.in_service = True
        if self.state is State.DEGRADED and not self.degraded_reasons:
            self._fire(Trigger.RESTORE, reason=f"device:{lane.device} back in service")
        self._settle_unless_starting()

    def _settle_unless_starting(self) -> None:
        if not any(
            r.state in (ChildState.STARTING, ChildState.RESTARTING) for r in self.children.values()
        ):
            self._settle()

    def _reset_device(self, reason: str, device: str | None) -> State:
        """Bring one device out of service back (`genvisor reset --device`); a whole halted
        supervisor (or no device named) is reset as a whole."""
        if device is None:
            return self._reset(reason)
        jobs = self.jobs
        lane = jobs.lane_of_device(device) if jobs is not None and jobs.placing else None
        if jobs is None or lane is None:
            known = ", ".join(la.device for la in jobs.lanes) if jobs and jobs.placing else ""
            raise ResetRefused(
                f"no device {device} here"
                + (f" (devices: {known})" if known else " (one device: reset without --device)")
            )
        if self.state is State.HALTED:
            return self._reset(f"{reason} ({device})")
        record = self.children[lane.child_id]
        if lane.in_service or record.state is not ChildState.FAILED:
            raise ResetRefused(f"{device} is in service: nothing to reset")
        record.restart_history = ()
        self._unsettle()
        self._start_child(record)
        return self.state
