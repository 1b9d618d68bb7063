"""The rollout controller service: heartbeats and OTA statuses in, the pure controller applied, its actions done.

One cycle::

    poll fleetloop.fleet-health and fleetloop.ota-status
      heartbeat of a vehicle in a running rollout -> controller.step(HeartbeatReceived); refused -> dead letter
      any other heartbeat -> the edge checks against the fleet view; refused -> dead letter; else the fleet view
      OTA status of one of our rollouts -> the vehicle's state in its record
    operator requests (start, pause, resume, abort, rollback; files under <state_dir>/canary/requests)
    every ``evaluate_every_s``: controller.step(Evaluate) -> a verdict, maybe a wave, a rollback or the promotion
    the records and the fleet view written (atomic): the commit point of everything above
    the effects carried out (registry, signed waves, OtaCommand events), each recorded once done
    the offsets committed

A kill -9 anywhere resumes from the records: heartbeats after the last write are redelivered and counted once
(beats already believed are refused as ``stale_beat``), effects not yet recorded as done are done again (each is
idempotent: ``fleetloop.platform.canary.effects``). A broker outage is waited out (``broker_outage_s``); the
registry or release repository away leaves the effect to do for the next cycle. Metrics:
``fleetloop_rollout_wave`` / ``fleetloop_rollout_wave_started_timestamp_seconds`` while a rollout runs, and the
heartbeats dead-lettered by reason.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleetloop.platform.bus.consumer import BusConsumer, Delivery, Polled
from fleetloop.platform.bus.events import FleetHealth, OtaStatus
from fleetloop.platform.bus.loop import BrokerOutage, Stop, commit_durable, member_timeouts, new_dead_letters, polls
from fleetloop.platform.bus.producer import BusProducer
from fleetloop.platform.bus.topics import DEAD_LETTER, FLEET_HEALTH, OTA_STATUS
from fleetloop.platform.canary import controller as ctl
from fleetloop.platform.canary.effects import Effects, effects_for, start_effects
from fleetloop.platform.canary.policy import policy_from_mapping
from fleetloop.platform.canary.rollouts import ABORTED, FleetView, Request, RolloutRecord, RolloutStore
from fleetloop.platform.canary.validate import check_heartbeat, stratum_of
from fleetloop.platform.errors import FleetloopError, ServiceUnavailable, UserInputError
from fleetloop.platform.metrics import counter
from fleetloop.platform.metrics.catalogue import ROLLOUT_WAVE, ROLLOUT_WAVE_STARTED
from fleetloop.platform.registry import Registry
from fleetloop.platform.settings import Settings

__all__ = ["ControllerConfig", "ControllerReport", "ControllerService"]

log = logging.getLogger(__name__)

HEARTBEATS_REFUSED = counter(
    "fleetloop_rollout_heartbeats_refused_total",
    "Heartbeats the rollout controller did not believe and sent to the dead-letter topic, by reason.",
    ["reason"],
)


@dataclass(frozen=True)
class ControllerConfig:
    """How the controller service runs.

    Attributes:
        evaluate_every_s: wall time between evaluations: the beats since the last one become one batch [s].
        fleet_window_s: a new rollout's fleet is the vehicles on production heard this recently [s] (a fleet that
            stopped driving minutes ago is not put in a cohort, where it would never report).
        fleet_settle_s: a new rollout starts once its fleet has not grown for this long [s].
        silent_after_s: a cohort vehicle without a believed heartbeat this long is reported silent [s].
        poll_timeout_s: how long one poll waits for records [s].
        broker_outage_s: how long the broker may stay away before the service gives up [s].
        session_timeout_s: how long the group waits for a killed member before its partitions move [s].
        group_id: the consumer group.
    """

    evaluate_every_s: float = 10.0
    fleet_window_s: float = 120.0
    fleet_settle_s: float = 10.0
    silent_after_s: float = 60.0
    poll_timeout_s: float = 0.5
    broker_outage_s: float = 600.0
    session_timeout_s: float = 10.0
    group_id: str = "fleetloop-ota-controller"


@dataclass
class ControllerReport:
    """What the service did since it started (``ota status`` reads the records; this is the process's view)."""

    heartbeats: int = 0
    statuses: int = 0
    statuses_not_ours: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    evaluations: int = 0
    effects_done: int = 0
    effects_failed: int = 0
    broker_outages: int = 0
    commit_failures: int = 0
    cycles: int = 0


class ControllerService:
    """The service (see the module docstring); ``run`` until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        cfg: ControllerConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.cfg = cfg or ControllerConfig()
        self.clock = clock
        self.store = RolloutStore(settings.state_dir)
        self.report = ControllerReport()
        self._records: dict[str, RolloutRecord] = {r.rollout_id: r for r in self.store.active()}
        self._fleet: FleetView = self.store.load_fleet()
        self._last_eval = 0.0
        self._fleet_seen: dict[str, tuple[int, float]] = {}  # start request -> (fleet size, since when)
        for rec in self._records.values():
            self._export(rec)

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, stop: Stop, on_cycle: Callable[[ControllerService], None] | None = None) -> None:
        """Poll, decide, write, act, commit, until ``stop``; a broker away longer than allowed raises
        ``ServiceUnavailable``."""
        outage = BrokerOutage(self.cfg.broker_outage_s, self.report)
        with (
            BusProducer(self.settings, client_id="ota-controller") as producer,
            BusConsumer(
                self.settings,
                [FLEET_HEALTH, OTA_STATUS],
                self.cfg.group_id,
                dead_letter_topic=DEAD_LETTER,
                client_id="ota-controller",
                **member_timeouts(self.cfg.session_timeout_s),
            ) as consumer,
        ):
            effects = Effects(self.settings.state_dir, self.registry, producer)
            self._act(effects)  # effects a killed predecessor decided but did not record as done
            for polled in polls(consumer, stop, outage, self.cfg.poll_timeout_s):
                self.cycle(polled, consumer, effects)
                if on_cycle is not None:
                    on_cycle(self)

    def cycle(self, polled: Polled, consumer: BusConsumer, effects: Effects) -> None:
        """One cycle (see the module docstring) on the records of one poll."""
        now = self.clock()
        for d in polled.deliveries:
            if isinstance(d.value, FleetHealth):
                self.report.heartbeats += 1
                self._heartbeat(d, d.value, consumer, now)
            elif isinstance(d.value, OtaStatus):
                self.report.statuses += 1
                self._status(d.value)
        applied = self._requests(now)
        if now - self._last_eval >= self.cfg.evaluate_every_s:
            self._last_eval = now
            self._evaluate(now)
        self._save()
        for path in applied:
            self.store.done(path)
        self._act(effects)
        if commit_durable(consumer, polled) == "failed":
            self.report.commit_failures += 1  # the records are written: a redelivery is refused as stale
        self._count_dead_letters(consumer)
        self.report.cycles += 1

    # -- inputs ------------------------------------------------------------------------------------

    def _rollout_of(self, vehicle_id: str) -> RolloutRecord | None:
        for rec in self._records.values():
            st = rec.controller
            if st is not None and st.phase in (ctl.RUNNING, ctl.PAUSED) and vehicle_id in st.strata:
                return rec
        return None

    def _heartbeat(self, d: Delivery, hb: FleetHealth, consumer: BusConsumer, now: float) -> None:
        rec = self._rollout_of(hb.vehicle_id)
        if rec is not None and rec.controller is not None:
            rec.controller, actions = ctl.step(rec.controller, ctl.HeartbeatReceived(hb))
            refused = [a for a in actions if isinstance(a, ctl.Refused)]
        else:
            row = self._fleet.vehicles.get(hb.vehicle_id)
            last = {} if row is None else {hb.vehicle_id: int(row[2])}
            why = check_heartbeat(hb, {hb.vehicle_id: hb.model_version}, last)
            refused = [] if why is None else [ctl.Refused(hb.vehicle_id, why.reason, why.message)]
        for r in refused:
            consumer.dead_letter(d, r.reason, r.message)
        if not refused:  # heard when it beat: a backlog read at start does not make a stopped fleet recent
            self._fleet.heard(hb.vehicle_id, stratum_of(hb), hb.model_version, hb.beat_seq, min(now, hb.emitted_at_s))

    def _status(self, st: OtaStatus) -> None:
        rec = self._records.get(st.rollout_id)
        if rec is None:
            self.report.statuses_not_ours += 1  # `ota install` and finished rollouts report too
            return
        rec.ota_state[st.vehicle_id] = st.state
        rec.ota_counts[st.state] = rec.ota_counts.get(st.state, 0) + 1

    def _requests(self, now: float) -> list[Path]:
        """Apply the operator's requests; returns their files, deleted once the records are written."""
        applied: list[Path] = []
        for path, req in self.store.requests():
            try:
                if req.command == "start":
                    if not self._start(req, now):
                        continue  # no fleet heard yet: the request waits
                else:
                    self._operator(req, now)
            except FleetloopError as e:  # a request that cannot apply is logged on its rollout, not retried
                log.warning("operator request %s %s refused: %s", req.command, req.rollout_id, e)
                rec = self._records.get(req.rollout_id)
                if rec is not None:
                    rec.note(now, f"refused {req.command}: {e}")
                elif req.command == "start":  # no record to note it on: the waiting CLI reads this instead
                    self.store.refuse(req.rollout_id, str(e))
            applied.append(path)
        return applied

    def _start(self, req: Request, now: float) -> bool:
        if req.rollout_id in self._records or self.store.rollouts_dir.joinpath(f"{req.rollout_id}.json").exists():
            return True  # started before a crash; the request file outlived the record's write
        s = req.start
        policy = policy_from_mapping(s["policy"], "rollout policy")
        rec = RolloutRecord(
            req.rollout_id,
            str(s["model"]),
            int(s["canary_version"]),
            int(s["production_version"]),
            int(s["canary_release"]),
            policy,
            req.at_s,
        )
        clash = [r.rollout_id for r in self._records.values() if r.model == rec.model and r.active]
        if clash:
            raise UserInputError(f"a rollout of {rec.model} is already running ({clash[0]})")
        # Vehicles that beat since the request (and within the window): a fleet that has stopped is not drawn.
        fleet = self._fleet.fleet_on(rec.production_version, max(now - self.cfg.fleet_window_s, req.at_s))
        if not self._fleet_settled(req.rollout_id, len(fleet), now):
            return False
        rec.controller, actions = ctl.start(policy, rec.rollout_id, rec.canary_version, rec.production_version, fleet)
        first = actions[0]
        assert isinstance(first, ctl.AssignWave)
        rec.applied_requests.append(req.request_id)
        rec.wave_started_at_s.append(now)
        rec.todo += start_effects(rec, first)
        rec.note(
            now,
            f"started over {len(fleet)} vehicle(s) on v{rec.production_version}: wave 1 has "
            f"{len(first.canary)} canary and {len(first.baseline)} baseline vehicle(s)",
        )
        self._records[rec.rollout_id] = rec
        self._export(rec)
        return True

    def _fleet_settled(self, rollout_id: str, size: int, now: float) -> bool:
        """Whether a new rollout's fleet has stopped growing for ``fleet_settle_s``: a fleet that starts driving is
        heard vehicle by vehicle (its first beats arrive over several polls), and a vehicle heard after the start
        is in no cohort and never commanded."""
        seen = self._fleet_seen.get(rollout_id)
        if size == 0 or seen is None or seen[0] != size:
            self._fleet_seen[rollout_id] = (size, now)
            return False
        return now - seen[1] >= self.cfg.fleet_settle_s

    def _operator(self, req: Request, now: float) -> None:
        rec = self._records.get(req.rollout_id)
        if rec is None:
            rec = self.store.load(req.rollout_id)  # raises NotFoundError
        if req.request_id in rec.applied_requests:
            return
        if rec.controller is None:
            raise UserInputError(f"rollout {rec.rollout_id} has not started yet")
        command = "rollback" if req.command == "abort" else req.command
        who = "operator aborted" if req.command == "abort" else "operator rolled back"
        reason = f"{who}: {req.reason}" if req.reason else who
        rec.controller, actions = ctl.step(rec.controller, ctl.Operator(command, now, reason))
        rec.applied_requests.append(req.request_id)
        todo = effects_for(rec, actions)
        if req.command == "abort":  # not judged: the version may be rolled out again
            todo = [{**e, "to": "staging"} if e.get("to") == "rejected" else e for e in todo]
            rec.outcome = ABORTED
        rec.todo += todo
        rec.note(now, f"operator: {req.command}" + (f" ({req.reason})" if req.reason else ""))
        self._export(rec)

    # -- decisions ---------------------------------------------------------------------------------

    def _evaluate(self, now: float) -> None:
        for rec in self._records.values():
            st = rec.controller
            if st is None or st.phase not in (ctl.RUNNING, ctl.PAUSED):
                continue
            self.report.evaluations += 1
            rec.controller, actions = ctl.step(st, ctl.Evaluate(now))
            for a in actions:
                if isinstance(a, ctl.RecordDecision) and a.decision.verdict.value != "continue":
                    rec.note(
                        now,
                        f"wave {a.decision.wave_index + 1}: {a.decision.verdict.value}: "
                        + "; ".join(a.decision.reasons),
                    )
                elif isinstance(a, ctl.AssignWave):
                    rec.wave_started_at_s.append(now)
                elif isinstance(a, ctl.Promote):
                    rec.outcome = ctl.PROMOTED
                elif isinstance(a, ctl.RollBack):
                    rec.outcome = ctl.ROLLED_BACK
            rec.todo += effects_for(rec, actions)
            self._export(rec)

    # -- effects -----------------------------------------------------------------------------------

    def _act(self, effects: Effects) -> None:
        """Carry out each rollout's effects in order, recording each once done; stop a rollout's list at the first
        that fails for a service away (retried next cycle)."""
        for rec in list(self._records.values()):
            while rec.todo:
                effect = rec.todo[0]
                try:
                    line, follow = effects.carry_out(rec, effect)
                except ServiceUnavailable as e:
                    log.warning("rollout %s: %s waits: %s", rec.rollout_id, effect["kind"], e)
                    self.report.effects_failed += 1
                    break
                except FleetloopError as e:
                    line, follow = f"could not {effect['kind']}: {e}", []
                    self.report.effects_failed += 1
                rec.todo = follow + rec.todo[1:]
                rec.note(self.clock(), line)
                self.report.effects_done += 1
                self.store.save(rec)
            if not rec.active:
                self._records.pop(rec.rollout_id)

    # -- persistence and metrics ----------------------------------------------------------------------

    def _save(self) -> None:
        for rec in self._records.values():
            self.store.save(rec)
        self.store.save_fleet(self._fleet)

    def _count_dead_letters(self, consumer: BusConsumer) -> None:
        for reason, n in new_dead_letters(consumer, self.report.dead_lettered).items():
            HEARTBEATS_REFUSED.labels(reason).inc(n)

    def _export(self, rec: RolloutRecord) -> None:
        labels = (rec.model, str(rec.canary_version))
        st = rec.controller
        if st is not None and st.phase == ctl.RUNNING and not rec.outcome:
            ROLLOUT_WAVE.labels(*labels).set(st.wave + 1)
            started = rec.wave_started_at_s[-1] if rec.wave_started_at_s else rec.requested_at_s
            ROLLOUT_WAVE_STARTED.labels(*labels).set(started)
        else:
            with contextlib.suppress(KeyError):
                ROLLOUT_WAVE.remove(*labels)
            with contextlib.suppress(KeyError):
                ROLLOUT_WAVE_STARTED.remove(*labels)
