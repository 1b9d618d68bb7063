"""What a service of the local stack is, as a plain value: :class:`ServiceSpec` and its :class:`Health`.

A spec is a frozen value, registered nowhere: whoever drives the launcher (the CLI) builds the list of services
and hands it to ``launcher.up | down | status``, so no import order decides what runs. Its callables take the
validated settings (and the service's folder), so one spec serves any settings, e.g. a test's private stack.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fleetloop.platform.atomic import write_text_atomic

if TYPE_CHECKING:
    from fleetloop.platform.bus.loop import Stop
    from fleetloop.platform.settings import Settings

__all__ = ["Health", "ServiceSpec", "beat_heartbeat_file", "heartbeat_file_health", "stack_env"]


@dataclass(frozen=True)
class Health:
    """Result of one real protocol call against a service."""

    ok: bool
    detail: str


def heartbeat_file_health(path: Path, stale_s: float) -> Health:
    """Healthy while the heartbeat file a service process touches is younger than ``stale_s`` [s]."""
    try:
        age_s = time.time() - path.stat().st_mtime
    except OSError:
        return Health(False, f"no heartbeat yet at {path}")
    if age_s > stale_s:
        return Health(False, f"heartbeat {age_s:.0f} s old (stale after {stale_s:.0f} s)")
    return Health(True, f"heartbeat {age_s:.1f} s ago")


def beat_heartbeat_file(path: Path, stop: Stop, every_s: float) -> None:
    """Rewrite ``path`` with this process's pid and the time every ``every_s`` [s] until ``stop`` is set; run it in a
    thread of the service process's own, so a hung interpreter or a dead process stops beating."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while not stop.is_set():
        write_text_atomic(path, f"{os.getpid()} {time.time():.3f}\n")
        stop.wait(every_s)


def stack_env(settings: Settings) -> dict[str, str]:
    """A service process talks to the same broker and tracking server as the settings that started it."""
    return {
        "FLEETLOOP_KAFKA_BOOTSTRAP": settings.bootstrap_servers,
        "FLEETLOOP_MLFLOW_TRACKING_URI": settings.tracking_uri,
    }


def _no_metrics_port(settings: Settings) -> int | None:
    return None


def _no_extra_env(settings: Settings) -> dict[str, str]:
    return {}


def _nothing_missing(settings: Settings) -> str | None:
    return None


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service. Callables take the validated settings and the service's folder."""

    name: str
    description: str
    address: Callable[[Settings], str]
    is_external: Callable[[Settings], bool]
    ports: Callable[[Settings], list[int]]
    command: Callable[[Settings, Path], list[str]]
    health: Callable[[Settings], Health]
    # A token of the command line: identifies the main process of a record written before the launcher kept
    # start times and environment markers (docs/adr/0005), so a recycled pid is not taken for ours.
    cmdline_marker: str
    prepare: Callable[[Settings, Path], None] | None = None  # one-time set-up; raises SetupError
    post_start: Callable[[Settings], str | None] | None = None  # e.g. create topics; returns a note
    metrics_port: Callable[[Settings], int | None] = _no_metrics_port
    extra_env: Callable[[Settings], dict[str, str]] = _no_extra_env
    autostart: bool = True  # started by a plain `fleetloop up`; on-demand services are started by name
    # An optional service whose program is absent here (Prometheus): why, and how to install it. A plain `up`
    # reports it "not installed" and runs the rest; asking for it by name is a SetupError from its prepare.
    missing: Callable[[Settings], str | None] = _nothing_missing
