"""Generator actor: owns the worker process, the job being run, cancellation and heartbeats.

Its worker arrives with the generator issue; until then it runs under supervision, idle.
"""

from __future__ import annotations

from typing import Any

from actors.actor import Actor

__all__ = ["Generator"]


class Generator(Actor):
    def __init__(self) -> None:
        super().__init__("generator")

    async def handle(self, message: object) -> object:
        raise TypeError(f"generator got an unknown message {message!r}")

    def describe(self) -> dict[str, Any]:
        return {"status": self.status.value, "pid": None, "job_id": None}
