"""The rollout controller service against the real broker, MLflow registry and release repository, judged on the
heartbeats of a small test fleet: a canary three times as collision-prone in one slice is rolled back and rejected
with the evidence; an equal one goes through the waves to production; restarts of the broker and of the
controller (kill -9) mid-rollout; a vehicle that stops reporting; bad heartbeats dead-lettered with the reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetloop.platform import launcher
from fleetloop.platform.bus import DEAD_LETTER
from fleetloop.platform.bus.deadletter import DeadLetter
from fleetloop.platform.canary.operator import request_rollout
from fleetloop.platform.canary.policy import CanaryPolicy
from fleetloop.platform.canary.rollouts import RolloutRecord, RolloutStore
from fleetloop.platform.canary.service import ControllerConfig, ControllerService
from fleetloop.platform.errors import UserInputError
from fleetloop.platform.registry import Registry, open_registry
from fleetloop.platform.releases import api
from fleetloop.platform.services.kafka import SPEC as KAFKA
from fleetloop.platform.settings import PHONE_HOME_OFF, Settings
from tests.canary.fleet_driver import BEAT_KM, Fleet
from tests.integration.private_kafka import private_kafka

pytestmark = pytest.mark.integration

HARMFUL = "fog/highway_traffic"
FAST = ControllerConfig(evaluate_every_s=0.3, poll_timeout_s=0.2, session_timeout_s=6.0, fleet_settle_s=1.0)


@pytest.fixture
def settings(stack_settings: Settings, kafka_bootstrap: str, mlflow_uri: str, tmp_path: Path) -> Settings:
    return stack_settings.model_copy(
        update={"state_dir": tmp_path / "state", "model_name": f"policy-{os.urandom(3).hex()}"}
    )


def publish_pair(settings: Settings, tmp_path: Path) -> tuple[Registry, str, int]:
    """v1 in production and v2 in staging, both signed; returns the registry, the model and v2's release."""
    registry = open_registry(settings)
    name = settings.model_name
    api.init_repository(settings.state_dir)
    release = 0
    for v, stage in ((1, "production"), (2, "staging")):
        art = tmp_path / f"policy-{v}.safetensors"
        art.write_bytes(f"weights of version {v}".encode() * 50)
        info = registry.register(name, art, {"format": "safetensors"})
        registry.promote(name, info.version, stage, reason="test")
        meta = {"run_id": f"run-{v}", "input_schema_version": 1, "parent_version": "", "validation_report_sha256": ""}
        release = api.publish(settings.state_dir, name, info.version, art, meta).release
    return registry, name, release


class Running:
    """The controller service in a thread of the test (stop() ends it as SIGTERM would)."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.stop_flag = threading.Event()
        self.service = ControllerService(settings, registry, FAST)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.service.run(self.stop_flag)
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(60)
        if self.error is not None:
            raise self.error


@pytest.fixture
def running() -> Iterator[Callable[[Settings, Registry], Running]]:
    started: list[Running] = []

    def start(settings: Settings, registry: Registry) -> Running:
        started.append(Running(settings, registry))
        return started[-1]

    yield start
    for r in started:
        r.stop_flag.set()
        r.thread.join(60)


def drive_until(
    fleet: Fleet, store: RolloutStore, rollout_id: str, done: Callable[[RolloutRecord], bool], timeout_s: float = 240.0
) -> RolloutRecord:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fleet.round()
        try:
            rec = store.load(rollout_id)
        except Exception:  # not started yet
            time.sleep(0.1)
            continue
        if done(rec):
            return rec
        time.sleep(0.05)
    raise AssertionError(f"rollout {rollout_id} did not get there in {timeout_s} s: {store.load(rollout_id).log[-5:]}")


def finished(rec: RolloutRecord) -> bool:
    return bool(rec.outcome) and not rec.todo


def dead_letters(settings: Settings, group: str) -> list[DeadLetter]:
    from kafka import KafkaConsumer  # the raw records: a dead letter's headers say why

    c = KafkaConsumer(
        DEAD_LETTER.name,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    try:
        return [DeadLetter.from_record(r.key, r.value, r.headers) for r in c]
    finally:
        c.close()


def test_a_canary_three_times_as_collision_prone_in_one_slice_is_rolled_back_and_rejected_with_the_evidence(
    settings: Settings, tmp_path: Path, running: Callable[[Settings, Registry], Running]
) -> None:
    registry, name, release = publish_pair(settings, tmp_path)
    run = running(settings, registry)
    fleet = Fleet(settings, 40, 1, rates={(1, HARMFUL): 4.0, (2, HARMFUL): 12.0}, seed=1)
    fleet.round()  # the fleet is heard before the rollout starts
    store = RolloutStore(settings.state_dir)
    policy = CanaryPolicy(waves=(0.5, 1.0), metrics=("collisions",), counter_metrics=(), min_exposure_km=2.0)
    rid = request_rollout(store, registry, name, 2, release, policy)
    with pytest.raises(UserInputError, match="already running"):
        request_rollout(store, registry, name, 2, release, policy)
    rec = drive_until(fleet, store, rid, finished)
    fleet.round()
    fleet.obey()
    run.stop()

    assert rec.outcome == "rolled_back"
    [verdict] = [d for d in rec.controller.decisions if d.verdict.value == "rollback"]  # type: ignore[union-attr]
    decisive = [e for e in verdict.evidence if e.decisive]
    harm = [e for e in decisive if e.test == "harm"]
    fog = HARMFUL.split("/")[0]  # the slice, or its condition's slices pooled (ADR 0186)
    assert harm and {e.slice for e in harm} <= {HARMFUL, fog, "all"} and any(e.slice in (HARMFUL, fog) for e in harm)
    assert all(e.metric == "collisions" and e.canary_count > 0 and e.canary_km > 0 for e in harm)
    assert registry.get(name, 2).stage.value == "rejected"
    [reject] = [t for t in registry.history(name, 2) if t.to_stage == "rejected"]
    assert "evidence: harm collisions in fog" in reject.reason
    assert registry.get(name, 1).stage.value == "production"
    # the production version re-signed above the canary's release; the canary's vehicles commanded back to it
    assert rec.rollback_release > release
    back = [c for c in fleet.commands if c.action == "rollback"]
    assert back and {c.version for c in back} == {1}
    assert {c.vehicle_id for c in back} == {v for v, ver in rec.commanded.items() if ver == 1}
    assert all(v == 1 for v in fleet.versions.values())
    fleet.close()


def test_a_canary_as_safe_as_production_goes_through_the_waves_to_production(
    settings: Settings, tmp_path: Path, running: Callable[[Settings, Registry], Running]
) -> None:
    registry, name, release = publish_pair(settings, tmp_path)
    running(settings, registry)
    fleet = Fleet(settings, 24, 1, fixed_per_beat=1)
    fleet.silent.add(f"{fleet.tag}-23")  # a vehicle that never reports is not in the rollout's fleet
    fleet.round()
    store = RolloutStore(settings.state_dir)
    policy = CanaryPolicy(waves=(0.25, 0.5, 1.0), metrics=("collisions",), counter_metrics=(), min_exposure_km=1.0)
    rid = request_rollout(store, registry, name, 2, release, policy)
    rec = drive_until(fleet, store, rid, lambda r: r.controller is not None)
    canary0 = rec.controller.canary  # type: ignore[union-attr]
    fleet.silent.add(canary0[0])  # a canary vehicle that stops reporting: the rest carry the rollout
    rec = drive_until(fleet, store, rid, finished)
    fleet.obey()

    assert rec.outcome == "promoted", rec.log
    verdicts = [(d.wave_index, d.verdict.value) for d in rec.controller.decisions if d.verdict.value != "continue"]  # type: ignore[union-attr]
    assert verdicts == [(0, "next_wave"), (1, "next_wave")]
    assert len(rec.wave_started_at_s) == 2
    assert registry.get(name, 2).stage.value == "production"
    assert registry.get(name, 1).stage.value == "archived"
    assert len(rec.controller.strata) == 23  # type: ignore[union-attr]
    releases = {s.fields.release: s for s in api.list_releases(settings.state_dir)}
    assert [w.wave for w in releases[release].waves] == [1, 2, 3]
    installs = {c.vehicle_id for c in fleet.commands if c.action == "install" and c.version == 2}
    assert installs == set(rec.controller.strata)  # type: ignore[union-attr]
    fleet.close()


def test_bad_heartbeats_are_dead_lettered_with_the_reason_and_counted(
    settings: Settings, tmp_path: Path, running: Callable[[Settings, Registry], Running]
) -> None:
    registry, _, _ = publish_pair(settings, tmp_path)
    run = running(settings, registry)
    fleet = Fleet(settings, 4, 1, fixed_per_beat=0)
    vid = fleet.ids[0]
    fleet.round()
    fleet.send(fleet.beat(vid, distance_m=float("nan")))
    fleet.send(fleet.beat(vid, distance_m=-5.0))
    fleet.send(fleet.beat(vid, period_s=0.0))
    fleet.send(fleet.beat(vid, condition_class="snow"))
    fleet.send(fleet.beat(vid, distance_m=10_000.0))  # 10 km in 10 s
    good = fleet.beat(vid)
    fleet.send(good)
    fleet.send(good)  # its beat number again: a replay
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(run.service.report.dead_lettered.values()) < 6:
        time.sleep(0.2)
    run.stop()
    counted = run.service.report.dead_lettered
    assert counted == {
        "non_finite": 1,
        "negative_distance": 1,
        "no_exposure": 1,
        "unknown_stratum": 1,
        "implausible_distance": 1,
        "stale_beat": 1,
    }
    letters = [d for d in dead_letters(settings, f"dl-{fleet.tag}") if d.key == vid.encode()]
    assert Counter(d.reason for d in letters) == Counter(counted)
    assert all(vid in d.error for d in letters)
    fleet.close()


def test_a_broker_restart_mid_rollout_is_waited_out_and_the_rollout_finishes(
    stack_settings: Settings, mlflow_uri: str, tmp_path: Path, running: Callable[[Settings, Registry], Running]
) -> None:
    with private_kafka(stack_settings, tmp_path / "kafka") as k:
        settings = k.model_copy(update={"state_dir": tmp_path / "state", "model_name": f"p-{os.urandom(3).hex()}"})
        registry, name, release = publish_pair(settings, tmp_path)
        run = running(settings, registry)
        fleet = Fleet(settings, 12, 1, fixed_per_beat=1)
        fleet.round()
        store = RolloutStore(settings.state_dir)
        policy = CanaryPolicy(waves=(0.25, 0.5, 1.0), metrics=("collisions",), counter_metrics=(), min_exposure_km=1.0)
        rid = request_rollout(store, registry, name, 2, release, policy)
        drive_until(fleet, store, rid, lambda r: r.controller is not None and len(r.wave_started_at_s) >= 1)
        fleet.close()
        launcher.down(k, [KAFKA])
        time.sleep(3)
        launcher.up(k, [KAFKA])
        fleet = Fleet(settings, 12, 1, fixed_per_beat=1, tag=fleet.tag)
        fleet.seq = {v: 1000 for v in fleet.ids}
        fleet.versions = {v: ver for v, ver in store.load(rid).commanded.items()} | {
            v: 1 for v in fleet.ids if v not in store.load(rid).commanded
        }
        rec = drive_until(fleet, store, rid, finished)
        run.stop()
        assert rec.outcome == "promoted"
        assert not [e for e in rec.log if e["text"].startswith("could not")]
        fleet.close()


def _controller_process(settings: Settings) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLOOP_")}
    env.update(PHONE_HOME_OFF)
    env.update(
        FLEETLOOP_STATE_DIR=str(settings.state_dir),
        FLEETLOOP_KAFKA_BOOTSTRAP=settings.bootstrap_servers,
        FLEETLOOP_MLFLOW_TRACKING_URI=settings.tracking_uri,
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    cmd = [sys.executable, "-m", "fleetloop.platform.services.ota_controller", "--evaluate-every-s", "0.3"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_controller_killed_mid_rollout_resumes_and_counts_no_heartbeat_twice(
    settings: Settings, tmp_path: Path
) -> None:
    registry, name, release = publish_pair(settings, tmp_path)
    proc = _controller_process(settings)
    fleet = Fleet(settings, 16, 1, fixed_per_beat=1)
    try:
        fleet.round()
        store = RolloutStore(settings.state_dir)
        policy = CanaryPolicy(waves=(0.25, 0.5, 1.0), metrics=("collisions",), counter_metrics=(), min_exposure_km=2.0)
        rid = request_rollout(store, registry, name, 2, release, policy)
        drive_until(fleet, store, rid, lambda r: r.controller is not None and r.controller.wave_km > 0.5, 120)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        before = store.load(rid)
        for _ in range(3):
            fleet.round()  # beats while it is down wait on the topic
        proc = _controller_process(settings)
        rec = drive_until(fleet, store, rid, finished)
    finally:
        proc.terminate()
        proc.wait(30)
    assert rec.outcome == "promoted"
    assert rec.controller is not None and before.controller is not None
    assert rec.controller.decisions[: len(before.controller.decisions)] == before.controller.decisions
    # Every believed beat drove BEAT_KM: the statistics hold no more km than distinct beats sent by the fleet.
    km = sum(s.canary.km + s.baseline.km for s in rec.controller.stats.slices.values())
    distinct = len({(hb.vehicle_id, hb.beat_seq) for hb in fleet.sent})
    assert 0 < km <= distinct * BEAT_KM + 1e-9
    fleet.close()
