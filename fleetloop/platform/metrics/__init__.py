"""Prometheus metrics for every fleetloop process.

- :mod:`~fleetloop.platform.metrics.naming`: the naming rules (``fleetloop_`` prefix, base units,
  ``_total`` on counters only);
- :mod:`~fleetloop.platform.metrics.registry`: get-or-create ``counter`` / ``gauge`` / ``histogram`` on the
  process-wide platform registry, with ``fleetloop_build_info``;
- :mod:`~fleetloop.platform.metrics.exporter`: ``start_exporter(settings, process_name)``, one loopback HTTP
  endpoint per process;
- :mod:`~fleetloop.platform.metrics.targets`: the ``file_sd`` target files in the state directory
  (``register_target``, ``list_targets``, ``prune_stale_targets``), usable for any process;
- :mod:`~fleetloop.platform.metrics.catalogue`: the rollout, release-expiry and consumer-lag gauges the alert
  rules query, declared once for the processes that set them.

Typical use::

    from fleetloop.platform.metrics import counter, start_exporter

    FRAMES_SENT = counter("fleetloop_bus_frames_sent_total", "Telemetry frames handed to Kafka.", ["topic"])
    handle = start_exporter(settings, "sim")
"""

from __future__ import annotations

from fleetloop.platform.metrics.catalogue import (
    CONSUMER_LAG,
    RELEASE_EXPIRY,
    ROLLOUT_WAVE,
    ROLLOUT_WAVE_STARTED,
)
from fleetloop.platform.metrics.exporter import ExporterHandle, start_exporter
from fleetloop.platform.metrics.naming import METRIC_PREFIX, validate_labelnames, validate_metric_name
from fleetloop.platform.metrics.registry import (
    BUILD_INFO_NAME,
    DEFAULT_BUCKETS_S,
    REGISTRY,
    MetricsRegistry,
    counter,
    gauge,
    histogram,
)
from fleetloop.platform.metrics.targets import (
    Target,
    TargetListing,
    list_targets,
    prune_stale_targets,
    register_target,
    remove_target,
    targets_dir,
)

__all__ = [
    "BUILD_INFO_NAME",
    "CONSUMER_LAG",
    "DEFAULT_BUCKETS_S",
    "METRIC_PREFIX",
    "REGISTRY",
    "RELEASE_EXPIRY",
    "ROLLOUT_WAVE",
    "ROLLOUT_WAVE_STARTED",
    "ExporterHandle",
    "MetricsRegistry",
    "Target",
    "TargetListing",
    "counter",
    "gauge",
    "histogram",
    "list_targets",
    "prune_stale_targets",
    "register_target",
    "remove_target",
    "start_exporter",
    "targets_dir",
    "validate_labelnames",
    "validate_metric_name",
]
