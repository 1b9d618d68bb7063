"""The registry's storage on a real MLflow tracking server (MLflow 3.17 client API; no stage API).

A version's artifact is logged as the ``model/`` artifact of a run of the ``fleetloop-registry`` experiment and
the version is created from ``runs:/<run_id>/model`` (see docs/adr/0030-registry-on-mlflow-tags-and-run-artifacts.md).
Every call goes through :meth:`Tracking.call`: errors become platform errors (an unknown model or version is a
NotFoundError, a refused request a UserInputError, an outage a ServiceUnavailable that says where the server was
expected and what to run) and an outage is retried for ``mlflow_retry_s``. Creating a version is the one call
that is not safe to repeat blindly (a lost answer would make two versions): a retry first looks for the version
made from the same upload run (docs/adr/0035).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from fleetloop.platform.errors import NotFoundError, ServiceUnavailable, UserInputError
from fleetloop.platform.registry.backend import RawVersion
from fleetloop.platform.tracking import Tracking

__all__ = ["REGISTRY_EXPERIMENT", "MlflowBackend"]

REGISTRY_EXPERIMENT = "fleetloop-registry"
ARTIFACT_PATH = "model"
_PAGE = 1000
_READY_TIMEOUT_S = 60.0


class MlflowBackend:
    """Registry storage on the MLflow server at ``tracking`` (a :class:`Tracking`, or its URI: then with the default
    retry time), which is also its model registry."""

    def __init__(self, tracking: Tracking | str, *, health_timeout_s: float = 5.0) -> None:
        self._tracking = tracking if isinstance(tracking, Tracking) else Tracking(tracking)
        self.location = self._tracking.location
        self._health_timeout_s = health_timeout_s
        self._client = self._tracking.client
        self._call = self._tracking.call

    def check(self) -> None:
        """Fail fast with ServiceUnavailable when the server does not answer its health endpoint."""
        self._tracking.check(self._health_timeout_s)

    # -- models and versions ---------------------------------------------------------------------

    def ensure_model(self, name: str) -> None:
        self._call(f"creating registered model {name}", self._create_model, name)

    def _create_model(self, name: str) -> None:
        try:
            self._client.create_registered_model(
                name, description="Fleet policy versions managed by fleetloop (stage = fleetloop.stage tag)."
            )
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":  # another process (or a retried call) made it: fine
                raise

    def _registered(self, name: str) -> dict[str, str]:
        """Aliases of model ``name``; NotFoundError (with what to do) when it is not registered."""
        try:
            return dict(self._call(f"reading model {name}", self._client.get_registered_model, name).aliases)
        except NotFoundError:
            raise NotFoundError(
                f"model {name!r} is not registered in MLflow at {self.location}; "
                "register a version with `fleetloop model register PATH`"
            ) from None

    def versions(self, name: str) -> list[RawVersion]:
        self._registered(name)
        return self._search(name, f"name='{name}'")

    def _search(self, name: str, filter_string: str) -> list[RawVersion]:
        out: list[RawVersion] = []
        token: str | None = None
        while True:
            page = self._call(
                f"listing versions of {name}",
                self._client.search_model_versions,
                filter_string=filter_string,
                max_results=_PAGE,
                page_token=token,
            )
            out.extend(_raw(mv) for mv in page)
            token = page.token
            if not token:
                return out

    def aliases(self, name: str) -> dict[str, str]:
        # search_model_versions may leave aliases out (MLflow documents this); the registered model has them all.
        return {alias: str(v) for alias, v in self._registered(name).items()}

    def create_version(
        self, name: str, artifact: Path, *, tags: Mapping[str, str], run_tags: Mapping[str, str]
    ) -> RawVersion:
        with self._tracking.run(REGISTRY_EXPERIMENT, run_name=f"register-{name}", tags=run_tags) as run_id:
            self._tracking.log_artifact(run_id, artifact, ARTIFACT_PATH)
        mv = self._call(f"creating a version of {name}", self._create_once, name, run_id, tags, artifact.name)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while mv.status != "READY":
            if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"MLflow at {self.location} left {name} version {mv.version} in status {mv.status}; "
                    "check the server log, then register again"
                )
            time.sleep(0.2)
            mv = self._call(f"reading {name} version {mv.version}", self._client.get_model_version, name, mv.version)
        return _raw(mv)

    def _create_once(self, name: str, run_id: str, tags: Mapping[str, str], filename: str) -> ModelVersion:
        """The version made from upload run ``run_id``: the one a lost answer already made, else a new one."""
        made = self._client.search_model_versions(filter_string=f"name='{name}' and run_id='{run_id}'")
        if made:
            return made[0]
        return self._client.create_model_version(
            name,
            source=f"runs:/{run_id}/{ARTIFACT_PATH}",
            run_id=run_id,
            tags=dict(tags),
            description=f"registered by fleetloop from {filename}",
            await_creation_for=0,  # polled by the caller, without MLflow's progress logging
        )

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._call(f"tagging {name} version {version}", self._client.set_model_version_tag, name, version, key, value)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        what = f"pointing alias {alias} of {name} at version {version}"
        self._call(what, self._client.set_registered_model_alias, name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        self._call(f"removing alias {alias} of {name}", self._client.delete_registered_model_alias, name, alias)

    def download(self, name: str, version: RawVersion, dst: Path) -> Path:
        prefix = "runs:/"
        if not version.source.startswith(prefix):
            raise UserInputError(
                f"{name} version {version.version} was not registered by fleetloop (source {version.source}); "
                "download it with MLflow's own tools"
            )
        return self._tracking.download(version.source, dst)


def _raw(mv: ModelVersion) -> RawVersion:
    return RawVersion(
        version=str(mv.version),
        tags=dict(mv.tags or {}),
        created_ms=int(mv.creation_timestamp or 0),
        source=str(mv.source),
        run_id=mv.run_id or None,
    )
