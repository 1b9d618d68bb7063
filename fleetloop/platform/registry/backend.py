"""The storage primitives the registry needs, as a protocol: MLflow in production, memory in unit tests.

The registry logic (:mod:`fleetloop.platform.registry.service`) runs unchanged on either backend; a backend only
stores and reads back versions, tags and aliases. The contract tests run against both, so the fake cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["RawVersion", "RegistryBackend"]


@dataclass(frozen=True)
class RawVersion:
    """A model version as stored: number, tags, creation time and where the artifact lives."""

    version: str
    tags: Mapping[str, str]
    created_ms: int
    """Creation time, milliseconds since the Unix epoch (UTC)."""
    source: str
    run_id: str | None


class RegistryBackend(Protocol):
    """Storage for registered models. Methods raise platform errors (NotFoundError, ServiceUnavailable)."""

    @property
    def location(self) -> str:
        """Where the registry lives, for messages (a tracking URI, or ``memory``)."""
        ...

    def ensure_model(self, name: str) -> None:
        """Create registered model ``name`` unless it exists (safe when several processes race)."""
        ...

    def versions(self, name: str) -> list[RawVersion]:
        """Every version of ``name`` with its tags; NotFoundError when the model is not registered."""
        ...

    def aliases(self, name: str) -> dict[str, str]:
        """Alias -> version of model ``name``."""
        ...

    def create_version(
        self, name: str, artifact: Path, *, tags: Mapping[str, str], run_tags: Mapping[str, str]
    ) -> RawVersion:
        """Store ``artifact`` (a file or a directory) and create a new version of ``name`` from it with ``tags``.

        ``run_tags`` describe the upload for the backend's own bookkeeping (the MLflow run that holds it).
        """
        ...

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None: ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias``; removing an absent alias is not an error."""
        ...

    def download(self, name: str, version: RawVersion, dst: Path) -> Path:
        """Copy the version's artifact under ``dst`` and return the directory that holds it."""
        ...
