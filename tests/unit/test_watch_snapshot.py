"""The watch's pure part: Prometheus' API documents and exporter pages in, one snapshot out."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from fleetloop.platform.metrics import MetricsRegistry
from fleetloop.platform.metrics.query import (
    COLLISION_RATE_BY_MODEL_VERSION,
    HISTORY_QUERIES,
    Sample,
    TargetHealth,
    alerts_from_api,
    build_snapshot,
    parse_exposition,
    samples_from_vector,
    targets_from_api,
)


def _s(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, labels, value)


def _snapshot(samples: list[Sample], targets: list[TargetHealth] | None = None):  # type: ignore[no-untyped-def]
    return build_snapshot(samples, targets or [], None, source="exporters", source_url="-", taken_at_s=0.0)


def test_safety_rates_are_events_per_1000_km_per_version_and_condition_summed_over_processes() -> None:
    d, ev = "fleetloop_sim_distance_meters_total", "fleetloop_sim_condition_events_total"
    snap = _snapshot(
        [
            _s(d, 20_000.0, model_version="v3", condition="fog", pid="1"),
            _s(d, 30_000.0, model_version="v3", condition="fog", pid="2"),  # a second sim process
            _s(ev, 2, model_version="v3", condition="fog", event="collision", pid="1"),
            _s(ev, 3, model_version="v3", condition="fog", event="near_miss", pid="2"),
            _s(ev, 9, model_version="v3", condition="fog", event="phantom_brake", pid="2"),  # not a safety event
            _s(d, 0.0, model_version="v4", condition="clear"),
        ]
    )
    fog, clear = sorted(snap.safety, key=lambda r: r.model_version)
    assert (fog.km, fog.collisions, fog.near_misses) == (50.0, 2, 3)
    assert fog.per_1000_km == pytest.approx(100.0)  # 5 events in 50 km
    assert clear.per_1000_km is None  # no distance, no rate (not 0, not NaN)
    json.dumps(snap.to_dict(), allow_nan=False)  # one JSON document, no NaN in it


def test_throughput_reasons_pipeline_and_last_verdicts() -> None:
    verdict = "fleetloop_pipeline_validation_verdict_timestamp_seconds"
    snap = _snapshot(
        [
            _s("fleetloop_sim_vehicle_steps_per_second", 900.0, pid="1"),
            _s("fleetloop_sim_vehicle_steps_per_second", 100.0, pid="2"),
            _s("fleetloop_sim_fallback_reason_activations_total", 4, reason="deadline", condition="fog"),
            _s("fleetloop_sim_fallback_reason_activations_total", 6, reason="deadline", condition="clear"),
            _s("fleetloop_sim_fallback_reason_activations_total", 1, reason="ttc_critical", condition="clear"),
            _s("fleetloop_pipeline_rows_collected_total", 120, table="telemetry"),
            _s("fleetloop_pipeline_dead_lettered_total", 2, table="telemetry", reason="schema"),
            _s("fleetloop_pipeline_consumer_lag_records", 40, stage="collect", topic="fleet.telemetry"),
            _s("fleetloop_rollout_wave", 2, model="fleet-policy", version="7"),
            *(_s(verdict, 1000.0 + i, model="fleet-policy", version=str(i), verdict="passed") for i in range(7)),
            _s(verdict, float("nan"), model="fleet-policy", version="99", verdict="rejected"),  # never shown
        ]
    )
    assert snap.vehicle_steps_per_s == 1000.0
    assert snap.fallback_reasons == {"deadline": 10, "ttc_critical": 1}
    assert snap.pipeline_records == {"telemetry": 120}
    assert snap.dead_letters == {"telemetry/schema": 2}
    assert snap.consumer_lag == {"collect/fleet.telemetry": 40}
    assert snap.rollout_waves == {"fleet-policy/7": 2}
    assert [v.version for v in snap.verdicts] == ["6", "5", "4", "3", "2"]  # the newest five


def test_prometheus_documents_become_samples_targets_and_alerts() -> None:
    vector = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {
                    "metric": {"__name__": "fleetloop_sim_vehicle_steps_total", "process": "sim", "pid": "7"},
                    "value": [1700000000.0, "3600"],
                }
            ],
        },
    }
    assert samples_from_vector(vector) == [
        Sample("fleetloop_sim_vehicle_steps_total", {"process": "sim", "pid": "7"}, 3600.0)
    ]
    targets = {
        "status": "success",
        "data": {
            "activeTargets": [
                {
                    "scrapePool": "fleetloop",
                    "labels": {"process": "sim", "pid": "7", "instance": "127.0.0.1:1"},
                    "health": "up",
                    "lastError": "",
                },
                {
                    "scrapePool": "fleetloop",
                    "labels": {"process": "collect", "instance": "127.0.0.1:2"},
                    "health": "down",
                    "lastError": "connection refused",
                },
                {"scrapePool": "prometheus", "labels": {"instance": "127.0.0.1:3"}, "health": "up"},
            ]
        },
    }
    up, down = targets_from_api(targets)
    assert up.up and (up.process, up.pid) == ("sim", "7")
    assert not down.up and down.error == "connection refused"
    alerts = {
        "status": "success",
        "data": {
            "alerts": [
                {"labels": {"alertname": "B", "severity": "warning"}, "state": "pending", "annotations": {}},
                {
                    "labels": {"alertname": "A", "severity": "critical"},
                    "state": "firing",
                    "annotations": {"summary": "Fallback  activations\n surge"},
                    "activeAt": "2026-01-01T00:00:00Z",
                },
            ]
        },
    }
    firing, pending = alerts_from_api(alerts)
    assert (firing.name, firing.severity, firing.summary) == ("A", "critical", "Fallback activations surge")
    assert pending.state == "pending"
    with pytest.raises(ValueError, match="bad_data"):
        samples_from_vector({"status": "error", "errorType": "bad_data", "error": "bad_data: parse error"})


def test_an_exporter_page_gives_its_fleetloop_series_without_created_samples() -> None:
    reg = MetricsRegistry(process_collectors=False)
    reg.counter("fleetloop_pipeline_rows_collected_total", "Rows.", ["table"]).labels(table="t").inc(5)
    samples = parse_exposition(reg.exposition().decode())
    names = {s.name for s in samples}
    assert names == {"fleetloop_pipeline_rows_collected_total", "fleetloop_build_info"}
    (rows,) = [s for s in samples if s.name.endswith("_total")]
    assert rows.labels == {"table": "t"} and rows.value == 5.0


def test_every_history_query_fills_its_rate_window_and_keeps_its_selectors() -> None:
    for promql, _label, _unit in HISTORY_QUERIES.values():
        q = promql.format(w="60s", ws="300s")
        assert "{w" not in q and ("[60s]" in q or "[300s]" in q) and q.count("(") == q.count(")")
    safety = HISTORY_QUERIES["collisions + near misses per 1,000 km"][0].format(w="60s", ws="300s")
    assert "[300s]" in safety
    assert '{event=~"collision|near_miss"}' in safety and "* 1e6" in safety  # events per metre -> per 1,000 km


def test_the_readme_and_the_docs_quote_the_collision_rate_query_as_the_code_has_it() -> None:
    repo = Path(__file__).resolve().parents[2]
    for doc in ("README.md", "docs/observability.md"):
        assert f"```promql\n{COLLISION_RATE_BY_MODEL_VERSION}\n```" in (repo / doc).read_text(), doc


def test_a_snapshot_saved_as_svg_is_the_dashboard_as_the_terminal_shows_it(tmp_path: Path) -> None:
    from fleetloop.cli.watch import save_svg

    d, ev = "fleetloop_sim_distance_meters_total", "fleetloop_sim_condition_events_total"
    snap = _snapshot(
        [
            _s(d, 10_000.0, model_version="v3", condition="fog"),
            _s(ev, 1, model_version="v3", condition="fog", event="collision"),
            _s("fleetloop_pipeline_consumer_lag_records", 40, stage="collect", topic="fleetloop.telemetry"),
        ]
    )
    path = tmp_path / "watch.svg"
    save_svg(snap, path)
    svg = path.read_text()
    assert svg.startswith("<svg")
    # rich writes each run of text as an element of its own, with &#160; for spaces: join the runs of the page
    text = html.unescape("".join(re.findall(r">([^<]*)</text>", svg))).replace("\xa0", " ")
    for shown in ("fleetloop watch", "v3 / fog", "100.0", "lag: collect/fleetloop.telemetry"):
        assert shown in text, shown
