"""`sim run` with the real broker: telemetry on its topic without ground truth, the ground truth on the audit
topic; a broker that is down does not stop the fleet, and what it did not take is spooled (or, without a spool,
counted lost)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from fleetloop.cli.sim import simulate
from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.telemetry import BusTelemetrySink, CollectingSink, UploadedFrames, concat_frames
from fleetloop.edge_agent.telemetry_spool import TelemetrySpool
from fleetloop.platform.bus import GROUND_TRUTH_AUDIT, TELEMETRY, TELEMETRY_FRAMES, BusConsumer, FrameBatch
from fleetloop.platform.settings import Settings

GT_NAMES = {"true_hazard_dist_m", "true_hazard_type", "true_ttc_s", "true_visibility_m", "expert_accel_mps2"}


def _read(settings: Settings, topic: object, tag: str, want: int) -> dict[str, list[FrameBatch]]:
    got: dict[str, list[FrameBatch]] = {}
    n = 0
    with BusConsumer(settings, [topic], group_id=f"t-{tag}", client_id="test") as consumer:  # type: ignore[list-item]
        for polled in consumer.poll_batches(idle_timeout_s=10.0):
            for d in polled.deliveries:
                if isinstance(d.value, FrameBatch) and d.value.vehicle_id.startswith(tag + "-"):
                    got.setdefault(d.value.vehicle_id, []).append(d.value)
                    n += d.value.n_frames
            consumer.commit(polled)
            if n >= want:
                break
    return got


@pytest.mark.integration
def test_sim_run_sends_telemetry_and_ground_truth_on_separate_topics(
    stack_settings: Settings, kafka_bootstrap: str
) -> None:
    tag = "t" + uuid.uuid4().hex[:8]
    out = simulate(
        stack_settings,
        vehicles=30,
        minutes=0.3,
        scenario="mixed",
        weather="mixed",
        seed=1,
        fallback_only=True,
        telemetry=True,
        fleet_tag=tag,
    )
    tel_stats = out["counts"]["telemetry"]
    sent = tel_stats["frames_sent"]
    assert sent == out["counts"]["uploads"]["frames_uploaded"] > 0
    assert tel_stats["frames_lost"] == {}
    telemetry = _read(stack_settings, TELEMETRY, tag, sent)
    audit = _read(stack_settings, GROUND_TRUTH_AUDIT, tag, sent)
    assert sum(b.n_frames for bs in telemetry.values() for b in bs) == sent
    for vid, batches in telemetry.items():
        for b in batches:
            assert set(b.columns) == {c.name for c in TELEMETRY_FRAMES.columns}
            assert not GT_NAMES & set(b.columns)
        tel_seq = np.sort(np.concatenate([b.seq for b in batches]))
        gt_seq = np.sort(np.concatenate([b.seq for b in audit[vid]]))
        np.testing.assert_array_equal(tel_seq, gt_seq)


def test_broker_down_the_fleet_keeps_driving_and_counts_the_loss(stack_settings: Settings) -> None:
    dead = stack_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    sink = BusTelemetrySink(
        dead, max_outbox_frames=20, flush_interval_s=0.2, send_timeout_s=1.0, retry_backoff_s=0.2, spool=False
    )
    config = FleetConfig(scenario="mixed", weather="mixed", seed=2, progress_reference=False)
    runner = FleetRunner(config, range(30), sink=sink)
    summary = runner.run(150).to_dict()
    assert summary["vehicle_steps"] == 30 * 150
    final = runner.close(timeout_s=2.0).to_dict()["counts"]["telemetry"]
    lost = final["frames_lost"]
    assert final["frames_sent"] == 0
    assert final["frames_submitted"] > 20
    assert lost["outbox_full"] + lost["unsent_at_close"] == final["frames_submitted"]


def _by_frame(frames: UploadedFrames) -> dict[str, np.ndarray]:
    order = np.lexsort((frames.telemetry["seq"], frames.vehicle_ids))
    out = {f"tel/{k}": v[order] for k, v in frames.telemetry.items()}
    out.update({f"gt/{k}": v[order] for k, v in (frames.ground_truth or {}).items()})
    out["vehicle_ids"] = frames.vehicle_ids[order]
    return out


def test_broker_down_every_frame_the_sink_could_not_send_is_spooled_as_it_was_uploaded(
    stack_settings: Settings, tmp_path: Path
) -> None:
    dead = stack_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1", "state_dir": tmp_path})
    sink = BusTelemetrySink(
        dead, fleet_tag="spooled", max_outbox_frames=20, flush_interval_s=0.2, send_timeout_s=1.0, retry_backoff_s=0.2
    )
    config = FleetConfig(scenario="mixed", weather="mixed", seed=2, progress_reference=False)
    final = FleetRunner(config, range(30), sink=sink).run(150) and sink.close(timeout_s=2.0)
    reference = CollectingSink()  # the same fleet, every upload kept in memory
    FleetRunner(config, range(30), sink=reference).run(150)

    spooled = final["frames_spooled"]
    assert final["frames_sent"] == 0 and final["frames_lost"] == {}
    assert spooled["outbox_full"] > 0 and sum(spooled.values()) == final["frames_submitted"] > 20
    spool = TelemetrySpool.of_state_dir(tmp_path)
    assert spool.frames_waiting() == final["frames_submitted"]
    assert len(spool.files()) < final["frames_submitted"] / 10  # half the outbox per file, not a file per tick
    read = [spool.read(p) for p in spool.files()]
    assert {tag for tag, _ in read} == {"spooled"}
    got, want = _by_frame(concat_frames([f for _, f in read])), reference.frames()
    assert want is not None
    expected = _by_frame(want)
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
