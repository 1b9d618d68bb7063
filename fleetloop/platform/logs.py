"""Structured logs: JSON lines with correlation ids, for every fleetloop process.

``fleetloop --log-format json COMMAND`` (or ``FLEETLOOP_LOG_FORMAT=json``, which the processes it starts
inherit) makes the process log one JSON object per line to stderr; a service the launcher starts writes its stderr
to ``<state_dir>/services/<name>/service.log``, where ``deploy/logging/fluent-bit.yaml`` tails it. A line::

    {"ts": "2026-01-14T12:03:01.123Z", "level": "info", "logger": "fleetloop.platform.runs", "process": "fleetloop",
     "pid": 4242, "message": "sim run finished: ok", "run_id": "20260114T120301-3f2a", "model_version": "v3"}

Correlation ids come from a context the code binds where it knows them (a ``contextvars`` variable, so they follow
the code's own flow and never leak between threads)::

    with log_context(run_id=rec.id, command="sim run"):
        bind_log_context(model_version="v3")  # for the rest of the enclosing context
        log.info("fleet simulation started")

The text format (the default) leaves Python's logging as it was: warnings and errors to stderr, no context.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

__all__ = [
    "CORRELATION_FIELDS",
    "LINE_FIELDS",
    "LOG_FORMATS",
    "LOG_FORMAT_ENV",
    "JsonFormatter",
    "bind_log_context",
    "configure_logging",
    "current_log_context",
    "log_context",
]

LOG_FORMATS = ("text", "json")
LOG_FORMAT_ENV = "FLEETLOOP_LOG_FORMAT"

LINE_FIELDS = ("ts", "level", "logger", "process", "pid", "message")
"""The fields of every JSON line (``exc`` is added when an exception is logged)."""

CORRELATION_FIELDS = ("run_id", "command", "stage", "vehicle_id", "dataset", "model_version", "rollout", "round")
"""The correlation ids a line may carry, when the code that logs knows them."""

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("fleetloop_log_context", default=_EMPTY)


def _checked(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(CORRELATION_FIELDS))
    if unknown:
        raise ValueError(f"unknown log context field(s) {unknown}; known: {', '.join(CORRELATION_FIELDS)}")
    return {k: v for k, v in fields.items() if v is not None}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind correlation ids (``CORRELATION_FIELDS``; None values are skipped) for the block; restored after it."""
    token = _context.set(MappingProxyType({**_context.get(), **_checked(fields)}))
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: Any) -> None:
    """Bind correlation ids for the rest of the enclosing ``log_context`` block (or of the process, outside one)."""
    _context.set(MappingProxyType({**_context.get(), **_checked(fields)}))


def current_log_context() -> dict[str, Any]:
    """The correlation ids bound here, now."""
    return dict(_context.get())


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``LINE_FIELDS``, the bound correlation ids, ``exc`` for an exception."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
        doc: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process,
            "pid": record.process,
            "message": record.getMessage(),
        }
        # The context of the thread that logged: a StreamHandler formats in the thread that logs.
        doc.update(current_log_context())
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure_logging(log_format: str | None = None, *, process: str = "fleetloop") -> str:
    """Set this process's log format (``text`` or ``json``; None: ``FLEETLOOP_LOG_FORMAT``, else text); return it.

    ``json`` puts one handler on the root logger writing JSON lines to stderr at INFO, and exports
    ``FLEETLOOP_LOG_FORMAT=json`` so the processes this one starts log the same way.
    """
    fmt = (log_format or os.environ.get(LOG_FORMAT_ENV) or "text").strip().lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; valid: {', '.join(LOG_FORMATS)}")
    if fmt == "text":
        if os.environ.get(LOG_FORMAT_ENV):
            os.environ[LOG_FORMAT_ENV] = fmt
        return fmt
    os.environ[LOG_FORMAT_ENV] = fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return fmt
