"""What a rollout does to the world, as plain records (``todo`` of a ``RolloutRecord``) and the code that does it.

The pure controller's actions become effects (``effects_for``, pure); ``Effects.carry_out`` does one of them on
the registry, the release repository or the bus. Every effect is safe to do twice, because a controller killed
after doing one and before recording it does it again on restart:

- ``registry``: a stage transition (a version already in the stage records nothing new);
- ``assign_wave``: sign which vehicles may install a release in a wave (re-signing a wave replaces it);
- ``command``: ``OtaCommand`` events to vehicles (a vehicle that already runs the version ignores a repeat);
- ``republish``: sign the production version again under a higher release number, for the rollback, and queue
  the rollback wave and commands; a release already re-signed for this rollout is reused, not signed twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetloop.platform.bus.events import OtaCommand
from fleetloop.platform.bus.producer import BusProducer
from fleetloop.platform.bus.topics import OTA_COMMANDS
from fleetloop.platform.canary.controller import Action, AssignWave, Promote, RecordDecision, RollBack
from fleetloop.platform.canary.rollouts import RolloutRecord
from fleetloop.platform.registry import Registry
from fleetloop.platform.releases import api
from fleetloop.platform.releases.cohorts import DEFAULT_BUCKETS, CohortRule, HashRange, VehicleList

__all__ = ["Effects", "effects_for", "start_effects"]

WHOLE_FLEET = "*"  # an assign_wave effect's vehicles for the promotion wave: every vehicle (all hash buckets)
ACTOR = "ota-controller"
MAX_REASON_CHARS = 4000  # a registry transition's reason is an MLflow tag value (5,000 characters at most)
_COMMAND_FIELDS = {f.name for f in dataclasses.fields(OtaCommand)}


def _install(rec: RolloutRecord, vehicles: Sequence[str], version: int, release: int, action: str) -> dict[str, Any]:
    return {"kind": "command", "action": action, "version": version, "release": release, "vehicles": list(vehicles)}


def start_effects(rec: RolloutRecord, first: AssignWave) -> list[dict[str, Any]]:
    """A rollout's start: the version to canary, its first wave signed, its vehicles told to install."""
    reason = f"rollout {rec.rollout_id} started"
    return [
        {"kind": "registry", "version": rec.canary_version, "to": "canary", "reason": reason, "via_rollout": False},
        *effects_for(rec, [first]),
    ]


def effects_for(rec: RolloutRecord, actions: Sequence[Action]) -> list[dict[str, Any]]:
    """The effects of the controller's actions (``RecordDecision`` and ``Refused`` have none: the shell records
    and dead-letters those itself)."""
    out: list[dict[str, Any]] = []
    state = rec.controller
    evidence = ""
    for a in actions:
        if isinstance(a, RecordDecision):
            decisive = [e.describe() for e in a.decision.evidence if e.decisive]
            evidence = f"; evidence: {'; '.join(decisive)}" if decisive else ""
        elif isinstance(a, AssignWave):
            new = [v for v in a.canary if rec.commanded.get(v) != rec.canary_version]
            out.append({"kind": "assign_wave", "release": rec.canary_release, "wave": a.wave + 1, "vehicles": a.canary})
            if new:
                out.append(_install(rec, new, rec.canary_version, rec.canary_release, "install"))
        elif isinstance(a, Promote):
            fleet = sorted(state.strata) if state is not None else []
            rest = [v for v in fleet if rec.commanded.get(v) != rec.canary_version]
            last_wave = len(rec.policy.waves)
            out.append(
                {"kind": "assign_wave", "release": rec.canary_release, "wave": last_wave, "vehicles": WHOLE_FLEET}
            )
            if rest:
                out.append(_install(rec, rest, rec.canary_version, rec.canary_release, "install"))
            reason = f"rollout {rec.rollout_id}: every judged wave passed; promoted to the whole fleet"
            out.append(
                {
                    "kind": "registry",
                    "version": rec.canary_version,
                    "to": "production",
                    "reason": reason,
                    "via_rollout": True,
                }
            )
        elif isinstance(a, RollBack):
            reason = f"rollout {rec.rollout_id} rolled back: {a.reason}{evidence}"[:MAX_REASON_CHARS]
            out.append(
                {
                    "kind": "registry",
                    "version": rec.canary_version,
                    "to": "rejected",
                    "reason": reason,
                    "via_rollout": False,
                }
            )
            out.append({"kind": "republish", "version": rec.production_version})
    return out


def _rule(vehicles: Any) -> CohortRule:
    if vehicles == WHOLE_FLEET:
        return HashRange(0, DEFAULT_BUCKETS, DEFAULT_BUCKETS)
    return VehicleList(tuple(vehicles))


class Effects:
    """Carries out effects against the real registry, release repository and broker."""

    def __init__(self, state_dir: Path, registry: Registry, producer: BusProducer) -> None:
        self.state_dir = Path(state_dir)
        self.registry = registry
        self.producer = producer

    def carry_out(self, rec: RolloutRecord, effect: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        """Do ``effect`` for ``rec``; returns a line for the record's log and the effects it leads to (the
        rollback wave once the production version is re-signed). Raises ``ServiceUnavailable`` when a service is
        away (the effect stays to do), a ``UserInputError`` when the world refuses it (it is logged, not retried)."""
        kind = effect["kind"]
        if kind == "registry":
            self.registry.promote(
                rec.model,
                effect["version"],
                effect["to"],
                reason=effect["reason"],
                via_rollout=bool(effect["via_rollout"]),
                actor=ACTOR,
            )
            return f"registry: {rec.model} v{effect['version']} -> {effect['to']}", []
        if kind == "assign_wave":
            rule = _rule(effect["vehicles"])
            api.assign_wave(self.state_dir, int(effect["release"]), int(effect["wave"]), rule)
            who = "the whole fleet" if effect["vehicles"] == WHOLE_FLEET else f"{len(effect['vehicles'])} vehicle(s)"
            return f"signed wave {effect['wave']} of release {effect['release']}: {who}", []
        if kind == "command":
            for v in effect["vehicles"]:
                self.producer.send(OTA_COMMANDS, self._command(rec, v, effect))
            self.producer.flush()
            for v in effect["vehicles"]:
                rec.commanded[v] = int(effect["version"])
            n = len(effect["vehicles"])
            return (
                f"commanded {n} vehicle(s) to {effect['action']} v{effect['version']} (release {effect['release']})",
                [],
            )
        if kind == "republish":
            release = self._rollback_release(rec, int(effect["version"]))
            rec.rollback_release = release
            back = [v for v, ver in rec.commanded.items() if ver == rec.canary_version]
            follow: list[dict[str, Any]] = []
            if back:
                follow = [
                    {"kind": "assign_wave", "release": release, "wave": 1, "vehicles": sorted(back)},
                    _install(rec, sorted(back), rec.production_version, release, "rollback"),
                ]
            return f"re-signed {rec.model} v{effect['version']} as rollback release {release}", follow
        raise ValueError(f"unknown effect {kind!r}")

    def _rollback_release(self, rec: RolloutRecord, version: int) -> int:
        """The production version's release number, re-signed above the canary's once per rollout."""
        if rec.rollback_release:
            return rec.rollback_release
        for s in api.list_releases(self.state_dir):
            f = s.fields
            if (f.model_name, f.version) == (rec.model, str(version)) and f.release > rec.canary_release:
                return f.release  # re-signed before a crash: reuse it
        return api.republish(self.state_dir, rec.model, str(version)).release

    def _command(self, rec: RolloutRecord, vehicle: str, effect: dict[str, Any]) -> OtaCommand:
        fields: dict[str, Any] = {
            "rollout_id": rec.rollout_id,
            "vehicle_id": vehicle,
            "model_name": rec.model,
            "version": int(effect["version"]),
            "action": effect["action"],
            "source": ACTOR,
        }
        if "release" in _COMMAND_FIELDS:  # OtaCommand 1.1 names the signed release (vehicles check it)
            fields["release"] = int(effect["release"])
        return OtaCommand(**fields)
