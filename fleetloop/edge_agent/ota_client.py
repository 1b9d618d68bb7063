"""The vehicle's update client, pure core: one state machine per vehicle, kept as arrays for a whole shard.

    ota_step(cfg, state, inputs) -> (state, actions)        no I/O, no clock: the tick comes in the inputs

Per vehicle (rows of the arrays), two model slots, A and B; one is active::

    idle --command--> fetching --verified + loaded--> staged --safe tick--> trial --window healthy--> idle (committed)
      ^                  |  (unavailable: retry with backoff)                   |
      '---- rejected <---'                                                      '--unhealthy--> idle (rolled_back)

- A command starts a fetch unless the vehicle already runs that version or rolled that very release back before.
  A command that arrives while the vehicle is busy with another update (a rollback sent while the canary is still
  being fetched or tried) is not lost: before activation it replaces the update in progress (``superseded``);
  during a trial it is ``queued`` and followed once the trial ends (the latest such command wins; the same
  command again is refused ``busy``). Whether the release is for this vehicle (its signed wave), newer than the one it
  runs and signed right is decided by the shell with :mod:`fleetloop.edge_agent.ota_verify` and comes back as a
  :class:`FetchOutcome`: ``installed`` (the file verified, then loaded into the inactive slot), ``rejected``
  (with the reason) or ``unavailable`` (the release server did not answer: the vehicle keeps driving on its
  active slot and retries after ``retry_initial_ticks``, doubling up to ``retry_max_ticks``).
- A staged model is activated only at a safe tick boundary: last tick the fallback was not braking (no emergency
  stage, no fallback command below ``-braking_mps2``). Activation is a model switch: the arbiter lets the
  fallback drive for its ``switch_hold_ticks`` (reason ``model_switch``).
- The health window (``window_ticks`` from activation) counts, per vehicle, ticks with invalid model output (NaN,
  a crash), deadline misses and fallback activations other than ``model_switch``, and compares them with the
  vehicle's own recent rates (exponential averages over ``baseline_ticks`` while it is not on trial; the plain mean
  until that many ticks are seen). Over any limit, the vehicle switches back to the other slot at once and reports
  why; a full healthy window commits.

Shadow mode (a command with action ``shadow``)::

    idle --shadow command--> fetching --verified + loaded--> shadow --install command, same version--> staged
                                                               '--another command / the run ends--> (report) idle

The candidate comes through the same fetch and verification as an install, into the inactive slot, and is never
activated: the vehicle runs it beside the active model, and the shell compares their outputs
(:mod:`fleetloop.edge_agent.ota_shadow`). An install command of the shadowed version promotes it (already
verified: no second download) to staged; any other command ends the shadow first. Each end is a
:class:`ShadowEnd` in the actions, for the shell's final report.

Every state change is a :class:`StatusReport` in the actions (downloaded, verified, installed, activated,
committed, rolled_back, rejected with a reason code); the shell sends them to ``fleetloop.ota-status``.
Imports numpy only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fleetloop.platform.errors import FleetConfigError

__all__ = [
    "NO_VERSION",
    "PHASE_NAMES",
    "PHASE_SHADOW",
    "Command",
    "FetchOutcome",
    "FetchRequest",
    "HealthConfig",
    "OtaActions",
    "OtaInputs",
    "OtaState",
    "ShadowEnd",
    "StatusReport",
    "Switch",
    "TickSignals",
    "ota_step",
]

PHASE_IDLE, PHASE_FETCHING, PHASE_STAGED, PHASE_TRIAL, PHASE_SHADOW = 0, 1, 2, 3, 4
PHASE_NAMES = ("idle", "fetching", "staged", "trial", "shadow")
NO_VERSION = -1  # a slot that holds no model
_NEVER = np.iinfo(np.int64).max  # retry_at of a vehicle whose fetch is in flight


@dataclass(frozen=True)
class HealthConfig:
    """When a vehicle activates, commits or rolls back an update, and how it retries.

    Attributes:
        window_ticks: the health window after activation [ticks] (100 = 10 s at the world's 0.1 s tick; it
            includes the arbiter's ``switch_hold_ticks``, during which the new model already runs but does not act).
        max_invalid_ticks: ticks of invalid model output (NaN / Inf, the model raised) tolerated in the window
            [ticks]; 0: one invalid output rolls back.
        deadline_surge_factor: deadline misses may reach this multiple of the vehicle's own recent share [-] ...
        deadline_slack_share: ... plus this share of the window's ticks [-] (so a vehicle with no recent misses
            is not rolled back for one late tick).
        fallback_surge_factor: fallback activations (other than ``model_switch``) may reach this multiple of what
            the vehicle's own recent rate predicts for the window [-] ...
        fallback_slack_activations: ... plus this many [activations].
        baseline_ticks: time constant of the vehicle's own recent rates (exponential average) [ticks] (600 = 1 min).
        braking_mps2: a fallback command below minus this is braking: no activation on that tick [m/s²].
        retry_initial_ticks: wait before the first retry after the release server did not answer [ticks];
            each further failure doubles it ...
        retry_max_ticks: ... up to this [ticks].
    """

    window_ticks: int = 100
    max_invalid_ticks: int = 0
    deadline_surge_factor: float = 3.0
    deadline_slack_share: float = 0.05
    fallback_surge_factor: float = 3.0
    fallback_slack_activations: float = 2.0
    baseline_ticks: float = 600.0
    braking_mps2: float = 0.5
    retry_initial_ticks: int = 10
    retry_max_ticks: int = 300

    def __post_init__(self) -> None:
        if self.window_ticks < 1 or self.max_invalid_ticks < 0:
            raise FleetConfigError("window_ticks must be >= 1 tick and max_invalid_ticks >= 0 ticks")
        if min(self.deadline_surge_factor, self.deadline_slack_share, self.fallback_surge_factor) < 0:
            raise FleetConfigError("surge factors and the deadline slack share must be >= 0")
        if self.fallback_slack_activations < 0 or self.baseline_ticks < 1 or self.braking_mps2 < 0:
            raise FleetConfigError("fallback slack >= 0, baseline_ticks >= 1 tick, braking_mps2 >= 0 m/s²")
        if not 1 <= self.retry_initial_ticks <= self.retry_max_ticks:
            raise FleetConfigError("retry ticks: 1 <= retry_initial_ticks <= retry_max_ticks")


@dataclass(frozen=True)
class OtaState:
    """Every vehicle's update state, arrays [B] (``slot_*`` [B, 2]); version ids index the shell's version table."""

    phase: np.ndarray  # int8, PHASE_*
    active: np.ndarray  # int8, 0 (slot A) or 1 (slot B)
    slot_version: np.ndarray  # int32 [B, 2], NO_VERSION where empty
    slot_release: np.ndarray  # int64 [B, 2], the signed release number in the slot (0: not from a release)
    target_version: np.ndarray  # int32, the version being fetched / staged / tried
    target_release: np.ndarray  # int64, the commanded release number (0: any), then the signed one
    rollout: np.ndarray  # object (str), the rollout id of the current update
    retry_at: np.ndarray  # int64, tick of the next fetch request (_NEVER while one is in flight)
    attempts: np.ndarray  # int32, fetches that found the server unavailable
    trial_ticks: np.ndarray  # int32, ticks since activation
    trial_invalid: np.ndarray  # int32
    trial_deadline: np.ndarray  # int32
    trial_fallback: np.ndarray  # int32
    base_deadline_share: np.ndarray  # float64, own recent share of ticks with a deadline miss
    base_fallback_per_tick: np.ndarray  # float64, own recent fallback activations per tick
    base_ticks: np.ndarray  # int32, ticks counted into the own recent rates (at most baseline_ticks)
    refused_release: np.ndarray  # int64, the last release this vehicle rolled back (not installed again)
    target_shadow: np.ndarray  # bool, the fetch in flight is for shadow mode
    pending_version: np.ndarray  # int32, a command queued during a trial (NO_VERSION: none)
    pending_release: np.ndarray  # int64
    pending_rollout: np.ndarray  # object (str)
    pending_shadow: np.ndarray  # bool

    @staticmethod
    def init(initial_versions: Sequence[int] | np.ndarray) -> OtaState:
        """Vehicles with ``initial_versions[i]`` (NO_VERSION: none) active in slot A and slot B empty."""
        v = np.asarray(initial_versions, dtype=np.int32)
        b = v.shape[0]
        zi = np.zeros(b, dtype=np.int32)
        zl = np.zeros(b, dtype=np.int64)
        zf = np.zeros(b, dtype=np.float64)
        return OtaState(
            phase=np.zeros(b, dtype=np.int8),
            active=np.zeros(b, dtype=np.int8),
            slot_version=np.stack([v, np.full(b, NO_VERSION, dtype=np.int32)], axis=1),
            slot_release=np.zeros((b, 2), dtype=np.int64),
            target_version=np.full(b, NO_VERSION, dtype=np.int32),
            target_release=zl.copy(),
            rollout=np.full(b, "", dtype=object),
            retry_at=zl.copy(),
            attempts=zi.copy(),
            trial_ticks=zi.copy(),
            trial_invalid=zi.copy(),
            trial_deadline=zi.copy(),
            trial_fallback=zi.copy(),
            base_deadline_share=zf.copy(),
            base_fallback_per_tick=zf.copy(),
            base_ticks=zi.copy(),
            refused_release=zl.copy(),
            target_shadow=np.zeros(b, dtype=bool),
            pending_version=np.full(b, NO_VERSION, dtype=np.int32),
            pending_release=zl.copy(),
            pending_rollout=np.full(b, "", dtype=object),
            pending_shadow=np.zeros(b, dtype=bool),
        )

    def copy(self) -> OtaState:
        """A deep copy (the core never changes its input state)."""
        return OtaState(**{f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)})

    def active_version(self) -> np.ndarray:
        """[B] the version id each vehicle drives with."""
        return self.slot_version[np.arange(self.phase.shape[0]), self.active]

    def active_release(self) -> np.ndarray:
        """[B] the release number of the active slot (0: not installed from a release)."""
        return self.slot_release[np.arange(self.phase.shape[0]), self.active]

    def shadow_version(self) -> np.ndarray:
        """[B] the version id running in shadow mode (the inactive slot's), NO_VERSION where none does."""
        inactive = self.slot_version[np.arange(self.phase.shape[0]), 1 - self.active]
        return np.where(self.phase == PHASE_SHADOW, inactive, NO_VERSION)


@dataclass(frozen=True)
class TickSignals:
    """What the last tick said about each vehicle (arrays [B] bool), read from the arbiter and fallback outputs."""

    safe: np.ndarray  # no emergency stage and the fallback not braking
    invalid_output: np.ndarray  # the model's output was NaN / Inf or it raised
    deadline_missed: np.ndarray
    fallback_started: np.ndarray  # a fallback activation for any reason but model_switch


@dataclass(frozen=True)
class Command:
    """An install command for one vehicle (row), already mapped to the shell's version id."""

    row: int
    version: int
    release: int = 0  # the release number the command names (0: whichever signs the version)
    rollout_id: str = ""
    shadow: bool = False  # run the version beside the active one, never acting (shadow mode)


@dataclass(frozen=True)
class FetchOutcome:
    """What the shell's fetch found for one vehicle: ``installed``, ``rejected`` or ``unavailable``."""

    row: int
    version: int
    kind: str
    release: int = 0
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True)
class OtaInputs:
    """One tick boundary's inputs."""

    tick: int
    signals: TickSignals
    commands: Sequence[Command] = ()
    fetched: Sequence[FetchOutcome] = ()


@dataclass(frozen=True)
class StatusReport:
    """One state change of one vehicle (``fleetloop.ota-status``)."""

    row: int
    state: str
    version: int
    release: int = 0
    rollout_id: str = ""
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True)
class FetchRequest:
    """Fetch and verify ``version`` for the vehicle in ``row`` (its installed release and the commanded one)."""

    row: int
    version: int
    commanded_release: int
    installed_release: int


@dataclass(frozen=True)
class Switch:
    """Make ``version`` the driving model of ``rows`` from the next tick (``FleetRunner.set_model``)."""

    rows: tuple[int, ...]
    version: int


@dataclass(frozen=True)
class ShadowEnd:
    """The vehicle in ``row`` stopped running ``version`` in shadow mode (``promoted`` or ``superseded``)."""

    row: int
    version: int
    release: int
    rollout_id: str
    reason: str


@dataclass(frozen=True)
class OtaActions:
    """What the shell carries out, in this order: shadow ends, switches, statuses, fetch requests."""

    switches: list[Switch] = field(default_factory=list)
    statuses: list[StatusReport] = field(default_factory=list)
    fetch: list[FetchRequest] = field(default_factory=list)
    shadow_ends: list[ShadowEnd] = field(default_factory=list)


def ota_step(cfg: HealthConfig, state: OtaState, inp: OtaInputs) -> tuple[OtaState, OtaActions]:
    """Advance every vehicle's update state by one tick boundary (see the module docstring)."""
    s = state.copy()
    out = OtaActions()
    _observe(cfg, s, inp.signals)
    _judge_trials(cfg, s, out)
    for f in inp.fetched:
        _on_fetched(cfg, s, f, inp.tick, out)
    _activate(s, inp.signals.safe, out)
    _follow_queued(s, inp.tick, out)
    for c in inp.commands:
        _on_command(s, c, inp.tick, out)
    due = np.nonzero((s.phase == PHASE_FETCHING) & (s.retry_at <= inp.tick))[0]
    for r in due.tolist():
        out.fetch.append(FetchRequest(r, int(s.target_version[r]), int(s.target_release[r]), _installed(s, r)))
    s.retry_at[due] = _NEVER
    return s, out


def _installed(s: OtaState, r: int) -> int:
    return int(s.slot_release[r, s.active[r]])


def _observe(cfg: HealthConfig, s: OtaState, sig: TickSignals) -> None:
    """Count the last tick into the trial window (vehicles on trial) or the own recent rates (the others)."""
    trial = s.phase == PHASE_TRIAL
    s.trial_ticks[trial] += 1
    s.trial_invalid[trial] += sig.invalid_output[trial]
    s.trial_deadline[trial] += sig.deadline_missed[trial]
    s.trial_fallback[trial] += sig.fallback_started[trial]
    rest = ~trial
    # The mean of the ticks seen until ``baseline_ticks`` of them, then the exponential average: an average started
    # at 0 judged a vehicle that updates in its first minute against a rate biased towards none.
    s.base_ticks[rest] = np.minimum(s.base_ticks[rest] + 1, math.ceil(cfg.baseline_ticks))
    a = 1.0 / np.minimum(s.base_ticks[rest], cfg.baseline_ticks)
    s.base_deadline_share[rest] += a * (sig.deadline_missed[rest] - s.base_deadline_share[rest])
    s.base_fallback_per_tick[rest] += a * (sig.fallback_started[rest] - s.base_fallback_per_tick[rest])


def _judge_trials(cfg: HealthConfig, s: OtaState, out: OtaActions) -> None:
    trial = s.phase == PHASE_TRIAL
    if not trial.any():
        return
    w = cfg.window_ticks
    deadline_limit = (s.base_deadline_share * cfg.deadline_surge_factor + cfg.deadline_slack_share) * w
    fallback_limit = s.base_fallback_per_tick * w * cfg.fallback_surge_factor + cfg.fallback_slack_activations
    invalid_limit = np.full(len(s.phase), float(cfg.max_invalid_ticks))
    checks = (  # (reason, count, limit, what): the first one over its limit names the rollback
        ("invalid_output", s.trial_invalid, invalid_limit, "ticks of invalid model output"),
        ("deadline_surge", s.trial_deadline, deadline_limit, "deadline misses"),
        ("fallback_surge", s.trial_fallback, fallback_limit, "fallback activations"),
    )
    failed = np.zeros_like(trial)
    reason = np.full(len(s.phase), -1)
    for i, (_, count, limit, _) in enumerate(checks):
        new = trial & (count > limit) & ~failed
        reason[new] = i
        failed |= new
    back: dict[int, list[int]] = {}
    for r in np.nonzero(failed)[0].tolist():
        name, count, limit, what = checks[reason[r]]
        prev = 1 - int(s.active[r])
        version, release = int(s.slot_version[r, s.active[r]]), _installed(s, r)
        detail = (
            f"{int(count[r])} {what} in {int(s.trial_ticks[r])} ticks after activation, over the limit of "
            f"{float(limit[r]):.1f} for the {w}-tick window; back on the other slot"
        )
        out.statuses.append(StatusReport(r, "rolled_back", version, release, str(s.rollout[r]), name, detail))
        s.active[r] = prev
        s.refused_release[r] = release
        back.setdefault(int(s.slot_version[r, prev]), []).append(r)
    for version, rows in back.items():
        out.switches.append(Switch(tuple(rows), version))
    done = trial & ~failed & (s.trial_ticks >= w)
    for r in np.nonzero(done)[0].tolist():
        detail = (
            f"healthy for {w} ticks: {int(s.trial_invalid[r])} invalid outputs, {int(s.trial_deadline[r])} deadline "
            f"misses, {int(s.trial_fallback[r])} fallback activations"
        )
        version = int(s.slot_version[r, s.active[r]])
        out.statuses.append(StatusReport(r, "committed", version, _installed(s, r), str(s.rollout[r]), "", detail))
    s.phase[failed | done] = PHASE_IDLE


def _on_fetched(cfg: HealthConfig, s: OtaState, f: FetchOutcome, tick: int, out: OtaActions) -> None:
    r = f.row
    if s.phase[r] != PHASE_FETCHING or s.target_version[r] != f.version:
        return  # an answer to a fetch this vehicle no longer waits for (unreachable from the shell)
    rollout = str(s.rollout[r])
    if f.kind == "unavailable":
        s.attempts[r] += 1
        wait = min(cfg.retry_initial_ticks * 2 ** (int(s.attempts[r]) - 1), cfg.retry_max_ticks)
        s.retry_at[r] = tick + wait
        return
    shadow = bool(s.target_shadow[r])
    if f.kind == "installed" and f.release == s.refused_release[r] and not shadow:  # shadow mode never acts
        detail = f"release {f.release} failed its health window here before; not activated again"
        out.statuses.append(StatusReport(r, "rejected", f.version, f.release, rollout, "rolled_back_before", detail))
        s.phase[r] = PHASE_IDLE
        return
    if f.kind == "installed":  # verified and loaded into the inactive slot: staged, or run beside the active one
        slot = 1 - int(s.active[r])
        s.slot_version[r, slot] = f.version
        s.slot_release[r, slot] = f.release
        if shadow:
            s.phase[r] = PHASE_SHADOW
            last, detail = "shadow_started", f"{f.detail}; slot {'AB'[slot]} runs in shadow mode, never acting"
        else:
            s.target_release[r] = f.release
            s.phase[r] = PHASE_STAGED
            last, detail = "installed", f.detail
        for st in ("downloaded", "verified", last):
            out.statuses.append(StatusReport(r, st, f.version, f.release, rollout, "", detail))
        return
    s.phase[r] = PHASE_IDLE
    out.statuses.append(StatusReport(r, "rejected", f.version, f.release, rollout, f.reason or "rejected", f.detail))


def _activate(s: OtaState, safe: np.ndarray, out: OtaActions) -> None:
    go = (s.phase == PHASE_STAGED) & safe
    if not go.any():
        return
    rows = np.nonzero(go)[0]
    s.active[rows] = 1 - s.active[rows]
    s.phase[rows] = PHASE_TRIAL
    for name in ("trial_ticks", "trial_invalid", "trial_deadline", "trial_fallback"):
        getattr(s, name)[rows] = 0
    by_version: dict[int, list[int]] = {}
    for r in rows.tolist():
        version = int(s.slot_version[r, s.active[r]])
        by_version.setdefault(version, []).append(r)
        slot = "AB"[int(s.active[r])]
        out.statuses.append(
            StatusReport(r, "activated", version, _installed(s, r), str(s.rollout[r]), "", f"slot {slot} active")
        )
    for version, rs in by_version.items():
        out.switches.append(Switch(tuple(rs), version))


def _follow_queued(s: OtaState, tick: int, out: OtaActions) -> None:
    """Vehicles idle again with a command queued during their trial: follow it now."""
    rows = np.nonzero((s.phase == PHASE_IDLE) & (s.pending_version != NO_VERSION))[0]
    for r in rows.tolist():
        c = _queued(s, r)
        s.pending_version[r] = NO_VERSION
        _on_command(s, c, tick, out)


def _queued(s: OtaState, r: int) -> Command:
    """The command queued behind the trial of the vehicle in row ``r``."""
    return Command(
        r, int(s.pending_version[r]), int(s.pending_release[r]), str(s.pending_rollout[r]), bool(s.pending_shadow[r])
    )


def _same_update(s: OtaState, c: Command) -> bool:
    r = c.row
    same_release = not c.release or c.release == s.target_release[r]
    return bool(s.target_version[r] == c.version and same_release and s.target_shadow[r] == c.shadow)


def _busy(s: OtaState, c: Command, out: OtaActions) -> bool:
    """A command reaches a vehicle busy with another update: refused if it is the same update, else it replaces
    an update not yet activated, or is queued behind a trial. True: handled (nothing more to do now)."""
    r = c.row
    phase = PHASE_NAMES[s.phase[r]]
    if _same_update(s, c):
        detail = f"already updating to this version (state {phase})"
        out.statuses.append(StatusReport(r, "rejected", c.version, c.release, c.rollout_id, "busy", detail))
        return True
    if s.phase[r] == PHASE_TRIAL:
        if s.pending_version[r] != NO_VERSION:  # the latest command wins: say so for the one it replaces
            old = _queued(s, r)
            detail = f"a later command (v{c.version}) replaced it while the vehicle was on trial"
            out.statuses.append(
                StatusReport(r, "rejected", old.version, old.release, old.rollout_id, "superseded", detail)
            )
        s.pending_version[r], s.pending_release[r] = c.version, c.release
        s.pending_rollout[r], s.pending_shadow[r] = c.rollout_id, c.shadow
        detail = f"v{int(s.target_version[r])} is on trial; this command is followed once the trial ends"
        out.statuses.append(StatusReport(r, "queued", c.version, c.release, c.rollout_id, "busy", detail))
        return True
    # Fetching or staged: the newer command replaces the update before it ever drives (its fetch's answer, if
    # still in flight, is ignored: the vehicle no longer waits for that version).
    detail = f"replaced by a later command (v{c.version}) before activation (state {phase})"
    version, release, rollout = int(s.target_version[r]), int(s.target_release[r]), str(s.rollout[r])
    out.statuses.append(StatusReport(r, "rejected", version, release, rollout, "superseded", detail))
    s.phase[r] = PHASE_IDLE
    s.target_shadow[r] = False
    return False


def _on_command(s: OtaState, c: Command, tick: int, out: OtaActions) -> None:
    r = c.row
    refusal = detail = ""
    if s.phase[r] == PHASE_SHADOW and _end_shadow(s, c, out):
        return
    if s.phase[r] != PHASE_IDLE and _busy(s, c, out):
        return
    if s.slot_version[r, s.active[r]] == c.version:
        refusal, detail = "already_installed", "this version is already the active one"
    elif c.release and c.release == s.refused_release[r] and not c.shadow:  # shadow mode never acts: allowed
        refusal, detail = "rolled_back_before", f"release {c.release} failed its health window here before"
    if refusal:
        out.statuses.append(StatusReport(r, "rejected", c.version, c.release, c.rollout_id, refusal, detail))
        return
    s.phase[r] = PHASE_FETCHING
    s.target_version[r] = c.version
    s.target_release[r] = c.release
    s.rollout[r] = c.rollout_id
    s.attempts[r] = 0
    s.retry_at[r] = tick
    s.target_shadow[r] = c.shadow


def _end_shadow(s: OtaState, c: Command, out: OtaActions) -> bool:
    """A command reaches a vehicle in shadow mode: the same version again is refused, an install of it promotes
    it (True: handled), anything else ends the shadow and is then followed like a command to an idle vehicle."""
    r = c.row
    slot = 1 - int(s.active[r])
    version, release = int(s.slot_version[r, slot]), int(s.slot_release[r, slot])
    if c.version == version and c.shadow:
        detail = f"already running v{version} in shadow mode"
        out.statuses.append(StatusReport(r, "rejected", c.version, c.release, c.rollout_id, "busy", detail))
        return True
    promote = c.version == version and (not c.release or c.release == release) and release != s.refused_release[r]
    out.shadow_ends.append(ShadowEnd(r, version, release, str(s.rollout[r]), "promoted" if promote else "superseded"))
    s.phase[r] = PHASE_IDLE
    s.target_shadow[r] = False
    if not promote:
        return False
    s.phase[r] = PHASE_STAGED
    s.target_version[r] = version
    s.target_release[r] = release
    s.rollout[r] = c.rollout_id
    detail = f"promoted from shadow mode: release {release} was verified into slot {'AB'[slot]}"
    out.statuses.append(StatusReport(r, "installed", version, release, c.rollout_id, "", detail))
    return True
