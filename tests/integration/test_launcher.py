"""The launcher against the real services: what `fleetloop up / status / down` promise."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fleetloop.cli.services import stack_services
from fleetloop.platform import launcher
from fleetloop.platform.errors import ServiceUnavailable, SetupError
from fleetloop.platform.services.kafka import SPEC as KAFKA
from fleetloop.platform.services.mlflow_server import SPEC as MLFLOW
from fleetloop.platform.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _fresh_settings(tmp_path: Path, stack_settings: Settings, **kw: object) -> Settings:
    base = {
        "state_dir": tmp_path / "state",
        "kafka_port": free_port(),
        "kafka_controller_port": free_port(),
        "mlflow_port": free_port(),
        "prometheus_port": free_port(),
        "alertmanager_port": free_port(),
        "kafka_libs_dir": stack_settings.kafka_libs_dir,
    }
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def _pids_in_state(state_dir: Path) -> list[int]:
    """Every live process whose command line mentions this state directory."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            stat = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if str(state_dir) in cmd and stat[0] != "Z":
            pids.append(int(proc.name))
    return pids


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        {
            "FLEETLOOP_STATE_DIR": str(settings.state_dir),
            "FLEETLOOP_KAFKA_PORT": str(settings.kafka_port),
            "FLEETLOOP_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
            "FLEETLOOP_MLFLOW_PORT": str(settings.mlflow_port),
            "FLEETLOOP_PROMETHEUS_PORT": str(settings.prometheus_port),
            "FLEETLOOP_ALERTMANAGER_PORT": str(settings.alertmanager_port),
            "FLEETLOOP_KAFKA_LIBS_DIR": str(settings.kafka_libs_dir),
        }
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return subprocess.run(
        [sys.executable, "-m", "fleetloop.cli.main", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_up_status_up_again_down_leaves_nothing(tmp_path: Path, stack_settings: Settings) -> None:
    s = _fresh_settings(tmp_path, stack_settings)
    try:
        _up_status_down(s)
    finally:
        launcher.down(s, stack_services())  # a failed assertion must not leave the services running


def _up_status_down(s: Settings) -> None:
    first = _cli(s, "up", "--json")
    assert first.returncode == 0, first.stderr
    st = _cli(s, "status", "--json")
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    by_name = {x["name"]: x for x in data["services"]}
    assert list(by_name) == [spec.name for spec in stack_services()]  # the pipeline stages too, stopped
    assert by_name["kafka"]["healthy"] and by_name["mlflow"]["healthy"]
    assert data["kafka_bootstrap"] == f"127.0.0.1:{s.kafka_port}"
    pids = {x["name"]: x["pid"] for x in data["services"] if x["required"]}
    # up twice is a no-op: same processes
    again = _cli(s, "up", "--json")
    assert again.returncode == 0, again.stderr
    assert {x["name"]: x["pid"] for x in json.loads(again.stdout)["services"]} == pids  # only the stack
    assert _pids_in_state(s.state_dir), "services should run from the state directory"
    down = _cli(s, "down")
    assert down.returncode == 0, down.stderr
    assert _pids_in_state(s.state_dir) == []  # MLflow's workers included
    st2 = _cli(s, "status", "--json")
    assert st2.returncode == 4
    assert {x["state"] for x in json.loads(st2.stdout)["services"]} <= {"stopped", "not installed"}
    assert all(not x["required"] for x in json.loads(st2.stdout)["services"] if x["name"].startswith("pipeline-"))


def test_kafka_data_survives_a_restart_and_purge_removes_it(tmp_path: Path, stack_settings: Settings) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    s = _fresh_settings(tmp_path, stack_settings)
    launcher.up(s, [KAFKA])
    try:
        admin = KafkaAdminClient(bootstrap_servers=s.bootstrap_servers)
        admin.create_topics([NewTopic("persisted", 1, 1)])
        admin.close()
        launcher.down(s, [KAFKA])
        launcher.up(s, [KAFKA])
        admin = KafkaAdminClient(bootstrap_servers=s.bootstrap_servers)
        assert "persisted" in admin.list_topics()
        admin.close()
    finally:
        launcher.down(s, [KAFKA], purge=True)
    assert not launcher.service_dir(s, "kafka").exists()


def test_port_in_use_is_a_clear_setup_error(tmp_path: Path, stack_settings: Settings) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        s = _fresh_settings(tmp_path, stack_settings, mlflow_port=blocker.getsockname()[1])
        with pytest.raises(SetupError, match="in use"):
            launcher.up(s, [MLFLOW])


def test_missing_jars_say_how_to_fetch_them(tmp_path: Path, stack_settings: Settings) -> None:
    s = _fresh_settings(tmp_path, stack_settings, kafka_libs_dir=tmp_path / "empty")
    with pytest.raises(SetupError, match="make kafka-jars"):
        launcher.up(s, [KAFKA])


def test_missing_java_is_named(tmp_path: Path, stack_settings: Settings) -> None:
    s = _fresh_settings(tmp_path, stack_settings, java="/nonexistent/java")
    with pytest.raises(SetupError, match="Java"):
        launcher.up(s, [KAFKA])


def test_external_service_starts_nothing(tmp_path: Path, stack_settings: Settings, mlflow_uri: str) -> None:
    s = _fresh_settings(tmp_path, stack_settings, mlflow_tracking_uri=mlflow_uri)
    (res,) = launcher.up(s, [MLFLOW])
    assert res.state == "external" and res.healthy
    assert not (launcher.service_dir(s, "mlflow") / "process.json").exists()


def test_external_service_that_is_down_is_reported(tmp_path: Path, stack_settings: Settings) -> None:
    s = _fresh_settings(tmp_path, stack_settings, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ServiceUnavailable, match="does not answer"):
        launcher.up(s, [MLFLOW])


def test_a_crashed_service_is_reported_as_crashed(tmp_path: Path, stack_settings: Settings) -> None:
    import signal

    s = _fresh_settings(tmp_path, stack_settings)
    (res,) = launcher.up(s, [MLFLOW])
    assert res.pid is not None
    os.killpg(res.pid, signal.SIGKILL)
    launcher._CHILDREN.pop(res.pid).wait()
    for _ in range(50):
        (st,) = launcher.status(s, [MLFLOW])
        if st.state == "crashed":
            break
        import time

        time.sleep(0.1)
    assert st.state == "crashed" and "fleetloop up" in st.detail
    launcher.down(s, [MLFLOW])
