"""The registry: register versions, promote them along the stage policy, read the transition log.

A thin shell around the pure policy in :mod:`stages`: it reads a snapshot from the backend, asks
:func:`stages.plan_transition` what to do, and carries the plan out, writing the transition record of each
change *before* the stage tag it describes, so that no change of stage goes unrecorded.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetloop.platform.errors import NotFoundError, UserInputError
from fleetloop.platform.registry.backend import RawVersion, RegistryBackend
from fleetloop.platform.registry.model_file import find_model_file
from fleetloop.platform.registry.records import (
    METADATA_TAG,
    STAGE_TAG,
    ModelVersionInfo,
    TransitionRecord,
    metadata_from_tags,
    stage_from_tags,
    transition_tag_key,
    transitions_from_tags,
    validate_metadata,
)
from fleetloop.platform.registry.stages import (
    RegistrySnapshot,
    Stage,
    StageChange,
    TransitionPlan,
    parse_stage,
    plan_transition,
)

__all__ = ["Registry", "default_actor"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def default_actor() -> str:
    """``user@host`` of this process, the default *who* of a transition."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no passwd entry (some containers)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise UserInputError(
            f"{name!r} is not a valid model name; use letters, digits, '.', '_' and '-' (e.g. fleet-policy)"
        )
    return name


def _check_version(version: str | int) -> str:
    v = str(version).strip()
    if not v.isdigit() or int(v) < 1:
        raise UserInputError(f"{version!r} is not a model version; versions are numbers 1, 2, 3, ...")
    return str(int(v))


class Registry:
    """The fleet's model registry on a storage backend (MLflow, or memory in unit tests).

    ``clock`` returns the current time as an aware datetime; it is read once per decision.
    """

    def __init__(self, backend: RegistryBackend, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.backend = backend
        self._clock = clock

    # -- reading ---------------------------------------------------------------------------------

    def list_versions(self, name: str) -> list[ModelVersionInfo]:
        """Every version of model ``name``, oldest first; NotFoundError when it is not registered."""
        _check_name(name)
        raw = self.backend.versions(name)
        aliases = self.backend.aliases(name)
        return [self._info(name, r, aliases) for r in sorted(raw, key=lambda r: int(r.version))]

    def get(self, name: str, version: str | int) -> ModelVersionInfo:
        """One version of model ``name``; NotFoundError names the versions that exist."""
        v = _check_version(version)
        for info in self.list_versions(name):
            if info.version == v:
                return info
        raise self._no_version(name, v, self.list_versions(name))

    def by_alias(self, name: str, alias: str) -> ModelVersionInfo | None:
        """The version ``alias`` (``production``, ``canary``) points at, or None when the alias is not set."""
        _check_name(name)
        target = self.backend.aliases(name).get(alias)
        return None if target is None else self.get(name, target)

    def production(self, name: str) -> ModelVersionInfo:
        """The version of ``name`` in production (alias ``production``); NotFoundError, saying how to release one,
        when the model is not registered or no version is in production."""
        try:
            info = self.by_alias(name, Stage.PRODUCTION.value)
        except NotFoundError:  # the model is not registered at all
            info = None
        if info is None:
            raise NotFoundError(
                f"{name} has no production version in {self.backend.location}; release one with "
                f"`fleetloop model bootstrap` (the initial model) or `fleetloop model promote {name} VERSION --to "
                "production`"
            )
        return info

    def history(self, name: str, version: str | int | None = None) -> list[TransitionRecord]:
        """The transition log of model ``name`` (or of one version), oldest first."""
        _check_name(name)
        raw = self.backend.versions(name)
        if version is not None:
            v = _check_version(version)
            raw = [r for r in raw if r.version == v]
            if not raw:
                raise self._no_version(name, v, self.list_versions(name))
        records = [rec for r in raw for rec in transitions_from_tags(r.tags, where=f"{name} version {r.version}")]
        return sorted(records, key=TransitionRecord.sort_key)

    def download(self, name: str, version: str | int, dst: Path) -> Path:
        """Copy the artifact of a version under ``dst``; returns the directory holding it."""
        v = _check_version(version)
        for r in self.backend.versions(_check_name(name)):
            if r.version == v:
                return self.backend.download(name, r, Path(dst))
        raise self._no_version(name, v, self.list_versions(name))

    def download_model(self, name: str, version: str | int, dst: Path) -> Path:
        """Copy the artifact of a version under ``dst``; returns the path of its model file (see
        :func:`~.model_file.find_model_file`)."""
        folder = self.download(name, version, dst)
        return find_model_file(folder, what=f"{name} version {_check_version(version)}")

    # -- writing ---------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        artifact: Path | str,
        metadata: Mapping[str, Any],
        *,
        reason: str = "registered",
        actor: str | None = None,
    ) -> ModelVersionInfo:
        """Store ``artifact`` (file or directory) with ``metadata`` as a new version of ``name``, stage candidate.

        ``metadata`` is a JSON object; the platform reads ``format``, ``input_schema_version``,
        ``training_data_hashes``, ``parent_version`` (checked to exist) and ``training_run_id``.
        """
        _check_name(name)
        path = Path(artifact)
        if not path.exists():
            raise NotFoundError(f"model artifact {path} does not exist; pass the path of a model file or directory")
        if path.is_dir() and not any(path.iterdir()):
            raise UserInputError(f"model artifact directory {path} is empty; there is nothing to register")
        meta_json = validate_metadata(metadata)
        self.backend.ensure_model(name)
        parent = metadata.get("parent_version")
        if parent is not None:
            existing = [r.version for r in self.backend.versions(name)]
            if str(parent) not in existing:
                raise NotFoundError(
                    f"metadata parent_version {parent} is not a version of {name} (it has {existing or 'none'}); "
                    "fix the parent or leave it out"
                )
        run_tags = {"fleetloop.model": name}
        if metadata.get("training_run_id"):
            run_tags["fleetloop.training_run_id"] = str(metadata["training_run_id"])
        # Created without a stage: the registration record is written first, then the stage that it announces.
        raw = self.backend.create_version(name, path, tags={METADATA_TAG: meta_json}, run_tags=run_tags)
        return self._record_candidate(name, raw, reason=reason, actor=actor)

    def find_by_training_run(self, name: str, training_run_id: str) -> ModelVersionInfo | None:
        """The version of ``name`` registered from training run ``training_run_id`` (its metadata's
        ``training_run_id``), or None; the oldest when there are several."""
        try:
            versions = self.list_versions(name)
        except NotFoundError:  # the model is not registered at all
            return None
        return next((v for v in versions if v.metadata.get("training_run_id") == training_run_id), None)

    def register_once(
        self,
        name: str,
        artifact: Path | str,
        metadata: Mapping[str, Any],
        *,
        reason: str = "registered",
        actor: str | None = None,
    ) -> tuple[ModelVersionInfo, bool]:
        """:meth:`register`, at most once per training run: (the version, whether this call created it).

        A version already registered from ``metadata["training_run_id"]`` is returned instead of a second one,
        its candidate stage recorded first when a crash left it without a stage. Without a training run id this
        is :meth:`register`.
        """
        run_id = metadata.get("training_run_id")
        found = self.find_by_training_run(name, str(run_id)) if run_id else None
        if found is None:
            return self.register(name, artifact, metadata, reason=reason, actor=actor), True
        if found.stage is None:
            raw = next(r for r in self.backend.versions(name) if r.version == found.version)
            found = self._record_candidate(name, raw, reason=reason, actor=actor)
        return found, False

    def _record_candidate(self, name: str, raw: RawVersion, *, reason: str, actor: str | None) -> ModelVersionInfo:
        change = StageChange(version=raw.version, from_stage=None, to_stage=Stage.CANDIDATE, reason=reason)
        self._apply(name, TransitionPlan(changes=(change,), aliases=()), {raw.version: raw}, actor=actor)
        return self.get(name, raw.version)

    def promote(
        self,
        name: str,
        version: str | int,
        to: Stage | str,
        *,
        reason: str = "",
        force: bool = False,
        via_rollout: bool = False,
        actor: str | None = None,
    ) -> list[TransitionRecord]:
        """Move a version to stage ``to`` along the stage policy; returns the transitions recorded (maybe none).

        Raises TransitionNotAllowed (saying what is allowed) for a forbidden move unless ``force`` with a
        ``reason``. ``via_rollout=True`` is for the OTA controller finishing a canary rollout. A version already in
        ``to`` records nothing new but completes side effects an interrupted promotion left undone.
        """
        _check_name(name)
        v = _check_version(version)
        stage = to if isinstance(to, Stage) else parse_stage(str(to))
        raw = {r.version: r for r in self.backend.versions(name)}
        if v not in raw:
            raise self._no_version(name, v, self.list_versions(name))
        snapshot = self._snapshot(name, raw)
        plan = plan_transition(snapshot, v, stage, reason=reason, force=force, via_rollout=via_rollout)
        return self._apply(name, plan, raw, actor=actor)

    # -- internals -------------------------------------------------------------------------------

    def _snapshot(self, name: str, raw: Mapping[str, RawVersion]) -> RegistrySnapshot:
        stages = {v: stage_from_tags(r.tags, where=f"{name} version {v}") for v, r in raw.items()}
        had_production = any(s is Stage.PRODUCTION for s in stages.values()) or any(
            rec.to_stage == Stage.PRODUCTION.value
            for v, r in raw.items()
            for rec in transitions_from_tags(r.tags, where=f"{name} version {v}")
        )
        return RegistrySnapshot(stages=stages, aliases=self.backend.aliases(name), had_production=had_production)

    def _apply(
        self, name: str, plan: TransitionPlan, raw: Mapping[str, RawVersion], *, actor: str | None
    ) -> list[TransitionRecord]:
        at = self._clock()
        if at.tzinfo is None:
            raise ValueError("the registry clock must return timezone-aware datetimes")
        decision = uuid.uuid4().hex[:12]
        who = actor or default_actor()
        tags = {v: dict(r.tags) for v, r in raw.items()}
        records: list[TransitionRecord] = []

        def change_stage(step: int, change: StageChange) -> None:
            record = TransitionRecord.from_change(name, change, actor=who, at=at, decision=decision, step=step)
            key = transition_tag_key(tags[change.version], uuid.uuid4().hex[:8])
            self.backend.set_version_tag(name, change.version, key, record.to_json())
            tags[change.version][key] = record.to_json()
            self.backend.set_version_tag(name, change.version, STAGE_TAG, change.to_stage.value)
            records.append(record)

        # Requested change, then aliases, then side effects: an interruption never leaves the production
        # alias on an archived version, and a retried promotion archives what is left over.
        requested = [c for c in plan.changes if c.caused_by is None]
        side = [c for c in plan.changes if c.caused_by is not None]
        for change in requested:
            change_stage(len(records), change)
        for move in plan.aliases:
            if move.version is None:
                self.backend.delete_alias(name, move.alias)
            else:
                self.backend.set_alias(name, move.alias, move.version)
        for change in side:
            change_stage(len(records), change)
        return records

    def _info(self, name: str, raw: RawVersion, aliases: Mapping[str, str]) -> ModelVersionInfo:
        where = f"{name} version {raw.version}"
        return ModelVersionInfo(
            model=name,
            version=raw.version,
            stage=stage_from_tags(raw.tags, where=where),
            aliases=tuple(sorted(a for a, v in aliases.items() if v == raw.version)),
            created=datetime.fromtimestamp(raw.created_ms / 1000, UTC).isoformat(timespec="seconds"),
            source=raw.source,
            run_id=raw.run_id,
            metadata=metadata_from_tags(raw.tags, where=where),
        )

    @staticmethod
    def _no_version(name: str, version: str, infos: list[ModelVersionInfo]) -> NotFoundError:
        have = ", ".join(i.version for i in infos) or "none"
        return NotFoundError(f"{name} has no version {version} (versions: {have}); see `fleetloop model list`")
