"""The services of the local stack: the one list that `fleetloop up | down | status` hand to the launcher.

A new service (the release server, the rollout controller, Prometheus, the road-condition service, Flower's
SuperLink) joins by one entry in :func:`stack_services`, at its place in the start order.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleetloop.pipelines import serve
from fleetloop.platform import launcher
from fleetloop.platform.services import kafka, mlflow_server, ota_repo
from fleetloop.platform.services.spec import ServiceSpec

__all__ = ["services_to_start", "stack_services"]


def stack_services() -> list[ServiceSpec]:
    """Every service of the local stack in start order (`down` stops them in reverse)."""
    return [
        kafka.SPEC,
        mlflow_server.SPEC,
        ota_repo.SPEC,  # initialises the local release repository on first start
        *serve.stage_specs(),  # on demand: `fleetloop pipeline serve` starts them
    ]


def services_to_start(names: Iterable[str] | None = None) -> list[ServiceSpec]:
    """The named services, or (no names) those a plain `fleetloop up` starts."""
    specs = stack_services()
    return launcher.select(specs, names) if names else [s for s in specs if s.autostart]
