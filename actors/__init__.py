"""genvisor actors: the actor base, model loader, generator and VRAM monitor."""

__all__: list[str] = []
