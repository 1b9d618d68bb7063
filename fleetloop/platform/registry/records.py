"""What the registry stores on a model version, and how it reads it back: pure data and (de)serialization.

Everything lives in MLflow version tags, so every process on every machine sees the same state:

    fleetloop.stage                     the version's stage (stages.Stage value)
    fleetloop.metadata                  JSON object: format, input schema version, training data hashes, ...
    fleetloop.transition.<seq>-<id>     JSON TransitionRecord, one tag per transition of this version

The random ``<id>`` after the sequence number keeps two processes that record a transition at the same
moment from overwriting each other's tag.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleetloop.platform.errors import DataError, UserInputError
from fleetloop.platform.registry.stages import Stage, StageChange

__all__ = [
    "KNOWN_METADATA_KEYS",
    "METADATA_TAG",
    "RECORD_SCHEMA_VERSION",
    "STAGE_TAG",
    "TRANSITION_TAG_PREFIX",
    "ModelVersionInfo",
    "TransitionRecord",
    "metadata_from_tags",
    "stage_from_tags",
    "transition_tag_key",
    "transitions_from_tags",
    "validate_metadata",
]

STAGE_TAG = "fleetloop.stage"
METADATA_TAG = "fleetloop.metadata"
TRANSITION_TAG_PREFIX = "fleetloop.transition."
RECORD_SCHEMA_VERSION = 1

# The metadata keys the platform knows; others are kept and shown as they are.
KNOWN_METADATA_KEYS: tuple[str, ...] = (
    "format",  # how the artifact is serialized, e.g. "safetensors"
    "input_schema_version",  # version of the observation schema the policy reads
    "training_data_hashes",  # content hashes of the training data partitions
    "parent_version",  # the registry version this one was fine-tuned from
    "training_run_id",  # the MLflow run that trained it
)
# MLflow caps a model-version tag value at 100,000 characters; stay well below.
MAX_METADATA_JSON_CHARS = 50_000


@dataclass(frozen=True)
class TransitionRecord:
    """One entry of the transition log: who moved which version from where to where, when and why."""

    model: str
    version: str
    from_stage: str | None
    to_stage: str
    actor: str
    """user@host of the process that made the change, or the actor it was given (e.g. ``ota-controller``)."""
    at: str
    """UTC time, ISO 8601, read once per decision (all changes of one promotion share it)."""
    reason: str
    forced: bool = False
    genesis: bool = False
    via_rollout: bool = False
    caused_by: str | None = None
    decision: str = ""
    """Id shared by the changes of one promotion (the requested one and its side effects)."""
    step: int = 0
    """Order of this change within its decision."""
    schema: int = RECORD_SCHEMA_VERSION

    @classmethod
    def from_change(
        cls, model: str, change: StageChange, *, actor: str, at: datetime, decision: str, step: int
    ) -> TransitionRecord:
        return cls(
            model=model,
            version=change.version,
            from_stage=change.from_stage.value if change.from_stage else None,
            to_stage=change.to_stage.value,
            actor=actor,
            at=at.astimezone(UTC).isoformat(timespec="microseconds"),
            reason=change.reason,
            forced=change.forced,
            genesis=change.genesis,
            via_rollout=change.via_rollout,
            caused_by=change.caused_by,
            decision=decision,
            step=step,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, *, where: str) -> TransitionRecord:
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise TypeError("not a JSON object")
            if int(raw.get("schema", 1)) > RECORD_SCHEMA_VERSION:
                raise ValueError(f"schema {raw['schema']} is newer than this fleetloop ({RECORD_SCHEMA_VERSION})")
            known = {f for f in cls.__dataclass_fields__}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (ValueError, TypeError, KeyError) as e:
            raise DataError(
                f"transition record {where} cannot be read ({e}); upgrade fleetloop or fix the tag in MLflow"
            ) from e

    @property
    def at_datetime(self) -> datetime:
        return datetime.fromisoformat(self.at)

    def sort_key(self) -> tuple[datetime, str, int]:
        return (self.at_datetime, self.decision, self.step)


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered version as the control plane sees it: an artifact plus metadata, a stage and aliases."""

    model: str
    version: str
    stage: Stage | None
    aliases: tuple[str, ...]
    created: str
    """UTC creation time, ISO 8601."""
    source: str
    """Where MLflow keeps the artifact (``runs:/<run_id>/model``)."""
    run_id: str | None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (what `fleetloop model list --json` prints per version)."""
        return {
            "model": self.model,
            "version": self.version,
            "stage": self.stage.value if self.stage else None,
            "aliases": list(self.aliases),
            "created": self.created,
            "source": self.source,
            "run_id": self.run_id,
            "metadata": dict(self.metadata),
        }


def validate_metadata(metadata: Mapping[str, Any]) -> str:
    """Check ``metadata`` and return it as the JSON stored in the metadata tag; UserInputError says what is wrong."""
    if not isinstance(metadata, Mapping):
        raise UserInputError(f"model metadata must be a mapping (a dict), not {type(metadata).__name__}")
    bad_keys = [k for k in metadata if not isinstance(k, str) or not k]
    if bad_keys:
        raise UserInputError(f"model metadata keys must be non-empty strings; fix {bad_keys!r}")
    try:
        text = json.dumps(dict(metadata), sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise UserInputError(
            f"model metadata must be JSON (strings, numbers, booleans, lists, dicts; no NaN): {e}"
        ) from e
    if len(text) > MAX_METADATA_JSON_CHARS:
        raise UserInputError(
            f"model metadata is {len(text)} characters of JSON, over the {MAX_METADATA_JSON_CHARS} limit; "
            "store bulky data (e.g. long hash lists) as an artifact and put its hash in the metadata"
        )
    hashes = metadata.get("training_data_hashes")
    if hashes is not None and not (isinstance(hashes, list | tuple) and all(isinstance(h, str) for h in hashes)):
        raise UserInputError("metadata 'training_data_hashes' must be a list of strings (content hashes)")
    parent = metadata.get("parent_version")
    if parent is not None and not str(parent).isdigit():
        raise UserInputError(f"metadata 'parent_version' must be a registry version number, not {parent!r}")
    return text


def stage_from_tags(tags: Mapping[str, str], *, where: str) -> Stage | None:
    """The stage a version's tags record (None: no stage tag); DataError for a value that is not a stage."""
    raw = tags.get(STAGE_TAG)
    if raw is None:
        return None
    try:
        return Stage(raw)
    except ValueError:
        names = ", ".join(s.value for s in Stage)
        raise DataError(
            f"{where} has {STAGE_TAG}={raw!r}, which is not a stage; set the tag to one of {names} in MLflow"
        ) from None


def metadata_from_tags(tags: Mapping[str, str], *, where: str) -> dict[str, Any]:
    raw = tags.get(METADATA_TAG)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise DataError(f"{where} has a {METADATA_TAG} tag that is not JSON ({e}); fix the tag in MLflow") from e
    if not isinstance(value, dict):
        raise DataError(f"{where} has a {METADATA_TAG} tag that is not a JSON object; fix the tag in MLflow")
    return value


def transitions_from_tags(tags: Mapping[str, str], *, where: str) -> list[TransitionRecord]:
    """Every transition record in a version's tags, oldest first."""
    records = [
        TransitionRecord.from_json(value, where=f"{where} tag {key}")
        for key, value in tags.items()
        if key.startswith(TRANSITION_TAG_PREFIX)
    ]
    return sorted(records, key=TransitionRecord.sort_key)


def transition_tag_key(tags: Mapping[str, str], unique: str) -> str:
    """The tag key for the next transition of a version with ``tags``: a sequence number and a unique suffix."""
    seq = sum(1 for k in tags if k.startswith(TRANSITION_TAG_PREFIX))
    return f"{TRANSITION_TAG_PREFIX}{seq:04d}-{unique}"
