"""The vehicle's side of a signed release: verify before anything is deserialised.

A pure core decides on what python-tuf has already verified (signatures, thresholds, versions, expiry)::

    check_release(fields, supported_schemas, installed_release)       schema and release number, or raise
    choose_wave(fields, release_hashes, waves, vehicle_id) -> wave     the signed wave that lists this vehicle

and a thin shell, :func:`fetch_verified_release`, refreshes the metadata with ``tuf.ngclient.Updater`` from the
trusted root the vehicle was built with, collects the release and its waves, and downloads the file into a
content-addressed cache shared by every vehicle of a shard (``<cache>/sha256/<hex>``): resumable, verified
against the signed length and sha256, then renamed into place. Every refusal is a typed error from
:mod:`fleetloop.platform.releases.errors` saying why.

A fleet shard runs the same steps apart (the OTA client, :mod:`fleetloop.edge_agent.ota_agent`): one
:func:`refresh_release` per (model, version) for the shard, one :func:`vehicle_verdict` per vehicle (its id, its
installed release), one :func:`download_verified` when at least one vehicle accepted.

This module is not part of the numeric core: it imports python-tuf (the vehicle's policy and inference do not).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater

from fleetloop.edge_agent.ota_download import DownloadInterrupted, download_once
from fleetloop.platform.releases.cohorts import in_cohort, rule_from_custom
from fleetloop.platform.releases.errors import (
    BadHash,
    NotAssigned,
    ReleaseNotFound,
    ReplayedMetadata,
    RepositoryUnavailable,
    UnsupportedSchema,
    from_tuf_error,
)
from fleetloop.platform.releases.fields import ReleaseFields
from fleetloop.platform.releases.signing import release_target_path, wave_target_path

__all__ = [
    "MAX_WAVES",
    "OtaClientConfig",
    "SignedRelease",
    "SignedWave",
    "VerifiedRelease",
    "cache_path",
    "check_release",
    "choose_wave",
    "download_verified",
    "fetch_verified_release",
    "refresh_release",
    "vehicle_verdict",
]

log = logging.getLogger(__name__)
MAX_WAVES = 64  # waves are numbered 1, 2, ... without gaps; the search stops at the first missing one


@dataclass(frozen=True)
class OtaClientConfig:
    """Where a shard's vehicles fetch and keep releases, and what they can run."""

    repo_url: str  # the release server, e.g. http://127.0.0.1:8765 (serving metadata/ and targets/)
    trusted_root: bytes  # the root metadata the vehicle was built with; trust starts here
    metadata_dir: Path  # the shard's trusted metadata (last versions seen: what makes a replay detectable)
    cache_dir: Path  # the shard's content-addressed artifact cache
    supported_input_schemas: frozenset[int]  # policy input schema versions this vehicle's software can feed
    max_attempts: int = 4  # download attempts (each resumes where the last broke off)
    timeout_s: float = 30.0  # per connection / read


@dataclass(frozen=True)
class SignedWave:
    """A rollout wave as signed in its delegated role (python-tuf has checked the signature)."""

    wave: int
    hashes: Mapping[str, str]
    custom: Mapping[str, Any]


@dataclass(frozen=True)
class VerifiedRelease:
    """A release file whose bytes, metadata and assignment to this vehicle all verified."""

    path: Path
    fields: ReleaseFields
    wave: int


# ---- the pure core ----------------------------------------------------------------------------------------------


def check_release(fields: ReleaseFields, supported_input_schemas: frozenset[int], installed_release: int) -> None:
    """Refuse a release this vehicle cannot run, or one older than the release it runs (a replayed command)."""
    if fields.input_schema_version not in supported_input_schemas:
        raise UnsupportedSchema(
            f"release {fields.release} ({fields.model_name} v{fields.version}) reads input schema "
            f"{fields.input_schema_version}; this vehicle runs {sorted(supported_input_schemas)}; "
            "update the vehicle software first"
        )
    if fields.release < installed_release:
        raise ReplayedMetadata(
            f"release {fields.release} is older than the installed release {installed_release}; a rollback must be "
            "re-published under a new release number"
        )


def choose_wave(
    fields: ReleaseFields, release_hashes: Mapping[str, str], waves: Sequence[SignedWave], vehicle_id: str
) -> int:
    """The first signed wave of this release that lists the vehicle, or NotAssigned saying what was checked."""
    for w in waves:
        if w.custom.get("release") != fields.release or dict(w.hashes) != dict(release_hashes):
            continue  # a wave of another release, or for other bytes: it authorises nothing here
        if in_cohort(rule_from_custom(w.custom.get("cohort"), f"wave {w.wave}"), vehicle_id):
            return w.wave
    raise NotAssigned(
        f"vehicle {vehicle_id} is in none of the {len(waves)} signed wave(s) of release {fields.release} "
        f"({fields.model_name} v{fields.version}); a command alone does not install a release"
    )


# ---- the shell --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedRelease:
    """What the shard's freshly verified metadata says about one (model, version): the target, its fields, its waves.

    Shared by every vehicle of the shard (the metadata is the same for all); each vehicle then decides for itself
    with :func:`vehicle_verdict`.
    """

    target: TargetFile
    fields: ReleaseFields
    waves: tuple[SignedWave, ...]


def fetch_verified_release(
    cfg: OtaClientConfig, model_name: str, version: str, vehicle_id: str, installed_release: int = 0
) -> VerifiedRelease:
    """Refresh the signed metadata, check the release and this vehicle's assignment, download and verify the file.

    Raises (all from :mod:`fleetloop.platform.releases.errors`): ReleaseNotFound, BadHash, ExpiredMetadata,
    ReplayedMetadata, SignatureRejected, NotAssigned, UnsupportedSchema, RepositoryUnavailable.
    """
    release = refresh_release(cfg, model_name, version)
    wave = vehicle_verdict(release, cfg.supported_input_schemas, vehicle_id, installed_release)
    return VerifiedRelease(download_verified(cfg, release), release.fields, wave)


def refresh_release(cfg: OtaClientConfig, model_name: str, version: str) -> SignedRelease:
    """Refresh the signed metadata from the trusted root and read the release of (model, version) and its waves.

    Raises ReleaseNotFound, ExpiredMetadata, ReplayedMetadata, SignatureRejected, RepositoryUnavailable.
    """
    target = release_target_path(model_name, version)
    cfg.metadata_dir.mkdir(parents=True, exist_ok=True)
    try:
        updater = Updater(str(cfg.metadata_dir), f"{cfg.repo_url.rstrip('/')}/metadata/", bootstrap=cfg.trusted_root)
        updater.refresh()
        info = updater.get_targetinfo(target)
        if info is None:
            raise ReleaseNotFound(f"{model_name} version {version} is not a signed release")
        fields = ReleaseFields.from_custom(info.custom, info.path)
        waves = tuple(_signed_waves(updater, fields.release))
    except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
        raise from_tuf_error(exc, target) from exc
    return SignedRelease(info, fields, waves)


def vehicle_verdict(
    release: SignedRelease, supported_input_schemas: frozenset[int], vehicle_id: str, installed_release: int
) -> int:
    """One vehicle's own decision on a verified release: the wave that lists it, or the typed refusal (pure)."""
    check_release(release.fields, supported_input_schemas, installed_release)
    return choose_wave(release.fields, release.target.hashes, release.waves, vehicle_id)


def download_verified(cfg: OtaClientConfig, release: SignedRelease) -> Path:
    """The release's file in the shard's cache, downloaded if missing and verified against the signed length and
    sha256 (BadHash, RepositoryUnavailable)."""
    return _cached_or_downloaded(cfg, release.target)


def _signed_waves(updater: Updater, release: int) -> list[SignedWave]:
    """Waves 1, 2, ... of ``release`` until the first that is not delegated (each role verified by python-tuf)."""
    waves = []
    for n in range(1, MAX_WAVES + 1):
        info = updater.get_targetinfo(wave_target_path(release, n))
        if info is None:
            break
        waves.append(SignedWave(n, dict(info.hashes), dict(info.custom or {})))
    return waves


def cache_path(cache_dir: Path, sha256: str) -> Path:
    """Where a verified artifact with this sha256 lives in the shard's cache."""
    return cache_dir / "sha256" / sha256


def _cached_or_downloaded(cfg: OtaClientConfig, info: TargetFile) -> Path:
    sha = info.hashes["sha256"]
    final = cache_path(cfg.cache_dir, sha)
    if final.exists():
        if _verifies(info, final):
            return final
        log.warning("cached %s fails its signed hash; downloading it again", final)
        final.unlink()
    part = cfg.cache_dir / "partial" / f"{sha}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    # one writer per part file: vehicles of a shard (or shards sharing a cache) wait for each other
    with (part.parent / f"{sha}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.exists() and _verifies(info, final):
            return final
        return _download(cfg, info, part, final)


def _download(cfg: OtaClientConfig, info: TargetFile, part: Path, final: Path) -> Path:
    sha = info.hashes["sha256"]
    parent, sep, name = info.path.rpartition("/")
    url = f"{cfg.repo_url.rstrip('/')}/targets/{parent}{sep}{sha}.{name}"  # consistent snapshot: hash-prefixed
    last: DownloadInterrupted | None = None
    for attempt in range(1, cfg.max_attempts + 1):
        try:
            download_once(url, part, info.length, cfg.timeout_s)
        except DownloadInterrupted as exc:
            last = exc
            log.info("download attempt %d/%d of %s broke off: %s", attempt, cfg.max_attempts, url, exc)
            continue
        if not _verifies(info, part):
            part.unlink()
            raise BadHash(f"{url}: the downloaded bytes do not match the signed sha256 {sha}; not installed")
        os.replace(part, final)
        return final
    raise RepositoryUnavailable(f"{url}: {cfg.max_attempts} attempts broke off (last: {last}); try again later")


def _verifies(info: TargetFile, path: Path) -> bool:
    with path.open("rb") as f:
        try:
            info.verify_length_and_hashes(f)
        except tuf_exc.LengthOrHashMismatchError:
            return False
    return True
