"""Release data shared by the signed-release tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetloop.platform.releases.fields import ReleaseFields
from fleetloop.platform.releases.repository import ReleaseRepository

SCHEMA = 3  # the input schema the test vehicles run


def release_meta(**overrides: Any) -> dict[str, Any]:
    """The publisher's fields of a release that passed validation."""
    meta: dict[str, Any] = {
        "run_id": "0123abcd",
        "input_schema_version": SCHEMA,
        "parent_version": "",
        "validation_report_sha256": "ab" * 32,
    }
    return {**meta, **overrides}


def served_artifact(repo: ReleaseRepository, fields: ReleaseFields, model: str = "policy") -> Path:
    """The file the release server hands out for ``fields``' release of ``model``."""
    return repo.targets_dir / "models" / model / fields.version / f"{fields.sha256}.artifact"


def flip_a_bit(path: Path) -> None:
    """Flip one bit in the middle of ``path``: the smallest change an attacker (or a bad disk) can make."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
