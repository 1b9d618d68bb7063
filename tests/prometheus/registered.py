"""The metric names the platform really registers: import the modules that declare metrics at import, and do what
the commands that declare theirs on start do (``sim run``), then read the registry."""

from __future__ import annotations

import warnings
from pathlib import Path

# The modules that declare, at import, the metrics that dashboards and the watch query.
import fleetloop.pipelines.collect
import fleetloop.pipelines.lake_sink
import fleetloop.pipelines.stage_shell
import fleetloop.pipelines.validate  # noqa: F401
from fleetloop.platform.metrics import METRIC_PREFIX, REGISTRY, start_exporter
from fleetloop.platform.settings import Settings

with warnings.catch_warnings():
    # typer 0.20 imports a helper that click 8.5 deprecates; the warning is theirs, not ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from fleetloop.cli import sim as sim_cli

__all__ = ["SERIES_SUFFIXES", "base_name", "registered_names"]

SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def base_name(series: str) -> str:
    """The metric a series belongs to (a histogram's ``_bucket`` series belongs to the histogram)."""
    for suffix in SERIES_SUFFIXES:
        series = series.removesuffix(suffix)
    return series


def registered_names(state_dir: Path) -> set[str]:
    """Every ``fleetloop_*`` name in the process-wide registry once the declaring code has run."""
    settings = Settings(state_dir=state_dir)
    sim_cli._metrics(settings)  # `sim run` declares its counters when it starts its exporter
    start_exporter(settings, "sim").close()
    names = {n for n in REGISTRY.names() if n.startswith(METRIC_PREFIX)}
    assert "fleetloop_sim_distance_meters_total" in names  # the declaring code ran
    return names
