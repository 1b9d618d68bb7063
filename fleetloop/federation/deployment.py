"""The deployment engine's client side: a run submitted to the running SuperLink and followed until it ends.

    job file   the ``RoundsJob`` (``rounds``), written into ``<state>/federation/<model>/deployment/<mlflow run>/``
    submit     ``flwr run <flower_app> fleetloop --run-config job-dir=...`` (the ServerApp reads the job from there)
    follow     ``flwr ls fleetloop --run-id N`` until the run's status is ``finished:*``; the round reports the
               ServerApp appends to ``reports.jsonl`` go to the caller's ``on_round`` as they come
    outcome    ``finished:completed`` returns; ``finished:failed`` / ``stopped`` raise ``FederatedRunFailed`` with
               the SuperLink's reason (and the exit code of our error where the ServerApp raised one, ``error.json``)

``flwr run`` returns as soon as the run is queued and exits 0 even when it could not start one: its JSON answer
is read, never its exit status, and the run's own status decides the outcome. The SuperLink connection lives in a
Flower home of our own under the state directory (``FLWR_HOME``), so the user's ``~/.flwr`` is never touched. The
SuperLink and SuperNodes themselves are a launcher service (``serve``). Flower's CLI is run as a subprocess with
phone-home off.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetloop.federation.config import RoundsConfig
from fleetloop.federation.serve import ServedVehicle, flower_env, flower_home, superlink_address
from fleetloop.federation.server_app import RoundReport
from fleetloop.federation.state_store import state_path
from fleetloop.platform.atomic import write_bytes_atomic, write_text_atomic
from fleetloop.platform.errors import FederatedRunFailed, FleetloopError, ServiceUnavailable, UserInputError

if TYPE_CHECKING:
    from fleetloop.federation.rounds import RoundsJob
    from fleetloop.platform.settings import Settings

__all__ = [
    "APP_DIR",
    "CONNECTION",
    "DeploymentTarget",
    "RunStatus",
    "append_report",
    "check_deployable",
    "follow_run",
    "load_job",
    "run_deployed",
    "run_status",
    "submit",
    "write_error",
]

APP_DIR = Path(__file__).with_name("flower_app")
"""The Flower app (its ``pyproject.toml``) ``flwr run`` builds a FAB from; it names ``deployed_apps``."""
CONNECTION = "fleetloop"
"""The SuperLink connection's name in our Flower home's ``config.toml``."""
JOB_FILE = "job.pickle"
REPORTS_FILE = "reports.jsonl"
ERROR_FILE = "error.json"
STARTUP_MARGIN_S = 180.0  # [s] a run's ServerApp and ClientApp processes start (Flower, torch) on a small machine
FLWR_CALL_S = 60.0  # [s] one `flwr run` / `flwr ls` call


@dataclass(frozen=True)
class DeploymentTarget:
    """The running SuperLink's vehicles (one SuperNode each) and how often the run's status is asked."""

    vehicles: list[ServedVehicle]
    poll_s: float = 2.0


@dataclass(frozen=True)
class RunStatus:
    """A run's status as the SuperLink reports it (``pending``, ``starting``, ``running``, ``finished:<sub>``)."""

    run_id: int
    status: str
    details: str

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


def check_deployable(cfg: RoundsConfig) -> None:
    """Refuse, before anything starts, what only the simulation engine injects: a deployed vehicle runs its own
    ClientApp, which carries no test attack, availability fault or client-side clipping."""
    wanted = [
        what
        for what, on in (
            (f"--byzantine {cfg.byzantine:g}", cfg.byzantine > 0),
            (f"--dropout {cfg.dropout:g}", cfg.dropout > 0),
            (f"--dp {cfg.dp.mode}", cfg.dp.mode.startswith("client-")),
        )
        if on
    ]
    if wanted:
        raise UserInputError(
            f"{', '.join(wanted)}: injected vehicle behaviour and client-side clipping run on the simulation engine "
            "only; drop --deployment, or drop these options (server-side --dp modes work on both engines)"
        )


def _write_connection(settings: Settings) -> None:
    home = flower_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        home / "config.toml",
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{superlink_address(settings)}"\ninsecure = true  # plain HTTP, loopback only\n',
    )


def _flwr(settings: Settings, *args: str) -> dict[str, Any]:
    """One call of Flower's CLI with ``--format json``; its JSON answer (``success`` false: ServiceUnavailable)."""
    cmd = [str(Path(sys.executable).parent / "flwr"), *args, "--format", "json"]
    try:
        proc = subprocess.run(
            cmd, env=flower_env(settings), capture_output=True, text=True, timeout=FLWR_CALL_S, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise ServiceUnavailable(
            f"`flwr {args[0]}` got no answer from the SuperLink at {superlink_address(settings)} in {FLWR_CALL_S:.0f} s"
        ) from e
    try:
        answer: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise ServiceUnavailable(
            f"`flwr {args[0]}` answered no JSON (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-500:]}"
        ) from e
    if not answer.get("success"):
        raise ServiceUnavailable(
            f"the SuperLink at {superlink_address(settings)} refused `flwr {args[0]}`: "
            f"{answer.get('error-message', answer)}; is `fleetloop fl serve` running (`fleetloop status`)?"
        )
    return answer


def submit(settings: Settings, job_dir: Path) -> int:
    """Submit the job in ``job_dir`` to the SuperLink; the run's id (the run is only queued when this returns)."""
    _write_connection(settings)
    answer = _flwr(settings, "run", str(APP_DIR), CONNECTION, "--run-config", f"job-dir={json.dumps(str(job_dir))}")
    return int(answer["run-id"])


def run_status(settings: Settings, run_id: int) -> RunStatus:
    """The run's status as the SuperLink reports it."""
    answer = _flwr(settings, "ls", CONNECTION, "--run-id", str(run_id))
    (run,) = answer["runs"]
    return RunStatus(run_id, str(run["status"]), str(run.get("status-details", "")))


def _stop(settings: Settings, run_id: int) -> None:
    # the timeout is the error to report; a run that ended meanwhile needs no stop
    with contextlib.suppress(ServiceUnavailable):
        _flwr(settings, "stop", str(run_id), CONNECTION)


def _job_dir(job: RoundsJob) -> Path:
    return state_path(job.settings.state_dir, job.model_name).parent / "deployment" / job.run_id


def load_job(job_dir: Path) -> RoundsJob:
    """The job ``run_deployed`` wrote (read by the ServerApp process). A pickle: written a moment earlier by the
    same user's ``fleetloop`` into its own state directory (mode 0600), read by the process that command started."""
    with open(job_dir / JOB_FILE, "rb") as f:
        job: RoundsJob = pickle.load(f)
    return job


def append_report(job_dir: Path, report: RoundReport) -> None:
    """Append one round's report for the submitting command to read (one JSON line, flushed)."""
    with open(job_dir / REPORTS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(report.__dict__) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_error(job_dir: Path, error: FleetloopError) -> None:
    """Record the error that ended the ServerApp, so the submitting command exits with its code."""
    write_text_atomic(
        job_dir / ERROR_FILE,
        json.dumps({"type": type(error).__name__, "exit_code": error.exit_code, "message": str(error)}),
    )


def _read_reports(job_dir: Path, seen: int, on_round: Callable[[RoundReport], None]) -> int:
    path = job_dir / REPORTS_FILE
    if not path.exists():
        return seen
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.endswith("}")]
    for line in lines[seen:]:
        on_round(RoundReport(**json.loads(line)))
    return max(seen, len(lines))


def _failure(job_dir: Path, status: RunStatus) -> FederatedRunFailed:
    where = f"federated run {status.run_id} ended {status.status}"
    err = job_dir / ERROR_FILE
    if err.exists():
        e = json.loads(err.read_text(encoding="utf-8"))
        return FederatedRunFailed(f"{where}: {e['type']}: {e['message']}", int(e["exit_code"]))
    return FederatedRunFailed(
        f"{where}: {status.details or 'no reason given'}; the SuperLink's log: `fleetloop status`, "
        "<state_dir>/services/flower/"
    )


def follow_run(
    settings: Settings,
    run_id: int,
    job_dir: Path,
    *,
    budget_s: float,
    poll_s: float = 2.0,
    on_round: Callable[[RoundReport], None] | None = None,
) -> RunStatus:
    """Poll the run's status until it ends (the round reports in ``job_dir`` to ``on_round`` as they come): its
    final status when it completed, ``FederatedRunFailed`` when it failed or was stopped, ``ServiceUnavailable``
    (after stopping it) when it outlives ``budget_s``."""
    deadline = time.monotonic() + budget_s
    seen = 0
    while True:
        status = run_status(settings, run_id)
        if on_round is not None:
            seen = _read_reports(job_dir, seen, on_round)
        if status.finished:
            break
        if time.monotonic() > deadline:
            _stop(settings, run_id)
            raise ServiceUnavailable(
                f"federated run {run_id} did not end within {budget_s:.0f} s ({status.status}); it was stopped"
            )
        time.sleep(poll_s)
    if not status.completed:
        raise _failure(job_dir, status)
    return status


def run_deployed(job: RoundsJob, target: DeploymentTarget, on_round: Callable[[RoundReport], None]) -> RunStatus:
    """Run ``job`` on the running SuperLink (see the module doc); each round's report to ``on_round``."""
    job_dir = _job_dir(job)
    job_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(job_dir / JOB_FILE, pickle.dumps(job), mode=0o600)
    run_id = submit(job.settings, job_dir)
    cfg = job.cfg
    budget_s = cfg.rounds * (cfg.node_wait_s + cfg.round_timeout_s + 60.0) + STARTUP_MARGIN_S
    return follow_run(job.settings, run_id, job_dir, budget_s=budget_s, poll_s=target.poll_s, on_round=on_round)
