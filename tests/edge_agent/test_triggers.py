"""Triggers and the upload budget."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fleetloop.edge_agent.labeller import LabelConfig, hindsight_labels
from fleetloop.edge_agent.triggers import (
    TRIGGER_BITS,
    TriggerConfig,
    TriggerInputs,
    TriggerState,
    trigger_bits,
    triggers_step,
    upload_policy,
)
from fleetloop.platform.bus.schemas import TriggerFlag
from fleetloop.platform.errors import FleetConfigError
from fleetloop.sim.sensors import LIDAR_BEAMS


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


def _drive(cfg: TriggerConfig, hard_at: dict[int, list[int]], ticks: int, b: int = 1) -> tuple[TriggerState, list]:
    """Run the triggers; vehicle v brakes hard at the ticks ``hard_at[v]``. Returns the state and the uploaded
    (vehicle, frame tick, bits)."""
    s = TriggerState.init(b, cfg=cfg)
    ids = torch.arange(b)
    got = []
    for tick in range(ticks):
        hard = torch.tensor([-6.0 if tick in hard_at.get(v, []) else 0.0 for v in range(b)])
        s, d = triggers_step(cfg, s, _inp(b, ego_accel_mps2=hard), ids, tick, seed=0)
        got += [(v, d.frame_tick, int(d.bits[v])) for v in ids[d.upload].tolist()]
    return s, got


def test_clip_covers_seconds_before_and_after_the_trigger() -> None:
    cfg = TriggerConfig(pre_s=0.5, post_s=0.3, sample_rate=0.0)
    _, uploaded = _drive(cfg, {0: [20]}, 40)
    assert uploaded == [(0, t, 2) for t in range(15, 24)]


def test_first_event_of_a_run_is_uploaded_whole_on_the_default_budget() -> None:
    cfg = TriggerConfig(sample_rate=0.0)
    s, uploaded = _drive(cfg, {0: [100]}, 200)
    assert [t for _, t, _ in uploaded] == list(range(100 - cfg.pre_ticks, 100 + cfg.post_ticks + 1))
    assert cfg.post_ticks >= LabelConfig().horizon_ticks  # the trigger moment gets a complete label
    assert s.totals()["clips_uploaded"]["hard_brake"] == 1


def test_a_clip_over_budget_is_refused_whole_not_cut() -> None:
    cfg = TriggerConfig(sample_rate=0.0)
    s, uploaded = _drive(cfg, {0: [100, 400]}, 600)  # the second event comes before the bucket refilled a clip
    assert [t for _, t, _ in uploaded] == list(range(100 - cfg.pre_ticks, 100 + cfg.post_ticks + 1))
    tot = s.totals()
    assert tot["clips_refused_by_budget"]["hard_brake"] == 1
    assert tot["refused_by_budget"]["hard_brake"] == cfg.clip_frames  # every frame it wanted is counted, stays on board
    # Once the bucket holds a clip again, the next event goes up whole.
    # (The starting tokens are an advance: the refill of a clip begins after advance_ticks.)
    again = 100 + 50 + round((cfg.initial_frames + cfg.clip_frames) / cfg.budget_fraction)
    s, uploaded = _drive(cfg, {0: [100, again]}, again + cfg.post_ticks + cfg.pre_ticks + 1)
    assert len(uploaded) == 2 * cfg.clip_frames


def _drive_events(cfg: TriggerConfig, events: dict[int, str], ticks: int) -> tuple[TriggerState, list[int]]:
    """One vehicle; at tick t it brakes hard (``events[t] == "hard"``) or perceives a TTC of 0.5 s (``"near"``).
    Returns the state and the uploaded frame ticks."""
    s = TriggerState.init(1, cfg=cfg)
    got = []
    for tick in range(ticks):
        kind = events.get(tick)
        inp = _inp(
            1,
            ego_accel_mps2=torch.tensor([-6.0 if kind == "hard" else 0.0]),
            perceived_ttc_s=torch.tensor([0.5 if kind == "near" else float("inf")]),
        )
        s, d = triggers_step(cfg, s, inp, torch.arange(1), tick, seed=0)
        got += [d.frame_tick] * int(d.upload.sum())
    return s, got


def test_the_reserve_keeps_a_clip_for_a_near_miss_after_the_first_event_spent_the_rest() -> None:
    cfg = TriggerConfig(sample_rate=0.0)
    # A hard brake, a second one 30 s later, then a near miss: the second hard brake finds only the reserve left.
    s, got = _drive_events(cfg, {100: "hard", 400: "hard", 700: "near"}, 900)
    clip = cfg.clip_frames
    assert got == list(range(100 - cfg.pre_ticks, 100 - cfg.pre_ticks + clip)) + list(
        range(700 - cfg.pre_ticks, 700 - cfg.pre_ticks + clip)
    )
    tot = s.totals()
    assert tot["clips_uploaded"]["hard_brake"] == 1 and tot["clips_refused_by_budget"]["hard_brake"] == 1
    assert tot["clips_uploaded"]["near_miss"] == 1
    # First come, first served without the reserve: the first hard brake took the bucket, the near miss is lost.
    s, got = _drive_events(dataclasses.replace(cfg, reserve_clips=0.0), {100: "hard", 400: "hard", 700: "near"}, 900)
    tot = s.totals()
    assert tot["clips_uploaded"]["hard_brake"] == 1 and tot["clips_refused_by_budget"]["near_miss"] == 1
    assert len(got) == cfg.clip_frames


def test_a_near_miss_may_spend_the_reserve_but_no_more() -> None:
    cfg = TriggerConfig(sample_rate=0.0)
    s, got = _drive_events(cfg, {100: "near", 400: "near", 700: "near"}, 900)
    # The free clip and the reserve: two near misses go up; the third finds the bucket empty.
    assert len(got) == 2 * cfg.clip_frames
    assert s.totals()["clips_refused_by_budget"]["near_miss"] == 1
    assert float(s.tokens[0]) >= 0.0


def test_the_random_sample_never_spends_the_reserve() -> None:
    # Random draws on every frame for a minute: the sample fills the bucket above the reserve, never the reserve.
    cfg = TriggerConfig(sample_rate=1.0, trigger_mask=TRIGGER_BITS["random_sample"])
    s, got = _drive_events(cfg, {}, 600)
    assert got and float(s.tokens.min()) >= cfg.reserve_frames - 1e-9
    assert len(got) <= cfg.initial_frames - cfg.reserve_frames + 600 * cfg.budget_fraction
    # With every trigger allowed, a near miss after a minute of such draws still finds the reserve.
    s, got = _drive_events(dataclasses.replace(cfg, trigger_mask=TriggerConfig().trigger_mask), {400: "near"}, 600)
    assert s.totals()["clips_uploaded"]["near_miss"] == 1
    assert set(range(400 - cfg.pre_ticks, 400 + cfg.post_ticks + 1)) <= set(got)
    s, _ = _drive_events(
        dataclasses.replace(cfg, trigger_mask=TriggerConfig().trigger_mask, reserve_clips=0.0), {400: "near"}, 600
    )
    assert s.totals()["clips_refused_by_budget"]["near_miss"] == 1  # first come, first served: the draws took it


def test_the_reserve_is_checked() -> None:
    with pytest.raises(FleetConfigError, match="reserve_clips"):
        TriggerConfig(reserve_clips=-1.0)
    with pytest.raises(FleetConfigError, match="severe_mask"):
        TriggerConfig(severe_mask=TRIGGER_BITS["random_sample"])
    cfg = TriggerConfig()
    assert cfg.capacity_frames >= cfg.initial_frames == cfg.clip_frames + cfg.reserve_frames


def test_overlapping_triggers_extend_the_clip_and_pay_only_for_added_frames() -> None:
    cfg = TriggerConfig(sample_rate=0.0)
    # Near misses, which may spend the reserve: the extensions are paid from it (the refill repays the advance).
    s, ticks = _drive_events(cfg, {100: "near", 101: "near", 102: "near"}, 200)
    assert ticks == list(range(100 - cfg.pre_ticks, 102 + cfg.post_ticks + 1))
    # The starting tokens (200 ticks refill none of them: they repay the advance) less the clip and the two frames
    # the extensions added.
    assert abs(float(s.tokens[0]) - (cfg.initial_frames - cfg.clip_frames - 2)) < 1e-6


def test_budget_holds_over_a_long_run_and_drops_are_counted() -> None:
    cfg = TriggerConfig()
    b, ticks = 8, 3000
    s = TriggerState.init(b, cfg=cfg)
    ids = torch.arange(b)
    uploads = torch.zeros(b)
    for tick in range(ticks):
        # A trigger-happy fleet: every vehicle hard-brakes one tick in 50.
        hard = torch.where((ids + tick) % 50 == 0, -6.0, 0.0)
        s, d = triggers_step(cfg, s, _inp(b, ego_accel_mps2=hard), ids, tick, seed=1)
        uploads += d.upload
    # At most the budget plus the starting tokens; the long-run share tends to the budget.
    assert float(uploads.max()) <= cfg.budget_fraction * ticks + cfg.initial_frames
    assert float(uploads.sum()) / (b * ticks) <= cfg.budget_fraction + cfg.initial_frames / ticks
    assert float(uploads.sum()) / (b * ticks) > 0.015  # the budget is used, not wasted
    tot = s.totals()
    assert tot["refused_by_budget"]["hard_brake"] > 0 and tot["clips_refused_by_budget"]["hard_brake"] > 0
    assert sum(tot["uploaded"].values()) == int(uploads.sum())
    assert tot["decided"]["frames"] == b * (ticks - cfg.pre_ticks)


def _storm(cfg: TriggerConfig, b: int, ticks: int) -> torch.Tensor:
    """Frames uploaded per vehicle [b] under a constant storm: every trigger fires on every tick, and the random
    sample draws every frame."""
    s = TriggerState.init(b, cfg=cfg)
    ids = torch.arange(b)
    storm = _inp(
        b,
        fallback_started=torch.ones(b, dtype=torch.bool),
        ego_accel_mps2=torch.full((b,), -6.0),
        perceived_ttc_s=torch.full((b,), 0.5),
        model_accel_mps2=torch.full((b,), 2.0),
        fallback_accel_mps2=torch.full((b,), -4.0),
        uncertainty=torch.full((b,), 0.9),
    )
    uploads = torch.zeros(b)
    for tick in range(ticks):
        s, d = triggers_step(cfg, s, storm, ids, tick, seed=3)
        uploads += d.upload
    return uploads


def test_a_ten_minute_trigger_storm_uploads_at_most_the_budget_share() -> None:
    cfg = TriggerConfig(sample_rate=1.0)
    ticks = round(600.0 / cfg.dt_s)  # ten minutes
    assert cfg.advance_ticks <= ticks
    uploads = _storm(cfg, 2, ticks)
    assert float(uploads.max()) <= cfg.budget_fraction * ticks  # every vehicle, not only the fleet on average
    # The storm spends the advance and what the refill brings in whole clips (a clip never goes up cut).
    assert float(uploads.min()) >= cfg.initial_frames
    # The first event of a run still goes up whole at once: the advance is spent in the first ticks.
    early = _storm(cfg, 1, cfg.pre_ticks + cfg.clip_frames)
    assert float(early[0]) >= cfg.clip_frames


def test_random_only_uploads_ignore_triggers() -> None:
    cfg = TriggerConfig(sample_rate=0.01, trigger_mask=TRIGGER_BITS["random_sample"])
    s, uploaded = _drive(cfg, {0: [100]}, 300)
    assert uploaded and all(bits == TRIGGER_BITS["random_sample"] for _, _, bits in uploaded)
    assert s.totals()["clips_uploaded"]["hard_brake"] == 0
    first = uploaded[0][1]
    assert [t for _, t, _ in uploaded[: cfg.sample_ticks + 1]] == list(range(first, first + cfg.sample_ticks + 1))


def test_uploaded_clip_gives_the_label_stage_a_valid_label_at_the_trigger() -> None:
    """The labeller sees only what was uploaded: the trigger frame's horizon must be in the clip."""
    cfg = TriggerConfig(sample_rate=0.0)
    _, uploaded = _drive(cfg, {0: [100]}, 200)
    ticks = np.array([t for _, t, _ in uploaded])
    assert (np.diff(ticks) == 1).all()  # contiguous
    n = len(ticks)
    frames = {
        "vehicle_id": np.zeros(n, np.int64),
        "tick": ticks,
        "ego_speed_mps": np.full(n, 15.0, np.float32),
        "ego_accel_mps2": np.zeros(n, np.float32),
        "lidar_range_m": np.full((n, LIDAR_BEAMS), 100.0, np.float32),
        "radar_range_m": np.full((n, 8), 100.0, np.float32),
        "radar_range_rate_mps": np.zeros((n, 8), np.float32),
        "radar_azimuth_rad": np.zeros((n, 8), np.float32),
        "radar_valid": np.zeros((n, 8), bool),
    }
    labels = hindsight_labels(LabelConfig(dt_s=cfg.dt_s), frames)
    valid = labels.valid.numpy()
    assert valid[ticks == 100].all()
    assert valid[ticks <= 100].all()  # the seconds before it too


def test_random_sample_is_independent_of_the_batch_split() -> None:
    cfg = TriggerConfig(sample_rate=0.01, budget_fraction=1.0)
    ids = torch.arange(1000)
    parts = [ids[ids % 3 == k] for k in range(3)]

    def run(vehicle_ids: torch.Tensor) -> dict[int, list[int]]:
        s = TriggerState.init(len(vehicle_ids), cfg=cfg)
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
    assert n > 0 and all(v == sorted(set(v)) for v in whole.values())


def test_compiled_decisions_equal_eager_ones() -> None:
    """The compiled tick decides uploads in a graph (ADR 0101), the tick a tensor: the same uploads, bits,
    refusals and counters as eager, tick by tick, the first decided frame included."""
    cfg = TriggerConfig(pre_s=0.5, post_s=0.3, bucket_frames=6, sample_rate=0.05)
    b = 64
    ids = torch.arange(1000, 1000 + b)
    g = torch.Generator().manual_seed(3)
    states = [TriggerState.init(b, cfg=cfg), TriggerState.init(b, cfg=cfg)]
    for tick in range(40):
        hard = torch.where(torch.rand(b, generator=g) < 0.08, -6.0, 0.0)
        ttc = torch.where(torch.rand(b, generator=g) < 0.05, 0.5, float("inf"))
        inp = _inp(b, ego_accel_mps2=hard, perceived_ttc_s=ttc)
        decisions = []
        for i, compiled in enumerate((False, True)):
            states[i], d = triggers_step(cfg, states[i], inp, ids, tick, seed=4, compiled=compiled)
            decisions.append(d)
        eager, comp = decisions
        assert eager.frame_tick == comp.frame_tick
        for name in ("upload", "bits", "refused", "current_bits"):
            assert torch.equal(getattr(eager, name), getattr(comp, name)), (tick, name)
    for name in ("last_fired", "tokens", "clip_until", "uploaded", "refused", "clips", "clips_refused", "decided"):
        assert torch.equal(getattr(states[0], name), getattr(states[1], name)), name
    assert int(states[0].uploaded.sum()) > 0 and int(states[0].refused.sum()) > 0  # both paths were exercised


def _drive_valued(cfg: TriggerConfig, ticks: int, fog_from: list[int], events: dict[int, str]) -> TriggerState:
    """Vehicle v drives in fog (own visibility 100 m) from tick ``fog_from[v]``; at tick t every vehicle perceives
    a TTC of 0.5 s (``events[t] == "near"``), the model and the fallback disagree by 5 m/s² (``"disagree"``), or it
    brakes hard with the model uncertain (``"hard"``)."""
    b = len(fog_from)
    s = TriggerState.init(b, cfg=cfg)
    ids = torch.arange(b)
    for tick in range(ticks):
        kind = events.get(tick)
        inp = _inp(
            b,
            perceived_ttc_s=torch.full((b,), 0.5 if kind == "near" else float("inf")),
            model_accel_mps2=torch.full((b,), 2.0 if kind == "disagree" else 0.0),
            fallback_accel_mps2=torch.full((b,), -3.0 if kind == "disagree" else 0.0),
            ego_accel_mps2=torch.full((b,), -6.0 if kind == "hard" else 0.0),
            uncertainty=torch.full((b,), 0.9 if kind == "hard" else 0.0),
            visibility_m=torch.tensor([100.0 if tick >= f else 2000.0 for f in fog_from]),
            friction=torch.full((b,), 0.9),
        )
        s, _ = triggers_step(cfg, s, inp, ids, tick, seed=0)
    return s


def test_valued_selection_asks_for_disagreement_only_where_the_uploads_lack_the_condition() -> None:
    cfg = TriggerConfig.valued(sample_rate=0.0)  # counts a clip of clear driving as known (the bootstrap's)
    # Vehicle 0 drives in clear weather, vehicle 1 into fog from tick 150. A disagreement at tick 300 teaches
    # vehicle 0 nothing new (clear, as the model knows): it does not ask; vehicle 1 (fog, none uploaded) uploads it.
    # A near miss later goes up from both, whatever the condition.
    s = _drive_valued(cfg, 500, [10_000, 150], {300: "disagree", 400: "near"})
    assert s.clips[:, 3].tolist() == [0, 1] and s.clips_refused[:, 3].tolist() == [0, 0]
    assert s.clips[:, 2].tolist() == [1, 1]
    assert s.totals()["uploaded_by_condition"]["fog"] > 0
    assert int(s.class_uploaded.sum()) == int(s.uploaded.sum())  # every uploaded frame has a condition
    # Without the known clear frames nothing counts as uploaded: rarity 1, fog is not yet rare, neither asks.
    s = _drive_valued(dataclasses.replace(cfg, known_frames=(0.0, 0.0, 0.0)), 500, [10_000, 150], {300: "disagree"})
    assert s.clips[:, 3].tolist() == [0, 0] and s.clips_refused[:, 3].tolist() == [0, 0]


def test_valued_selection_records_hard_braking_and_uncertainty_without_spending_the_budget() -> None:
    cfg = TriggerConfig.valued(sample_rate=0.0)
    s = _drive_valued(cfg, 200, [0], {50: "hard"})
    assert int(s.uploaded.sum()) == 0 and int(s.clips_refused.sum()) == 0
    s = _drive_valued(TriggerConfig(sample_rate=0.0), 200, [0], {50: "hard"})
    assert int(s.clips[0, 1]) == 1  # the plain triggers upload it


def test_valued_random_sample_fills_the_budget_and_follows_the_conditions_driven() -> None:
    cfg = TriggerConfig.valued()
    assert cfg.sample_rate > TriggerConfig().sample_rate and cfg.value_weighting
    # 64 vehicles, a minute of clear then two of fog: the sample goes where the uploads lack frames (the clear minute,
    # which the model knows, waits for a full bucket), and the fleet stays within what the advance and budget allow.
    s = _drive_valued(cfg, 1800, [600] * 64, {})
    by = s.totals()["uploaded_by_condition"]
    assert by["fog"] > 0 and by["clear"] == 0
    assert float(s.uploaded.sum(-1).max()) <= max(cfg.initial_frames, cfg.budget_fraction * 1800)


def test_valued_advance_is_ten_minutes_of_budget_and_the_random_clip_labels_more() -> None:
    cfg = TriggerConfig.valued()
    # The reserve's clip and one longer random clip: exactly what ten minutes earn, so a run of ten minutes or
    # more stays within the budget (ADR 0121), and a random clip has more frames with a full 3 s label horizon.
    assert cfg.initial_frames == pytest.approx(6000 * cfg.budget_fraction)
    assert cfg.sample_ticks + 1 > TriggerConfig().sample_ticks + 1
    assert cfg.advance_ticks == pytest.approx(6000)
    assert cfg.capacity_frames >= cfg.sample_ticks + 1 + cfg.reserve_frames + cfg.headroom_frames


def test_a_clip_of_what_the_uploads_cover_leaves_the_headroom_and_a_rare_one_does_not() -> None:
    cfg = TriggerConfig.valued(sample_rate=0.0)
    # Both vehicles see the fallback take over at tick 100: vehicle 0 in clear (what the bootstrap taught), vehicle 1
    # in fog. The fresh bucket holds the reserve and one clip: the clear clip would spend the headroom, so it waits;
    # the fog clip goes up. A near miss in clear later still spends the reserve (severe).
    b = 2
    s = TriggerState.init(b, cfg=cfg)
    for tick in range(400):
        inp = _inp(
            b,
            fallback_started=torch.full((b,), tick == 100),
            perceived_ttc_s=torch.full((b,), 0.5 if tick == 300 else float("inf")),
            visibility_m=torch.tensor([2000.0, 100.0]),
            friction=torch.full((b,), 0.9),
        )
        s, _ = triggers_step(cfg, s, inp, torch.arange(b), tick, seed=0)
    assert s.clips[:, 0].tolist() == [0, 1] and s.clips_refused[:, 0].tolist() == [1, 0]
    assert s.clips[:, 2].tolist() == [1, 1]
    # Without the headroom the clear clip takes the room above the reserve, as the plain triggers do.
    s0 = TriggerState.init(b, cfg=dataclasses.replace(cfg, common_headroom_clips=0.0))
    for tick in range(200):
        inp = _inp(b, fallback_started=torch.full((b,), tick == 100), visibility_m=torch.tensor([2000.0, 100.0]))
        s0, _ = triggers_step(dataclasses.replace(cfg, common_headroom_clips=0.0), s0, inp, torch.arange(b), tick, 0)
    assert s0.clips[:, 0].tolist() == [1, 1]


def test_valued_clear_clips_go_up_once_the_bucket_is_full() -> None:
    # A vehicle that drives only in clear weather still spends its budget: a clear clip waits until the bucket
    # holds the reserve, the headroom and the clip, which a full bucket does (else the refill would overflow).
    cfg = TriggerConfig.valued(sample_rate=1.0)
    clear = _inp(1, visibility_m=torch.full((1,), 2000.0), friction=torch.full((1,), 0.9))
    got = []
    for tokens in (cfg.capacity_frames, cfg.capacity_frames - 1.0):
        s = dataclasses.replace(TriggerState.init(1, cfg=cfg), tokens=torch.full((1,), tokens, dtype=torch.float64))
        for tick in range(cfg.pre_ticks + 1):
            s, _ = triggers_step(cfg, s, clear, torch.arange(1), tick, seed=0)
        got.append((int(s.clips[0, 5]), int(s.clips_refused[0, 5])))
    assert got == [(1, 0), (0, 1)]


def test_value_weighting_settings_are_checked() -> None:
    with pytest.raises(FleetConfigError, match="rarity_max"):
        TriggerConfig(rarity_max=0.5)
    with pytest.raises(FleetConfigError, match="known_frames"):
        TriggerConfig(known_frames=(1.0, -1.0, 0.0))
    with pytest.raises(FleetConfigError, match="common_headroom_clips"):
        TriggerConfig(common_headroom_clips=-1.0)
    with pytest.raises(FleetConfigError, match="rare_mask"):
        TriggerConfig(rare_mask=TRIGGER_BITS["random_sample"])


def test_the_random_sample_is_drawn_to_fill_the_share_asked_for_with_clips_of_its_own_length() -> None:
    valued = TriggerConfig.valued()
    random = upload_policy("random", 0.02)
    for cfg in (valued, random):
        clips_paid = cfg.sample_rate * (cfg.sample_ticks + 1) / 0.02
        assert clips_paid == pytest.approx(1.6)  # draws per clip the budget pays (a draw inside a clip adds nothing)
    assert valued.sample_ticks + 1 == 69 and random.sample_ticks + 1 < 69  # the valued clip is longer ...
    assert valued.sample_rate < random.sample_rate  # ... so fewer draws fill the same budget
    assert random.fill_rate(0.01) == pytest.approx(random.sample_rate / 2)
    assert TriggerConfig.valued(sample_rate=0.5).sample_rate == 0.5  # an explicit rate is kept
