"""The rollout controller's state as a pure reducer: ``step(state, event) -> (state, actions)``, persisted as JSON.

The service shell (Kafka consumer, registry transitions, release waves) feeds events in and carries the actions
out; it writes ``state.to_json()`` atomically after each step it acts on, so a controller killed at any point
resumes from the last state written: heartbeats after it are redelivered (the beat numbers drop the ones already
believed), and an evaluation is simply repeated.

A heartbeat costs O(1) whatever the fleet's size: the per-vehicle maps are ``persistent.VersionedMap`` and the
pending beats a ``persistent.Stack`` (an update makes a new version in O(1) and leaves the old one as it was, so
``step`` stays pure: a state may be stepped twice, as the resume test does), and cohort membership is looked up in
an index built once per wave. An evaluation costs O(the beats it folds in).

Events: ``HeartbeatReceived`` (one beat), ``Evaluate`` (fold the beats since the last evaluation into the
statistics as one batch and decide), ``Operator`` (``pause``: keep collecting, decide nothing; ``resume``;
``rollback``). Actions:
``AssignWave`` (who runs the canary and who is its baseline), ``RecordDecision``, ``Refused`` (dead-letter and
count), ``RollBack``, ``Promote``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from fleetloop.platform.bus.events import FleetHealth
from fleetloop.platform.bus.serde import decode, encode_event
from fleetloop.platform.canary.cohorts import assign_cohorts
from fleetloop.platform.canary.decide import Decision, Verdict, decide
from fleetloop.platform.canary.persistent import Stack, VersionedMap
from fleetloop.platform.canary.policy import CanaryPolicy, policy_from_mapping
from fleetloop.platform.canary.stats import CohortStats, SliceTally, update_stats
from fleetloop.platform.canary.tally import BASELINE, CANARY, tally_heartbeats
from fleetloop.platform.canary.validate import check_heartbeat, stratum_of
from fleetloop.platform.errors import DataError, SchemaError, UserInputError

__all__ = [
    "Action",
    "AssignWave",
    "ControllerState",
    "Evaluate",
    "HeartbeatReceived",
    "Operator",
    "Promote",
    "RecordDecision",
    "Refused",
    "RollBack",
    "start",
    "step",
]

V = TypeVar("V")

RUNNING, PAUSED, ROLLED_BACK, PROMOTED = "running", "paused", "rolled_back", "promoted"
UNREPORTED = "unreported"  # the stratum of a vehicle that has not sent a heartbeat yet


@dataclass(frozen=True)
class HeartbeatReceived:
    beat: FleetHealth


@dataclass(frozen=True)
class Evaluate:
    now_s: float


@dataclass(frozen=True)
class Operator:
    command: str  # "pause", "resume" or "rollback"
    now_s: float
    reason: str = ""


@dataclass(frozen=True)
class AssignWave:
    wave: int
    fraction: float
    canary: tuple[str, ...]
    baseline: tuple[str, ...]


@dataclass(frozen=True)
class RecordDecision:
    decision: Decision


@dataclass(frozen=True)
class Refused:
    vehicle_id: str
    reason: str
    message: str


@dataclass(frozen=True)
class RollBack:
    reason: str


@dataclass(frozen=True)
class Promote:
    model_version: int


Event = HeartbeatReceived | Evaluate | Operator
Action = AssignWave | RecordDecision | Refused | RollBack | Promote


@dataclass(frozen=True)
class ControllerState:
    """Everything a rollout needs to resume (see the module docstring)."""

    rollout_id: str
    policy: CanaryPolicy
    canary_version: int
    production_version: int
    phase: str = RUNNING
    wave: int = 0
    canary: tuple[str, ...] = ()
    baseline: tuple[str, ...] = ()
    strata: Mapping[str, str] = field(default_factory=VersionedMap)
    last_beat_seq: Mapping[str, int] = field(default_factory=VersionedMap)
    pending: Sequence[FleetHealth] = field(default_factory=Stack)
    stats: CohortStats = field(default_factory=CohortStats)
    wave_km: float = 0.0
    refused: Mapping[str, int] = field(default_factory=dict)
    decisions: tuple[Decision, ...] = ()
    # vehicle -> arm of the current cohorts, built once per wave (not persisted; rebuilt when the cohorts change)
    arm_index: _ArmIndex | None = field(default=None, compare=False, repr=False)

    def assigned_versions(self) -> dict[str, int]:
        """Every fleet vehicle's assigned version (canary vehicles: the canary; the rest: production)."""
        out = dict.fromkeys(self.strata, self.production_version)
        out.update(dict.fromkeys(self.canary, self.canary_version))
        return out

    def to_json(self) -> str:
        return json.dumps(
            {
                "rollout_id": self.rollout_id,
                "policy": self.policy.to_dict(),
                "canary_version": self.canary_version,
                "production_version": self.production_version,
                "phase": self.phase,
                "wave": self.wave,
                "canary": list(self.canary),
                "baseline": list(self.baseline),
                "strata": dict(sorted(self.strata.items())),
                "last_beat_seq": dict(sorted(self.last_beat_seq.items())),
                "pending": [encode_event(b).decode() for b in self.pending],
                "stats": self.stats.to_dict(),
                "wave_km": self.wave_km,
                "refused": dict(sorted(self.refused.items())),
                "decisions": [d.to_dict() for d in self.decisions],
            },
            allow_nan=False,
            sort_keys=True,
        )

    @staticmethod
    def from_json(text: str) -> ControllerState:
        try:
            d = json.loads(text)
            return ControllerState(
                rollout_id=str(d["rollout_id"]),
                policy=policy_from_mapping(d["policy"], "persisted canary policy"),
                canary_version=int(d["canary_version"]),
                production_version=int(d["production_version"]),
                phase=str(d["phase"]),
                wave=int(d["wave"]),
                canary=tuple(d["canary"]),
                baseline=tuple(d["baseline"]),
                strata=VersionedMap({str(k): str(v) for k, v in d["strata"].items()}),
                last_beat_seq=VersionedMap({str(k): int(v) for k, v in d["last_beat_seq"].items()}),
                pending=Stack(_health(b) for b in d["pending"]),
                stats=CohortStats.from_dict(d["stats"]),
                wave_km=float(d["wave_km"]),
                refused={str(k): int(v) for k, v in d["refused"].items()},
                decisions=tuple(Decision.from_dict(x) for x in d["decisions"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, SchemaError) as e:
            raise DataError(f"persisted canary controller state is damaged: {e}") from e


def _health(text: str) -> FleetHealth:
    event = decode(text.encode())
    if not isinstance(event, FleetHealth):
        raise ValueError(f"a pending heartbeat is a {type(event).__name__}")
    return event


def _assign(state: ControllerState, wave: int) -> tuple[ControllerState, AssignWave]:
    fraction = state.policy.waves[wave]
    a = assign_cohorts(state.strata, fraction, state.policy.seed, state.canary, state.policy.baseline_ratio)
    new = replace(state, wave=wave, canary=a.canary, baseline=a.baseline, wave_km=0.0)
    return new, AssignWave(wave, fraction, a.canary, a.baseline)


def start(
    policy: CanaryPolicy, rollout_id: str, canary_version: int, production_version: int, fleet: Mapping[str, str]
) -> tuple[ControllerState, list[Action]]:
    """A new rollout of ``canary_version`` over ``fleet`` (vehicle id -> stratum of its latest heartbeat, or
    ``"unreported"``); returns the first wave's assignment."""
    if not fleet:
        raise UserInputError("a rollout needs a fleet: no vehicles given")
    if canary_version == production_version:
        raise UserInputError(f"version {canary_version} is already in production; nothing to roll out")
    state = ControllerState(rollout_id, policy, canary_version, production_version, strata=VersionedMap(fleet))
    state, action = _assign(state, 0)
    return state, [action]


def step(state: ControllerState, event: Event) -> tuple[ControllerState, list[Action]]:
    """Apply one event (pure)."""
    if isinstance(event, HeartbeatReceived):
        return _heartbeat(state, event.beat)
    if isinstance(event, Operator):
        return _operator(state, event)
    return _evaluate(state, event.now_s)


@dataclass(frozen=True)
class _ArmIndex:
    """Vehicle -> ``"canary"`` / ``"baseline"`` of the cohorts ``canary`` and ``baseline`` (the very tuples)."""

    canary: tuple[str, ...]
    baseline: tuple[str, ...]
    arm_of: Mapping[str, str]


def _arms(state: ControllerState) -> _ArmIndex:
    """The state's arm index; rebuilt (O(cohort)) only when the cohorts are other tuples than it was built for."""
    idx = state.arm_index
    if idx is not None and idx.canary is state.canary and idx.baseline is state.baseline:
        return idx
    arm_of = {**dict.fromkeys(state.baseline, BASELINE), **dict.fromkeys(state.canary, CANARY)}
    return _ArmIndex(state.canary, state.baseline, arm_of)


class _AssignedVersions(Mapping[str, int]):
    """``ControllerState.assigned_versions`` as an O(1) view (no fleet-sized dict per heartbeat)."""

    def __init__(self, state: ControllerState, arms: _ArmIndex) -> None:
        self._state, self._arms = state, arms

    def __getitem__(self, vehicle_id: str) -> int:
        if self._arms.arm_of.get(vehicle_id) == CANARY:
            return self._state.canary_version
        if vehicle_id in self._state.strata:
            return self._state.production_version
        raise KeyError(vehicle_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._state.strata)

    def __len__(self) -> int:
        return len(self._state.strata)


def _versioned(m: Mapping[str, V]) -> VersionedMap[str, V]:
    return m if isinstance(m, VersionedMap) else VersionedMap(m)  # a state built by hand: converted once


def _heartbeat(state: ControllerState, hb: FleetHealth) -> tuple[ControllerState, list[Action]]:
    arms = _arms(state)
    refusal = check_heartbeat(hb, _AssignedVersions(state, arms), state.last_beat_seq)
    if refusal is not None:
        refused = {**state.refused, refusal.reason: state.refused.get(refusal.reason, 0) + 1}
        why = Refused(hb.vehicle_id, refusal.reason, refusal.message)
        return replace(state, refused=refused, arm_index=arms), [why]
    v = hb.vehicle_id
    pending = state.pending
    if state.phase in (RUNNING, PAUSED) and v in arms.arm_of:
        pending = (pending if isinstance(pending, Stack) else Stack(pending)).push(hb)
    new = replace(
        state,
        strata=_versioned(state.strata).set(v, stratum_of(hb)),
        last_beat_seq=_versioned(state.last_beat_seq).set(v, hb.beat_seq),
        pending=pending,
        arm_index=arms,
    )
    return new, []


def _evaluate(state: ControllerState, now_s: float) -> tuple[ControllerState, list[Action]]:
    if state.phase not in (RUNNING, PAUSED):
        return state, []
    batch: dict[str, SliceTally] = tally_heartbeats(state.pending, _arms(state).arm_of)
    stats = update_stats(state.policy, state.stats, batch)
    matched = sum(t.canary.km for t in batch.values() if t.canary.km > 0 and t.baseline.km > 0)
    state = replace(state, pending=Stack(), stats=stats, wave_km=state.wave_km + matched)
    if state.phase == PAUSED:  # the evidence keeps accumulating; nothing is decided
        return state, []
    decision = decide(state.policy, stats, state.wave, state.wave_km, now_s)
    state = replace(state, decisions=(*state.decisions, decision))
    actions: list[Action] = [RecordDecision(decision)]
    if decision.verdict is Verdict.ROLLBACK:
        actions.append(RollBack("; ".join(decision.reasons)))
        return replace(state, phase=ROLLED_BACK), actions
    if decision.verdict is Verdict.NEXT_WAVE:
        nxt = state.wave + 1
        if nxt == len(state.policy.waves) - 1:
            actions.append(Promote(state.canary_version))
            return replace(state, wave=nxt, phase=PROMOTED), actions
        state, assign = _assign(state, nxt)
        actions.append(assign)
    return state, actions


def _operator(state: ControllerState, cmd: Operator) -> tuple[ControllerState, list[Action]]:
    done = (ROLLED_BACK, PROMOTED)
    if cmd.command == "pause" and state.phase == RUNNING:
        return replace(state, phase=PAUSED), []
    if cmd.command == "resume" and state.phase == PAUSED:
        return replace(state, phase=RUNNING), []
    if cmd.command == "rollback" and state.phase not in done:
        return replace(state, phase=ROLLED_BACK, pending=Stack()), [RollBack(cmd.reason or "operator asked")]
    raise UserInputError(f"cannot {cmd.command!r} a rollout that is {state.phase}")
