"""The platform's metrics registry: declare a counter, gauge or histogram once per process.

Modules declare their metrics at import time (``FRAMES = counter("fleetloop_bus_frames_sent_total",
"...")``). Declaration is get-or-create: a second declaration with the same name and shape returns the
same metric, so re-imports, tests and several call sites never hit prometheus_client's
duplicate-registration error; a second declaration with a different kind, labels, buckets or help text
is a bug and raises ``ValueError``.

The platform keeps its own ``CollectorRegistry`` rather than prometheus_client's global one, so the
exposition holds only names that passed our naming rules (plus the standard process collectors), not
whatever a third-party library registers at import.
"""

from __future__ import annotations

import itertools
import platform as _platform
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

import fleetloop
from fleetloop.platform.metrics.naming import MetricKind, validate_labelnames, validate_metric_name

__all__ = [
    "BUILD_INFO_NAME",
    "DEFAULT_BUCKETS_S",
    "REGISTRY",
    "MetricsRegistry",
    "counter",
    "gauge",
    "histogram",
]

BUILD_INFO_NAME = "fleetloop_build_info"

# Latency buckets in seconds, from a fast inference batch (1 ms) to a slow pipeline step (1 min).
DEFAULT_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@dataclass(frozen=True)
class _Shape:
    kind: MetricKind
    documentation: str
    labelnames: tuple[str, ...]
    buckets: tuple[float, ...] | None


class MetricsRegistry:
    """A ``CollectorRegistry`` with get-or-create declaration and the platform's naming rules.

    ``process_collectors`` adds the standard ``process_*``, ``python_info`` and ``python_gc_*`` series;
    ``build_info`` adds ``fleetloop_build_info{version, python_version} 1``.
    """

    def __init__(self, *, process_collectors: bool = True, build_info: bool = True) -> None:
        self.collector_registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._metrics: dict[str, tuple[_Shape, Any]] = {}
        if process_collectors:
            ProcessCollector(registry=self.collector_registry)
            PlatformCollector(registry=self.collector_registry)
            GCCollector(registry=self.collector_registry)
        if build_info:
            info = self.gauge(
                BUILD_INFO_NAME,
                "Version of fleetloop and Python this process runs; the value is always 1.",
                labelnames=("version", "python_version"),
            )
            info.labels(version=fleetloop.__version__, python_version=_platform.python_version()).set(1)

    def counter(self, name: str, documentation: str, labelnames: Iterable[str] = ()) -> Counter:
        """Get or create a counter; ``name`` ends in ``_total`` (e.g. ``fleetloop_bus_frames_sent_total``)."""
        metric: Counter = self._get_or_create("counter", name, documentation, labelnames, None)
        return metric

    def gauge(self, name: str, documentation: str, labelnames: Iterable[str] = ()) -> Gauge:
        """Get or create a gauge (a value that goes up and down, in base units: ``_seconds``, ``_bytes``)."""
        metric: Gauge = self._get_or_create("gauge", name, documentation, labelnames, None)
        return metric

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS_S,
    ) -> Histogram:
        """Get or create a histogram; ``buckets`` are upper bounds in the metric's unit, strictly increasing."""
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"histogram {name!r}: buckets {list(buckets)} must be non-empty and strictly increasing")
        metric: Histogram = self._get_or_create("histogram", name, documentation, labelnames, bounds)
        return metric

    def exposition(self) -> bytes:
        """The current exposition in the Prometheus text format (what the exporter serves)."""
        return generate_latest(self.collector_registry)

    def names(self) -> list[str]:
        """Names of the metrics declared through this registry, sorted."""
        with self._lock:
            return sorted(self._metrics)

    def _get_or_create(
        self,
        kind: MetricKind,
        name: str,
        documentation: str,
        labelnames: Iterable[str],
        buckets: tuple[float, ...] | None,
    ) -> Any:
        validate_metric_name(name, kind)
        labels = validate_labelnames(labelnames)
        if not isinstance(documentation, str) or not documentation.strip():
            raise ValueError(f"metric {name!r} needs a help text that says what it counts and in which unit")
        shape = _Shape(kind, documentation.strip(), labels, buckets)
        with self._lock:
            existing = self._metrics.get(name)
            if existing is not None:
                if existing[0] != shape:
                    raise ValueError(
                        f"metric {name!r} is already declared as {_describe(existing[0])}; "
                        f"this declaration asks for {_describe(shape)}. Declare it once, in one module, and import it"
                    )
                return existing[1]
            metric = self._create(shape, name)
            self._metrics[name] = (shape, metric)
            return metric

    def _create(self, shape: _Shape, name: str) -> Any:
        kwargs: dict[str, Any] = {"labelnames": shape.labelnames, "registry": self.collector_registry}
        try:
            if shape.kind == "counter":
                return Counter(name, shape.documentation, **kwargs)
            if shape.kind == "gauge":
                return Gauge(name, shape.documentation, **kwargs)
            return Histogram(name, shape.documentation, buckets=shape.buckets or DEFAULT_BUCKETS_S, **kwargs)
        except ValueError as e:
            # prometheus_client refuses names whose series collide with another metric's
            # (a gauge `x` beside a counter `x_total`): say which names clash.
            raise ValueError(f"metric {name!r} clashes with a metric already declared: {e}") from e


def _describe(shape: _Shape) -> str:
    out = f"a {shape.kind} with labels {list(shape.labelnames)} and help {shape.documentation!r}"
    if shape.buckets is not None:
        out += f" and buckets {list(shape.buckets)}"
    return out


REGISTRY = MetricsRegistry()
"""The process-wide platform registry; the exporter serves it unless told otherwise."""


def counter(name: str, documentation: str, labelnames: Iterable[str] = ()) -> Counter:
    """Get or create a counter in the process-wide :data:`REGISTRY`."""
    return REGISTRY.counter(name, documentation, labelnames)


def gauge(name: str, documentation: str, labelnames: Iterable[str] = ()) -> Gauge:
    """Get or create a gauge in the process-wide :data:`REGISTRY`."""
    return REGISTRY.gauge(name, documentation, labelnames)


def histogram(
    name: str, documentation: str, labelnames: Iterable[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS_S
) -> Histogram:
    """Get or create a histogram in the process-wide :data:`REGISTRY`."""
    return REGISTRY.histogram(name, documentation, labelnames, buckets)
