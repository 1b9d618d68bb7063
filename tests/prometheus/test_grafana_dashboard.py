"""The provisioned Grafana dashboard and datasource: every panel queries only metrics the platform registers (so a
renamed metric cannot silently empty a panel), every query is valid PromQL for the real Prometheus, and the panels
the dashboard promises are there. The watch's own metric list is held to the same rule."""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetloop.platform import launcher
from fleetloop.platform.metrics import METRIC_PREFIX
from fleetloop.platform.metrics.query import HISTORY_QUERIES, WATCHED_METRICS
from fleetloop.platform.services import prometheus
from fleetloop.platform.services.alertmanager import DEPLOY_DIR, get_json
from fleetloop.platform.settings import Settings
from tests.conftest import free_port
from tests.prometheus.registered import base_name, registered_names

GRAFANA = DEPLOY_DIR.parent / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "fleetloop.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "fleetloop.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "fleetloop.yml"
_NAME_RE = re.compile(rf"\b{METRIC_PREFIX}[a-zA-Z0-9_]+")
# Grafana's own variables, as a Prometheus server would see them once Grafana fills them in.
_GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(_panels(p.get("panels", [])))  # a collapsed row holds its panels
    return out


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel."""
    return [(p["title"], t["expr"]) for p in _panels(_dashboard()["panels"]) for t in p.get("targets", [])]


def _names(promql: str) -> set[str]:
    return {base_name(n) for n in _NAME_RE.findall(promql)}


def test_every_panel_queries_only_metrics_the_platform_registers(tmp_path: Path) -> None:
    registered = registered_names(tmp_path)
    referenced = set().union(*(_names(expr) for _title, expr in _queries()))
    assert {"fleetloop_sim_condition_events_total", "fleetloop_rollout_wave"} <= referenced  # the parse works
    assert referenced - registered == set(), "dashboard panels query metrics that nothing registers"


def test_the_watch_reads_only_metrics_the_platform_registers(tmp_path: Path) -> None:
    registered = registered_names(tmp_path)
    plotted = set().union(*(_names(q) for q, _label, _unit in HISTORY_QUERIES.values()))
    assert set(WATCHED_METRICS) - registered == set()
    assert plotted - registered == set() and plotted


def test_the_dashboard_has_the_promised_panels_on_the_provisioned_datasource() -> None:
    dash = _dashboard()
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://127.0.0.1:19090"  # prometheus_port's default
    titles = " | ".join(p["title"].lower() for p in _panels(dash["panels"]))
    for promised in (
        "throughput",
        "by model version and condition",
        "fallback activations by reason",
        "records collected",
        "dead letters",
        "consumer lag",
        "rollout wave",
    ):
        assert promised in titles, promised
    panels = [p for p in _panels(dash["panels"]) if p["type"] != "row"]
    ids = [p["id"] for p in _panels(dash["panels"])]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"]["uid"] == source["uid"], p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == source["uid"] for t in p["targets"]), p["title"]
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus is not installed (`make prometheus`)")
def test_every_panel_query_is_valid_promql_for_the_real_prometheus(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", prometheus_port=free_port())
    launcher.up(settings, [prometheus.SPEC])
    try:
        for title, expr in _queries():
            for var, value in _GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            url = f"{settings.prometheus_uri}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
            assert get_json(url)["status"] == "success", title  # a parse error is an HTTP 400
    finally:
        launcher.down(settings, [prometheus.SPEC])
