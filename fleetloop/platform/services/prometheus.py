"""A Prometheus server (Prometheus 2.x; Debian 12's ``prometheus`` package) that scrapes every fleetloop exporter.

It discovers the exporters through the ``file_sd`` target files in ``<state_dir>/metrics/targets`` (ADR 0040),
evaluates the alert rules of ``deploy/prometheus/rules`` (or ``prometheus_rules_dir``) and sends what fires to
the Alertmanager (:mod:`~fleetloop.platform.services.alertmanager`). Its configuration is rendered from the
template ``deploy/prometheus/prometheus.yml`` into the service folder on every start; its series live in the
folder's ``data/`` with a laptop-sized retention (``prometheus_retention_h`` / ``prometheus_retention_mb``).

Optional: when the executable is missing the spec says so (:func:`missing`) and the stack runs without it.
"""

from __future__ import annotations

import json
import shutil
import string
import urllib.parse
from pathlib import Path

from fleetloop.platform.errors import SetupError
from fleetloop.platform.metrics.targets import targets_dir
from fleetloop.platform.services import alertmanager
from fleetloop.platform.services.alertmanager import DEPLOY_DIR, INSTALL_HINT, ready_json
from fleetloop.platform.services.spec import Health, ServiceSpec
from fleetloop.platform.settings import Settings

__all__ = [
    "SPEC",
    "missing",
    "prometheus_health",
    "render_config",
    "rules_dir",
]


def missing(settings: Settings) -> str | None:
    """Why the local Prometheus cannot run here (its executable is not found), or None."""
    if settings.prometheus_external or shutil.which(settings.prometheus_executable):
        return None
    return (
        f"not installed (no `{settings.prometheus_executable}` on PATH); {INSTALL_HINT}, "
        "or point FLEETLOOP_PROMETHEUS_URL at a running Prometheus"
    )


def rules_dir(settings: Settings) -> Path:
    """The folder of alert rule files Prometheus loads: ``prometheus_rules_dir`` or ``deploy/prometheus/rules``."""
    return Path(settings.prometheus_rules_dir or DEPLOY_DIR / "rules").resolve()


def _duration(seconds: float) -> str:
    """A Prometheus duration: whole seconds as ``15s``, anything finer in milliseconds (``500ms``)."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _alertmanager_target(settings: Settings) -> tuple[str, str]:
    """(scheme, ``[host:port]`` as a YAML flow list) of the Alertmanager Prometheus sends alerts to."""
    url = urllib.parse.urlsplit(settings.alertmanager_uri)
    if url.path not in ("", "/"):
        raise SetupError(
            f"alertmanager_url {settings.alertmanager_url} has a path ({url.path}); "
            "give the Alertmanager's root URL, http(s)://host:port"
        )
    local_missing = not settings.alertmanager_external and alertmanager.executable(settings) is None
    return url.scheme, "[]" if local_missing else json.dumps([url.netloc])


def render_config(settings: Settings, template: str | None = None) -> str:
    """``deploy/prometheus/prometheus.yml`` with its placeholders filled in from ``settings``."""
    if template is None:
        path = DEPLOY_DIR / "prometheus.yml"
        try:
            template = path.read_text()
        except OSError as e:
            raise SetupError(
                f"cannot read the Prometheus configuration template {path}: {e.strerror or e}; "
                "run fleetloop from its source checkout"
            ) from e
    scheme, targets = _alertmanager_target(settings)
    values = {
        "interval": _duration(settings.prometheus_scrape_interval_s),
        "rule_files": str(rules_dir(settings) / "*.yml"),
        "targets_files": str(targets_dir(settings.state_dir).resolve() / "*.json"),
        "self_target": f"{settings.host}:{settings.prometheus_port}",
        "alertmanager_scheme": scheme,
        "alertmanager_targets": targets,
    }
    try:
        return string.Template(template).substitute(values)
    except (KeyError, ValueError) as e:
        raise SetupError(f"the Prometheus configuration template has an unknown placeholder: {e}") from e


def _prepare(settings: Settings, folder: Path) -> None:
    why = missing(settings)
    if why is not None:
        raise SetupError(f"prometheus: {why}")
    rules = rules_dir(settings)
    if not any(rules.glob("*.yml")):
        raise SetupError(
            f"no alert rule files (*.yml) in {rules}; set FLEETLOOP_PROMETHEUS_RULES_DIR to a folder that has them"
        )
    targets_dir(settings.state_dir).mkdir(parents=True, exist_ok=True)
    (folder / "prometheus.yml").write_text(render_config(settings))


def _command(settings: Settings, folder: Path) -> list[str]:
    return [
        settings.prometheus_executable,
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--storage.tsdb.retention.time={round(settings.prometheus_retention_h * 3600)}s",
        f"--storage.tsdb.retention.size={settings.prometheus_retention_mb}MB",
        f"--web.listen-address={settings.host}:{settings.prometheus_port}",
        "--web.enable-lifecycle",  # POST /-/reload re-reads the rule files after an edit
        "--web.page-title=fleetloop Prometheus",
    ]


def prometheus_health(settings: Settings) -> Health:
    """Healthy when /-/ready answers 200; the detail counts the loaded rules and the targets that are up."""
    got = ready_json(settings.prometheus_uri, "/api/v1/rules", "/api/v1/targets?state=active")
    if isinstance(got, Health):
        return got
    try:
        groups = got[0]["data"]["groups"]
        targets = got[1]["data"]["activeTargets"]
        rules = sum(len(g.get("rules", [])) for g in groups)
        up = sum(1 for t in targets if t.get("health") == "up")
    except (KeyError, TypeError, AttributeError) as e:
        return Health(False, f"{settings.prometheus_uri} answered an unexpected API document ({type(e).__name__}: {e})")
    return Health(True, f"ready; {rules} rules in {len(groups)} groups; {up} of {len(targets)} targets up")


SPEC = ServiceSpec(
    name="prometheus",
    description="Prometheus: scrapes every fleetloop exporter, evaluates the alert rules",
    address=lambda s: s.prometheus_uri,
    is_external=lambda s: s.prometheus_external,
    ports=lambda s: [s.prometheus_port],
    command=_command,
    health=prometheus_health,
    cmdline_marker="--web.page-title=fleetloop Prometheus",
    prepare=_prepare,
    metrics_port=lambda s: s.prometheus_port,
    missing=missing,
)
