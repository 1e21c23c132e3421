"""The composition root: the runtime that wires stores, bus, actors and supervisor for one data
folder (`runtime`), the children it supervises (`children`) and its start-up work (`start_up`)."""

from supervisor.runtime.runtime import HEAVY_MODULES, Runtime

__all__ = ["HEAVY_MODULES", "Runtime"]
