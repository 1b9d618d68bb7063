"""The label stage: the vehicle's labeller over the lake in tick order, audited against ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetloop.pipelines.datasets import LABEL_COLUMNS, list_labelled, read_labelled
from fleetloop.pipelines.label import audit_labels, label_columns, label_pending
from fleetloop.platform.bus.schemas import TELEMETRY_FRAMES
from fleetloop.platform.errors import DataError
from tests.pipelines.fleet_lake import write_fleet_lake


def clip(vehicle: str, ticks: list[int], speed_mps: float = 20.0, gap0_m: float | None = None) -> dict[str, np.ndarray]:
    """Telemetry frames of one vehicle; with ``gap0_m`` a stationary target straight ahead (radar and lidar)."""
    n = len(ticks)
    cols = TELEMETRY_FRAMES.zeros(n)
    t = np.asarray(ticks)
    cols["tick"] = t.astype(np.uint32)
    cols["seq"] = t.astype(np.uint32)
    cols["ego_speed_mps"][:] = speed_mps
    cols["command_accel_mps2"][:] = 0.0
    cols["lidar_range_m"][:] = np.inf
    if gap0_m is not None:
        cols["radar_range_m"][:, 0] = gap0_m - speed_mps * 0.1 * (t - t[0])
        cols["radar_range_rate_mps"][:, 0] = -speed_mps
        cols["radar_valid_bits"][:] = 1
        cols["lidar_range_m"][:] = cols["radar_range_m"][:, :1]  # lidar confirms the stationary radar target
    out: dict[str, np.ndarray] = dict(cols)
    out["vehicle_id"] = np.array([vehicle] * n, dtype=object)
    return out


def cat(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_an_obstacle_closing_in_is_labelled_a_hazard_with_braking_needed() -> None:
    out = label_columns(clip("a", list(range(60)), gap0_m=50.0))
    assert out["label_valid"][0]
    assert out["label_hazard"][0] == 1.0
    assert out["label_target_accel_mps2"][0] < -3.0


def test_free_road_is_no_hazard_and_keeps_the_applied_command() -> None:
    out = label_columns(clip("a", list(range(60))))
    v = out["label_valid"]
    assert v[:30].all()
    assert (out["label_hazard"][v] == 0).all()
    assert np.allclose(out["label_target_accel_mps2"][v], 0.0)


def test_frames_are_labelled_per_vehicle_in_tick_order_whatever_order_they_arrive_in() -> None:
    frames = cat(clip("b", list(range(40)), gap0_m=60.0), clip("a", list(range(40))))
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(frames["tick"]))
    shuffled = {k: v[perm] for k, v in frames.items()}
    a, b = label_columns(frames), label_columns(shuffled)
    for k in LABEL_COLUMNS:
        assert np.array_equal(a[k], b[k])
    assert list(a["vehicle_id"][:40]) == ["a"] * 40


def test_a_frame_whose_horizon_is_missing_from_the_lake_is_not_valid() -> None:
    out = label_columns(clip("a", [*range(10), *range(100, 140)]))
    assert not out["label_valid"][:10].any()  # their next 3 s were never uploaded
    assert out["label_valid"][10:20].all()


def test_a_vehicle_repeating_a_tick_or_missing_columns_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="two frames at tick"):
        label_columns(clip("a", [1, 2, 2, 3]))
    bad = clip("a", [1, 2])
    del bad["radar_valid_bits"]
    with pytest.raises(DataError, match="radar_valid_bits"):
        label_columns(bad)


def test_labels_of_a_real_fleet_run_are_audited_against_ground_truth(tmp_path: Path) -> None:
    n = write_fleet_lake(tmp_path)
    report, events = label_pending(tmp_path)
    assert report.frames == n and report.segments == 2 and len(events) == 2
    q = report.quality
    assert q["matched"] == n
    assert 0.3 < q["hazard_recall"] <= 1.0 and 0.2 < q["hazard_precision"] <= 1.0
    assert 0.0 < q["target_accel_mae_mps2"] < 3.0
    assert report.conditions["fog"] > report.conditions["clear"]  # a fog fleet, by its own estimates
    datasets = list_labelled(tmp_path)
    assert sorted(d.dataset_id for d in datasets) == sorted(e.dataset_id for e in events)
    assert all(d.content_sha256.startswith("sha256:") for d in datasets)
    assert len(read_labelled(datasets[0])["label_valid"]) == datasets[0].rows
    again, more = label_pending(tmp_path)  # idempotent: nothing is labelled twice
    assert more == [] and again.skipped_already_labelled == 2


def test_audit_without_ground_truth_says_nothing_was_matched() -> None:
    labelled = label_columns(clip("a", list(range(40))))
    q = audit_labels(labelled, {})
    assert q.matched == 0 and np.isnan(q.hazard_recall)


def test_an_empty_lake_labels_nothing(tmp_path: Path) -> None:
    report, events = label_pending(tmp_path)
    assert events == [] and report.frames == 0
