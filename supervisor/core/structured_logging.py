"""Structured logs: one JSON object a line when stderr is not a TTY, readable text when it is.

Each record carries the actor and the job id where there is one, taken from context variables
that actors set around their work, or from `extra={"actor": ..., "job_id": ...}`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Literal

__all__ = ["configure_logging", "current_actor", "current_job_id"]

current_actor: ContextVar[str | None] = ContextVar("genvisor_actor", default=None)
current_job_id: ContextVar[str | None] = ContextVar("genvisor_job_id", default=None)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "actor", None) is None:
            record.actor = current_actor.get()
        if getattr(record, "job_id", None) is None:
            record.job_id = current_job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("actor", "job_id"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        tags = "".join(
            f" [{k}={v}]" for k in ("actor", "job_id") if (v := getattr(record, k, None))
        )
        line = f"{when} {record.levelname:<7} {record.name}{tags}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "info", fmt: Literal["auto", "json", "text"] = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger("genvisor")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper() if name != "uvicorn.access" else "WARNING")
        logger.propagate = False
