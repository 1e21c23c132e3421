"""Who runs the runtime of a data folder, and what happens when it cannot go on.

A process that finds the folder's lock held follows its owner (`follow_owner`: its routes
forward) and takes over once the kernel releases the lock; `run_or_exit` runs the runtime and,
when it fails after start-up, asks the process to exit so that its service manager (or the
host's server) starts it again, where every store is checked and healed.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from supervisor.core.exceptions import HomeInUse, first_leaf

if TYPE_CHECKING:
    from supervisor.runtime.runtime import Runtime

__all__ = ["FOLLOWER_POLL_S", "follow_owner", "run_or_exit", "terminate_process"]

log = logging.getLogger("genvisor.runtime")

# How often a follower tries the data folder's lock when nothing hints that the owner is gone.
FOLLOWER_POLL_S = 0.5


def terminate_process(exc: BaseException) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


async def follow_owner(rt: Runtime) -> None:
    """Wait for the owner's lock to be released, then take over (claim and run). The lock
    is tried on each poll and whenever forwarding finds the owner unreachable."""
    rt._follow_scope = anyio.CancelScope()
    with rt._follow_scope:
        while not rt._stop_requested:
            try:
                rt.claim()
                break
            except HomeInUse:
                pass
            except Exception as exc:
                # The lock was free but the stores would not open: as for `run`, the
                # process exits and its server starts it again.
                rt.fatal = exc
                log.critical("genvisor cannot take over (%s)", exc, exc_info=exc)
                rt.on_fatal(exc)
                return
            with anyio.move_on_after(FOLLOWER_POLL_S):
                if rt._owner_suspect is not None:
                    await rt._owner_suspect.wait()
            rt._owner_suspect = anyio.Event()
    if not rt._opened:
        return
    log.warning(
        "genvisor: the owner of %s went away; this process (pid %d) takes over",
        rt.settings.home,
        os.getpid(),
    )
    await run_or_exit(rt)


async def run_or_exit(
    rt: Runtime, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """`run`, and when it fails after start-up (the supervisor, the bus or a store cannot go
    on) the process is asked to exit: a service manager restarts it, where it heals, instead
    of a server that answers 500s with nothing behind them."""
    try:
        await rt.run(task_status=task_status)
    except Exception as exc:
        rt.fatal = exc
        log.critical(
            "genvisor cannot go on (%s: %s); the process exits so that it is started again",
            type(exc).__name__,
            first_leaf(exc),
            exc_info=exc,
        )
        rt.on_fatal(exc)
