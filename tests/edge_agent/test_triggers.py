"""Triggers and the upload budget."""

from __future__ import annotations

import torch

from fleetloop.edge_agent.triggers import (
    TRIGGER_BITS,
    TriggerConfig,
    TriggerInputs,
    TriggerState,
    trigger_bits,
    triggers_step,
)
from fleetloop.platform.bus.schemas import TriggerFlag


def _inp(b: int, **kw: torch.Tensor) -> TriggerInputs:
    base = {
        "fallback_started": torch.zeros(b, dtype=torch.bool),
        "ego_accel_mps2": torch.zeros(b),
        "perceived_ttc_s": torch.full((b,), float("inf")),
        "model_accel_mps2": torch.zeros(b),
        "fallback_accel_mps2": torch.zeros(b),
        "model_valid": torch.ones(b, dtype=torch.bool),
        "uncertainty": torch.zeros(b),
    }
    base.update(kw)
    return TriggerInputs(**base)


def test_bits_match_the_telemetry_schema() -> None:
    assert {n.upper(): v for n, v in TRIGGER_BITS.items()} == {f.name: int(f.value) for f in TriggerFlag}


def test_each_trigger_fires_on_vehicle_known_signals() -> None:
    cfg = TriggerConfig()
    inp = _inp(
        6,
        fallback_started=torch.tensor([1, 0, 0, 0, 0, 0]).bool(),
        ego_accel_mps2=torch.tensor([0, -5.0, 0, 0, 0, 0]),
        perceived_ttc_s=torch.tensor([9, 9, 0.8, 9, 9, 9]),
        model_accel_mps2=torch.tensor([0, 0, 0, 2.0, 0, float("nan")]),
        fallback_accel_mps2=torch.tensor([0, 0, 0, -2.0, 0, -5.0]),
        uncertainty=torch.tensor([0, 0, 0, 0, 0.9, 0]),
    )
    assert trigger_bits(cfg, inp).tolist() == [1, 2, 4, 8, 16, 0]


def test_clip_covers_seconds_before_and_after_the_trigger() -> None:
    cfg = TriggerConfig(pre_s=0.5, post_s=0.3, sample_rate=0.0, bucket_frames=100.0, budget_fraction=1.0)
    s = TriggerState.init(1)
    uploaded = []
    for tick in range(40):
        hard = torch.tensor([-6.0 if tick == 20 else 0.0])
        s, d = triggers_step(cfg, s, _inp(1, ego_accel_mps2=hard), torch.tensor([5]), tick, seed=0)
        if bool(d.upload[0]):
            uploaded.append((d.frame_tick, int(d.bits[0])))
    assert uploaded == [(t, 2) for t in range(15, 24)]


def test_budget_holds_over_a_long_run_and_drops_are_counted() -> None:
    cfg = TriggerConfig()
    b, ticks = 100, 1500
    s = TriggerState.init(b)
    ids = torch.arange(b)
    uploads = torch.zeros(b)
    for tick in range(ticks):
        # A trigger-happy fleet: every vehicle hard-brakes one tick in 50.
        hard = torch.where((ids + tick) % 50 == 0, -6.0, 0.0)
        s, d = triggers_step(cfg, s, _inp(b, ego_accel_mps2=hard), ids, tick, seed=1)
        uploads += d.upload
    assert float(uploads.max()) <= cfg.budget_fraction * ticks
    assert float(uploads.sum()) / (b * ticks) > 0.019  # the budget is used, not wasted
    tot = s.totals()
    assert tot["refused_by_budget"]["hard_brake"] > 0
    assert sum(tot["uploaded"].values()) == int(uploads.sum())
    assert tot["decided"]["frames"] == b * (ticks - cfg.pre_ticks)


def test_random_sample_is_independent_of_the_batch_split() -> None:
    cfg = TriggerConfig(sample_rate=0.01, budget_fraction=1.0)
    ids = torch.arange(1000)
    parts = [ids[ids % 3 == k] for k in range(3)]

    def run(vehicle_ids: torch.Tensor) -> dict[int, list[int]]:
        s = TriggerState.init(len(vehicle_ids))
        got: dict[int, list[int]] = {int(v): [] for v in vehicle_ids}
        for tick in range(60):
            s, d = triggers_step(cfg, s, _inp(len(vehicle_ids)), vehicle_ids, tick, seed=9)
            for v in vehicle_ids[d.upload].tolist():
                got[v].append(d.frame_tick)
        return got

    whole = run(ids)
    split: dict[int, list[int]] = {}
    for p in parts:
        split.update(run(p))
    assert whole == split
    n = sum(len(v) for v in whole.values())
    assert 0.005 < n / (1000 * (60 - cfg.pre_ticks)) < 0.015
