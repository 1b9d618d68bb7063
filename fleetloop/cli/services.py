"""The services of the local stack: the one list that `fleetloop up | down | status` hand to the launcher.

A new service (the release server, the rollout controller, Prometheus, the road-condition service, Flower's
SuperLink) joins by one entry in :func:`stack_services`, at its place in the start order.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleetloop.federation import serve as flower
from fleetloop.pipelines import serve
from fleetloop.platform import launcher
from fleetloop.platform.services import alertmanager, kafka, mlflow_server, ota_controller, ota_repo, prometheus
from fleetloop.platform.services.spec import ServiceSpec
from fleetloop.platform.settings import Settings

__all__ = ["NOT_INSTALLED", "not_installed", "services_to_start", "stack_services"]

NOT_INSTALLED = "not installed"  # the state of an optional service whose program this machine lacks


def stack_services() -> list[ServiceSpec]:
    """Every service of the local stack in start order (`down` stops them in reverse)."""
    return [
        kafka.SPEC,
        mlflow_server.SPEC,
        ota_repo.SPEC,  # initialises the local release repository on first start
        *(alertmanager.SPEC, prometheus.SPEC),  # optional: reported "not installed" where absent
        *serve.stage_specs(),  # on demand: `fleetloop pipeline serve` starts them
        ota_controller.SPEC,  # on demand: `fleetloop ota rollout` starts it
        flower.SPEC,  # on demand: `fleetloop fl serve` starts the SuperLink and its SuperNodes
    ]


def services_to_start(names: Iterable[str] | None = None, settings: Settings | None = None) -> list[ServiceSpec]:
    """The named services, or (no names) those a plain `fleetloop up` starts; with ``settings``, less the optional
    ones this machine lacks (:func:`not_installed` reports them)."""
    specs = stack_services()
    if names:
        return launcher.select(specs, names)
    return [s for s in specs if s.autostart and (settings is None or s.missing(settings) is None)]


def not_installed(settings: Settings, spec: ServiceSpec) -> launcher.ServiceStatus | None:
    """A "not installed" status (with how to install it) for an optional service this machine cannot run."""
    why = spec.missing(settings)
    if why is None:
        return None
    return launcher.ServiceStatus(spec.name, NOT_INSTALLED, False, spec.address(settings), detail=why, required=False)
