"""The vehicle's update client, shell: carries out what the pure core (:mod:`fleetloop.edge_agent.ota_client`)
decides, for every vehicle of one fleet shard, at each tick boundary (a ``FleetRunner`` tick hook).

Per tick boundary::

    commands (OtaTransport.poll) -> rows and version ids        finished fetches -> load the verified file
    last tick's arbiter / fallback / policy outputs -> TickSignals
    ota_step -> switches (FleetRunner.set_model), statuses (OtaTransport.send), fetch requests (a worker thread)

A fetch is one job per model version for all the vehicles that asked: ``refresh_release`` once for the shard
(python-tuf, from the shard's trusted metadata), ``vehicle_verdict`` per vehicle (its id against the signed
waves, its installed release, the input schemas it runs; a command naming another release number than the signed
one is refused), ``download_verified`` when one accepted. The job runs on a worker thread so the vehicles keep
driving while the release server is slow or down; its result is picked up at the next tick boundary. Only then is
the verified file deserialised (``model_artifact.load_artifact``) into the engine as the version's model, for the
vehicles that accepted it: a vehicle never loads bytes the signed metadata does not vouch for.

Shadow mode (a command with action "shadow"): the candidate comes through the same fetch, verification and load,
then runs beside the active model and never acts. At each tick boundary the engine hands over the inputs its tick
acted on (``InferenceEngine.take_tick_inputs``); the candidate runs on those rows only, one more batched ``infer``
(one more version group, not a second fleet), and the two outputs are compared per vehicle and per condition class
of the vehicle's own estimate (:mod:`fleetloop.edge_agent.ota_shadow`). Each shadowing vehicle sends a
"shadow_report" status every ``ShadowConfig.report_every_ticks`` and when its shadow ends (promoted by an install
command, superseded by another command, the run's end); the shard's sums join ``counts()["ota"]["shadow"]``.
Nothing of it reaches the actuators: the commands and the world's events are the same, bit for bit, with and
without a shadow (tests/edge_agent/test_ota_shadow.py).

A vehicle answers to two names on the OTA topics: the runner's integer id as a string ("17", the ids ``fleetloop
ota assign --vehicles`` signs) and, when ``OtaSpec.vehicle_tag`` is set, its bus id ("<tag>-17": the id its
heartbeats carry, which the rollout controller commands and signs waves for). A vehicle verifies its wave and
reports its statuses under the name its latest command used. A command for another model name, for a vehicle of
another shard, or older than ``command_max_age_s`` is not for these vehicles: counted under
``ota.commands``, not followed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fleetloop.edge_agent.arbiter import DRIVER_FALLBACK, REASON_CODES
from fleetloop.edge_agent.fallback import STAGE_NONE
from fleetloop.edge_agent.features import INPUT_SCHEMA_VERSION, PolicyInputs
from fleetloop.edge_agent.fleet import FleetRunner, TickReport
from fleetloop.edge_agent.heartbeat import CONDITION_CLASSES, HeartbeatConfig, condition_class_codes
from fleetloop.edge_agent.inference import STATUS_INVALID_OUTPUT, STATUS_MODEL_FAILURE
from fleetloop.edge_agent.model_artifact import ArtifactError, load_artifact
from fleetloop.edge_agent.ota_client import (
    NO_VERSION,
    Command,
    FetchOutcome,
    FetchRequest,
    HealthConfig,
    OtaInputs,
    OtaState,
    StatusReport,
    TickSignals,
    ota_step,
)
from fleetloop.edge_agent.ota_shadow import SHADOW_SUMS, ShadowConfig, ShadowTally, ShadowTick, accumulate, rates
from fleetloop.edge_agent.ota_verify import OtaClientConfig, download_verified, refresh_release, vehicle_verdict
from fleetloop.edge_agent.summary import NO_MODEL_LABEL
from fleetloop.edge_agent.telemetry import vehicle_key
from fleetloop.edge_agent.vehicle_step import VehicleTick
from fleetloop.platform.bus.events import OtaCommand, OtaStatus
from fleetloop.platform.releases.errors import (
    BadHash,
    ExpiredMetadata,
    NotAssigned,
    ReleaseNotFound,
    ReleaseRejected,
    ReplayedMetadata,
    RepositoryUnavailable,
    SignatureRejected,
    UnsupportedSchema,
)

__all__ = [
    "SHADOW_ACTIONS",
    "OtaAgent",
    "OtaSpec",
    "OtaTransport",
    "rejection_reason",
    "supported_input_schemas",
    "tick_signals",
]

log = logging.getLogger(__name__)
SHADOW_ACTIONS = ("install", "rollback", "shadow")  # OtaCommand actions a vehicle follows
_CONDITION_CUTS = HeartbeatConfig()  # shadow numbers use the heartbeat's condition classes of the own estimate
_REASONS: tuple[tuple[type[Exception], str], ...] = (  # subclasses before their parents
    (BadHash, "bad_hash"),
    (ExpiredMetadata, "expired_metadata"),
    (ReplayedMetadata, "replayed"),
    (SignatureRejected, "bad_signature"),
    (NotAssigned, "not_assigned"),
    (UnsupportedSchema, "unsupported_schema"),
    (ReleaseNotFound, "not_found"),
    (ReleaseRejected, "rejected"),
)


def rejection_reason(exc: Exception) -> str:
    """The status reason code of a refusal (``bad_hash``, ``not_assigned``, ...)."""
    return next((code for cls, code in _REASONS if isinstance(exc, cls)), "rejected")


def supported_input_schemas() -> frozenset[int]:
    """The signed input schema numbers this software feeds: ``policy-input/1`` -> {1}."""
    return frozenset({int(INPUT_SCHEMA_VERSION.rsplit("/", 1)[1])})


@dataclass(frozen=True)
class OtaSpec:
    """How a shard's vehicles follow OTA (picklable: part of ``ShardSpec``).

    Attributes:
        model_name: the registered model the vehicles run; commands for another model are not for them.
        repo_url: the release server (the ``ota-repo`` service).
        trusted_root: the root metadata the vehicles were built with.
        work_dir: the fleet's OTA folder; each shard keeps its trusted metadata and artifact cache in
            ``shard-<first vehicle id>/`` under it.
        health: activation, health window and retry thresholds.
        shadow: the disagreement threshold and report period of shadow mode.
        bus: ``Settings.model_dump()`` of the Kafka the commands and statuses travel on (None: the caller passes
            an ``OtaTransport``).
        group_tag: names the shard's consumer group (``ota-vehicles-<tag>-<first id>``; the run id).
        vehicle_tag: the prefix of the vehicles' bus ids (``telemetry.vehicle_key``; the run id): a vehicle also
            answers to "<vehicle_tag>-<id>", the id its heartbeats carry ("": plain ids only).
        command_max_age_s: a command emitted longer ago than this is stale [s].
        timeout_s: per connection to the release server [s].
        max_attempts: download attempts per fetch (each resumes where the last broke off).
    """

    model_name: str
    repo_url: str
    trusted_root: bytes
    work_dir: str
    health: HealthConfig = field(default_factory=HealthConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    bus: dict[str, Any] | None = None
    group_tag: str = ""
    vehicle_tag: str = ""
    command_max_age_s: float = 600.0
    timeout_s: float = 10.0
    max_attempts: int = 3

    def client_config(self, shard_key: str) -> OtaClientConfig:
        """The verification core's configuration for one shard."""
        root = Path(self.work_dir) / f"shard-{shard_key}"
        return OtaClientConfig(
            repo_url=self.repo_url,
            trusted_root=self.trusted_root,
            metadata_dir=root / "metadata",
            cache_dir=root / "cache",
            supported_input_schemas=supported_input_schemas(),
            max_attempts=self.max_attempts,
            timeout_s=self.timeout_s,
        )


class OtaTransport(Protocol):
    """Where commands come from and statuses go (Kafka in a run: ``fleetloop.edge_agent.ota_bus``)."""

    def poll(self) -> list[OtaCommand]: ...

    def send(self, status: OtaStatus) -> None: ...

    def close(self, timeout_s: float) -> None: ...


def tick_signals(vt: VehicleTick, braking_mps2: float) -> TickSignals:
    """What the core needs of the last tick, in one transfer to the host."""
    d, p = vt.decision, vt.policy
    braking = (vt.fallback.stage > STAGE_NONE) | ((d.driver == DRIVER_FALLBACK) & (d.accel_mps2 < -braking_mps2))
    cols = (
        torch.stack(
            [
                ~braking,
                (p.status == STATUS_INVALID_OUTPUT) | (p.status == STATUS_MODEL_FAILURE),
                p.deadline_missed,
                d.started & (d.reason != REASON_CODES["model_switch"]),
            ]
        )
        .cpu()
        .numpy()
    )
    return TickSignals(*cols)


@dataclass
class _Job:
    """One fetch of one version for the vehicles that asked, run on the worker thread."""

    version: int
    label: str
    requests: list[FetchRequest]
    future: Future[tuple[Path | None, list[FetchOutcome], float, float]] | None = None


class OtaAgent:
    """The shell for one shard (a ``TickHook``); see the module docstring."""

    def __init__(self, spec: OtaSpec, vehicle_ids: Sequence[int], transport: OtaTransport | None = None) -> None:
        ids = [int(i) for i in vehicle_ids]
        self.spec = spec
        self.ids = np.asarray(ids, dtype=np.int64)
        self.row_of = {str(v): r for r, v in enumerate(ids)}
        if spec.vehicle_tag:
            self.row_of.update({vehicle_key(v, spec.vehicle_tag): r for r, v in enumerate(ids)})
        self.names = [str(v) for v in ids]  # the name each vehicle was last addressed by (statuses, wave checks)
        self.client = spec.client_config(str(ids[0]))
        if transport is None:
            if spec.bus is None:
                raise ValueError("OtaSpec.bus is None: pass a transport")
            from fleetloop.edge_agent.ota_bus import KafkaTransport  # kafka-python loads only where OTA runs

            transport = KafkaTransport(spec.bus, f"ota-vehicles-{spec.group_tag}-{ids[0]}")
        self.transport = transport
        self.labels: list[str] = []  # version id -> version label (NO_MODEL_LABEL: no model)
        self.state: OtaState | None = None
        self.verified: set[str] = set()  # labels whose verified file is loaded in the engine
        self.jobs: list[_Job] = []
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ota-fetch")
        kinds = ("status", "rejected", "rolled_back", "commands", "shadow_ended")
        self.tally: dict[str, Counter[str]] = {k: Counter() for k in kinds}
        self.fetch = {"jobs": 0, "unavailable": 0, "verify_cpu_s": 0.0, "verify_wall_s": 0.0, "vehicles_verified": 0}
        self.shadow = ShadowTally.init(len(ids), len(CONDITION_CLASSES))  # the current shadow episode's sums
        self.shadow_ticks = np.zeros(len(ids), dtype=np.int64)  # ticks in shadow mode, compared or not
        self.shadow_done = {name: np.zeros(len(CONDITION_CLASSES)) for name in SHADOW_SUMS}  # ended episodes
        self.shadow_uncompared = 0  # vehicle-ticks in shadow mode on which no vehicle of the shard ran a model

    # -- the tick boundary ---------------------------------------------------------------------------

    def after_tick(self, runner: FleetRunner, report: TickReport) -> None:
        """Carry out one tick boundary (see the module docstring)."""
        if self.state is None:
            self.labels = list(runner.labels)
            self.state = OtaState.init(runner.version_index.cpu().numpy().astype(np.int32))
        now_s = time.time()  # the clock, once per boundary: the commands' age
        commands = self._commands(self.transport.poll(), now_s)
        fetched = self._collect(runner)
        vt = runner.last_tick
        assert vt is not None  # after a tick
        tick_inputs = runner.engine.take_tick_inputs() if runner.engine is not None else None
        shadowing = np.nonzero(self.state.shadow_version() != NO_VERSION)[0]
        if shadowing.size:
            self._shadow_tick(runner, vt, tick_inputs, shadowing)
        inputs = OtaInputs(runner.ticks, tick_signals(vt, self.spec.health.braking_mps2), commands, fetched)
        self.state, actions = ota_step(self.spec.health, self.state, inputs)
        for end in actions.shadow_ends:
            self._shadow_report(end.row, end.version, end.release, end.rollout_id, end.reason, now_s, final=True)
        for sw in actions.switches:
            label = self.labels[sw.version]
            runner.set_model(self.ids[list(sw.rows)].tolist(), None if label == NO_MODEL_LABEL else label)
        for st in actions.statuses:
            self._report(st, now_s)
            if st.state == "shadow_started":
                self.shadow = self.shadow.reset([st.row])
                self.shadow_ticks[st.row] = 0
        if runner.ticks % self.spec.shadow.report_every_ticks == 0:
            self._shadow_reports("periodic", now_s, final=False)
        self._submit(actions.fetch)

    def model_slots(self) -> list[str]:
        """The A/B slot ("a" or "b") each vehicle runs its model from, in vehicle order ("" before the first tick)."""
        if self.state is None:
            return [""] * len(self.ids)
        return ["ab"[int(s)] for s in self.state.active.tolist()]

    def _version_id(self, label: str) -> int:
        if label not in self.labels:
            self.labels.append(label)
        return self.labels.index(label)

    def _commands(self, received: list[OtaCommand], now_s: float) -> list[Command]:
        out = []
        for c in received:
            row = self.row_of.get(c.vehicle_id)
            if c.model_name != self.spec.model_name:
                self.tally["commands"]["other_model"] += 1
            elif row is None:
                self.tally["commands"]["other_vehicles"] += 1
            elif now_s - c.emitted_at_s > self.spec.command_max_age_s:
                self.tally["commands"]["stale"] += 1
            elif c.action not in SHADOW_ACTIONS:
                self.tally["commands"]["unknown_action"] += 1
                log.warning("OTA command action %r not followed (valid: %s)", c.action, ", ".join(SHADOW_ACTIONS))
            else:
                self.tally["commands"]["followed"] += 1
                self.names[row] = c.vehicle_id
                version = self._version_id(str(c.version))
                out.append(Command(row, version, c.release, c.rollout_id, shadow=c.action == "shadow"))
        return out

    # -- shadow mode ---------------------------------------------------------------------------------------

    def _shadow_tick(self, runner: FleetRunner, vt: VehicleTick, inputs: PolicyInputs | None, rows: np.ndarray) -> None:
        """Run the candidates on the inputs the tick acted on, for the shadowing rows only; add the comparison."""
        assert self.state is not None
        self.shadow_ticks[rows] += 1
        if inputs is None or runner.engine is None:  # no vehicle of the shard ran a model this tick
            self.shadow_uncompared += int(rows.size)
            return
        engine = runner.engine
        versions = self.state.shadow_version()[rows]
        slot_of = {v: engine.slot(self.labels[v]) for v in set(versions.tolist())}
        dev = inputs.device
        idx = torch.from_numpy(rows).to(dev)
        slots = torch.tensor([slot_of[v] for v in versions.tolist()], dtype=torch.int64, device=dev)
        every = rows.size == len(self.ids)  # the whole shard shadows: no gather of its inputs and outputs

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t if every else t[idx]

        cand = engine.infer(inputs if every else inputs.index(idx), slots)
        p, est = vt.policy, vt.estimate
        cond = condition_class_codes(_CONDITION_CUTS, pick(est.visibility_m), pick(est.light), pick(est.friction))
        cols = [cond, pick(p.accel_mps2), cand.accel_mps2, pick(p.hazard_prob), cand.hazard_prob, pick(p.valid)]
        host = torch.stack([c.to(torch.float64) for c in [*cols, cand.valid]]).cpu().numpy()  # one transfer
        tick = ShadowTick(
            rows=rows,
            condition=host[0].astype(np.int64),
            active_accel_mps2=host[1],
            shadow_accel_mps2=host[2],
            active_hazard=host[3],
            shadow_hazard=host[4],
            active_valid=host[5] > 0,
            shadow_valid=host[6] > 0,
        )
        self.shadow = accumulate(self.spec.shadow, self.shadow, tick)

    def _shadow_reports(self, reason: str, now_s: float, *, final: bool) -> None:
        """A "shadow_report" status of every vehicle in shadow mode."""
        if self.state is None:
            return
        versions = self.state.shadow_version()
        for r in np.nonzero(versions != NO_VERSION)[0].tolist():
            release = int(self.state.slot_release[r, 1 - self.state.active[r]])
            self._shadow_report(r, int(versions[r]), release, str(self.state.rollout[r]), reason, now_s, final=final)

    def _shadow_report(
        self, r: int, version: int, release: int, rollout: str, reason: str, now_s: float, *, final: bool
    ) -> None:
        sums = self.shadow.row(r)
        per = rates(sums, CONDITION_CLASSES)
        a, thr = per["all"], self.spec.shadow.differ_mps2
        detail = (
            f"v{self.labels[version]} in shadow mode for {int(self.shadow_ticks[r])} ticks: commands differ by more "
            f"than {thr:g} m/s² on {a['differ_share']:.1%} of {int(a['compared_ticks'])} compared ticks, mean "
            f"|Δaccel| {a['accel_mae_mps2']:.3f} m/s², mean |Δhazard| {a['hazard_mae']:.3f}; "
            f"{int(a['invalid_ticks'])} ticks of invalid candidate output"
        )
        conds = CONDITION_CLASSES
        self._report(
            StatusReport(r, "shadow_report", version, release, rollout, reason, detail),
            now_s,
            shadow_ticks={c: int(per[c]["compared_ticks"]) for c in conds},
            shadow_differ_share={c: per[c]["differ_share"] for c in conds},
            shadow_accel_mae_mps2={c: per[c]["accel_mae_mps2"] for c in conds},
            shadow_hazard_mae={c: per[c]["hazard_mae"] for c in conds},
        )
        if final:
            for name in SHADOW_SUMS:
                self.shadow_done[name] += sums[name]
            self.shadow = self.shadow.reset([r])
            self.tally["shadow_ended"][reason] += 1

    def _report(self, st: StatusReport, now_s: float, **shadow: Any) -> None:
        self.tally["status"][st.state] += 1
        if st.state in ("rejected", "rolled_back"):
            self.tally[st.state][st.reason] += 1
        label = self.labels[st.version] if 0 <= st.version < len(self.labels) else ""
        self.transport.send(
            OtaStatus(
                rollout_id=st.rollout_id,
                vehicle_id=self.names[st.row],
                version=int(label) if label.isdigit() else 0,
                state=st.state,
                detail=st.detail,
                model_name=self.spec.model_name,
                release=st.release,
                reason=st.reason,
                source="ota-client",
                emitted_at_s=now_s,
                **shadow,
            )
        )

    # -- fetches on the worker thread --------------------------------------------------------------------

    def _submit(self, requests: list[FetchRequest]) -> None:
        by_version: dict[int, list[FetchRequest]] = {}
        for r in requests:
            by_version.setdefault(r.version, []).append(r)
        for version, reqs in by_version.items():
            job = _Job(version, self.labels[version], reqs)
            vehicle_ids = [self.names[r.row] for r in reqs]
            job.future = self.pool.submit(_fetch, self.client, self.spec.model_name, job, vehicle_ids)
            self.jobs.append(job)
            self.fetch["jobs"] += 1

    def _collect(self, runner: FleetRunner) -> list[FetchOutcome]:
        out: list[FetchOutcome] = []
        for job in [j for j in self.jobs if j.future is not None and j.future.done()]:
            self.jobs.remove(job)
            assert job.future is not None
            path, outcomes, cpu_s, wall_s = job.future.result()
            self.fetch["verify_cpu_s"] += cpu_s
            self.fetch["verify_wall_s"] += wall_s
            self.fetch["unavailable"] += sum(o.kind == "unavailable" for o in outcomes)
            accepted = [o for o in outcomes if o.kind == "installed"]
            self.fetch["vehicles_verified"] += len(accepted)
            if accepted and path is not None and job.label not in self.verified:
                try:  # deserialised only now: the file's length and sha256 matched the signed ones
                    runner.load_model(job.label, load_artifact(path).model)
                    self.verified.add(job.label)
                except (ArtifactError, ValueError) as exc:
                    reason = f"the verified file does not load: {exc}"
                    outcomes = [
                        FetchOutcome(o.row, o.version, "rejected", o.release, "load_failed", reason)
                        if o.kind == "installed"
                        else o
                        for o in outcomes
                    ]
            out.extend(outcomes)
        return out

    # -- the hook's ends ----------------------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        """Numbers that merge across shards: statuses, refusals and rollbacks by reason, commands, fetches, and
        shadow mode's sums per condition class (``ota_shadow.shadow_rates`` turns them into shares and means)."""
        live = self.shadow.total()
        shadow: dict[str, Any] = {
            name: {c: float(self.shadow_done[name][i] + live[name][i]) for i, c in enumerate(CONDITION_CLASSES)}
            for name in SHADOW_SUMS
        }
        shadow["vehicle_ticks"] = int(self.shadow_ticks.sum())
        shadow["uncompared_vehicle_ticks"] = self.shadow_uncompared
        return {"ota": {**{k: dict(v) for k, v in self.tally.items()}, "fetch": dict(self.fetch), "shadow": shadow}}

    def close(self, timeout_s: float) -> None:
        """Send every shadowing vehicle's final report, stop the worker thread (a fetch in flight is abandoned) and
        deliver the statuses sent so far."""
        self._shadow_reports("end_of_run", time.time(), final=True)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.transport.close(timeout_s)


def _fetch(
    cfg: OtaClientConfig, model_name: str, job: _Job, vehicle_ids: list[str]
) -> tuple[Path | None, list[FetchOutcome], float, float]:
    """The worker thread's job, timed (its CPU and wall seconds)."""
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    path, outcomes = _fetch_verified(cfg, model_name, job, vehicle_ids)
    return path, outcomes, time.thread_time() - cpu0, time.perf_counter() - wall0


def _fetch_verified(
    cfg: OtaClientConfig, model_name: str, job: _Job, vehicle_ids: list[str]
) -> tuple[Path | None, list[FetchOutcome]]:
    """The shard's refresh, each vehicle's verdict, one verified download."""
    reqs = job.requests

    def every(kind: str, exc: Exception | None = None, release: int = 0) -> list[FetchOutcome]:
        reason = "" if exc is None else rejection_reason(exc)
        return [FetchOutcome(r.row, r.version, kind, release, reason, str(exc or "")) for r in reqs]

    try:
        release = refresh_release(cfg, model_name, job.label)
    except RepositoryUnavailable as exc:
        log.info("release server unavailable for %s v%s: %s", model_name, job.label, exc)
        return None, every("unavailable")
    except (ReleaseRejected, ReleaseNotFound) as exc:
        return None, every("rejected", exc)
    number = release.fields.release
    outcomes: list[FetchOutcome] = []
    accepted: list[FetchRequest] = []
    for r, vid in zip(reqs, vehicle_ids, strict=True):
        if r.commanded_release and r.commanded_release != number:
            detail = f"the command names release {r.commanded_release}; the signed release of v{job.label} is {number}"
            outcomes.append(FetchOutcome(r.row, r.version, "rejected", number, "release_mismatch", detail))
            continue
        try:
            wave = vehicle_verdict(release, cfg.supported_input_schemas, vid, r.installed_release)
        except ReleaseRejected as exc:
            outcomes.append(FetchOutcome(r.row, r.version, "rejected", number, rejection_reason(exc), str(exc)))
            continue
        accepted.append(r)
        outcomes.append(FetchOutcome(r.row, r.version, "installed", number, "", f"release {number}, wave {wave}"))
    path = None
    if accepted:
        try:
            path = download_verified(cfg, release)
        except RepositoryUnavailable:
            outcomes = [o if o.kind != "installed" else FetchOutcome(o.row, o.version, "unavailable") for o in outcomes]
        except ReleaseRejected as exc:
            reason, detail = rejection_reason(exc), str(exc)
            outcomes = [
                o if o.kind != "installed" else FetchOutcome(o.row, o.version, "rejected", number, reason, detail)
                for o in outcomes
            ]
    return path, outcomes
