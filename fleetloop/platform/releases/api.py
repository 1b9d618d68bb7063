"""The release operations as the CLI calls them: each reads the clock once and hands ``now`` down.

init_repository(state_dir)                     `fleetloop ota keys init`
rotate_key(state_dir, role)                    `fleetloop ota keys rotate ROLE`
publish(state_dir, name, version, path, meta)  `fleetloop ota publish NAME VERSION`
republish(state_dir, name, version)            an authorised rollback to a published version
assign_wave(state_dir, release, wave, rule)    which vehicles may install a release
refresh_timestamp(state_dir)                   re-sign what is about to expire (run periodically)
list_releases(state_dir)                       `fleetloop ota releases`
verify_file(state_dir, path)                   `fleetloop ota verify PATH`
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetloop.platform.releases import offline
from fleetloop.platform.releases.cohorts import CohortRule
from fleetloop.platform.releases.fields import ReleaseFields
from fleetloop.platform.releases.repository import ReleaseRepository, ReleaseSummary, WaveAssignment

__all__ = [
    "assign_wave",
    "init_repository",
    "list_releases",
    "publish",
    "refresh_timestamp",
    "republish",
    "rotate_key",
    "utc_now",
    "verify_file",
]


def utc_now() -> datetime:
    """The one clock read of an operation (UTC, whole seconds, as TUF stores expiry)."""
    return datetime.now(UTC).replace(microsecond=0)


def init_repository(state_dir: Path) -> ReleaseRepository:
    """Generate every role's keys and sign version 1 of the repository."""
    return ReleaseRepository.initialise(state_dir, utc_now())


def rotate_key(state_dir: Path, role: str) -> int:
    """Replace ``role``'s keys (root, targets, snapshot, timestamp or rollout); return the root version."""
    return ReleaseRepository(state_dir).rotate_key(role, utc_now())


def publish(
    state_dir: Path, model_name: str, version: str, artifact_path: Path, metadata: Mapping[str, Any]
) -> ReleaseFields:
    """Sign ``artifact_path`` as a new release of (model, version); see :meth:`ReleaseRepository.publish`."""
    return ReleaseRepository(state_dir).publish(model_name, version, artifact_path, metadata, utc_now())


def republish(state_dir: Path, model_name: str, version: str) -> ReleaseFields:
    """Authorised rollback: the published (model, version) again, under a new, higher release number."""
    return ReleaseRepository(state_dir).republish(model_name, version, utc_now())


def assign_wave(state_dir: Path, release: int, wave: int, rule: CohortRule) -> WaveAssignment:
    """Sign which vehicles may install ``release`` in wave ``wave``."""
    return ReleaseRepository(state_dir).assign_wave(release, wave, rule, utc_now())


def refresh_timestamp(state_dir: Path) -> list[str]:
    """Re-sign the online roles near expiry; return the roles re-signed (empty when none was due)."""
    return ReleaseRepository(state_dir).refresh_timestamp(utc_now())


def list_releases(state_dir: Path) -> list[ReleaseSummary]:
    """Every signed release with its waves, oldest first."""
    return ReleaseRepository(state_dir).releases()


def verify_file(state_dir: Path, artifact_path: Path) -> ReleaseFields:
    """The signed fields of a downloaded artifact, after the full client check against the repository."""
    return offline.verify_file(ReleaseRepository(state_dir), artifact_path)
