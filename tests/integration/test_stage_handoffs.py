"""train and validate when MLflow goes away mid-step (a private server these tests stop and start): the command
fails within the bounded retry with the server's address and what to run (exit 4), and the rerun completes or
redoes the interrupted step, never skips it and never does it twice."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetloop.pipelines.label import label_pending
from fleetloop.pipelines.models import MODEL_TAG, TRAIN_EXPERIMENT, VALIDATION_TAG, unvalidated_candidates
from fleetloop.pipelines.suite import tiny_suite
from fleetloop.pipelines.train import TrainConfig, consumed_datasets, pending_runs, run_train
from fleetloop.pipelines.validate import ValidateConfig, validate_candidate
from fleetloop.platform import launcher
from fleetloop.platform.errors import ServiceUnavailable
from fleetloop.platform.registry import Registry, Stage, open_registry
from fleetloop.platform.services.mlflow_server import SPEC as MLFLOW
from fleetloop.platform.settings import Settings
from fleetloop.platform.tracking import Tracking, open_tracking
from tests.conftest import cli_env, free_port
from tests.pipelines.fleet_lake import write_fleet_lake

pytestmark = pytest.mark.integration

RETRY_S = 3.0
# A refused connection fails at once; a request in flight when the server stops may wait out one read timeout
# (10 s) first. MLflow's own retries, which this bound replaces, took about 250 s.
SLACK_S = 12.0
TINY_TRAIN = TrainConfig(epochs=1, batch_size=256, max_seconds=600.0, min_frames=64, torch_threads=1)
# Hand-offs, not verdicts: the Euro NCAP gate (two whole-matrix runs per validation) is tested in test_train_validate.
TINY_VALIDATE = ValidateConfig(suite=tiny_suite(), min_train_frames=64, ncap=False)


class SimulatedCrash(BaseException):
    """Stands for kill -9 at the point it is raised: nothing after it runs, no handler catches it."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A private MLflow (own state directory and port) that the tests may stop and start."""
    s = Settings(
        state_dir=tmp_path_factory.mktemp("handoff-stack"),
        mlflow_port=free_port(),
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        mlflow_retry_s=RETRY_S,
    )
    launcher.up(s, [MLFLOW])
    try:
        yield s
    finally:
        launcher.down(s, [MLFLOW])


@pytest.fixture
def loop(stack: Settings, tmp_path: Path) -> Settings:
    """Settings of one loop turn: labelled data in a fresh state directory, a model name of its own, MLflow up."""
    launcher.up(stack, [MLFLOW])  # back up if a test stopped it; a no-op when it runs
    state = tmp_path / "state"
    write_fleet_lake(state)
    report, events = label_pending(state)
    assert events and report.labelled_valid >= TINY_TRAIN.min_frames
    return stack.model_copy(update={"state_dir": state, "model_name": f"handoff-{uuid.uuid4().hex[:8]}"})


def stop_mlflow(stack: Settings) -> float:
    launcher.down(stack, [MLFLOW])
    return time.monotonic()


def assert_says_where_and_what_to_do(error: ServiceUnavailable, settings: Settings) -> None:
    message = str(error)
    assert error.exit_code == 4
    assert settings.tracking_uri in message and "fleetloop status" in message and "fleetloop up" in message


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(
        drop=("MLFLOW_TRACKING_URI",),
        FLEETLOOP_STATE_DIR=str(settings.state_dir),
        FLEETLOOP_MLFLOW_PORT=str(settings.mlflow_port),
        FLEETLOOP_MODEL_NAME=settings.model_name,
        FLEETLOOP_MLFLOW_RETRY_S=str(settings.mlflow_retry_s),
    )
    cmd = [sys.executable, "-m", "fleetloop.cli.main", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def waiting_for_validation(settings: Settings) -> list[str]:
    """Training runs of this loop turn's model that validate has not judged (the server is shared by the tests)."""
    found = unvalidated_candidates(open_tracking(settings), settings.model_name, source="rerun")
    return [e.run_id for e in found if e.model_name == settings.model_name]


def training_runs(settings: Settings) -> list[Any]:
    runs = open_tracking(settings).finished_runs(TRAIN_EXPERIMENT)
    return [r for r in runs if r.tags.get(MODEL_TAG) == settings.model_name]


def test_mlflow_down_between_verdict_and_registration_fails_with_exit_4_and_the_rerun_registers_once(
    stack: Settings, loop: Settings
) -> None:
    trained = run_train(loop, TINY_TRAIN)
    assert trained.status == "trained" and trained.event is not None
    stopped: list[float] = []

    class StopsMlflowBeforeRegistering(Registry):
        def register(self, *args: Any, **kwargs: Any) -> Any:
            stopped.append(stop_mlflow(stack))
            return super().register(*args, **kwargs)

    registry = StopsMlflowBeforeRegistering(open_registry(loop).backend)
    with pytest.raises(ServiceUnavailable) as caught:
        validate_candidate(loop, trained.event, TINY_VALIDATE, registry=registry)
    assert time.monotonic() - stopped[0] <= RETRY_S + SLACK_S
    assert_says_where_and_what_to_do(caught.value, loop)

    launcher.up(stack, [MLFLOW])
    tracking = open_tracking(loop)
    waiting = [
        e for e in unvalidated_candidates(tracking, loop.model_name, source="rerun") if e.model_name == loop.model_name
    ]
    assert [e.run_id for e in waiting] == [trained.run_id]  # the candidate was not lost
    verdict = json.loads((loop.state_dir / "pipelines" / "validation" / f"{trained.run_id}.json").read_text())
    (out,) = [validate_candidate(loop, ev, TINY_VALIDATE) for ev in waiting]

    assert waiting_for_validation(loop) == []
    assert tracking.get_run(trained.run_id or "").tags[VALIDATION_TAG] == ("passed" if out.passed else "rejected")
    (version,) = open_registry(loop).list_versions(loop.model_name)
    assert version.version == out.version and version.metadata["training_run_id"] == trained.run_id
    assert out.passed is verdict["decision"]["passed"]  # the verdict taken before the outage is the one registered
    assert version.metadata["validation"]["passed"] is out.passed
    assert version.stage is (Stage.STAGING if out.passed else Stage.REJECTED)
    # The datasets were consumed once, by the one training run; nothing is left to train on.
    assert consumed_datasets(loop.state_dir) == set(trained.dataset_ids) and pending_runs(loop.state_dir) == {}
    assert [r.run_id for r in training_runs(loop)] == [trained.run_id]
    assert run_train(loop, TINY_TRAIN).status == "skipped"
    listed = cli(loop, "model", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [v["version"] for v in json.loads(listed.stdout)["versions"]] == [out.version]


def test_mlflow_down_during_train_fails_within_the_bound_and_the_rerun_trains_on_the_same_datasets(
    stack: Settings, loop: Settings
) -> None:
    stopped: list[float] = []

    class StopsMlflowBeforeLogging(Tracking):
        def log(self, run_id: str, **kwargs: Any) -> None:
            stopped.append(stop_mlflow(stack))
            super().log(run_id, **kwargs)

    with pytest.raises(ServiceUnavailable) as caught:
        run_train(loop, TINY_TRAIN, tracking=StopsMlflowBeforeLogging(loop.tracking_uri, retry_s=RETRY_S))
    assert time.monotonic() - stopped[0] <= RETRY_S + SLACK_S
    assert_says_where_and_what_to_do(caught.value, loop)
    assert consumed_datasets(loop.state_dir) == set()
    ((interrupted, ids),) = pending_runs(loop.state_dir).items()  # the intent, recorded before logging

    # The command, while MLflow is still down: retries (saying so), then exit 4 with the address and what to run.
    t0 = time.monotonic()
    proc = cli(loop, "pipeline", "run", "--stage", "train")
    assert proc.returncode == 4, proc.stderr
    assert "retrying" in proc.stderr and "connection refused" in proc.stderr
    assert loop.tracking_uri in proc.stderr and "fleetloop up" in proc.stderr
    assert time.monotonic() - t0 <= RETRY_S + SLACK_S + 60.0  # + the interpreter's start, imports, the lake

    launcher.up(stack, [MLFLOW])
    again = run_train(loop, TINY_TRAIN)
    assert again.status == "trained" and sorted(again.dataset_ids) == sorted(ids)
    assert again.run_id != interrupted and again.recovered == []
    assert open_tracking(loop).get_run(interrupted).status == "FAILED"  # never read as a candidate
    assert consumed_datasets(loop.state_dir) == set(ids) and pending_runs(loop.state_dir) == {}
    assert [r.run_id for r in training_runs(loop)] == [again.run_id]


@pytest.mark.parametrize("crash_at", ["staging", "marking"])
def test_a_crash_after_registration_before_marking_never_registers_a_second_version(
    stack: Settings, loop: Settings, crash_at: str
) -> None:
    trained = run_train(loop, TINY_TRAIN)
    assert trained.event is not None

    class CrashesBeforeStaging(Registry):
        def promote(self, *args: Any, **kwargs: Any) -> Any:
            raise SimulatedCrash

    class CrashesBeforeMarking(Tracking):
        def set_tag(self, run_id: str, key: str, value: str) -> None:
            if key == VALIDATION_TAG:
                raise SimulatedCrash
            super().set_tag(run_id, key, value)

    registry = open_registry(loop)
    kwargs: dict[str, Any] = (
        {"registry": CrashesBeforeStaging(registry.backend)}
        if crash_at == "staging"
        else {"tracking": CrashesBeforeMarking(loop.tracking_uri, retry_s=RETRY_S)}
    )
    with pytest.raises(SimulatedCrash):
        validate_candidate(loop, trained.event, TINY_VALIDATE, **kwargs)
    assert len(registry.list_versions(loop.model_name)) == 1

    # The rerun: the same event again, as a redelivery hands it (and `pipeline run --stage validate` finds it).
    out = validate_candidate(loop, trained.event, TINY_VALIDATE)
    (version,) = registry.list_versions(loop.model_name)
    assert version.version == out.version and version.stage is not Stage.CANDIDATE
    assert version.stage is (Stage.STAGING if out.passed else Stage.REJECTED)
    assert [r.to_stage for r in registry.history(loop.model_name)] == ["candidate", version.stage.value]
    assert waiting_for_validation(loop) == []
