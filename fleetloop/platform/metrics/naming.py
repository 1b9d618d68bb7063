"""Metric naming rules: the ``fleetloop_`` prefix, base units, ``_total`` on counters only.

Pure functions, no I/O. Every rule violation raises ``ValueError`` with a message that says how to
rename the metric: a metric name is part of the platform's interface (dashboards and alert rules
query it), so a wrong one is caught at declaration, not in a dashboard months later.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

__all__ = [
    "METRIC_PREFIX",
    "MetricKind",
    "validate_labelnames",
    "validate_metric_name",
]

MetricKind = Literal["counter", "gauge", "histogram"]

METRIC_PREFIX = "fleetloop_"

# Lower-case snake case; words of letters and digits joined by single underscores.
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# Name words that give away a non-base unit, and the base unit to use instead.
NON_BASE_UNITS: dict[str, str] = {
    "ms": "seconds",
    "msec": "seconds",
    "millis": "seconds",
    "milliseconds": "seconds",
    "us": "seconds",
    "usec": "seconds",
    "micros": "seconds",
    "microseconds": "seconds",
    "ns": "seconds",
    "nanoseconds": "seconds",
    "sec": "seconds",
    "secs": "seconds",
    "mins": "seconds",
    "minutes": "seconds",
    "hours": "seconds",
    "days": "seconds",
    "kb": "bytes",
    "kib": "bytes",
    "kilobytes": "bytes",
    "mb": "bytes",
    "mib": "bytes",
    "megabytes": "bytes",
    "gb": "bytes",
    "gib": "bytes",
    "gigabytes": "bytes",
    "bits": "bytes",
    "km": "meters",
    "kmh": "meters_per_second",
    "kph": "meters_per_second",
    "mph": "meters_per_second",
    "percent": "ratio (0-1)",
    "pct": "ratio (0-1)",
}

# Suffixes the exposition format adds itself; a declared name ending in one would collide.
_RESERVED_SUFFIXES = ("_bucket", "_count", "_sum", "_created")
# Label names the client library or the exposition format reserve.
_RESERVED_LABELS = frozenset({"le", "quantile"})


def validate_metric_name(name: str, kind: MetricKind) -> str:
    """Check ``name`` against the platform's naming rules for a metric of ``kind``; return it unchanged.

    Rules: starts with ``fleetloop_``; lower-case snake case; no non-base unit word (``_ms``, ``_mb``,
    ``_minutes``, ...); counters end in ``_total`` and nothing else does; no suffix the exposition
    format reserves (``_bucket``, ``_count``, ``_sum``, ``_created``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"metric name must be a non-empty string, got {name!r}")
    if not _NAME_RE.match(name):
        raise ValueError(
            f"metric name {name!r} is not lower-case snake case (letters, digits, single underscores); "
            f"e.g. 'fleetloop_bus_frames_sent_total'"
        )
    if not name.startswith(METRIC_PREFIX) or name == METRIC_PREFIX.rstrip("_"):
        raise ValueError(f"metric name {name!r} must start with {METRIC_PREFIX!r}, e.g. 'fleetloop_{name}'")
    for word in name[len(METRIC_PREFIX) :].split("_"):
        if word in NON_BASE_UNITS:
            raise ValueError(
                f"metric name {name!r} uses the non-base unit {word!r}; "
                f"measure in {NON_BASE_UNITS[word]} and name the metric after it"
            )
    for suffix in _RESERVED_SUFFIXES:
        if name.endswith(suffix):
            raise ValueError(
                f"metric name {name!r} ends in {suffix!r}, which the exposition format reserves; drop or rename it"
            )
    if kind not in ("counter", "gauge", "histogram"):
        raise ValueError(f"unknown metric kind {kind!r}; use counter, gauge or histogram")
    if kind == "counter":
        if not name.endswith("_total") or name.endswith("_total_total") or name == METRIC_PREFIX + "total":
            raise ValueError(f"counter {name!r} must end in '_total', e.g. '{name.removesuffix('_total')}_total'")
    elif name.endswith("_total"):
        raise ValueError(
            f"{kind} {name!r} ends in '_total', which is kept for counters; "
            f"use a counter or rename it (e.g. '{name.removesuffix('_total')}')"
        )
    return name


def validate_labelnames(labelnames: Iterable[str]) -> tuple[str, ...]:
    """Check label names (identifiers, unique, not reserved); return them as a tuple in the given order."""
    if isinstance(labelnames, str):
        raise ValueError(f"labelnames must be a sequence of names, not the string {labelnames!r}")
    names = tuple(labelnames)
    seen: set[str] = set()
    for label in names:
        if not isinstance(label, str) or not _LABEL_RE.match(label):
            raise ValueError(f"label name {label!r} is not an identifier (letters, digits, underscores)")
        if label.startswith("__"):
            raise ValueError(f"label name {label!r} starts with '__', which Prometheus reserves")
        if label in _RESERVED_LABELS:
            raise ValueError(f"label name {label!r} is reserved by the exposition format; choose another")
        if label in seen:
            raise ValueError(f"label name {label!r} is given twice")
        seen.add(label)
    return names
