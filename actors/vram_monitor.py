"""VRAM monitor actor: device telemetry (pynvml, torch in the worker, psutil for host RAM).

Its sampling arrives with the VRAM issue; until then it runs under supervision, idle.
"""

from __future__ import annotations

from typing import Any

from actors.actor import Actor

__all__ = ["VramMonitor"]


class VramMonitor(Actor):
    def __init__(self) -> None:
        super().__init__("vram_monitor")

    async def handle(self, message: object) -> object:
        raise TypeError(f"vram_monitor got an unknown message {message!r}")

    def describe(self) -> dict[str, Any]:
        return {"status": self.status.value, "source": None}
