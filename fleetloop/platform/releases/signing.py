"""Pure pieces of the repository: names, lifetimes, the refresh decision, re-signing a metadata object.

No file and no clock here: the caller reads the clock once per decision and passes ``now`` in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, Targets

from fleetloop.platform.releases.errors import BadReleaseInput

__all__ = [
    "ARTIFACT_NAME",
    "Lifetimes",
    "checked_name",
    "needs_refresh",
    "next_release_number",
    "release_target_path",
    "resign",
    "sign_all",
    "wave_role_name",
    "wave_target_path",
]

ARTIFACT_NAME = "artifact"  # every release's file has this name in its target path; the hash prefix tells them apart
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DAY_S = 86_400


@dataclass(frozen=True)
class Lifetimes:
    """How long each role's metadata stays valid after it is signed: short for online roles, so a freeze is short."""

    root_s: int = 365 * _DAY_S  # re-signed only on rotation, with the offline keys
    targets_s: int = 90 * _DAY_S  # re-signed on every publish
    rollout_s: int = 90 * _DAY_S  # each wave's assignment
    snapshot_s: int = 7 * _DAY_S
    timestamp_s: int = 1 * _DAY_S  # re-signed by refresh_timestamp well before it runs out

    def of(self, role: str) -> timedelta:
        """The lifetime of ``role`` (a wave role counts as rollout)."""
        key = "rollout" if role.startswith("rollout-") else role
        return timedelta(seconds=getattr(self, f"{key}_s"))

    def margin(self, role: str) -> timedelta:
        """Re-sign ``role`` once less than a quarter of its lifetime is left (6 h for a 1-day timestamp)."""
        return self.of(role) / 4


def needs_refresh(expires: datetime, now: datetime, margin: timedelta) -> bool:
    """Whether metadata expiring at ``expires`` must be re-signed at ``now`` (less than ``margin`` left)."""
    return expires - now < margin


def resign(md: Metadata, signers: Iterable[Signer], now: datetime, lifetime: timedelta) -> None:
    """Bump the version, set the expiry to ``now + lifetime`` and sign afresh with every signer given."""
    md.signed.version += 1
    md.signed.expires = now + lifetime
    sign_all(md, signers)


def sign_all(md: Metadata, signers: Iterable[Signer]) -> None:
    """Replace the signatures with one by each signer (root is signed by old and new keys alike on rotation)."""
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)


def checked_name(value: str, what: str) -> str:
    """``value`` if it is safe as a path segment (letters, digits, . _ -), else BadReleaseInput."""
    if not _NAME.fullmatch(value) or value in {".", ".."}:
        raise BadReleaseInput(f"{what} {value!r} must be 1-128 letters, digits, '.', '_' or '-'")
    return value


def release_target_path(model_name: str, version: str) -> str:
    """The target path of a model version (what a vehicle asks the repository for)."""
    return f"models/{checked_name(model_name, 'model name')}/{checked_name(version, 'version')}/{ARTIFACT_NAME}"


def wave_role_name(release: int, wave: int) -> str:
    """The delegated role that says which vehicles may install ``release`` in wave ``wave``."""
    return f"rollout-{release}-wave-{wave}"


def wave_target_path(release: int, wave: int) -> str:
    """The path a wave role lists: the release's file (same hashes), under the wave's own name."""
    return f"rollouts/{release}/wave-{wave}/{ARTIFACT_NAME}"


def next_release_number(targets: Targets) -> int:
    """One more than the highest release ever signed (a rollback's re-publish raises it too, so it only grows)."""
    numbers = [t.custom.get("release", 0) for t in targets.targets.values() if isinstance(t.custom, dict)]
    return max(numbers, default=0) + 1
