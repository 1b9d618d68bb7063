"""`sim run` with telemetry puts every vehicle's heartbeat on the fleet-health topic, keyed by vehicle, and the
canary controller's edge checks believe them."""

from __future__ import annotations

import uuid

import pytest

from fleetloop.cli.sim import simulate
from fleetloop.platform.bus import FLEET_HEALTH, BusConsumer, FleetHealth
from fleetloop.platform.canary.validate import check_heartbeat
from fleetloop.platform.settings import Settings

pytestmark = pytest.mark.integration


def test_a_short_run_puts_believable_heartbeats_on_the_topic(stack_settings: Settings, kafka_bootstrap: str) -> None:
    tag = "hb" + uuid.uuid4().hex[:8]
    out = simulate(
        stack_settings,
        vehicles=8,
        minutes=0.25,  # 15 s: beats at 5 s, 10 s, 15 s
        weather="mixed",
        seed=2,
        fallback_only=True,
        telemetry=True,
        fleet_tag=tag,
        heartbeat_s=5.0,
    )
    tel = out["counts"]["telemetry"]
    assert tel["heartbeats_submitted"] == tel["heartbeats_sent"] == 8 * 3
    assert tel["heartbeats_lost"] == {}
    beats: list[tuple[bytes | None, FleetHealth]] = []
    with BusConsumer(stack_settings, [FLEET_HEALTH], group_id=f"t-{tag}", client_id="test") as consumer:
        for polled in consumer.poll_batches(idle_timeout_s=10.0):
            beats += [
                (d.key, d.value)
                for d in polled.deliveries
                if isinstance(d.value, FleetHealth) and d.value.vehicle_id.startswith(tag + "-")
            ]
            if len(beats) >= 24:
                break
    assert len(beats) == 24
    assigned = {f"{tag}-{i}": 0 for i in range(8)}
    last: dict[str, int] = {}
    for key, hb in sorted(beats, key=lambda kb: kb[1].beat_seq):
        assert key == hb.vehicle_id.encode()
        assert hb.period_s == pytest.approx(5.0)
        assert check_heartbeat(hb, assigned, last) is None
        last[hb.vehicle_id] = hb.beat_seq
    assert set(last.values()) == {3}
