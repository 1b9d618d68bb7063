"""Shadow mode: the disagreement sums (list in, list out), the core's shadow phase, and a real fleet shard running a
candidate fetched from a real signed repository over HTTP on 127.0.0.1 beside its active model, never acting."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from fleetloop.cli.sim_metrics import SHADOW_COMPARED_METRIC, ShadowCounters
from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.ota_agent import OtaAgent, OtaSpec
from fleetloop.edge_agent.ota_bus import MemoryTransport
from fleetloop.edge_agent.ota_client import (
    Command,
    FetchOutcome,
    OtaActions,
    OtaInputs,
    OtaState,
    ShadowEnd,
    Switch,
    ota_step,
)
from fleetloop.edge_agent.ota_shadow import ShadowConfig, ShadowTally, ShadowTick, accumulate, rates, shadow_rates
from fleetloop.edge_agent.policy import FusionPolicy
from fleetloop.platform.bus.events import OtaCommand, OtaStatus
from fleetloop.platform.bus.serde import decode, encode
from fleetloop.platform.errors import FleetConfigError
from fleetloop.platform.metrics import REGISTRY
from fleetloop.platform.releases.repository import ReleaseRepository
from tests.edge_agent.test_ota_client import CFG, NEW, OLD, signals
from tests.edge_agent.test_ota_fleet import ASSIGNED, FLEET, HEALTH, MODEL, Fleet, publish, repo, server
from tests.platform.release_data import flip_a_bit, served_artifact

__all__ = ["repo", "server"]  # the signed-release fixtures

SHADOW = ShadowConfig(differ_mps2=0.5, report_every_ticks=5)
CONDS = ("clear", "fog")


# -- the sums, list in, list out ---------------------------------------------------------------------------------


def tick(rows: list[int], cond: list[int], a: list[float], b: list[float], valid_b: list[bool]) -> ShadowTick:
    n = len(rows)
    return ShadowTick(
        rows=np.array(rows),
        condition=np.array(cond),
        active_accel_mps2=np.array(a),
        shadow_accel_mps2=np.array(b),
        active_hazard=np.full(n, 0.25),
        shadow_hazard=np.full(n, 0.5),
        active_valid=np.ones(n, dtype=bool),
        shadow_valid=np.array(valid_b),
    )


def test_disagreement_sums_per_vehicle_and_condition_and_their_rates() -> None:
    t = ShadowTally.init(3, len(CONDS))
    t = accumulate(SHADOW, t, tick([0, 2], [0, 1], [1.0, -2.0], [0.2, -2.25], [True, True]))
    t = accumulate(SHADOW, t, tick([0], [1], [0.0], [0.0], [False]))  # the candidate's output invalid: no compare
    t = accumulate(SHADOW, t, tick([0], [0], [-1.0], [-1.5], [True]))  # exactly the threshold apart: no differ
    assert t.compared_ticks.tolist() == [[2, 0], [0, 0], [0, 1]]
    assert t.differ_ticks.tolist() == [[1, 0], [0, 0], [0, 0]]
    assert t.accel_abs_diff_sum_mps2[0].tolist() == pytest.approx([1.3, 0.0])
    assert t.invalid_ticks.tolist() == [[0, 1], [0, 0], [0, 0]]
    r = rates(t.row(0), CONDS)
    assert r["clear"] == pytest.approx(
        {"compared_ticks": 2, "differ_share": 0.5, "accel_mae_mps2": 0.65, "hazard_mae": 0.25, "invalid_ticks": 0}
    )
    assert r["fog"]["compared_ticks"] == 0 and r["fog"]["differ_share"] == 0.0  # nothing compared: 0, not NaN
    assert rates(t.total(), CONDS)["all"]["compared_ticks"] == 3
    assert t.reset([0]).compared_ticks.tolist() == [[0, 0], [0, 0], [0, 1]]
    with pytest.raises(FleetConfigError, match="differ_mps2"):
        ShadowConfig(differ_mps2=0)


# -- the core: shadow phase --------------------------------------------------------------------------------------


def step(
    state: OtaState, t: int, commands: Sequence[Command] = (), fetched: Sequence[FetchOutcome] = ()
) -> tuple[OtaState, OtaActions]:
    return ota_step(CFG, state, OtaInputs(t, signals(2), commands, fetched))


def test_shadow_command_verifies_into_the_inactive_slot_never_switches_and_an_install_promotes_it() -> None:
    s = OtaState.init([OLD, OLD])
    s, out = step(s, 0, [Command(0, NEW, 7, "r-s", shadow=True)])
    assert [f.row for f in out.fetch] == [0]
    s, out = step(s, 1, fetched=[FetchOutcome(0, NEW, "installed", 7)])
    assert [x.state for x in out.statuses] == ["downloaded", "verified", "shadow_started"]
    assert not out.switches and s.shadow_version().tolist() == [NEW, -1] and s.active_version().tolist() == [OLD] * 2
    for t in range(2, 2 + 3 * CFG.window_ticks):  # shadow is no trial: nothing happens however long it runs
        s, out = step(s, t)
        assert not (out.statuses or out.switches)
    s, out = step(s, 50, [Command(0, NEW, 7, "r-s", shadow=True)])
    assert [(x.state, x.reason) for x in out.statuses] == [("rejected", "busy")]
    s, out = step(s, 51, [Command(0, NEW, 7, "r-i")])
    assert out.shadow_ends == [ShadowEnd(0, NEW, 7, "r-s", "promoted")] and not out.fetch  # no second download
    assert [x.state for x in out.statuses] == ["installed"]
    s, out = step(s, 52)
    assert out.switches == [Switch((0,), NEW)] and [x.state for x in out.statuses] == ["activated"]


def test_a_release_that_failed_its_health_window_here_may_run_in_shadow_but_is_never_activated() -> None:
    s = OtaState.init([OLD, OLD])
    s.refused_release[:] = 7  # both vehicles rolled release 7 back before
    s, out = step(s, 0, [Command(0, NEW, 7, "r-s", shadow=True), Command(1, NEW, 0, "r-i")])
    assert [f.row for f in out.fetch] == [0, 1]
    s, out = step(s, 1, fetched=[FetchOutcome(0, NEW, "installed", 7), FetchOutcome(1, NEW, "installed", 7)])
    assert [(x.row, x.state, x.reason) for x in out.statuses] == [
        (0, "downloaded", ""),
        (0, "verified", ""),
        (0, "shadow_started", ""),
        (1, "rejected", "rolled_back_before"),
    ]
    assert s.shadow_version().tolist() == [NEW, -1] and s.active_version().tolist() == [OLD, OLD]


def test_another_command_ends_the_shadow_and_is_followed() -> None:
    s = OtaState.init([OLD, OLD])
    s, _ = step(s, 0, [Command(1, NEW, 7, "r-s", shadow=True)])
    s, _ = step(s, 1, fetched=[FetchOutcome(1, NEW, "installed", 7)])
    s, out = step(s, 2, [Command(1, 5, 9, "r-x")])
    assert out.shadow_ends == [ShadowEnd(1, NEW, 7, "r-s", "superseded")]
    assert [(f.row, f.version) for f in out.fetch] == [(1, 5)] and s.shadow_version().tolist() == [-1, -1]


# -- a real shard, a real signed repository ----------------------------------------------------------------------


def make_fleet(repo: ReleaseRepository, url: str, tmp_path: Path, name: str) -> Fleet:
    spec = OtaSpec(MODEL, url, repo.trusted_root(), str(tmp_path / name), HEALTH, SHADOW, timeout_s=2.0)
    bus = MemoryTransport()
    agent = OtaAgent(spec, range(FLEET), bus)
    torch.manual_seed(0)
    config = FleetConfig(seed=3, progress_reference=False, max_uncertainty_mps2=100.0)
    runner = FleetRunner(config, range(FLEET), {"1": FusionPolicy()}, "1", hooks=[agent])
    return Fleet(runner, agent, bus)


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (NaN included)."""
    return x.dtype == y.dtype and x.shape == y.shape and x.cpu().numpy().tobytes() == y.cpu().numpy().tobytes()


def shadow_command(fleet: Fleet, vehicles: tuple[str, ...], release: int = 0) -> None:
    fleet.bus.inbox += [
        OtaCommand(rollout_id="r-shadow", vehicle_id=v, model_name=MODEL, version=2, release=release, action="shadow")
        for v in vehicles
    ]


def test_shadow_leaves_every_command_and_event_bit_identical_and_reports_disagreement_per_condition(
    repo: ReleaseRepository, server: str, tmp_path: Path
) -> None:
    fields = publish(repo, tmp_path, "2")
    plain, shadowed = make_fleet(repo, server, tmp_path, "a"), make_fleet(repo, server, tmp_path, "b")
    shadow_command(shadowed, ASSIGNED, fields.release)
    ticks = 23
    for t in range(ticks):
        plain.step()
        shadowed.step()
        a, b = plain.runner, shadowed.runner
        assert a.last_tick is not None and b.last_tick is not None
        assert same_bits(a.last_tick.command_mps2, b.last_tick.command_mps2), t
        for f in dataclasses.fields(a.last_events):
            assert same_bits(getattr(a.last_events, f.name), getattr(b.last_events, f.name)), (t, f.name)
    assert "2" in shadowed.runner.labels and shadowed.versions() == ["1"] * FLEET  # loaded, never driving
    assert plain.model_switches() == shadowed.model_switches() == 0
    live = shadowed.runner.hook_counts()["ota"]["shadow"]  # what `sim run` exports after each chunk
    ShadowCounters().update(live)
    compared_live = REGISTRY.collector_registry.get_sample_value(SHADOW_COMPARED_METRIC, {"condition": "clear"})
    assert compared_live == live["compared_ticks"]["clear"] and sum(live["compared_ticks"].values()) > 0
    shadowed.runner.close(5.0)
    for v in ASSIGNED:
        states = shadowed.states(v)
        assert states[:3] == ["downloaded", "verified", "shadow_started"]
        reports = [s for s in shadowed.bus.sent if s.vehicle_id == v and s.state == "shadow_report"]
        assert [r.reason for r in reports][-1] == "end_of_run" and len(reports) >= 4  # every 5 ticks, and the end
        last = decode(encode(reports[-1]))  # what travels on fleetloop.ota-status
        assert last.version == 2 and last.release == fields.release
        assert set(last.shadow_ticks) == {"clear", "fog", "night", "wet"}
        compared = sum(last.shadow_ticks.values())
        assert 0 < compared <= ticks
        assert all(0.0 <= x <= 1.0 for x in last.shadow_differ_share.values())
        assert sum(last.shadow_accel_mae_mps2.values()) > 0  # two differently seeded models do disagree
        assert f"of {compared} compared ticks" in last.detail
    assert [s.state for s in shadowed.bus.sent if s.vehicle_id == "4"] == []
    counts = shadowed.runner.counts()["ota"]
    per = shadow_rates(counts["shadow"])
    assert per["all"]["compared_ticks"] == sum(sum(decode(encode(r)).shadow_ticks.values()) for r in _finals(shadowed))
    assert counts["shadow_ended"] == {"end_of_run": len(ASSIGNED)}
    assert counts["shadow"]["vehicle_ticks"] >= per["all"]["compared_ticks"]


def _finals(fleet: Fleet) -> list[OtaStatus]:
    return [s for s in fleet.bus.sent if s.state == "shadow_report" and s.reason == "end_of_run"]


def test_shadow_of_a_flipped_byte_artifact_is_refused_like_an_install(
    repo: ReleaseRepository, server: str, tmp_path: Path
) -> None:
    fields = publish(repo, tmp_path, "2")
    flip_a_bit(served_artifact(repo, fields, MODEL))
    fleet = make_fleet(repo, server, tmp_path, "a")
    shadow_command(fleet, ASSIGNED)
    fleet.step(5)
    for v in ASSIGNED:
        assert fleet.states(v) == ["rejected"] and fleet.last(v).reason == "bad_hash"
    assert "2" not in fleet.runner.labels  # never deserialised, never run
    fleet.runner.close(5.0)
    assert not [s for s in fleet.bus.sent if s.state == "shadow_report"]
    assert fleet.runner.counts()["ota"]["shadow"]["vehicle_ticks"] == 0


def test_install_command_promotes_the_shadowed_release_without_a_second_download(
    repo: ReleaseRepository, server: str, tmp_path: Path
) -> None:
    fields = publish(repo, tmp_path, "2")
    fleet = make_fleet(repo, server, tmp_path, "a")
    shadow_command(fleet, ("0",), fields.release)
    fleet.step(5)
    fleet.command("2", ("0",), fields.release)
    fleet.step(3 + HEALTH.window_ticks)
    assert fleet.states("0") == [
        "downloaded",
        "verified",
        "shadow_started",
        "shadow_report",  # the periodic one at tick 5
        "shadow_report",  # the final one: promoted
        "installed",
        "activated",
        "committed",
    ]
    assert [s.reason for s in fleet.bus.sent if s.state == "shadow_report"] == ["periodic", "promoted"]
    assert fleet.versions()[0] == "2" and fleet.runner.counts()["ota"]["fetch"]["jobs"] == 1
