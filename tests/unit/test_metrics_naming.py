"""Metric names are an interface (dashboards, alert rules): the rules catch a bad one at declaration."""

from __future__ import annotations

import pytest

from fleetloop.platform.metrics.naming import validate_labelnames, validate_metric_name


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("fleetloop_bus_frames_sent_total", "counter"),
        ("fleetloop_inference_latency_seconds", "histogram"),
        ("fleetloop_buffer_size_bytes", "gauge"),
        ("fleetloop_build_info", "gauge"),
        ("fleetloop_ttc_min_seconds", "gauge"),
        ("fleetloop_sim_vehicle_updates_total", "counter"),
        ("fleetloop_speed_mps", "gauge"),
    ],
)
def test_accepts_names_in_base_units_with_prefix(name: str, kind: str) -> None:
    assert validate_metric_name(name, kind) == name  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "kind", "says"),
    [
        ("bus_frames_sent_total", "counter", "must start with 'fleetloop_'"),
        ("fleetloop_", "gauge", "snake case"),
        ("fleetloop", "gauge", "must start with"),
        ("fleetloop_Latency_seconds", "gauge", "snake case"),
        ("fleetloop_latency__seconds", "gauge", "snake case"),
        ("fleetloop_latency-seconds", "gauge", "snake case"),
        ("fleetloop_inference_latency_ms", "histogram", "measure in seconds"),
        ("fleetloop_sim_minutes_total", "counter", "measure in seconds"),
        ("fleetloop_upload_mb_total", "counter", "measure in bytes"),
        ("fleetloop_buffer_kib", "gauge", "measure in bytes"),
        ("fleetloop_gpu_util_percent", "gauge", "ratio"),
        ("fleetloop_speed_kmh", "gauge", "meters_per_second"),
        ("fleetloop_frames_sent", "counter", "must end in '_total'"),
        ("fleetloop_frames_total_total", "counter", "must end in '_total'"),
        ("fleetloop_queue_depth_total", "gauge", "kept for counters"),
        ("fleetloop_latency_seconds_total", "histogram", "kept for counters"),
        ("fleetloop_latency_seconds_bucket", "histogram", "reserves"),
        ("fleetloop_frames_count", "gauge", "reserves"),
        ("fleetloop_frames_created", "gauge", "reserves"),
        ("fleetloop_ok_total", "summary", "unknown metric kind"),
    ],
)
def test_rejects_bad_names_with_a_message_that_says_how_to_fix(name: str, kind: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        validate_metric_name(name, kind)  # type: ignore[arg-type]


def test_counter_hint_suggests_the_total_name() -> None:
    with pytest.raises(ValueError, match="'fleetloop_frames_sent_total'"):
        validate_metric_name("fleetloop_frames_sent", "counter")


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        (["vehicle id"], "not an identifier"),
        (["1st"], "not an identifier"),
        (["__name"], "reserves"),
        (["le"], "reserved"),
        (["quantile"], "reserved"),
        (["topic", "topic"], "given twice"),
        ("topic", "not the string"),
    ],
)
def test_rejects_bad_label_names(labels: list[str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        validate_labelnames(labels)


def test_label_names_keep_their_order() -> None:
    assert validate_labelnames(["topic", "partition", "reason"]) == ("topic", "partition", "reason")
