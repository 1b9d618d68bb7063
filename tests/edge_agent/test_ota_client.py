"""The update client's pure core, list in, list out: each test drives ``ota_step`` tick by tick and reads the
statuses, switches and fetch requests it returns."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from fleetloop.edge_agent.ota_client import (
    Command,
    FetchOutcome,
    FetchRequest,
    HealthConfig,
    OtaActions,
    OtaInputs,
    OtaState,
    Switch,
    TickSignals,
    ota_step,
)
from fleetloop.platform.errors import FleetConfigError

CFG = HealthConfig(window_ticks=5, retry_initial_ticks=10, retry_max_ticks=25, baseline_ticks=10)
OLD, NEW = 0, 1  # version ids


def signals(
    b: int, unsafe: Sequence[int] = (), invalid: Sequence[int] = (), late: Sequence[int] = (), fb: Sequence[int] = ()
) -> TickSignals:
    def mask(rows: Sequence[int]) -> np.ndarray:
        m = np.zeros(b, dtype=bool)
        m[list(rows)] = True
        return m

    return TickSignals(
        safe=~mask(unsafe), invalid_output=mask(invalid), deadline_missed=mask(late), fallback_started=mask(fb)
    )


class Drive:
    """A shard of ``b`` vehicles on version OLD; ``step`` feeds one tick boundary and keeps every action."""

    def __init__(self, b: int = 3, cfg: HealthConfig = CFG) -> None:
        self.cfg, self.b, self.tick = cfg, b, 0
        self.state = OtaState.init([OLD] * b)
        self.log: list[OtaActions] = []

    def step(
        self, commands: Sequence[Command] = (), fetched: Sequence[FetchOutcome] = (), **sig: Sequence[int]
    ) -> OtaActions:
        self.state, out = ota_step(
            self.cfg, self.state, OtaInputs(self.tick, signals(self.b, **sig), commands, fetched)
        )
        self.tick += 1
        self.log.append(out)
        return out

    def states(self, row: int) -> list[str]:
        return [s.state for out in self.log for s in out.statuses if s.row == row]


def installed(row: int, release: int = 7) -> FetchOutcome:
    return FetchOutcome(row, NEW, "installed", release)


def test_assigned_vehicle_fetches_installs_activates_and_commits_after_a_healthy_window() -> None:
    d = Drive()
    out = d.step([Command(1, NEW, 7, "r-1")])
    assert out.fetch == [FetchRequest(1, NEW, 7, 0)] and not out.statuses
    out = d.step(fetched=[installed(1)])
    assert [s.state for s in out.statuses] == ["downloaded", "verified", "installed", "activated"]
    assert out.switches == [Switch((1,), NEW)]
    assert d.state.active_version().tolist() == [OLD, NEW, OLD]
    assert d.state.slot_version[1].tolist() == [OLD, NEW]  # the old model stays in slot A
    for _ in range(CFG.window_ticks - 1):
        assert not d.step().statuses
    out = d.step()
    [done] = out.statuses
    assert (done.row, done.state, done.release, done.rollout_id) == (1, "committed", 7, "r-1")
    assert d.state.active_release().tolist() == [0, 7, 0]
    assert d.states(0) == d.states(2) == []  # the others were never touched


def test_activation_waits_for_a_tick_where_the_fallback_is_not_braking() -> None:
    d = Drive()
    d.step([Command(0, NEW)])
    out = d.step(fetched=[installed(0)], unsafe=[0])
    assert d.states(0) == ["downloaded", "verified", "installed"] and not out.switches
    assert not d.step(unsafe=[0]).switches
    out = d.step()
    assert out.switches == [Switch((0,), NEW)] and d.states(0)[-1] == "activated"


def test_nan_output_after_activation_rolls_back_at_once_and_the_release_is_not_taken_again() -> None:
    d = Drive()
    d.step([Command(2, NEW, 7)])
    d.step(fetched=[installed(2)])
    out = d.step(invalid=[2])
    [back] = out.statuses
    assert (back.state, back.reason, back.release) == ("rolled_back", "invalid_output", 7)
    assert "1 ticks of invalid model output" in back.detail
    assert out.switches == [Switch((2,), OLD)] and d.state.active_version()[2] == OLD
    out = d.step([Command(2, NEW, 7)])
    assert [(s.state, s.reason) for s in out.statuses] == [("rejected", "rolled_back_before")]
    assert not out.fetch


def test_fallback_surge_is_judged_against_the_vehicles_own_recent_rate() -> None:
    cfg = HealthConfig(window_ticks=10, baseline_ticks=10, fallback_surge_factor=2.0, fallback_slack_activations=1.0)
    d = Drive(2, cfg)
    for t in range(40):  # vehicle 0 falls back every other tick anyway, vehicle 1 never
        d.step(fb=[0] if t % 2 == 0 else [])
    d.step([Command(0, NEW), Command(1, NEW)])
    d.step(fetched=[installed(0), installed(1)])
    for _ in range(2):  # two activations in two ticks each
        d.step(fb=[0, 1])
    assert "rolled_back" in d.states(1) and "rolled_back" not in d.states(0)
    [back] = [s for out in d.log for s in out.statuses if s.state == "rolled_back"]
    assert back.reason == "fallback_surge" and "2 fallback activations" in back.detail


def test_deadline_miss_surge_rolls_back() -> None:
    d = Drive(1, HealthConfig(window_ticks=20, deadline_slack_share=0.1))
    d.step([Command(0, NEW)])
    d.step(fetched=[installed(0)])
    for _ in range(3):
        d.step(late=[0])
    assert d.states(0)[-1] == "rolled_back"
    assert [s.reason for out in d.log for s in out.statuses][-1] == "deadline_surge"


def test_server_down_keeps_the_vehicle_on_its_slot_and_retries_with_backoff() -> None:
    d = Drive(1)
    assert d.step([Command(0, NEW)]).fetch
    requests = [0]
    for _ in range(60):
        out = d.step(fetched=[FetchOutcome(0, NEW, "unavailable")] if requests and requests[-1] == d.tick - 1 else [])
        if out.fetch:
            requests.append(d.tick - 1)
    assert np.diff(requests).tolist()[:3] == [11, 21, 26]  # 10, 20, then capped at 25 ticks, plus the answer's tick
    assert d.states(0) == [] and d.state.active_version()[0] == OLD
    d.step(fetched=[installed(0)])  # the server is back: the retry succeeds
    assert d.states(0)[-1] == "activated"


def test_refusals_busy_already_installed_and_a_rejected_fetch_say_why() -> None:
    d = Drive(2)
    d.step([Command(0, NEW)])
    out = d.step([Command(0, NEW), Command(1, OLD)])
    assert [(s.row, s.reason) for s in out.statuses] == [(0, "busy"), (1, "already_installed")]
    out = d.step(fetched=[FetchOutcome(0, NEW, "rejected", 7, "not_assigned", "vehicle 0 is in none of ...")])
    [rej] = out.statuses
    assert (rej.state, rej.reason, rej.detail) == ("rejected", "not_assigned", "vehicle 0 is in none of ...")
    assert d.state.active_version().tolist() == [OLD, OLD] and not out.switches
    assert d.step([Command(0, NEW)]).fetch  # idle again: a new command is followed


def test_a_rollback_sent_during_the_canarys_trial_is_queued_and_followed_once_the_trial_ends() -> None:
    """The controller rolls back while a canary vehicle is still trying the canary: the command is not lost."""
    d = Drive(1)
    d.step([Command(0, NEW, 7, "r-1")])
    d.step(fetched=[installed(0)])  # activated: on trial
    out = d.step([Command(0, OLD, 9, "r-1")])  # the rollback: production, re-signed as release 9
    [queued] = out.statuses
    assert (queued.state, queued.reason, queued.version, queued.release) == ("queued", "busy", OLD, 9)
    assert not out.fetch and d.state.active_version()[0] == NEW
    fetches = [f for _ in range(CFG.window_ticks) for f in d.step().fetch]  # the trial ends (committed) ...
    assert fetches == [FetchRequest(0, OLD, 9, 7)]  # ... and the queued rollback is followed at once
    out = d.step(fetched=[FetchOutcome(0, OLD, "installed", 9)])
    assert out.switches == [Switch((0,), OLD)] and d.state.active_version()[0] == OLD
    assert d.states(0)[-5:] == ["committed", "downloaded", "verified", "installed", "activated"]


def test_a_later_command_replaces_an_update_that_has_not_driven_yet_and_its_late_answer_is_ignored() -> None:
    d = Drive(2)
    d.step([Command(0, NEW, 7, "r-1"), Command(1, NEW, 7, "r-1")])  # both fetching NEW
    out = d.step([Command(0, 2, 8, "r-2"), Command(1, OLD, 9, "r-1")])  # a newer version; a rollback
    assert [(x.row, x.state, x.version, x.reason) for x in out.statuses] == [
        (0, "rejected", NEW, "superseded"),
        (1, "rejected", NEW, "superseded"),
        (1, "rejected", OLD, "already_installed"),  # never left OLD: the rollback is done
    ]
    assert out.fetch == [FetchRequest(0, 2, 8, 0)]
    out = d.step(fetched=[installed(0), installed(1)])  # the first fetches answer late: nothing of them is used
    assert not out.switches and not out.statuses and d.state.active_version().tolist() == [OLD, OLD]
    out = d.step(fetched=[FetchOutcome(0, 2, "installed", 8)])
    assert out.switches == [Switch((0,), 2)] and d.state.active_release()[0] == 8


def test_of_two_commands_queued_behind_a_trial_the_later_wins_and_the_first_is_reported_superseded() -> None:
    d = Drive(1)
    d.step([Command(0, NEW, 7)])
    d.step(fetched=[installed(0)])
    d.step([Command(0, 2, 8, "r-2")])
    out = d.step([Command(0, OLD, 9, "r-3")])
    assert [(x.state, x.version, x.reason) for x in out.statuses] == [
        ("rejected", 2, "superseded"),
        ("queued", OLD, "busy"),
    ]
    fetches = [f for _ in range(CFG.window_ticks) for f in d.step().fetch]
    assert fetches == [FetchRequest(0, OLD, 9, 7)]


def test_config_refuses_nonsense_with_the_unit() -> None:
    with pytest.raises(FleetConfigError, match="window_ticks"):
        HealthConfig(window_ticks=0)


def test_a_vehicle_that_updates_in_its_first_minute_is_judged_against_its_mean_so_far_not_a_rate_near_zero() -> None:
    """30 ticks of one activation every third tick, then an update whose window has the same rate: kept. An
    average started at 0 (0.1 x the true rate after 30 of 600 ticks) would have rolled it back."""
    cfg = HealthConfig(window_ticks=30, baseline_ticks=600, fallback_surge_factor=2.0, fallback_slack_activations=2.0)
    d = Drive(1, cfg)
    for t in range(30):
        d.step(fb=[0] if t % 3 == 0 else [])
    assert d.state.base_fallback_per_tick[0] == pytest.approx(1 / 3)
    d.step([Command(0, NEW)])
    d.step(fetched=[installed(0)])
    for t in range(40):
        d.step(fb=[0] if t % 3 == 0 else [])
    assert "committed" in d.states(0) and "rolled_back" not in d.states(0)
