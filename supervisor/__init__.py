"""genvisor control plane: supervisor, state machine, event bus, error taxonomy, API, CLI.

Invariant: nothing under this package imports torch or diffusers; the worker process does.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
