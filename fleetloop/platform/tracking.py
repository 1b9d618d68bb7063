"""The platform's one door to MLflow tracking: experiments, runs, params, metrics, tags and artifacts.

    from fleetloop.platform.tracking import open_tracking
    tracking = open_tracking(settings)                          # ServiceUnavailable if MLflow does not answer
    with tracking.run("fleetloop-train", run_name="train-fleet-policy", tags={...}) as run_id:
        tracking.log(run_id, params={...}, metrics={...}, series={"epoch_loss": [...]})
        tracking.log_artifact(run_id, "policy.safetensors", "model")
    tracking.download("runs:/<run_id>/model/policy.safetensors", dst)

Nothing outside ``fleetloop.platform`` imports MLflow: the pipelines log through :class:`Tracking`, the
registry's MLflow backend stores versions through :meth:`Tracking.call`. MLflow errors become platform errors:
an unknown run or artifact is a NotFoundError, a refused request a UserInputError, anything else (server down,
5xx) a ServiceUnavailable (exit 4) that says where the server was expected and what to run.

Outages: every call that fails for a reason that may pass (no answer, timeout, 5xx, 429; :func:`is_transient`)
is tried again after a pause (:func:`backoff_delays_s`: 0.5 s doubling to 8 s) until ``retry_s``
(the setting ``mlflow_retry_s``, 30 s) have passed, saying each time on stderr that it retries and why; then it
fails. MLflow's own retries (7 with back-off, about 250 s behind a silent wait) are switched off for this, and
one request waits at most ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (10 s unless set) for an answer, so a call gives up
within ``retry_s`` plus one request timeout. A retried call must be safe to repeat: every call here is, except
creating a run (a repeat after a lost answer leaves an empty RUNNING run, which nothing reads as a candidate);
the registry makes creating a version safe by looking for it first (docs/adr/0035).

MLflow itself is imported when a :class:`Tracking` is made, not with this module: the import takes about 1.5 s
(measured with ``python -X importtime``), and the CLI and the stage modules import this module at start.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fleetloop.platform.errors import FleetloopError, NotFoundError, ServiceUnavailable, UserInputError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from fleetloop.platform.settings import Settings

__all__ = [
    "DEFAULT_RETRY_S",
    "WHAT_TO_DO",
    "TrackedRun",
    "Tracking",
    "backoff_delays_s",
    "check_server",
    "is_transient",
    "mlflow_errors",
    "open_tracking",
    "say_on_stderr",
]

# The libraries' phone-home stays off in every process that talks to MLflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow 3.17 writes "View run ... / View experiment ..." links to stdout whenever a run ends
# (``TrackingServiceClient._log_url``, called by ``set_terminated``) unless this is set. A command's stdout is
# its output (`--json` prints exactly one JSON document there), so the links stay off, whatever the caller set.
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
# Its download progress bars (tqdm, on stderr) would scribble over the commands' own progress display.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Retries are ours (bounded, announced; see the module docstring): MLflow's own would wait about 250 s in
# silence first. A request waits at most this long between bytes of an answer (a read timeout, not a total).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

_PAGE = 1000
# MLflow 3.17's limits on one value: longer ones are refused, so they are cut to fit (the full lineage travels
# as a JSON artifact beside them).
PARAM_VALUE_MAX_CHARS = 6000
TAG_VALUE_MAX_CHARS = 5000
DEFAULT_RETRY_S = 30.0
"""How long a call keeps retrying by default [s] (the setting ``mlflow_retry_s``)."""
TRANSIENT_ERROR_CODES = frozenset(
    {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"}
)
WHAT_TO_DO = (
    "see whether it runs with `fleetloop status`, start it with `fleetloop up` (or point "
    "FLEETLOOP_MLFLOW_TRACKING_URI at a running server), then run the command again"
)
"""The advice every 'MLflow did not answer' message ends with."""

T = TypeVar("T")


def backoff_delays_s(total_s: float, *, first_s: float = 0.5, factor: float = 2.0, cap_s: float = 8.0) -> list[float]:
    """The pauses between the attempts of a call that keeps failing: ``first_s``, doubling, at most ``cap_s`` each,
    summing to at most ``total_s`` (the last one cut to fit). ``total_s`` 0: no pause, one attempt."""
    out: list[float] = []
    left, delay = float(total_s), first_s
    while left > 1e-9:
        out.append(min(delay, cap_s, left))
        left -= out[-1]
        delay *= factor
    return out


def is_transient(error: BaseException) -> bool:
    """Whether an MLflow call that raised ``error`` may succeed when tried again: the server did not answer, timed
    out, was overloaded or failed inside (5xx). A refused or unknown request is not transient."""
    if isinstance(error, OSError):  # requests' connection errors and timeouts derive from OSError
        return True
    code = getattr(error, "error_code", None)
    return code in TRANSIENT_ERROR_CODES


def _short_cause(error: BaseException) -> str:
    """A readable cause for a message: MLflow wraps a refused connection in three layers of repr."""
    text = str(getattr(error, "message", None) or error)
    for needle, short in (("Connection refused", "connection refused"), ("timed out", "timed out")):
        if needle in text:
            return short
    return text if len(text) <= 200 else text[:197] + "..."


def _probe_health(location: str, timeout_s: float) -> None:
    """One request to ``/health``; OSError when the server does not answer 200."""
    with urllib.request.urlopen(f"{location.rstrip('/')}/health", timeout=timeout_s) as resp:
        if resp.status != 200:
            raise OSError(f"/health answered {resp.status}")


def check_server(location: str, timeout_s: float = 5.0) -> None:
    """Fail fast with ServiceUnavailable when the MLflow server at ``location`` does not answer its health endpoint
    (one probe; :meth:`Tracking.check` retries it). Local (``file:``, ``sqlite:``) stores have nothing to probe."""
    if not location.startswith(("http://", "https://")):
        return
    try:
        _probe_health(location, timeout_s)
    except OSError as e:
        raise ServiceUnavailable(
            f"the MLflow server at {location} did not answer ({_short_cause(getattr(e, 'reason', e))}); " + WHAT_TO_DO
        ) from e


def _mapped(location: str, what: str, error: Exception) -> FleetloopError:
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return NotFoundError(f"{what}: not found in MLflow at {location} ({error.message})")
        if error.error_code == "INVALID_PARAMETER_VALUE":
            return UserInputError(f"{what}: MLflow refused the request ({error.message})")
        return ServiceUnavailable(f"{what}: MLflow at {location} failed ({error.message})")
    return ServiceUnavailable(f"{what}: MLflow at {location} did not answer ({error})")


@contextlib.contextmanager
def mlflow_errors(location: str, what: str) -> Iterator[None]:
    """Turn MLflow's and the HTTP layer's exceptions raised inside into platform errors that say ``what`` failed
    (no retry: :meth:`Tracking.call` retries)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except FleetloopError:
        raise
    except (MlflowException, OSError) as e:
        raise _mapped(location, what, e) from e


@dataclass(frozen=True)
class TrackedRun:
    """A run as the pipelines need it: its id, tags and status (``RUNNING``, ``FINISHED``, ``FAILED``, ...)."""

    run_id: str
    tags: Mapping[str, str]
    status: str = "FINISHED"


def say_on_stderr(message: str) -> None:
    """The default retry notice: one line on stderr (a command's stdout is its output)."""
    print(f"fleetloop: {message}", file=sys.stderr, flush=True)


class Tracking:
    """Experiments, runs and artifacts on the MLflow server at ``tracking_uri`` (also its model registry).

    ``retry_s``: how long one call keeps retrying a server that does not answer (see the module docstring);
    ``on_retry`` hears each retry notice (default: a line on stderr); ``sleep`` and ``clock`` are for tests.
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        retry_s: float = DEFAULT_RETRY_S,
        on_retry: Callable[[str], None] = say_on_stderr,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from mlflow import MlflowClient

        self.location = tracking_uri.rstrip("/")
        self.retry_s = float(retry_s)
        self.on_retry = on_retry
        self._sleep = sleep
        self._clock = clock
        self._client = MlflowClient(tracking_uri=self.location, registry_uri=self.location)
        self._experiments: dict[str, str] = {}

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, for the registry's MLflow backend (model versions and aliases) only."""
        return self._client

    def call(self, what: str, fn: Callable[..., T], *args: Any, retry: bool = True, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` (an MLflow client call, or a few that are safe to repeat together), with its
        errors mapped to platform errors; a transient failure is retried for up to ``retry_s`` (``retry=False``:
        once), each retry announced through ``on_retry``, then ServiceUnavailable says where MLflow was
        expected and what to run."""
        from mlflow.exceptions import MlflowException

        started = self._clock()
        delays = iter(backoff_delays_s(self.retry_s if retry else 0.0))
        attempt = 1
        while True:
            try:
                return fn(*args, **kwargs)
            except FleetloopError:
                raise
            except (MlflowException, OSError) as e:
                if not is_transient(e):
                    raise _mapped(self.location, what, e) from e
                waited = self._clock() - started
                delay = next(delays, None)
                if delay is None or waited >= self.retry_s:
                    raise ServiceUnavailable(
                        f"{what}: MLflow at {self.location} did not answer ({_short_cause(e)}; {attempt} "
                        f"attempt(s) over {waited:.0f} s, the limit is mlflow_retry_s = {self.retry_s:g} s); "
                        + WHAT_TO_DO
                    ) from e
                delay = min(delay, self.retry_s - waited)
                self.on_retry(
                    f"MLflow at {self.location} did not answer while {what} ({_short_cause(e)}); retrying in "
                    f"{delay:.1f} s (attempt {attempt + 1}; gives up after {self.retry_s:g} s)"
                )
                self._sleep(delay)
                attempt += 1

    def check(self, timeout_s: float = 5.0) -> None:
        """ServiceUnavailable, saying what to run, when the server does not answer its health endpoint within the
        retry time (local ``file:`` / ``sqlite:`` stores have nothing to probe)."""
        if self.location.startswith(("http://", "https://")):
            self.call("checking its health", _probe_health, self.location, timeout_s)

    def errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        """:func:`mlflow_errors` for this server (no retry)."""
        return mlflow_errors(self.location, what)

    # -- experiments and runs --------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        """Id of experiment ``name``, created when missing (safe when several processes race)."""
        if name not in self._experiments:
            self._experiments[name] = self.call(f"opening experiment {name}", self._experiment_id, name)
        return self._experiments[name]

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self._client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        try:
            return str(self._client.create_experiment(name))
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":  # another process created it first: fine
                raise
            raced = self._client.get_experiment_by_name(name)
            if raced is None:
                raise
            return str(raced.experiment_id)

    @contextlib.contextmanager
    def run(self, experiment: str, *, run_name: str, tags: Mapping[str, str]) -> Iterator[str]:
        """A new run of ``experiment`` (by name) with ``tags``; yields its id and ends it FINISHED, or FAILED when
        the body raises (the exception goes on; when MLflow is down, the run stays RUNNING: nothing reads a
        RUNNING run as a result, and the body's error is the one worth reporting)."""
        experiment_id = self.experiment_id(experiment)
        created = self.call(
            f"starting a run in {experiment}",
            self._client.create_run,
            experiment_id,
            run_name=run_name,
            tags=dict(tags),
        )
        run_id = str(created.info.run_id)
        try:
            yield run_id
        except BaseException:
            with contextlib.suppress(ServiceUnavailable):
                self.end_run(run_id, "FAILED", retry=False)
            raise
        self.end_run(run_id, "FINISHED")

    def end_run(self, run_id: str, status: str, *, retry: bool = True) -> None:
        """Set a run's final status (``FINISHED``, ``FAILED``, ``KILLED``)."""
        self.call(f"ending run {run_id}", self._client.set_terminated, run_id, status=status, retry=retry)

    def get_run(self, run_id: str) -> TrackedRun:
        """A run's status and tags; NotFoundError when MLflow has no run ``run_id``."""
        r = self.call(f"reading run {run_id}", self._client.get_run, run_id)
        return TrackedRun(str(r.info.run_id), dict(r.data.tags), str(r.info.status))

    def finished_runs(self, experiment: str, *, without_tag: str | None = None) -> list[TrackedRun]:
        """The FINISHED runs of ``experiment`` (none when it does not exist), oldest first; ``without_tag``
        keeps those that lack that tag."""
        exp = self.call(f"reading experiment {experiment}", self._client.get_experiment_by_name, experiment)
        if exp is None:
            return []
        out: list[TrackedRun] = []
        token: str | None = None
        while True:
            page = self.call(
                f"listing the runs of {experiment}",
                self._client.search_runs,
                [exp.experiment_id],
                "attributes.status = 'FINISHED'",
                order_by=["attributes.start_time"],
                max_results=_PAGE,
                page_token=token,
            )
            out.extend(TrackedRun(str(r.info.run_id), dict(r.data.tags), str(r.info.status)) for r in page)
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
        # Safe to repeat: the same params again are accepted, metric points carry their step.
        self.call(f"logging to run {run_id}", self._client.log_batch, run_id, metrics=ms, params=ps, tags=ts)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.call(f"tagging run {run_id}", self._client.set_tag, run_id, key, value[:TAG_VALUE_MAX_CHARS])

    def log_artifact(self, run_id: str, path: Path | str, artifact_path: str) -> None:
        """Upload a file, or a directory's files, under ``artifact_path`` of the run (a repeat overwrites)."""
        p = Path(path)
        upload = self._client.log_artifacts if p.is_dir() else self._client.log_artifact
        self.call(f"uploading {p} to run {run_id}", upload, run_id, str(p), artifact_path=artifact_path)

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        """``data`` as a JSON artifact ``artifact_file`` of the run."""
        self.call(
            f"uploading {artifact_file} to run {run_id}", self._client.log_dict, run_id, dict(data), artifact_file
        )

    # -- reading artifacts -----------------------------------------------------------------------

    def download(self, artifact_uri: str, dst: Path) -> Path:
        """Copy the artifact (file or directory) at ``artifact_uri`` (``runs:/<id>/<path>``,
        ``mlflow-artifacts:/...``) under ``dst``; returns its local path."""
        import mlflow.artifacts

        dst.mkdir(parents=True, exist_ok=True)
        where = self.call(
            f"downloading {artifact_uri}",
            mlflow.artifacts.download_artifacts,
            artifact_uri=artifact_uri,
            dst_path=str(dst),
            tracking_uri=self.location,
        )
        return Path(where)


def open_tracking(
    settings: Settings, *, check: bool = True, on_retry: Callable[[str], None] = say_on_stderr
) -> Tracking:
    """Tracking on the MLflow server of ``settings``, retrying for ``settings.mlflow_retry_s``; ``check``: fail
    (ServiceUnavailable, exit 4) now if it does not answer within that time."""
    tracking = Tracking(settings.tracking_uri, retry_s=settings.mlflow_retry_s, on_retry=on_retry)
    if check:
        tracking.check()
    return tracking
