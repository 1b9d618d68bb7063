"""The operator's side of rollouts (what `fleetloop ota rollout | status | pause | ... | history` call): requests
checked before they are dropped for the controller service, and readable views of the records.

A request is refused here, before it reaches the controller, when it cannot apply: a version not in staging, a
model without a production version, a second rollout of a model while one runs (all ``UserInputError``, exit 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetloop.platform.canary.decide import Verdict
from fleetloop.platform.canary.policy import CanaryPolicy
from fleetloop.platform.canary.rollouts import FleetView, RolloutRecord, RolloutStore
from fleetloop.platform.errors import UserInputError
from fleetloop.platform.registry import Registry, Stage
from fleetloop.platform.releases import api

__all__ = ["cohort_summary", "history_view", "release_of", "request_rollout", "status_view"]


def release_of(state_dir: Path, model: str, version: int) -> int | None:
    """The newest signed release number of (model, version), or None when it was never published."""
    found = [
        s.fields.release
        for s in api.list_releases(state_dir)
        if (s.fields.model_name, s.fields.version) == (model, str(version))
    ]
    return max(found) if found else None


def check_rollout(store: RolloutStore, registry: Registry, model: str, version: int) -> int:
    """Refuse what cannot be rolled out; returns the production version the fleet runs."""
    info = registry.get(model, version)
    if info.stage is not Stage.STAGING:
        raise UserInputError(
            f"{model} v{version} is {info.stage or 'without a stage'}; only a staging version is rolled out "
            f"(`fleetloop model promote {model} {version} --to staging` once it passed validation)"
        )
    running = [r.rollout_id for r in store.active(model)] + [
        r.rollout_id for r in store.pending_starts() if r.start.get("model") == model
    ]
    if running:
        raise UserInputError(
            f"a rollout of {model} is already running ({running[0]}); wait for it, or `fleetloop ota abort` it"
        )
    return int(registry.production(model).version)


def request_rollout(
    store: RolloutStore,
    registry: Registry,
    model: str,
    version: int,
    canary_release: int,
    policy: CanaryPolicy,
) -> str:
    """Ask the controller to roll ``version`` out (after :func:`check_rollout`); returns the rollout id."""
    production = check_rollout(store, registry, model, version)
    rollout_id = store.new_rollout_id(model, version)
    start = {
        "model": model,
        "canary_version": version,
        "production_version": production,
        "canary_release": canary_release,
        "policy": policy.to_dict(),
    }
    store.submit("start", rollout_id, start=start)
    return rollout_id


def _wave_rows(rec: RolloutRecord) -> list[dict[str, Any]]:
    """Per judged wave: its last verdict (the one that ended it, or where it stands) with the evidence that
    decided it; the JSON view keeps every evidence line of that verdict."""
    st = rec.controller
    if st is None:
        return []
    last: dict[int, Any] = {}
    for d in st.decisions:
        if (
            d.wave_index not in last
            or d.verdict is not Verdict.CONTINUE
            or last[d.wave_index].verdict is Verdict.CONTINUE
        ):
            last[d.wave_index] = d
    rows = []
    for wave, d in sorted(last.items()):
        started = rec.wave_started_at_s[wave] if wave < len(rec.wave_started_at_s) else None
        rows.append(
            {
                "wave": wave + 1,
                "fraction": d.wave_fraction,
                "started_at_s": started,
                "verdict": d.verdict.value,
                "decided_at_s": d.decided_at_s,
                "reasons": list(d.reasons),
                "decisive": [e.describe() for e in d.evidence if e.decisive],
                "evidence": d.to_dict()["evidence"],
            }
        )
    return rows


def status_view(rec: RolloutRecord, cohorts: dict[str, Any]) -> dict[str, Any]:
    """What ``ota status`` shows of one rollout."""
    st = rec.controller
    return {
        "rollout_id": rec.rollout_id,
        "model": rec.model,
        "canary_version": rec.canary_version,
        "production_version": rec.production_version,
        "canary_release": rec.canary_release,
        "rollback_release": rec.rollback_release or None,
        "phase": rec.phase,
        "wave": None if st is None else st.wave + 1,
        "waves": list(rec.policy.waves),
        "wave_km": None if st is None else st.wave_km,
        "cohorts": cohorts,
        "refused": {} if st is None else dict(st.refused),
        "ota": dict(rec.ota_counts),
        "effects_pending": len(rec.todo),
        "last_verdict": _wave_rows(rec)[-1] if st is not None and st.decisions else None,
        "log": rec.log[-10:],
    }


def history_view(records: Sequence[RolloutRecord]) -> list[dict[str, Any]]:
    """What ``ota history`` shows: every rollout with its verdict per wave and the evidence."""
    return [
        {
            "rollout_id": r.rollout_id,
            "model": r.model,
            "canary_version": r.canary_version,
            "production_version": r.production_version,
            "phase": r.phase,
            "requested_at_s": r.requested_at_s,
            "waves": _wave_rows(r),
            "refused": {} if r.controller is None else dict(r.controller.refused),
            "log": r.log,
        }
        for r in records
    ]


def cohort_summary(rec: RolloutRecord, fleet: FleetView, now_s: float, silent_after_s: float) -> dict[str, Any]:
    """Where each cohort stands: sizes, installs reported, vehicles not heard for ``silent_after_s``."""
    st = rec.controller
    if st is None:
        return {"canary": 0, "baseline": 0, "fleet": 0, "silent": []}
    silent = []
    for v in (*st.canary, *st.baseline):
        heard = fleet.last_heard_s(v)
        if heard is None or now_s - heard > silent_after_s:
            silent.append(v)
    installed = sum(1 for v in st.canary if rec.ota_state.get(v) in ("committed", "activated", "installed"))
    return {
        "canary": len(st.canary),
        "baseline": len(st.baseline),
        "fleet": len(st.strata),
        "canary_installed": installed,
        "silent": sorted(silent),
    }
