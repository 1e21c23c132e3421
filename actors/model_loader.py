"""Model loader actor: owns the model registry, the HF cache, downloads, verification, repair.

Its work arrives with the model issue; until then it runs under supervision, idle.
"""

from __future__ import annotations

from typing import Any

from actors.actor import Actor

__all__ = ["ModelLoader"]


class ModelLoader(Actor):
    def __init__(self) -> None:
        super().__init__("model_loader")

    async def handle(self, message: object) -> object:
        raise TypeError(f"model_loader got an unknown message {message!r}")

    def describe(self) -> dict[str, Any]:
        return {"status": self.status.value, "models": {}}
