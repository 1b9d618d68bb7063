"""The rollout controller's files under ``<state_dir>/canary``: each rollout's record, the fleet it has seen, and the
operator's requests. The controller service is their one writer; the CLI only drops requests and reads.

    canary/rollouts/<rollout_id>.json   a RolloutRecord: the pure controller's state and what the shell did
    canary/fleet.json                   every vehicle heard: stratum, version, last beat, when
    canary/requests/<id>.json           operator requests (start, pause, resume, abort, rollback), applied once
    canary/refused/<rollout_id>.json    a start request the controller refused, with why (the CLI waits on it)

Every write is atomic (``write_text_atomic``): after a kill -9 a file holds its old or its new content. A request
is applied once: its id is kept in the record that applied it before the request file is deleted.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetloop.platform.atomic import write_text_atomic
from fleetloop.platform.canary.controller import PAUSED, RUNNING, ControllerState
from fleetloop.platform.canary.policy import CanaryPolicy, policy_from_mapping
from fleetloop.platform.errors import DataError, NotFoundError, UserInputError

__all__ = [
    "OPERATOR_COMMANDS",
    "FleetView",
    "Request",
    "RolloutRecord",
    "RolloutStore",
    "phase_of",
]

OPERATOR_COMMANDS = ("pause", "resume", "abort", "rollback")
WAITING = "waiting"  # a requested rollout the controller has not started yet (no fleet heard)
ABORTED = "aborted"  # an operator stopped it without judging the model (vehicles back, version back to staging)


@dataclass
class RolloutRecord:
    """One rollout: what was asked, the pure controller's state, and every effect the shell owes or carried out.

    Attributes:
        rollout_id, model: the rollout and the registered model it rolls out.
        canary_version, production_version: registry versions (the new one; the one the fleet runs).
        canary_release: the signed release number of the canary version.
        requested_at_s: when it was asked for (Unix time).
        controller: the pure controller's state (None while waiting for the fleet).
        outcome: ``""`` while it runs, then ``promoted``, ``rolled_back`` or ``aborted``.
        rollback_release: the release number the production version was re-signed under to bring vehicles back.
        wave_started_at_s: when each wave began (Unix time), by wave index.
        todo: effects decided but not yet carried out, in order (carried out again after a crash: idempotent).
        commanded: vehicle -> the version it was last commanded to install.
        ota_state: vehicle -> the last state it reported (``OtaStatus.state``); ota_counts: reports by state.
        applied_requests: ids of operator requests already applied (a request file survives a crash once).
        log: what the shell did, one readable line each, with its time.
    """

    rollout_id: str
    model: str
    canary_version: int
    production_version: int
    canary_release: int
    policy: CanaryPolicy
    requested_at_s: float
    controller: ControllerState | None = None
    outcome: str = ""
    rollback_release: int = 0
    wave_started_at_s: list[float] = field(default_factory=list)
    todo: list[dict[str, Any]] = field(default_factory=list)
    commanded: dict[str, int] = field(default_factory=dict)
    ota_state: dict[str, str] = field(default_factory=dict)
    ota_counts: dict[str, int] = field(default_factory=dict)
    applied_requests: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def phase(self) -> str:
        """``waiting``, ``running``, ``paused``, ``rolled_back``, ``promoted`` or ``aborted``."""
        return phase_of(self)

    @property
    def active(self) -> bool:
        """Still to be finished: waiting, running, paused, or with effects left to carry out."""
        return self.phase in (WAITING, RUNNING, PAUSED) or bool(self.todo)

    def note(self, now_s: float, text: str) -> None:
        self.log.append({"at_s": now_s, "text": text})

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "model": self.model,
            "canary_version": self.canary_version,
            "production_version": self.production_version,
            "canary_release": self.canary_release,
            "policy": self.policy.to_dict(),
            "requested_at_s": self.requested_at_s,
            "controller": None if self.controller is None else json.loads(self.controller.to_json()),
            "outcome": self.outcome,
            "rollback_release": self.rollback_release,
            "wave_started_at_s": self.wave_started_at_s,
            "todo": self.todo,
            "commanded": dict(sorted(self.commanded.items())),
            "ota_state": dict(sorted(self.ota_state.items())),
            "ota_counts": dict(sorted(self.ota_counts.items())),
            "applied_requests": self.applied_requests,
            "log": self.log,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> RolloutRecord:
        try:
            ctl = d["controller"]
            return RolloutRecord(
                rollout_id=str(d["rollout_id"]),
                model=str(d["model"]),
                canary_version=int(d["canary_version"]),
                production_version=int(d["production_version"]),
                canary_release=int(d["canary_release"]),
                policy=policy_from_mapping(d["policy"], "persisted rollout policy"),
                requested_at_s=float(d["requested_at_s"]),
                controller=None if ctl is None else ControllerState.from_json(json.dumps(ctl)),
                outcome=str(d["outcome"]),
                rollback_release=int(d["rollback_release"]),
                wave_started_at_s=[float(x) for x in d["wave_started_at_s"]],
                todo=[dict(x) for x in d["todo"]],
                commanded={str(k): int(v) for k, v in d["commanded"].items()},
                ota_state={str(k): str(v) for k, v in d["ota_state"].items()},
                ota_counts={str(k): int(v) for k, v in d["ota_counts"].items()},
                applied_requests=[str(x) for x in d["applied_requests"]],
                log=[dict(x) for x in d["log"]],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"rollout record is damaged: {type(e).__name__}: {e}") from e


def phase_of(rec: RolloutRecord) -> str:
    """The rollout's phase as the operator sees it (an operator's abort shows as ``aborted``)."""
    if rec.outcome:
        return rec.outcome
    if rec.controller is None:
        return WAITING
    return rec.controller.phase


@dataclass(frozen=True)
class Request:
    """An operator's request: ``start`` (with the rollout's fields) or an operator command for a rollout."""

    request_id: str
    command: str
    rollout_id: str
    at_s: float
    reason: str = ""
    start: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "request_id": self.request_id,
                "command": self.command,
                "rollout_id": self.rollout_id,
                "at_s": self.at_s,
                "reason": self.reason,
                "start": dict(self.start),
            },
            sort_keys=True,
        )

    @staticmethod
    def from_json(text: str) -> Request:
        try:
            d = json.loads(text)
            return Request(
                str(d["request_id"]),
                str(d["command"]),
                str(d["rollout_id"]),
                float(d["at_s"]),
                str(d["reason"]),
                dict(d["start"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"operator request is damaged: {e}") from e


@dataclass
class FleetView:
    """Every vehicle heard on the fleet-health topic: vehicle -> [stratum, model version, last beat, last heard s]."""

    vehicles: dict[str, list[Any]] = field(default_factory=dict)

    def heard(self, vehicle_id: str, stratum: str, version: int, beat_seq: int, now_s: float) -> None:
        self.vehicles[vehicle_id] = [stratum, version, beat_seq, now_s]

    def fleet_on(self, version: int, since_s: float) -> dict[str, str]:
        """Vehicle -> stratum of the vehicles on ``version`` heard since ``since_s``: a new rollout's fleet."""
        return {v: s for v, (s, ver, _, at) in self.vehicles.items() if ver == version and at >= since_s}

    def last_heard_s(self, vehicle_id: str) -> float | None:
        row = self.vehicles.get(vehicle_id)
        return None if row is None else float(row[3])


class RolloutStore:
    """The files under ``<state_dir>/canary`` (see the module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "canary"
        self.rollouts_dir = self.root / "rollouts"
        self.requests_dir = self.root / "requests"
        self.refused_dir = self.root / "refused"
        self.fleet_path = self.root / "fleet.json"

    def _ensure(self) -> None:
        self.rollouts_dir.mkdir(parents=True, exist_ok=True)
        self.requests_dir.mkdir(parents=True, exist_ok=True)

    # -- records -----------------------------------------------------------------------------------

    def save(self, rec: RolloutRecord) -> None:
        self._ensure()
        text = json.dumps(rec.to_dict(), allow_nan=False, sort_keys=True)
        write_text_atomic(self.rollouts_dir / f"{rec.rollout_id}.json", text)

    def load(self, rollout_id: str) -> RolloutRecord:
        path = self.rollouts_dir / f"{rollout_id}.json"
        try:
            return RolloutRecord.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise NotFoundError(f"no rollout {rollout_id!r}; `fleetloop ota history` lists them") from None
        except json.JSONDecodeError as e:
            raise DataError(f"rollout record {path} is not JSON: {e}") from e

    def records(self, model: str | None = None) -> list[RolloutRecord]:
        """Every rollout (of ``model``), oldest request first."""
        if not self.rollouts_dir.is_dir():
            return []
        out = [self.load(p.stem) for p in self.rollouts_dir.glob("*.json")]
        return sorted((r for r in out if model is None or r.model == model), key=lambda r: r.requested_at_s)

    def active(self, model: str | None = None) -> list[RolloutRecord]:
        return [r for r in self.records(model) if r.active]

    def current(self, model: str | None, rollout_id: str | None = None) -> RolloutRecord:
        """The rollout an operator command is for: ``rollout_id``, else the one active rollout (of ``model``)."""
        pending = [r for r in self.pending_starts() if model is None or r.start.get("model") == model]
        if rollout_id:
            waiting = [r for r in pending if r.rollout_id == rollout_id]
            return self.waiting_record(waiting[0]) if waiting else self.load(rollout_id)
        live = self.active(model)
        if not live and pending:
            return self.waiting_record(pending[0])
        if len(live) != 1:
            which = f" of {model}" if model else ""
            if not live:
                raise NotFoundError(f"no rollout{which} is running; `fleetloop ota history` lists past ones")
            ids = ", ".join(f"{r.rollout_id} ({r.model})" for r in live)
            raise UserInputError(f"several rollouts{which} are running ({ids}); name one with --rollout ID")
        return live[0]

    @staticmethod
    def waiting_record(req: Request) -> RolloutRecord:
        """The record a start request will become (phase ``waiting``), for the operator's views."""
        s = req.start
        return RolloutRecord(
            req.rollout_id,
            str(s["model"]),
            int(s["canary_version"]),
            int(s["production_version"]),
            int(s["canary_release"]),
            policy_from_mapping(s["policy"]),
            req.at_s,
        )

    # -- the fleet ---------------------------------------------------------------------------------

    def load_fleet(self) -> FleetView:
        try:
            return FleetView(json.loads(self.fleet_path.read_text()))
        except FileNotFoundError:
            return FleetView()
        except json.JSONDecodeError as e:
            raise DataError(f"the controller's fleet view {self.fleet_path} is not JSON: {e}") from e

    def save_fleet(self, fleet: FleetView) -> None:
        self._ensure()
        write_text_atomic(self.fleet_path, json.dumps(fleet.vehicles, sort_keys=True, allow_nan=False))

    # -- requests ----------------------------------------------------------------------------------

    def submit(
        self, command: str, rollout_id: str, reason: str = "", start: Mapping[str, Any] | None = None
    ) -> Request:
        """Drop a request for the controller service (applied once, in the order submitted)."""
        if command != "start" and command not in OPERATOR_COMMANDS:
            raise UserInputError(f"unknown rollout command {command!r}; use one of {', '.join(OPERATOR_COMMANDS)}")
        self._ensure()
        req = Request(uuid.uuid4().hex[:12], command, rollout_id, time.time(), reason, dict(start or {}))
        name = f"{time.time_ns():020d}-{req.request_id}.json"
        write_text_atomic(self.requests_dir / name, req.to_json())
        return req

    def requests(self) -> list[tuple[Path, Request]]:
        """Pending requests in the order submitted."""
        if not self.requests_dir.is_dir():
            return []
        return [(p, Request.from_json(p.read_text())) for p in sorted(self.requests_dir.glob("*.json"))]

    def pending_starts(self) -> list[Request]:
        return [r for _, r in self.requests() if r.command == "start"]

    def done(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def refuse(self, rollout_id: str, reason: str) -> None:
        """Record that the start of ``rollout_id`` was refused and why (no record exists to note it on)."""
        self.refused_dir.mkdir(parents=True, exist_ok=True)
        doc = {"rollout_id": rollout_id, "reason": reason, "at": time.time()}
        write_text_atomic(self.refused_dir / f"{rollout_id}.json", json.dumps(doc, allow_nan=False))

    def refusal(self, rollout_id: str) -> str | None:
        """Why the start of ``rollout_id`` was refused, or None."""
        path = self.refused_dir / f"{rollout_id}.json"
        if not path.is_file():
            return None
        try:
            return str(json.loads(path.read_text())["reason"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"the refusal record {path} is not what the controller writes: {e}") from e

    @staticmethod
    def new_rollout_id(model: str, version: int) -> str:
        return f"{model}-v{version}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
