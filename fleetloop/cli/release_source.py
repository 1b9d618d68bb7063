"""What a registry version contributes to a signed release: its artifact file and the fields signed beside it.

    source = release_source(settings, registry, "fleet-policy", "7", rollback=False, workdir=tmp)
    api.publish(settings.state_dir, source.model_name, source.version, source.artifact, source.custom)

Pure checks first (:func:`check_publishable`, :func:`input_schema_number`, :func:`signed_fields`), then the I/O
that gathers them: the registry version, its model file (``Registry.download_model``) and the validation report the
validate stage logged to its training run.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetloop.platform.errors import DataError, NotFoundError
from fleetloop.platform.registry import ModelVersionInfo, Registry, Stage
from fleetloop.platform.releases.errors import BadReleaseInput
from fleetloop.platform.settings import Settings
from fleetloop.platform.tracking import open_tracking

__all__ = [
    "PUBLISHABLE",
    "ReleaseSource",
    "check_publishable",
    "input_schema_number",
    "release_source",
    "signed_fields",
    "validation_report_path",
]

# Stages whose versions passed validation and may be signed for vehicles; archived ones only as a rollback.
PUBLISHABLE = frozenset({Stage.STAGING, Stage.CANARY, Stage.PRODUCTION})
_SCHEMA = re.compile(r"[a-z][a-z0-9_-]*/(\d+)")


@dataclass(frozen=True)
class ReleaseSource:
    """A registry version ready to sign: where its file is, the signed fields, and what was not recorded."""

    model_name: str
    version: str
    stage: str
    artifact: Path
    custom: dict[str, Any]  # run_id, input_schema_version, parent_version, validation_report_sha256
    notes: list[str] = field(default_factory=list)  # lineage the registry did not record (signed as "")


def check_publishable(name: str, version: str, stage: Stage | None, rollback: bool) -> None:
    """Refuse a version vehicles must not get: unvalidated, rejected, or archived without ``--rollback``."""
    if stage in PUBLISHABLE or (stage is Stage.ARCHIVED and rollback):
        return
    if stage is Stage.ARCHIVED:
        raise BadReleaseInput(
            f"{name} v{version} is archived; re-publish it only as an authorised rollback: "
            f"`fleetloop ota publish {name} {version} --rollback`"
        )
    if stage is Stage.REJECTED:
        raise BadReleaseInput(f"{name} v{version} was rejected by validation; a rejected model is never released")
    what = "a candidate" if stage is Stage.CANDIDATE else "without a stage"
    raise BadReleaseInput(
        f"{name} v{version} is {what}: only a version that passed validation (staging, canary, production) is "
        f"released; validate it (`fleetloop pipeline run --stage validate`) or promote it with "
        f"`fleetloop model promote {name} {version} --to staging --reason ...`"
    )


def input_schema_number(schema: str) -> int:
    """The signed (integer) input schema version of an artifact's schema name: ``policy-input/1`` -> 1."""
    m = _SCHEMA.fullmatch(schema.strip()) if isinstance(schema, str) else None
    if m is None:
        raise DataError(
            f"the artifact's input schema {schema!r} is not <layout>/<number> (e.g. policy-input/1); "
            "re-export the model with this fleetloop version"
        )
    return int(m[1])


def signed_fields(info: ModelVersionInfo, artifact_schema: str, report_sha256: str) -> tuple[dict[str, Any], list[str]]:
    """The publisher's release fields of a registry version, and notes on lineage it did not record.

    The MLflow run is the training run when the registry recorded one, else the run that holds the artifact; the
    input schema is the artifact's own (the bytes that are signed), and must agree with the registry's record.
    """
    meta: Mapping[str, Any] = info.metadata
    schema = input_schema_number(artifact_schema)
    recorded = meta.get("input_schema_version")
    if recorded is not None and str(recorded) != artifact_schema:
        raise DataError(
            f"{info.model} v{info.version}: the registry records input schema {recorded!r} but the artifact reads "
            f"{artifact_schema!r}; the registration is wrong, register the artifact again"
        )
    run_id = str(meta.get("training_run_id") or info.run_id or "")
    parent = meta.get("parent_version")
    notes = []
    if not run_id:
        notes.append("no MLflow run recorded")
    if parent is None:
        notes.append("no parent version recorded (a first model)")
    if not report_sha256:
        notes.append("no validation report found")
    custom = {
        "run_id": run_id,
        "input_schema_version": schema,
        "parent_version": "" if parent is None else str(parent),
        "validation_report_sha256": report_sha256,
    }
    return custom, notes


def validation_report_path(settings: Settings, training_run_id: str, workdir: Path) -> Path | None:
    """The report the validate stage logged to a training run (``validation/<run>.json``), or None without one.

    The validate stage also keeps the same bytes in ``<state_dir>/pipelines/validation/<run>.json``: read when
    present (no download); otherwise fetched from the run through the platform's tracking door.
    """
    if not training_run_id:
        return None
    local = Path(settings.state_dir) / "pipelines" / "validation" / f"{training_run_id}.json"
    if local.is_file():
        return local
    try:
        path = open_tracking(settings, check=False).download(
            f"runs:/{training_run_id}/validation/{training_run_id}.json", workdir / "validation"
        )
    except (NotFoundError, DataError):  # the run holds no report (never validated)
        return None
    return path if path.is_file() else None


def _artifact_schema(path: Path) -> str:
    # Imported here: model_artifact loads torch (3.5 s measured); only `ota publish` needs it.
    from fleetloop.edge_agent.model_artifact import read_metadata

    return read_metadata(path).input_schema_version


def release_source(
    settings: Settings, registry: Registry, name: str, version: str, *, rollback: bool, workdir: Path
) -> ReleaseSource:
    """Check that the version may be released and gather its file and signed fields (see the module docstring)."""
    info = registry.get(name, version)
    check_publishable(name, info.version, info.stage, rollback)
    artifact = registry.download_model(name, info.version, workdir / "model")
    report = validation_report_path(settings, str(info.metadata.get("training_run_id") or ""), workdir)
    report_sha = hashlib.sha256(report.read_bytes()).hexdigest() if report is not None else ""
    custom, notes = signed_fields(info, _artifact_schema(artifact), report_sha)
    stage = info.stage.value if info.stage is not None else ""
    return ReleaseSource(name, info.version, stage, artifact, custom, notes)
