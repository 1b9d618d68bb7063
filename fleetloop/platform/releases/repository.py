"""The TUF repository on disk: the shell that loads, re-signs and persists metadata; decisions live in ``signing``.

Layout under ``<state_dir>/ota/repo/`` (served as is by :mod:`.server`)::

    metadata/1.root.json 2.root.json ...        every root version: a vehicle walks the chain from the one it trusts
    metadata/<v>.targets.json <v>.snapshot.json  consistent snapshots: each version under its own name
    metadata/<v>.rollout-<r>-wave-<n>.json       a rollout wave: which vehicles may install release r
    metadata/timestamp.json                      the only unversioned file a vehicle fetches; written last
    metadata/<role>.json                         the latest of each role, for this module to load
    targets/models/<model>/<version>/<sha256>.artifact   the artifact under its hash (never overwritten)

Every change ends in one commit (:meth:`ReleaseRepository._commit`): changed roles re-signed, then snapshot,
then timestamp, each written to a temp file and renamed. A vehicle that reads during a publish sees the old
timestamp, and through it the old, complete set of files. One publisher at a time (a lock file).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from fleetloop.platform.atomic import write_bytes_atomic
from fleetloop.platform.releases.cohorts import CohortRule, rule_from_custom, rule_to_custom
from fleetloop.platform.releases.errors import BadReleaseInput, KeysMissing, ReleaseNotFound
from fleetloop.platform.releases.fields import PUBLISH_KEYS, ReleaseFields, check_signable
from fleetloop.platform.releases.files import private_dir
from fleetloop.platform.releases.keys import (
    ROOT_THRESHOLD,
    KeyRing,
    generate_role_keys,
    init_keys,
    keys_dir,
    load_keys,
    store_role_keys,
)
from fleetloop.platform.releases.signing import (
    Lifetimes,
    needs_refresh,
    next_release_number,
    release_target_path,
    resign,
    sign_all,
    wave_role_name,
    wave_target_path,
)

__all__ = ["ReleaseRepository", "ReleaseSummary", "WaveAssignment", "repo_dir"]

_TOP_LEVEL = ("root", "targets", "snapshot", "timestamp")


@dataclass(frozen=True)
class WaveAssignment:
    """One signed rollout wave of a release."""

    wave: int
    role: str
    rule: CohortRule


@dataclass(frozen=True)
class ReleaseSummary:
    """A release as the repository signed it, with its waves."""

    fields: ReleaseFields
    target_path: str
    waves: tuple[WaveAssignment, ...]


def repo_dir(state_dir: Path) -> Path:
    """The directory the release server serves."""
    return Path(state_dir) / "ota" / "repo"


class ReleaseRepository:
    """The signed release repository under ``<state_dir>/ota/repo``; every mutating call takes ``now`` (UTC)."""

    def __init__(self, state_dir: Path, lifetimes: Lifetimes | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.root_dir = repo_dir(self.state_dir)
        self.metadata_dir = self.root_dir / "metadata"
        self.targets_dir = self.root_dir / "targets"
        self.lifetimes = lifetimes or Lifetimes()
        if not (self.metadata_dir / "root.json").exists():
            raise KeysMissing(f"no release repository in {self.root_dir}; run `fleetloop ota keys init` first")

    # ---- creation -------------------------------------------------------------------------------------------

    @classmethod
    def initialise(cls, state_dir: Path, now: datetime, lifetimes: Lifetimes | None = None) -> ReleaseRepository:
        """Generate the keys (:func:`init_keys`) and sign version 1 of every top-level role."""
        life = lifetimes or Lifetimes()
        ring = init_keys(state_dir)
        root = Root(expires=now + life.of("root"), consistent_snapshot=True)
        for role in _TOP_LEVEL:
            for key in ring.public_keys(role):
                root.add_key(key, role)
        root.roles["root"].threshold = ROOT_THRESHOLD
        rollout_keys = {k.keyid: k for k in ring.public_keys("rollout")}
        delegations = Delegations(keys=dict(rollout_keys), roles={})
        signed: dict[str, Any] = {
            "root": root,
            "targets": Targets(expires=now + life.of("targets"), delegations=delegations),
            "snapshot": Snapshot(expires=now + life.of("snapshot")),
            "timestamp": Timestamp(expires=now + life.of("timestamp")),
        }
        meta_dir = repo_dir(state_dir) / "metadata"
        meta_dir.mkdir(parents=True, exist_ok=True)
        (repo_dir(state_dir) / "targets").mkdir(exist_ok=True)
        # timestamp last: it is what makes the rest visible
        for role in ("root", "targets", "snapshot", "timestamp"):
            md: Metadata[Any] = Metadata(signed[role])
            sign_all(md, ring.signers[role])
            _write_metadata(meta_dir, role, md)
        return cls(state_dir, life)

    # ---- reading --------------------------------------------------------------------------------------------

    def trusted_root(self) -> bytes:
        """Root version 1, the trust anchor a vehicle is built with (it follows the chain from there)."""
        return (self.metadata_dir / "1.root.json").read_bytes()

    def load(self, role: str) -> Metadata[Any]:
        """The latest signed metadata of ``role``."""
        path = self.metadata_dir / f"{role}.json"
        if not path.exists():
            raise ReleaseNotFound(f"no metadata for role {role!r} in {self.metadata_dir}")
        return Metadata.from_file(str(path))

    def releases(self) -> list[ReleaseSummary]:
        """Every release target, oldest release first, with its signed waves."""
        targets: Targets = self.load("targets").signed
        waves: dict[int, list[WaveAssignment]] = {}
        for name in _wave_roles(targets):
            wave_md: Targets = self.load(name).signed
            for path, tf in wave_md.targets.items():
                release, wave = int(tf.custom["release"]), int(tf.custom["wave"])
                rule = rule_from_custom(tf.custom.get("cohort"), f"{name}:{path}")
                waves.setdefault(release, []).append(WaveAssignment(wave, name, rule))
        out = []
        for path, tf in targets.targets.items():
            fields = ReleaseFields.from_custom(tf.custom, path)
            out.append(ReleaseSummary(fields, path, tuple(sorted(waves.get(fields.release, []), key=_wave_no))))
        return sorted(out, key=lambda s: s.fields.release)

    def find_release(self, release: int) -> tuple[str, TargetFile]:
        """The target path and file of release number ``release`` (a re-published release has its newest number)."""
        targets: Targets = self.load("targets").signed
        for path, tf in targets.targets.items():
            if isinstance(tf.custom, dict) and tf.custom.get("release") == release:
                return path, tf
        raise ReleaseNotFound(f"no release number {release}; `fleetloop ota releases` lists them")

    # ---- changes --------------------------------------------------------------------------------------------

    def publish(
        self, model_name: str, version: str, artifact_path: Path, custom: Mapping[str, Any], now: datetime
    ) -> ReleaseFields:
        """Sign ``artifact_path`` as a new release of (model, version) with the publisher's ``custom`` fields.

        ``custom`` must hold ``run_id``, ``input_schema_version``, ``parent_version``, ``validation_report_sha256``
        (strings / ints only) and may hold further string or int fields. A registry version is immutable: publishing
        other bytes under a published (model, version) is refused; the same bytes get a new release number, as
        :meth:`republish` does.
        """
        fields_in = _publisher_fields(custom)
        path = release_target_path(model_name, version)
        src = Path(artifact_path)
        if not src.is_file():
            raise BadReleaseInput(f"artifact {src} does not exist or is not a file")
        with self._locked():
            ring = load_keys(self.state_dir)
            targets_md = self.load("targets")
            targets: Targets = targets_md.signed
            staged = self._stage_artifact(src, path)
            tf = TargetFile.from_file(path, str(staged), ["sha256"])
            sha = tf.hashes["sha256"]
            old = targets.targets.get(path)
            if old is not None and old.hashes != tf.hashes:
                staged.unlink()
                raise BadReleaseInput(
                    f"{model_name} version {version} is already published with sha256 {old.hashes['sha256']}; "
                    "a registry version is immutable, register the new artifact as a new version"
                )
            os.replace(staged, self.targets_dir / _hashed_name(path, sha))
            fields = ReleaseFields(
                release=next_release_number(targets),
                model_name=model_name,
                version=version,
                sha256=sha,
                length_bytes=tf.length,
                **fields_in,
            )
            tf.unrecognized_fields["custom"] = fields.to_custom()
            targets.targets[path] = tf
            self._commit(ring, {"targets": targets_md}, now)
            return fields

    def republish(self, model_name: str, version: str, now: datetime) -> ReleaseFields:
        """Authorised rollback: sign an already published (model, version) again under a new, higher release number.

        Vehicles accept it because its release number is higher than the one they run; its waves are assigned
        afresh with :meth:`assign_wave`.
        """
        path = release_target_path(model_name, version)
        with self._locked():
            ring = load_keys(self.state_dir)
            targets_md = self.load("targets")
            targets: Targets = targets_md.signed
            tf = targets.targets.get(path)
            if tf is None:
                raise ReleaseNotFound(f"{model_name} version {version} was never published; nothing to roll back to")
            fields = replace(ReleaseFields.from_custom(tf.custom, path), release=next_release_number(targets))
            tf.unrecognized_fields["custom"] = fields.to_custom()
            self._commit(ring, {"targets": targets_md}, now)
            return fields

    def assign_wave(self, release: int, wave: int, rule: CohortRule, now: datetime) -> WaveAssignment:
        """Sign which vehicles may install ``release`` in wave ``wave`` (a delegated role, re-signed if it exists)."""
        if wave < 1:
            raise BadReleaseInput(f"wave numbers start at 1, got {wave}")
        name = wave_role_name(release, wave)
        with self._locked():
            ring = load_keys(self.state_dir)
            path, release_tf = self.find_release(release)
            targets_md = self.load("targets")
            delegations = targets_md.signed.delegations
            assert delegations is not None and delegations.roles is not None  # created by initialise
            custom = {
                "release": release,
                "wave": wave,
                "target": path,
                "cohort": rule_to_custom(rule),
            }
            check_signable(custom)
            wave_path = wave_target_path(release, wave)
            # the wave lists the release's own hashes: an assignment cannot be moved onto other bytes
            wave_tf = TargetFile(release_tf.length, dict(release_tf.hashes), wave_path, {"custom": custom})
            fresh = name not in delegations.roles
            if fresh:
                wave_md: Metadata[Any] = Metadata(Targets(expires=now + self.lifetimes.of(name)))
                delegations.roles[name] = DelegatedRole(
                    name, ring.keyids("rollout"), 1, terminating=True, paths=[wave_path]
                )
            else:
                wave_md = self.load(name)
            wave_md.signed.targets = {wave_path: wave_tf}
            self._commit(ring, {name: wave_md, "targets": targets_md}, now, fresh={name} if fresh else set())
            return WaveAssignment(wave, name, rule)

    def refresh_timestamp(self, now: datetime) -> list[str]:
        """Re-sign whichever online roles are within their margin of expiry (timestamp above all); return them.

        Run it periodically (the release server's host does): a vehicle refuses expired metadata, so a timestamp
        not re-signed stops every install within a day, by design.
        """
        with self._locked():
            ring = load_keys(self.state_dir)
            due: dict[str, Metadata[Any]] = {}
            targets_md = self.load("targets")
            wave_names = _wave_roles(targets_md.signed)
            for role in ["targets", *wave_names]:
                md = targets_md if role == "targets" else self.load(role)
                if needs_refresh(md.signed.expires, now, self.lifetimes.margin(role)):
                    due[role] = md
            snapshot_due = needs_refresh(self.load("snapshot").signed.expires, now, self.lifetimes.margin("snapshot"))
            timestamp_due = needs_refresh(
                self.load("timestamp").signed.expires, now, self.lifetimes.margin("timestamp")
            )
            if not (due or snapshot_due or timestamp_due):
                return []
            if due or snapshot_due:
                self._commit(ring, due, now)
                return [*due, "snapshot", "timestamp"]
            self._commit_timestamp(ring, now)
            return ["timestamp"]

    def rotate_key(self, role: str, now: datetime) -> int:
        """Replace ``role``'s keys; return the new root version (unchanged for ``rollout``).

        Root, targets, snapshot and timestamp keys are listed in root, so their rotation signs a new root version
        with the old root keys *and* the new ones: a vehicle trusting the old root verifies the new one and
        follows the chain. Rollout keys are listed in the targets delegations; every wave is re-signed.
        """
        new_keys = generate_role_keys(role)  # also checks the role name
        with self._locked():
            ring = load_keys(self.state_dir)
            new_ring = KeyRing({**ring.signers, role: new_keys})
            # stage the new private keys beside the old ones; they replace them only after the metadata is written
            pending = private_dir(keys_dir(self.state_dir) / "pending")
            _store_pending(pending, role, new_keys)
            root_md = self.load("root")
            if role == "rollout":
                targets_md = self.load("targets")
                delegations = targets_md.signed.delegations
                changed: dict[str, Metadata[Any]] = {"targets": targets_md}
                for old_id in ring.keyids(role):
                    for name in list(delegations.roles or {}):
                        targets_md.signed.revoke_key(old_id, name)
                for name in list(delegations.roles or {}):
                    for key in new_ring.public_keys(role):
                        targets_md.signed.add_key(key, name)
                    changed[name] = self.load(name)
                if not delegations.roles:  # no wave yet: the key is listed for the ones to come
                    delegations.keys = {k.keyid: k for k in new_ring.public_keys(role)}
                self._commit(new_ring, changed, now)
            else:
                root: Root = root_md.signed
                for old_id in ring.keyids(role):
                    root.revoke_key(old_id, role)
                for key in new_ring.public_keys(role):
                    root.add_key(key, role)
                signers = list(ring.signers["root"]) + (list(new_keys) if role == "root" else [])
                resign(root_md, signers, now, self.lifetimes.of("root"))
                _write_metadata(self.metadata_dir, "root", root_md)
                self._commit(new_ring, {"targets": self.load("targets")} if role == "targets" else {}, now)
            store_role_keys(self.state_dir, role, new_keys)
            shutil.rmtree(pending)
            return int(self.load("root").signed.version)

    # ---- the commit -----------------------------------------------------------------------------------------

    def _commit(
        self, ring: KeyRing, changed: Mapping[str, Metadata[Any]], now: datetime, fresh: set[str] | None = None
    ) -> None:
        """Re-sign the changed targets roles, then snapshot listing their versions, then timestamp (the commit)."""
        snapshot_md = self.load("snapshot")
        for role, md in changed.items():
            signers = ring.signers["rollout" if role.startswith("rollout-") else role]
            if fresh and role in fresh:  # a new role starts at version 1
                md.signed.expires = now + self.lifetimes.of(role)
                sign_all(md, signers)
            else:
                resign(md, signers, now, self.lifetimes.of(role))
            _write_metadata(self.metadata_dir, role, md)
            snapshot_md.signed.meta[f"{role}.json"] = MetaFile(md.signed.version)
        resign(snapshot_md, ring.signers["snapshot"], now, self.lifetimes.of("snapshot"))
        _write_metadata(self.metadata_dir, "snapshot", snapshot_md)
        self._commit_timestamp(ring, now, snapshot_md.signed.version)

    def _commit_timestamp(self, ring: KeyRing, now: datetime, snapshot_version: int | None = None) -> None:
        timestamp_md = self.load("timestamp")
        if snapshot_version is not None:
            timestamp_md.signed.snapshot_meta = MetaFile(snapshot_version)
        resign(timestamp_md, ring.signers["timestamp"], now, self.lifetimes.of("timestamp"))
        _write_metadata(self.metadata_dir, "timestamp", timestamp_md)

    def _stage_artifact(self, src: Path, target_path: str) -> Path:
        """Copy the artifact into the targets tree under a temp name; it is hashed from this copy, not the source."""
        dest_dir = self.targets_dir / Path(target_path).parent
        dest_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".staged-")
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out)
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).chmod(0o644)
        return Path(tmp)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root_dir / ".publish.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _wave_roles(targets: Targets) -> list[str]:
    """The names of the delegated rollout-wave roles, in delegation order."""
    return list(targets.delegations.roles or {}) if targets.delegations is not None else []


def _wave_no(w: WaveAssignment) -> int:
    return w.wave


def _hashed_name(target_path: str, sha256: str) -> str:
    """Where a consistent-snapshot client fetches a target: its hash before the file name."""
    parent, _, name = target_path.rpartition("/")
    return f"{parent}/{sha256}.{name}" if parent else f"{sha256}.{name}"


def _write_metadata(meta_dir: Path, role: str, md: Metadata[Any]) -> None:
    data = md.to_bytes()
    if role != "timestamp":
        write_bytes_atomic(meta_dir / f"{md.signed.version}.{role}.json", data)
    write_bytes_atomic(meta_dir / f"{role}.json", data)


def _store_pending(pending: Path, role: str, keys: tuple[Any, ...]) -> None:
    for i, signer in enumerate(keys, start=1):
        write_bytes_atomic(pending / f"{role}-{i}.pem", signer.private_bytes, mode=0o600)


def _publisher_fields(custom: Mapping[str, Any]) -> dict[str, Any]:
    """Split the publisher's dict into the named release fields and ``extra``; refuse floats and missing keys."""
    check_signable(dict(custom))
    missing = [k for k in PUBLISH_KEYS if k not in custom]
    if missing:
        raise BadReleaseInput(f"release metadata lacks {', '.join(missing)}; give all of {', '.join(PUBLISH_KEYS)}")
    types = {"run_id": str, "input_schema_version": int, "parent_version": str, "validation_report_sha256": str}
    for key, expected in types.items():
        if not isinstance(custom[key], expected):
            raise BadReleaseInput(f"release field {key} = {custom[key]!r} must be {expected.__name__}")
    extra = {k: v for k, v in custom.items() if k not in PUBLISH_KEYS}
    reserved = {"release", "model_name", "version", "sha256", "length_bytes", "extra"} & set(extra)
    if reserved:
        raise BadReleaseInput(f"release fields {sorted(reserved)} are computed by the repository; leave them out")
    bad = {k: v for k, v in extra.items() if not isinstance(v, str | int)}
    if bad:
        raise BadReleaseInput(f"extra release fields must be strings or ints, got {bad!r}")
    return {**{k: custom[k] for k in PUBLISH_KEYS}, "extra": extra}
