"""The HTTP and WebSocket interface: the FastAPI app, its routes, error bodies and security."""

__all__: list[str] = []
