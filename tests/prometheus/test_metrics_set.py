"""Every metric that an alert rule, a dashboard panel or `fleetloop watch` reads is registered by the platform AND
set by some code, both derived from the source: a rule on a metric that is declared but never set (the consumer lag
once was) or on a name nothing exports (the release expiry once was) would never fire, and no test of the rule
alone would notice."""

from __future__ import annotations

import textwrap
from pathlib import Path

import fleetloop
from fleetloop.platform.metrics.query import HISTORY_QUERIES, WATCHED_METRICS
from fleetloop.platform.services.alertmanager import DEPLOY_DIR
from tests.prometheus.metric_sources import dashboard_names, names_in, rule_names, scan_package
from tests.prometheus.registered import registered_names

PACKAGE = Path(fleetloop.__file__).parent
DASHBOARD = DEPLOY_DIR.parent / "grafana" / "dashboards" / "fleetloop.json"


def _read_by_something() -> dict[str, set[str]]:
    return {
        "alert rules": rule_names(DEPLOY_DIR / "rules"),
        "the Grafana dashboard": dashboard_names(DASHBOARD),
        "fleetloop watch": set(WATCHED_METRICS) | names_in(q for q, _label, _unit in HISTORY_QUERIES.values()),
    }


def test_every_metric_read_by_a_rule_a_panel_or_the_watch_is_registered_and_set_by_some_code(tmp_path: Path) -> None:
    sources = scan_package(PACKAGE)
    registered = registered_names(tmp_path)
    set_somewhere = sources.set_metrics()
    read = _read_by_something()
    # the parse finds what each reader reads
    assert "fleetloop_pipeline_consumer_lag_records" in read["alert rules"] & read["the Grafana dashboard"]
    assert "fleetloop_release_metadata_expiry_timestamp_seconds" in read["alert rules"]
    assert "fleetloop_sim_condition_events_total" in read["fleetloop watch"]
    for reader, names in read.items():
        assert names - registered == set(), f"{reader} read metrics that nothing registers"
        assert names - set_somewhere == set(), f"{reader} read metrics that are declared but never set"


def test_every_declared_metric_is_set_by_some_code() -> None:
    sources = scan_package(PACKAGE)
    unset = sorted(f"{d.metric} ({d.module}:{d.line})" for d in sources.declarations if not sources.is_set(d))
    assert len(sources.declarations) > 20 and unset == []


def _package(tmp_path: Path, modules: dict[str, str]) -> Path:
    pkg = tmp_path / "fleetloop"
    for name, text in modules.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return pkg


def test_the_scan_tells_a_metric_declared_but_never_set_from_the_ways_code_sets_one(tmp_path: Path) -> None:
    pkg = _package(
        tmp_path,
        {
            "catalogue.py": """
                LAG = gauge("fleetloop_lag_records", "help", ["stage"])
                EXPIRY = gauge("fleetloop_expiry_timestamp_seconds", "help", ["role"])
                NAME = "fleetloop_rows_total"
            """,
            "stage.py": """
                from fleetloop.catalogue import EXPIRY, NAME

                def run(stop):
                    stop.set()  # a setter name on something else sets nothing
                    rows = counter(NAME, "help")
                    rows.inc()
                    counter("fleetloop_inline_total", "help").labels(x="1").inc()
                    EXPIRY.labels(role="timestamp").set(1.0)

                class Groups:
                    def __init__(self):
                        self._m = {"a": counter("fleetloop_a_total", "help"), "b": counter("fleetloop_b_total", "h")}

                    def update(self, k):
                        self._m[k].labels(v="1").inc(2)

                def made():
                    return counter("fleetloop_made_total", "help", ["r"])

                def use():
                    made().labels(r="x").inc()
                    LAG_COPY = gauge("fleetloop_never_total_seconds", "help")
            """,
        },
    )
    sources = scan_package(pkg)
    assert sources.declared() == {
        "fleetloop_lag_records",
        "fleetloop_expiry_timestamp_seconds",
        "fleetloop_rows_total",
        "fleetloop_inline_total",
        "fleetloop_a_total",
        "fleetloop_b_total",
        "fleetloop_made_total",
        "fleetloop_never_total_seconds",
    }
    assert sources.declared() - sources.set_metrics() == {"fleetloop_lag_records", "fleetloop_never_total_seconds"}
