"""Get-or-create declaration: modules declare at import, twice is harmless, a conflicting shape is a bug."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetloop.platform.metrics import REGISTRY, counter, gauge, histogram
from fleetloop.platform.metrics.registry import MetricsRegistry


def _samples(reg: MetricsRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(reg.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_declaring_twice_returns_the_same_metric_and_counts_once() -> None:
    reg = MetricsRegistry(process_collectors=False, build_info=False)
    a = reg.counter("fleetloop_test_frames_total", "Frames seen by the test.", ["topic"])
    b = reg.counter("fleetloop_test_frames_total", "Frames seen by the test.", ("topic",))
    assert a is b
    a.labels(topic="telemetry").inc(2)
    b.labels(topic="telemetry").inc(3)
    assert _samples(reg)[("fleetloop_test_frames_total", (("topic", "telemetry"),))] == 5.0


@pytest.mark.parametrize(
    ("labels", "doc"),
    [
        (("topic", "partition"), "Frames seen by the test."),  # other labels
        (("topic",), "Something else."),  # other meaning
    ],
)
def test_a_conflicting_second_declaration_is_refused(labels: tuple[str, ...], doc: str) -> None:
    reg = MetricsRegistry(process_collectors=False, build_info=False)
    reg.counter("fleetloop_test_frames_total", "Frames seen by the test.", ["topic"])
    with pytest.raises(ValueError, match="already declared"):
        reg.counter("fleetloop_test_frames_total", doc, labels)


def test_a_gauge_whose_series_collide_with_a_counter_is_refused() -> None:
    reg = MetricsRegistry(process_collectors=False, build_info=False)
    reg.counter("fleetloop_test_frames_total", "Frames seen by the test.")
    # The counter exposes `fleetloop_test_frames_total` and owns the family `fleetloop_test_frames`.
    with pytest.raises(ValueError, match="clashes"):
        reg.gauge("fleetloop_test_frames", "Frames in flight.")


def test_histogram_buckets_are_part_of_the_shape() -> None:
    reg = MetricsRegistry(process_collectors=False, build_info=False)
    h = reg.histogram("fleetloop_test_latency_seconds", "Latency of the test step.", buckets=[0.1, 1.0])
    assert reg.histogram("fleetloop_test_latency_seconds", "Latency of the test step.", buckets=(0.1, 1.0)) is h
    with pytest.raises(ValueError, match="already declared"):
        reg.histogram("fleetloop_test_latency_seconds", "Latency of the test step.", buckets=[0.5, 1.0])
    h.observe(0.05)
    h.observe(0.5)
    samples = _samples(reg)
    assert samples[("fleetloop_test_latency_seconds_bucket", (("le", "0.1"),))] == 1.0
    assert samples[("fleetloop_test_latency_seconds_bucket", (("le", "+Inf"),))] == 2.0


@pytest.mark.parametrize("buckets", [[], [1.0, 1.0], [2.0, 1.0]])
def test_histogram_buckets_must_increase(buckets: list[float]) -> None:
    reg = MetricsRegistry(process_collectors=False, build_info=False)
    with pytest.raises(ValueError, match="strictly increasing"):
        reg.histogram("fleetloop_test_latency_seconds", "Latency.", buckets=buckets)


def test_declaration_enforces_naming_and_help_text() -> None:
    reg = MetricsRegistry(process_collectors=False, build_info=False)
    with pytest.raises(ValueError, match="measure in seconds"):
        reg.histogram("fleetloop_test_latency_ms", "Latency.")
    with pytest.raises(ValueError, match="help text"):
        reg.gauge("fleetloop_test_depth", "  ")
    assert reg.names() == []


def test_build_info_carries_the_version() -> None:
    import fleetloop

    reg = MetricsRegistry(process_collectors=False)
    info = [
        s
        for f in text_string_to_metric_families(reg.exposition().decode())
        for s in f.samples
        if s.name == "fleetloop_build_info"
    ]
    assert len(info) == 1
    assert info[0].value == 1.0
    assert info[0].labels["version"] == fleetloop.__version__


def test_the_process_registry_has_process_metrics_and_module_helpers_use_it() -> None:
    c = counter("fleetloop_test_module_helper_total", "Counter declared through the module helper.")
    key = ("fleetloop_test_module_helper_total", ())
    before = _samples(REGISTRY)[key]
    c.inc(2)
    assert _samples(REGISTRY)[key] == before + 2
    text = REGISTRY.exposition().decode()
    assert "process_cpu_seconds_total" in text
    assert "fleetloop_test_module_helper_total" in REGISTRY.names()


@pytest.mark.parametrize(
    ("declare", "name", "why"),
    [
        (counter, "sim_collisions_total", "must start with 'fleetloop_'"),
        (counter, "fleetloop_test_collisions", "must end in '_total'"),
        (gauge, "fleetloop_test_queue_total", "kept for counters"),
        (histogram, "fleetloop_test_upload_kb", "measure in bytes"),
        (gauge, "fleetloop_Test_depth", "snake case"),
        (counter, "fleetloop_test_rows_count", "reserves"),
    ],
)
def test_a_name_that_breaks_the_rules_is_refused_at_registration_and_never_exported(
    declare: Callable[[str, str], object], name: str, why: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        declare(name, "A metric with a bad name.")
    assert name not in REGISTRY.names()
    exported = {family.name for family in text_string_to_metric_families(REGISTRY.exposition().decode())}
    assert name.removesuffix("_total") not in exported and name not in exported
