"""Batched inference: equal to per-vehicle inference, scattered by version, latency in simulated time, faults."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fleetloop.edge_agent.features import PolicyInputs, features_from_observation
from fleetloop.edge_agent.inference import (
    NO_MODEL,
    STATUS_DEADLINE_MISSED,
    STATUS_INVALID_OUTPUT,
    STATUS_MODEL_FAILURE,
    STATUS_NO_MODEL,
    STATUS_OK,
    DynamicBatcher,
    EngineConfig,
    InferenceEngine,
    InferenceFailure,
    LatencyModel,
)
from fleetloop.edge_agent.policy import FusionPolicy
from fleetloop.sim import World, draw_scenarios, init_state, observe, step


def _model(seed: int) -> FusionPolicy:
    torch.manual_seed(seed)
    return FusionPolicy()


def _fleet(n: int = 40, ticks: int = 1, seed: int = 5) -> list[PolicyInputs]:
    world = World()
    ids = list(range(n))
    state = init_state(world, draw_scenarios("mixed", ids, seed), ids, seed)
    out = []
    for _ in range(ticks):
        out.append(features_from_observation(observe(world, state)))
        state = step(world, state, torch.zeros(n), world.dt_s)
    return out


def _engine(**kw: object) -> InferenceEngine:
    return InferenceEngine(EngineConfig(device="cpu", **kw))  # type: ignore[arg-type]


def test_batched_equals_per_vehicle_and_does_not_depend_on_the_split() -> None:
    x = _fleet()[0]
    assert len({int(m.sum()) for m in x.radar_mask}) > 1  # variable radar counts: padding is exercised
    eng = _engine()
    slots = torch.full((x.batch,), eng.add_model("1", _model(0)), dtype=torch.int64)
    batched = eng.infer(x, slots)
    assert bool(batched.valid.all())
    one_by_one = [eng.infer(x.index(slice(i, i + 1)), slots[i : i + 1]).accel_mps2 for i in range(x.batch)]
    torch.testing.assert_close(batched.accel_mps2, torch.cat(one_by_one), rtol=1e-5, atol=1e-5)
    for max_batch in (1, 7, 1000):
        split = _engine(max_batch=max_batch)
        split.add_model("1", _model(0))
        out = split.infer(x, slots)
        for name in ("accel_mps2", "hazard_prob", "uncertainty_mps2"):
            torch.testing.assert_close(getattr(out, name), getattr(batched, name), rtol=1e-5, atol=1e-5)


def test_mixed_versions_are_scattered_back_to_vehicle_order() -> None:
    x = _fleet()[0]
    eng = _engine(max_batch=8)
    a, b = eng.add_model("1", _model(0)), eng.add_model("2", _model(1))
    slots = torch.tensor([a, b, NO_MODEL, b, a] * (x.batch // 5))
    out = eng.infer(x, slots)
    with torch.inference_mode():
        ref_a = _model(0).act(x)[:, 0]
        ref_b = _model(1).act(x)[:, 0]
    torch.testing.assert_close(out.accel_mps2[slots == a], ref_a[slots == a], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.accel_mps2[slots == b], ref_b[slots == b], rtol=1e-5, atol=1e-5)
    assert bool((out.status[slots == NO_MODEL] == STATUS_NO_MODEL).all())
    assert bool((out.valid == (slots != NO_MODEL)).all())
    assert out.status_counts()["no_model"] == x.batch // 5


def test_a_latency_spike_past_the_deadline_is_flagged_and_never_acted_on() -> None:
    x = _fleet()[0]
    eng = _engine(deadline_s=0.1)
    slots = torch.full((x.batch,), eng.add_model("1", _model(0)), dtype=torch.int64)
    spike = torch.zeros(x.batch)
    spike[[3, 7]] = 0.5  # [s]
    out = eng.tick(x, slots, tick=0, vehicle_ids=torch.arange(x.batch), seed=0, spike_s=spike)
    assert out.deadline_missed.nonzero().squeeze(-1).tolist() == [3, 7]
    assert not bool(out.valid[[3, 7]].any()) and bool(out.valid.sum() == x.batch - 2)
    assert bool((out.accel_mps2[[3, 7]] == 0).all())
    assert bool((out.latency_s[[3, 7]] > 0.5).all())


def test_a_late_model_within_the_deadline_acts_on_the_previous_observation() -> None:
    frames = _fleet(ticks=2)
    eng = _engine(tick_s=0.1, deadline_s=0.25)
    model = _model(0)
    slots = torch.full((40,), eng.add_model("1", model), dtype=torch.int64)
    ids = torch.arange(40)
    spike = torch.zeros(40)
    spike[5] = 0.12  # [s]: one tick late, within the deadline
    first = eng.tick(frames[0], slots, 0, ids, seed=0, spike_s=spike)
    assert first.status[5] == STATUS_DEADLINE_MISSED  # nothing computed before the first tick
    second = eng.tick(frames[1], slots, 1, ids, seed=0, spike_s=spike)
    assert second.status[5] == STATUS_OK and second.obs_age_ticks[5] == 1
    with torch.inference_mode():
        stale = model.act(frames[0])[5, 0]
        fresh = model.act(frames[1])[:, 0]
    torch.testing.assert_close(second.accel_mps2[5], stale, rtol=1e-5, atol=1e-5)
    others = torch.arange(40) != 5
    torch.testing.assert_close(second.accel_mps2[others], fresh[others], rtol=1e-5, atol=1e-5)


def test_simulated_latency_does_not_depend_on_the_batch_a_vehicle_is_in() -> None:
    x = _fleet()[0]
    lat = LatencyModel()
    ids = torch.arange(100, 140)
    full = lat.latency_s(x, ids, 7, 0, None)
    part = lat.latency_s(x.index(slice(10, 20)), ids[10:20], 7, 0, None)
    torch.testing.assert_close(full[10:20], part, rtol=0, atol=0)
    assert float(full.min()) >= lat.base_s and float(full.std()) > 0


def test_nan_weights_never_reach_the_outputs() -> None:
    x = _fleet()[0]
    eng = _engine()
    slots = torch.full((x.batch,), eng.add_model("1", _model(0)), dtype=torch.int64)
    with torch.no_grad():
        eng.model("1").heads.weight.fill_(float("nan"))  # fault injection into a loaded model
    out = eng.infer(x, slots)
    assert bool((out.status == STATUS_INVALID_OUTPUT).all()) and not bool(out.valid.any())
    assert bool(torch.isfinite(out.accel_mps2).all())
    bad = _model(0)
    with torch.no_grad():
        bad.trunk[0].bias.fill_(float("inf"))
    with pytest.raises(ValueError, match=r"trunk\.0\.bias"):
        eng.add_model("2", bad)


class _Crashing(nn.Module):
    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_crashing_model_marks_only_its_vehicles_and_reports_a_typed_failure() -> None:
    x = _fleet()[0]
    eng = _engine()
    good, bad = eng.add_model("1", _model(0)), eng.add_model("crash", _Crashing())
    slots = torch.tensor([good, bad] * (x.batch // 2))
    out = eng.infer(x, slots)
    assert bool((out.status[slots == bad] == STATUS_MODEL_FAILURE).all())
    assert bool(out.valid[slots == good].all())
    assert isinstance(out.failures["crash"], InferenceFailure) and "illegal memory" in str(out.failures["crash"])
    with pytest.raises(InferenceFailure, match="crash"):
        eng.infer(x, slots, raise_failures=True)


def test_compiled_engine_matches_eager_for_every_batch_and_radar_size() -> None:
    """The compiled forward (dynamic shapes, ADR 0101) serves other group sizes and radar buckets without changing
    outputs, and a crashing model still fails only its vehicles."""
    x = _fleet(n=60)[0]
    eager, comp = _engine(max_batch=32), _engine(max_batch=32, compile=True)
    for eng in (eager, comp):
        eng.add_model("1", _model(0))
        eng.add_model("2", _model(1))
        eng.add_model("crash", _Crashing())
    a, b, crash = comp.slot("1"), comp.slot("2"), comp.slot("crash")
    for pattern in ([a, b, a], [a, b, b, NO_MODEL, crash], [b]):
        slots = torch.tensor(pattern * (x.batch // len(pattern)) + pattern[: x.batch % len(pattern)])
        want, got = eager.infer(x, slots), comp.infer(x, slots)
        assert torch.equal(got.status, want.status)
        for name in ("accel_mps2", "hazard_prob", "uncertainty_mps2"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-5)
        assert set(got.failures) == set(want.failures)


def test_unknown_version_lists_the_loaded_ones() -> None:
    eng = _engine()
    eng.add_model("7", _model(0))
    with pytest.raises(KeyError, match="'7'"):
        eng.slot("8")
    assert eng.slots_for(["7", None]).tolist() == [0, NO_MODEL]


def test_wall_clock_latency_is_measured_per_call() -> None:
    x = _fleet()[0]
    eng = _engine(max_batch=10)
    eng.infer(x, torch.full((x.batch,), eng.add_model("1", _model(0)), dtype=torch.int64))
    stats = eng.wall_latency_stats()
    assert stats["count"] == 4 and 0 < stats["p50_s"] <= stats["p99_s"]


def test_dynamic_batcher_fills_batches_and_times_out_partial_ones() -> None:
    b = DynamicBatcher(max_batch=10, max_wait_s=0.002)
    assert b.submit(1, 4, now_s=0.0) == []
    assert b.submit(2, 4, now_s=0.0005) == []
    assert b.submit(3, 4, now_s=0.001) == [[1, 2]]  # 12 items queued: the first full batch leaves at once
    assert b.poll(0.0025) == []  # request 3 has waited 1.5 ms
    assert b.next_deadline_s() == pytest.approx(0.003)
    assert b.poll(0.003) == [[3]]
    assert b.submit(4, 25, now_s=0.01) == [[4]]  # oversized: alone, the engine splits it
    b.submit(5, 1, now_s=0.02)
    assert b.flush() == [[5]]
