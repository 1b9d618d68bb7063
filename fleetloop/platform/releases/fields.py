"""The custom fields signed into each release target, and the check that they hold only strings and ints.

TUF signs canonical JSON, which has no floats: a float in a signed field fails at signing time with an obscure
error, so :func:`check_signable` refuses it first and names the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fleetloop.platform.releases.errors import BadReleaseInput, ReleaseRejected

__all__ = ["PUBLISH_KEYS", "ReleaseFields", "check_signable"]

# What the publisher supplies beside the model name, version and artifact (the rest is computed).
PUBLISH_KEYS = ("run_id", "input_schema_version", "parent_version", "validation_report_sha256")


@dataclass(frozen=True)
class ReleaseFields:
    """A release as signed into the targets metadata: which model, where it came from, what it needs."""

    release: int  # the repository's release number; only grows, a rollback gets a new, higher one
    model_name: str
    version: str  # the registry version of the model
    run_id: str  # the MLflow run that produced the artifact
    sha256: str  # of the artifact bytes (TUF checks its own copy of the hash too)
    length_bytes: int
    input_schema_version: int  # the policy input schema the model reads; a vehicle refuses one it does not run
    parent_version: str  # the registry version this model was fine-tuned from ("" for a first model)
    validation_report_sha256: str  # the report that passed the gates
    extra: Mapping[str, str | int] = field(default_factory=dict)  # further publisher fields, strings / ints

    def to_custom(self) -> dict[str, Any]:
        """The JSON-able dict signed as the target's ``custom`` field."""
        out = asdict(self)
        out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_custom(cls, custom: object, target_path: str) -> ReleaseFields:
        """Parse a signed ``custom`` field; a repository that signed something else is at fault (ReleaseRejected)."""
        if not isinstance(custom, Mapping):
            raise ReleaseRejected(f"target {target_path} carries no release fields; it was not published by us")
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = custom.get(f.name, {} if f.name == "extra" else None)
            expected = {"release": int, "length_bytes": int, "input_schema_version": int, "extra": Mapping}.get(
                f.name, str
            )
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ReleaseRejected(f"target {target_path}: release field {f.name!r} is {value!r}, not {expected}")
            values[f.name] = value
        return cls(**values)


def check_signable(value: object, where: str = "custom") -> None:
    """Refuse anything but strings, ints (not bools), lists and string-keyed dicts of them; name the bad key."""
    if isinstance(value, bool) or not isinstance(value, str | int | list | tuple | Mapping):
        raise BadReleaseInput(
            f"{where} = {value!r} ({type(value).__name__}): signed fields hold strings and ints only "
            "(canonical JSON has no floats); send a float as a string or scaled int"
        )
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_signable(item, f"{where}[{i}]")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadReleaseInput(f"{where}: key {key!r} is not a string")
            check_signable(item, f"{where}.{key}")
