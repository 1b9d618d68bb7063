"""An in-memory registry backend for unit tests of other components (the OTA controller, the pipelines).

It stores the same things the MLflow backend stores and raises the same platform errors; the registry contract
tests (tests/integration/test_registry_contract.py) run against both, so it cannot drift from MLflow.
Artifacts are copied into a temporary directory so that downloads return real files.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from fleetloop.platform.errors import NotFoundError
from fleetloop.platform.registry.backend import RawVersion

__all__ = ["InMemoryBackend"]


class InMemoryBackend:
    """Registry storage in a dict; one instance is one registry server."""

    location = "memory"

    def __init__(self, artifact_root: Path | None = None) -> None:
        self._root = Path(artifact_root or tempfile.mkdtemp(prefix="fleetloop-registry-"))
        self._versions: dict[str, dict[str, RawVersion]] = {}
        self._aliases: dict[str, dict[str, str]] = {}

    def ensure_model(self, name: str) -> None:
        self._versions.setdefault(name, {})
        self._aliases.setdefault(name, {})

    def _model(self, name: str) -> dict[str, RawVersion]:
        try:
            return self._versions[name]
        except KeyError:
            raise NotFoundError(
                f"model {name!r} is not registered in {self.location}; register a version first"
            ) from None

    def _version(self, name: str, version: str) -> RawVersion:
        try:
            return self._model(name)[version]
        except KeyError:
            raise NotFoundError(f"{name} has no version {version}") from None

    def versions(self, name: str) -> list[RawVersion]:
        return list(self._model(name).values())

    def aliases(self, name: str) -> dict[str, str]:
        self._model(name)
        return dict(self._aliases[name])

    def create_version(
        self, name: str, artifact: Path, *, tags: Mapping[str, str], run_tags: Mapping[str, str]
    ) -> RawVersion:
        versions = self._model(name)
        number = str(len(versions) + 1)
        run_id = f"mem-{name}-{number}"
        dst = self._root / run_id / "model"
        if artifact.is_dir():
            shutil.copytree(artifact, dst)
        else:
            dst.mkdir(parents=True)
            shutil.copy2(artifact, dst / artifact.name)
        raw = RawVersion(
            version=number,
            tags=dict(tags),
            created_ms=int(time.time() * 1000),
            source=f"runs:/{run_id}/model",
            run_id=run_id,
        )
        versions[number] = raw
        return raw

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        raw = self._version(name, version)
        tags = dict(raw.tags)
        tags[key] = value
        self._versions[name][version] = RawVersion(raw.version, tags, raw.created_ms, raw.source, raw.run_id)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._version(name, version)
        self._aliases[name][alias] = version

    def delete_alias(self, name: str, alias: str) -> None:
        self._model(name)
        self._aliases[name].pop(alias, None)

    def download(self, name: str, version: RawVersion, dst: Path) -> Path:
        run_id = version.source.removeprefix("runs:/").split("/")[0]
        src = self._root / run_id / "model"
        out = dst / "model"
        shutil.copytree(src, out, dirs_exist_ok=True)
        return out
