"""The platform's one door to MLflow tracking: experiments, runs, params, metrics, tags and artifacts.

    from fleetloop.platform.tracking import open_tracking
    tracking = open_tracking(settings)                          # ServiceUnavailable at once if MLflow is down
    with tracking.run("fleetloop-train", run_name="train-fleet-policy", tags={...}) as run_id:
        tracking.log(run_id, params={...}, metrics={...}, series={"epoch_loss": [...]})
        tracking.log_artifact(run_id, "policy.safetensors", "model")
    tracking.download("runs:/<run_id>/model/policy.safetensors", dst)

Nothing outside ``fleetloop.platform`` imports MLflow: the pipelines log through :class:`Tracking`, the
registry's MLflow backend stores versions through it and maps errors with :func:`mlflow_errors`. MLflow errors
become platform errors: an unknown run or artifact is a NotFoundError, a refused request a UserInputError,
anything else (server down, 5xx) a ServiceUnavailable that says where the server was expected.

MLflow itself is imported when a :class:`Tracking` is made, not with this module: the import takes about 1.5 s
(measured with ``python -X importtime``), and the CLI and the stage modules import this module at start.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetloop.platform.errors import FleetloopError, NotFoundError, ServiceUnavailable, UserInputError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from fleetloop.platform.settings import Settings

__all__ = ["TrackedRun", "Tracking", "check_server", "mlflow_errors", "open_tracking"]

# The libraries' phone-home stays off in every process that talks to MLflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow 3.17 writes "View run ... / View experiment ..." links to stdout whenever a run ends
# (``TrackingServiceClient._log_url``, called by ``set_terminated``) unless this is set. A command's stdout is
# its output (`--json` prints exactly one JSON document there), so the links stay off, whatever the caller set.
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
# Its download progress bars (tqdm, on stderr) would scribble over the commands' own progress display.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

_PAGE = 1000
# MLflow 3.17's limits on one value: longer ones are refused, so they are cut to fit (the full lineage travels
# as a JSON artifact beside them).
PARAM_VALUE_MAX_CHARS = 6000
TAG_VALUE_MAX_CHARS = 5000


def check_server(location: str, timeout_s: float = 5.0) -> None:
    """Fail fast with ServiceUnavailable when the MLflow server at ``location`` does not answer its health endpoint.

    MLflow's client retries a dead server for minutes; one short probe first keeps a command responsive.
    Local (``file:``, ``sqlite:``) stores have nothing to probe.
    """
    if not location.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{location.rstrip('/')}/health", timeout=timeout_s) as resp:
            if resp.status == 200:
                return
            problem = f"answered {resp.status}"
    except (urllib.error.URLError, OSError) as e:
        problem = f"did not answer ({getattr(e, 'reason', e)})"
    raise ServiceUnavailable(
        f"the MLflow server at {location} {problem}; start it with `fleetloop up` "
        "or point MLFLOW_TRACKING_URI / FLEETLOOP_MLFLOW_TRACKING_URI at a running server"
    )


@contextlib.contextmanager
def mlflow_errors(location: str, what: str) -> Iterator[None]:
    """Turn MLflow's and the HTTP layer's exceptions raised inside into platform errors that say ``what`` failed."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except FleetloopError:
        raise
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFoundError(f"{what}: not found in MLflow at {location} ({e.message})") from e
        if e.error_code == "INVALID_PARAMETER_VALUE":
            raise UserInputError(f"{what}: MLflow refused the request ({e.message})") from e
        raise ServiceUnavailable(f"{what}: MLflow at {location} failed ({e.message})") from e
    except OSError as e:  # requests' connection errors derive from OSError
        raise ServiceUnavailable(f"{what}: MLflow at {location} did not answer ({e})") from e


@dataclass(frozen=True)
class TrackedRun:
    """A run as the pipelines need it: its id and tags."""

    run_id: str
    tags: Mapping[str, str]


class Tracking:
    """Experiments, runs and artifacts on the MLflow server at ``tracking_uri`` (also its model registry)."""

    def __init__(self, tracking_uri: str) -> None:
        from mlflow import MlflowClient

        self.location = tracking_uri.rstrip("/")
        self._client = MlflowClient(tracking_uri=self.location, registry_uri=self.location)
        self._experiments: dict[str, str] = {}

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, for the registry's MLflow backend (model versions and aliases) only."""
        return self._client

    def check(self, timeout_s: float = 5.0) -> None:
        """ServiceUnavailable at once when the server does not answer (see :func:`check_server`)."""
        check_server(self.location, timeout_s)

    def errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        """:func:`mlflow_errors` for this server."""
        return mlflow_errors(self.location, what)

    # -- experiments and runs --------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        """Id of experiment ``name``, created when missing (safe when several processes race)."""
        if name in self._experiments:
            return self._experiments[name]
        from mlflow.exceptions import MlflowException

        with self.errors(f"opening experiment {name}"):
            exp = self._client.get_experiment_by_name(name)
            if exp is not None:
                experiment_id = str(exp.experiment_id)
            else:
                try:
                    experiment_id = str(self._client.create_experiment(name))
                except MlflowException as e:
                    if e.error_code != "RESOURCE_ALREADY_EXISTS":  # another process created it first: fine
                        raise
                    raced = self._client.get_experiment_by_name(name)
                    if raced is None:
                        raise
                    experiment_id = str(raced.experiment_id)
        self._experiments[name] = experiment_id
        return experiment_id

    @contextlib.contextmanager
    def run(self, experiment: str, *, run_name: str, tags: Mapping[str, str]) -> Iterator[str]:
        """A new run of ``experiment`` (by name) with ``tags``; yields its id and ends it FINISHED, or FAILED when
        the body raises (the exception goes on)."""
        experiment_id = self.experiment_id(experiment)
        with self.errors(f"starting a run in {experiment}"):
            run_id = str(self._client.create_run(experiment_id, run_name=run_name, tags=dict(tags)).info.run_id)
        try:
            yield run_id
        except BaseException:
            self._end(run_id, "FAILED")
            raise
        self._end(run_id, "FINISHED")

    def _end(self, run_id: str, status: str) -> None:
        with self.errors(f"ending run {run_id}"):
            self._client.set_terminated(run_id, status=status)

    def finished_runs(self, experiment: str, *, without_tag: str | None = None) -> list[TrackedRun]:
        """The FINISHED runs of ``experiment`` (none when it does not exist), oldest first; ``without_tag``
        keeps those that lack that tag."""
        with self.errors(f"reading experiment {experiment}"):
            exp = self._client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        out: list[TrackedRun] = []
        token: str | None = None
        with self.errors(f"listing the runs of {experiment}"):
            while True:
                page = self._client.search_runs(
                    [exp.experiment_id],
                    "attributes.status = 'FINISHED'",
                    order_by=["attributes.start_time"],
                    max_results=_PAGE,
                    page_token=token,
                )
                out.extend(TrackedRun(str(r.info.run_id), dict(r.data.tags)) for r in page)
                token = page.token
                if not token:
                    break
        return [r for r in out if without_tag is None or without_tag not in r.tags]

    # -- logging ---------------------------------------------------------------------------------

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        series: Mapping[str, Sequence[float]] | None = None,
        tags: Mapping[str, str] | None = None,
        step: int = 0,
    ) -> None:
        """One batch: ``params`` (as text), ``metrics`` (at ``step``: 0, or e.g. a federated round), ``series`` (one
        metric per step: a curve) and ``tags``. Values longer than MLflow accepts are cut to its limit."""
        from mlflow.entities import Metric, Param, RunTag

        now_ms = int(time.time() * 1000)
        ms = [Metric(k, float(v), now_ms, step) for k, v in (metrics or {}).items()]
        ms += [Metric(k, float(v), now_ms, i) for k, values in (series or {}).items() for i, v in enumerate(values)]
        ps = [Param(k, str(v)[:PARAM_VALUE_MAX_CHARS]) for k, v in (params or {}).items()]
        ts = [RunTag(k, str(v)[:TAG_VALUE_MAX_CHARS]) for k, v in (tags or {}).items()]
        with self.errors(f"logging to run {run_id}"):
            self._client.log_batch(run_id, metrics=ms, params=ps, tags=ts)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        with self.errors(f"tagging run {run_id}"):
            self._client.set_tag(run_id, key, value[:TAG_VALUE_MAX_CHARS])

    def log_artifact(self, run_id: str, path: Path | str, artifact_path: str) -> None:
        """Upload a file, or a directory's files, under ``artifact_path`` of the run."""
        p = Path(path)
        with self.errors(f"uploading {p} to run {run_id}"):
            if p.is_dir():
                self._client.log_artifacts(run_id, str(p), artifact_path=artifact_path)
            else:
                self._client.log_artifact(run_id, str(p), artifact_path=artifact_path)

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        """``data`` as a JSON artifact ``artifact_file`` of the run."""
        with self.errors(f"uploading {artifact_file} to run {run_id}"):
            self._client.log_dict(run_id, dict(data), artifact_file)

    # -- reading artifacts -----------------------------------------------------------------------

    def download(self, artifact_uri: str, dst: Path) -> Path:
        """Copy the artifact (file or directory) at ``artifact_uri`` (``runs:/<id>/<path>``,
        ``mlflow-artifacts:/...``) under ``dst``; returns its local path."""
        import mlflow.artifacts

        dst.mkdir(parents=True, exist_ok=True)
        with self.errors(f"downloading {artifact_uri}"):
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=self.location
                )
            )


def open_tracking(settings: Settings, *, check: bool = True) -> Tracking:
    """Tracking on the MLflow server of ``settings``; ``check`` fails fast (ServiceUnavailable) if it is down."""
    tracking = Tracking(settings.tracking_uri)
    if check:
        tracking.check()
    return tracking
