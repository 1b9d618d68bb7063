"""The registry's storage on a real MLflow tracking server (MLflow 3.17 client API; no stage API).

A version's artifact is logged as the ``model/`` artifact of a run of the ``fleetloop-registry`` experiment and
the version is created from ``runs:/<run_id>/model`` (see docs/adr/0030-registry-on-mlflow-tags-and-run-artifacts.md).
MLflow errors become platform errors: an unknown model or version is a NotFoundError, a refused request a
UserInputError, anything else (server down, 5xx) a ServiceUnavailable that says where the server was expected.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from fleetloop.platform.errors import FleetloopError, NotFoundError, ServiceUnavailable, UserInputError
from fleetloop.platform.registry.backend import RawVersion

# The libraries' phone-home stays off in every process that talks to MLflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

__all__ = ["REGISTRY_EXPERIMENT", "MlflowBackend"]

REGISTRY_EXPERIMENT = "fleetloop-registry"
ARTIFACT_PATH = "model"
_PAGE = 1000
_READY_TIMEOUT_S = 60.0


class MlflowBackend:
    """Registry storage on the MLflow server at ``tracking_uri`` (also its model registry)."""

    def __init__(self, tracking_uri: str, *, health_timeout_s: float = 5.0) -> None:
        self.location = tracking_uri.rstrip("/")
        self._health_timeout_s = health_timeout_s
        self._client = MlflowClient(tracking_uri=self.location, registry_uri=self.location)
        self._experiment_id: str | None = None

    def check(self) -> None:
        """Fail fast with ServiceUnavailable when the server does not answer its health endpoint.

        MLflow's client retries a dead server for minutes; one short probe first keeps a command responsive.
        """
        if not self.location.startswith(("http://", "https://")):
            return
        try:
            with urllib.request.urlopen(f"{self.location}/health", timeout=self._health_timeout_s) as resp:
                if resp.status == 200:
                    return
                problem = f"answered {resp.status}"
        except (urllib.error.URLError, OSError) as e:
            problem = f"did not answer ({getattr(e, 'reason', e)})"
        raise ServiceUnavailable(
            f"the MLflow server at {self.location} {problem}; start it with `fleetloop up` "
            "or point MLFLOW_TRACKING_URI / FLEETLOOP_MLFLOW_TRACKING_URI at a running server"
        )

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except FleetloopError:
            raise
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise NotFoundError(f"{what}: not found in MLflow at {self.location} ({e.message})") from e
            if e.error_code == "INVALID_PARAMETER_VALUE":
                raise UserInputError(f"{what}: MLflow refused the request ({e.message})") from e
            raise ServiceUnavailable(f"{what}: MLflow at {self.location} failed ({e.message})") from e
        except OSError as e:  # requests' connection errors derive from OSError
            raise ServiceUnavailable(f"{what}: MLflow at {self.location} did not answer ({e})") from e

    # -- models and versions ---------------------------------------------------------------------

    def ensure_model(self, name: str) -> None:
        with self._errors(f"creating registered model {name}"):
            try:
                self._client.create_registered_model(
                    name, description="Fleet policy versions managed by fleetloop (stage = fleetloop.stage tag)."
                )
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":  # another process created it first: fine
                    raise

    def _registered(self, name: str) -> dict[str, str]:
        """Aliases of model ``name``; NotFoundError (with what to do) when it is not registered."""
        try:
            with self._errors(f"reading model {name}"):
                return dict(self._client.get_registered_model(name).aliases)
        except NotFoundError:
            raise NotFoundError(
                f"model {name!r} is not registered in MLflow at {self.location}; "
                "register a version with `fleetloop model register PATH`"
            ) from None

    def versions(self, name: str) -> list[RawVersion]:
        self._registered(name)
        out: list[RawVersion] = []
        token: str | None = None
        with self._errors(f"listing versions of {name}"):
            while True:
                page = self._client.search_model_versions(
                    filter_string=f"name='{name}'", max_results=_PAGE, page_token=token
                )
                out.extend(
                    RawVersion(
                        version=str(mv.version),
                        tags=dict(mv.tags or {}),
                        created_ms=int(mv.creation_timestamp or 0),
                        source=str(mv.source),
                        run_id=mv.run_id or None,
                    )
                    for mv in page
                )
                token = page.token
                if not token:
                    return out

    def aliases(self, name: str) -> dict[str, str]:
        # search_model_versions may leave aliases out (MLflow documents this); the registered model has them all.
        return {alias: str(v) for alias, v in self._registered(name).items()}

    def _experiment(self) -> str:
        if self._experiment_id is not None:
            return self._experiment_id
        with self._errors(f"opening experiment {REGISTRY_EXPERIMENT}"):
            exp = self._client.get_experiment_by_name(REGISTRY_EXPERIMENT)
            if exp is not None:
                experiment_id = str(exp.experiment_id)
            else:
                try:
                    experiment_id = str(self._client.create_experiment(REGISTRY_EXPERIMENT))
                except MlflowException as e:
                    if e.error_code != "RESOURCE_ALREADY_EXISTS":  # another process created it first: fine
                        raise
                    raced = self._client.get_experiment_by_name(REGISTRY_EXPERIMENT)
                    if raced is None:
                        raise
                    experiment_id = str(raced.experiment_id)
        self._experiment_id = experiment_id
        return experiment_id

    def create_version(
        self, name: str, artifact: Path, *, tags: Mapping[str, str], run_tags: Mapping[str, str]
    ) -> RawVersion:
        experiment = self._experiment()
        with self._errors(f"uploading {artifact} for {name}"):
            run = self._client.create_run(experiment, run_name=f"register-{name}", tags=dict(run_tags))
            run_id = run.info.run_id
            try:
                if artifact.is_dir():
                    self._client.log_artifacts(run_id, str(artifact), artifact_path=ARTIFACT_PATH)
                else:
                    self._client.log_artifact(run_id, str(artifact), artifact_path=ARTIFACT_PATH)
            except BaseException:
                self._terminate(run_id, "FAILED")
                raise
            self._terminate(run_id, "FINISHED")
        with self._errors(f"creating a version of {name}"):
            mv = self._client.create_model_version(
                name,
                source=f"runs:/{run_id}/{ARTIFACT_PATH}",
                run_id=run_id,
                tags=dict(tags),
                description=f"registered by fleetloop from {artifact.name}",
                await_creation_for=0,  # we poll below, without MLflow's progress logging
            )
            deadline = time.monotonic() + _READY_TIMEOUT_S
            while mv.status != "READY":
                if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                    raise ServiceUnavailable(
                        f"MLflow at {self.location} left {name} version {mv.version} in status {mv.status}; "
                        "check the server log, then register again"
                    )
                time.sleep(0.2)
                mv = self._client.get_model_version(name, mv.version)
        return RawVersion(
            version=str(mv.version),
            tags=dict(mv.tags or {}),
            created_ms=int(mv.creation_timestamp or 0),
            source=str(mv.source),
            run_id=mv.run_id or None,
        )

    def _terminate(self, run_id: str, status: str) -> None:
        # set_terminated prints "View run ..." links to stdout, which would corrupt `--json` output.
        with contextlib.redirect_stdout(io.StringIO()):
            self._client.set_terminated(run_id, status=status)

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        with self._errors(f"tagging {name} version {version}"):
            self._client.set_model_version_tag(name, version, key, value)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        with self._errors(f"pointing alias {alias} of {name} at version {version}"):
            self._client.set_registered_model_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        with self._errors(f"removing alias {alias} of {name}"):
            self._client.delete_registered_model_alias(name, alias)

    def download(self, name: str, version: RawVersion, dst: Path) -> Path:
        prefix = "runs:/"
        if not version.source.startswith(prefix):
            raise UserInputError(
                f"{name} version {version.version} was not registered by fleetloop (source {version.source}); "
                "download it with MLflow's own tools"
            )
        run_id, _, path = version.source[len(prefix) :].partition("/")
        dst.mkdir(parents=True, exist_ok=True)
        with self._errors(f"downloading {name} version {version.version}"):
            return Path(self._client.download_artifacts(run_id, path or ARTIFACT_PATH, str(dst)))
