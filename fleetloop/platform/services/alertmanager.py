"""An Alertmanager (0.25; Debian 12's ``prometheus-alertmanager`` package) that receives Prometheus' alerts.

Its configuration is ``deploy/prometheus/alertmanager.yml``, copied into the service folder on every start: alerts
are grouped and kept (its web UI and ``amtool`` show them), sent nowhere until a receiver is added there. It runs
alone: the gossip port for high-availability peers is switched off, so it binds nothing but its loopback port.

Optional like Prometheus: when the executable is missing the spec says so and the stack runs without it.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import fleetloop
from fleetloop.platform.errors import SetupError
from fleetloop.platform.services.spec import Health, ServiceSpec
from fleetloop.platform.settings import Settings

__all__ = [
    "DEPLOY_DIR",
    "INSTALL_HINT",
    "SPEC",
    "alertmanager_health",
    "executable",
    "get_json",
    "missing",
    "ready_json",
]

DEPLOY_DIR = Path(fleetloop.__file__).resolve().parent.parent / "deploy" / "prometheus"
"""``deploy/prometheus`` of this checkout: the Prometheus and Alertmanager configurations and the alert rules."""
_CONFIG = DEPLOY_DIR / "alertmanager.yml"
INSTALL_HINT = (
    "install it with `make prometheus` (Debian/Ubuntu: apt-get install --no-install-recommends prometheus "
    "prometheus-alertmanager)"
)
_NAMES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, then upstream's


def get_json(url: str, timeout_s: float = 3.0) -> Any:
    """GET ``url`` and decode its JSON body (``urllib`` errors and ``ValueError`` propagate)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return json.loads(r.read())


def executable(settings: Settings) -> str | None:
    """The Alertmanager executable found on PATH (``alertmanager_executable``, else Debian's or upstream's name)."""
    names = (settings.alertmanager_executable,) if settings.alertmanager_executable else _NAMES
    return next((found for found in map(shutil.which, names) if found), None)


def missing(settings: Settings) -> str | None:
    """Why the local Alertmanager cannot run here (its executable is not found), or None."""
    if settings.alertmanager_external or executable(settings):
        return None
    wanted = settings.alertmanager_executable or " or ".join(_NAMES)
    return f"not installed (no {wanted} on PATH); {INSTALL_HINT}; Prometheus still evaluates the alert rules without it"


def _prepare(settings: Settings, folder: Path) -> None:
    why = missing(settings)
    if why is not None:
        raise SetupError(f"alertmanager: {why}")
    try:
        shutil.copyfile(_CONFIG, folder / "alertmanager.yml")
    except OSError as e:
        raise SetupError(
            f"cannot copy the Alertmanager configuration {_CONFIG}: {e.strerror or e}; "
            "run fleetloop from its source checkout"
        ) from e


def _command(settings: Settings, folder: Path) -> list[str]:
    found = executable(settings)
    return [
        found or "alertmanager",
        f"--config.file={folder / 'alertmanager.yml'}",
        f"--storage.path={folder / 'data'}",
        f"--web.listen-address={settings.host}:{settings.alertmanager_port}",
        "--cluster.listen-address=",  # no high-availability gossip: nothing listens on 0.0.0.0:9094
    ]


def ready_json(base: str, *paths: str) -> Health | list[Any]:
    """Ask ``base/-/ready`` (200 when the server is up and ready), then GET the JSON of each of ``paths``:
    their decoded bodies, or an unhealthy :class:`Health` that says which call failed."""
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=3) as r:
            if r.status != 200:
                return Health(False, f"/-/ready answered {r.status}")
        return [get_json(base + path) for path in paths]
    except urllib.error.HTTPError as e:
        return Health(False, f"{e.url} answered HTTP {e.code}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        return Health(False, f"no answer from {base}: {type(e).__name__}")


def alertmanager_health(settings: Settings) -> Health:
    """Healthy when /-/ready answers 200 and the v2 API lists the alerts it holds."""
    got = ready_json(settings.alertmanager_uri, "/api/v2/alerts")
    if isinstance(got, Health):
        return got
    (alerts,) = got
    return Health(True, f"ready; {len(alerts) if isinstance(alerts, list) else '?'} alerts held")


SPEC = ServiceSpec(
    name="alertmanager",
    description="Alertmanager: groups and keeps the alerts Prometheus sends",
    address=lambda s: s.alertmanager_uri,
    is_external=lambda s: s.alertmanager_external,
    ports=lambda s: [s.alertmanager_port],
    command=_command,
    health=alertmanager_health,
    cmdline_marker="--cluster.listen-address=",
    prepare=_prepare,
    metrics_port=lambda s: s.alertmanager_port,
    missing=missing,
)
