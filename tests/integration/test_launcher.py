"""The launcher against the real services: what `fleetloop up / status / down` promise."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetloop.cli.services import stack_services
from fleetloop.platform import launcher
from fleetloop.platform.errors import ServiceUnavailable, SetupError
from fleetloop.platform.services.kafka import SPEC as KAFKA
from fleetloop.platform.services.mlflow_server import SPEC as MLFLOW
from fleetloop.platform.services.spec import Health, ServiceSpec
from fleetloop.platform.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _fresh_settings(tmp_path: Path, stack_settings: Settings, **kw: object) -> Settings:
    base = {
        "state_dir": tmp_path / "state",
        "kafka_port": free_port(),
        "kafka_controller_port": free_port(),
        "mlflow_port": free_port(),
        "ota_repo_port": free_port(),
        "prometheus_port": free_port(),
        "alertmanager_port": free_port(),
        "kafka_libs_dir": stack_settings.kafka_libs_dir,
    }
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def _live_procs() -> Iterator[tuple[Path, list[str]]]:
    """``/proc/<pid>`` and its stat fields after the command name, for every process that is not a zombie."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if stat[0] != "Z":
            yield proc, stat


def _read(proc: Path, name: str) -> bytes:
    try:
        return (proc / name).read_bytes()
    except OSError:
        return b""


def _pids_in_state(state_dir: Path) -> list[int]:
    """Every live process whose command line mentions this state directory."""
    return [int(p.name) for p, _ in _live_procs() if str(state_dir).encode() in _read(p, "cmdline")]


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        {
            "FLEETLOOP_STATE_DIR": str(settings.state_dir),
            "FLEETLOOP_KAFKA_PORT": str(settings.kafka_port),
            "FLEETLOOP_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
            "FLEETLOOP_MLFLOW_PORT": str(settings.mlflow_port),
            "FLEETLOOP_OTA_REPO_PORT": str(settings.ota_repo_port),
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
    assert by_name["kafka"]["healthy"] and by_name["mlflow"]["healthy"] and by_name["ota-repo"]["healthy"]
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
    s = _fresh_settings(tmp_path, stack_settings)
    (res,) = launcher.up(s, [MLFLOW])
    assert res.pid is not None
    os.killpg(res.pid, signal.SIGKILL)
    launcher._CHILDREN.pop(res.pid).wait()
    for _ in range(50):
        (st,) = launcher.status(s, [MLFLOW])
        if st.state == "crashed":
            break
        time.sleep(0.1)
    assert st.state == "crashed" and "fleetloop up" in st.detail
    launcher.down(s, [MLFLOW])


# -- the whole process tree: a killed server, a child that leaves the group, a foreign process on the port ---------

MARKER_VARIABLE = "LAUNCHED_BY_FLEETLOOP"  # set by the launcher in every service's environment (ADR 0005)


def _marked_pids(settings: Settings, name: str) -> list[int]:
    """Every live process whose environment carries the launcher's marker for ``name`` in this state directory."""
    marker = f"{MARKER_VARIABLE}={name}@{settings.state_dir.resolve()}".encode()
    return [int(p.name) for p, _ in _live_procs() if marker in _read(p, "environ").split(b"\0")]


def _children_of(pid: int) -> list[int]:
    return [int(p.name) for p, stat in _live_procs() if int(stat[1]) == pid]


def _gone(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]) == "Z"
    except OSError:
        return True


def _wait_until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.2)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _status_of(s: Settings, name: str) -> dict[str, Any]:
    """One service's entry in `fleetloop status --json` (which exits 4 while any part of the stack is down)."""
    st = _cli(s, "status", "--json")
    assert st.returncode in (0, 4), st.stderr
    (entry,) = [x for x in json.loads(st.stdout)["services"] if x["name"] == name]
    return dict(entry)


def _kill_the_recorded_mlflow_server(s: Settings) -> tuple[int, list[int]]:
    """Start MLflow as a user would (`fleetloop up mlflow`), kill -9 the pid the launcher recorded; returns the
    killed pid and its workers, which the test expects to outlive it."""
    started = _cli(s, "up", "mlflow", "--json")
    assert started.returncode == 0, started.stderr
    record = json.loads((launcher.service_dir(s, "mlflow") / "process.json").read_text())
    server = int(record["pid"])
    workers = _children_of(server)
    assert workers, "MLflow's server should run its web server (uvicorn) as a child process"
    os.kill(server, signal.SIGKILL)
    _wait_until(lambda: _gone(server), f"the killed server {server} is gone")
    return server, workers


def test_a_killed_mlflow_server_is_half_dead_and_up_brings_it_back_on_the_same_port(
    tmp_path: Path, stack_settings: Settings
) -> None:
    s = _fresh_settings(tmp_path, stack_settings)
    try:
        server, workers = _kill_the_recorded_mlflow_server(s)
        assert MLFLOW.health(s).ok, "the orphaned worker still serves the port: the half-dead case"
        mlflow = _status_of(s, "mlflow")
        assert mlflow["state"] == "half-dead" and not mlflow["healthy"]
        assert set(workers) <= set(mlflow["orphans"])
        assert "fleetloop up" in mlflow["detail"] and str(s.mlflow_port) in mlflow["detail"]

        again = _cli(s, "up", "mlflow", "--json")
        assert again.returncode == 0, again.stderr
        (restarted,) = json.loads(again.stdout)["services"]
        assert restarted["state"] == "running" and restarted["healthy"]
        assert restarted["address"] == f"http://127.0.0.1:{s.mlflow_port}"
        assert restarted["pid"] != server and all(_gone(w) for w in workers)
        mlflow = _status_of(s, "mlflow")  # the stack as a whole is not healthy: Kafka was never started
        assert mlflow["state"] == "running" and mlflow["healthy"]
    finally:
        launcher.down(s, [MLFLOW])
    assert _marked_pids(s, "mlflow") == []


def test_down_after_the_server_was_killed_frees_the_port_and_leaves_no_marked_process(
    tmp_path: Path, stack_settings: Settings
) -> None:
    s = _fresh_settings(tmp_path, stack_settings)
    try:
        _, workers = _kill_the_recorded_mlflow_server(s)
        assert set(workers) <= set(_marked_pids(s, "mlflow")), "the launcher marks every process it starts"
        down = _cli(s, "down", "mlflow")
        assert down.returncode == 0, down.stderr
        assert _marked_pids(s, "mlflow") == []
        assert _port_free(s.mlflow_port)
        assert _status_of(s, "mlflow")["state"] == "stopped"
    finally:
        launcher.down(s, [MLFLOW])


# A service whose worker leaves the service's process group (its own session), as daemonising servers do.
_ESCAPING_SERVER = """
import subprocess, sys, time
port = sys.argv[1]
subprocess.Popen([sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1"], start_new_session=True)
time.sleep(3600)
"""


def _tcp_health(s: Settings) -> Health:
    try:
        with socket.create_connection(("127.0.0.1", s.mlflow_port), timeout=1):
            return Health(True, "accepts connections")
    except OSError as e:
        return Health(False, f"no answer: {type(e).__name__}")


ESCAPER = ServiceSpec(
    name="escaper",
    description="a server whose worker starts its own session",
    address=lambda s: f"127.0.0.1:{s.mlflow_port}",
    is_external=lambda s: False,
    ports=lambda s: [s.mlflow_port],
    command=lambda s, folder: [sys.executable, "-c", _ESCAPING_SERVER, str(s.mlflow_port)],
    health=_tcp_health,
    cmdline_marker="http.server",
)


def test_a_worker_that_left_the_process_group_is_stopped_by_down_and_reported_by_status(
    tmp_path: Path, stack_settings: Settings
) -> None:
    s = _fresh_settings(tmp_path, stack_settings)
    try:
        (res,) = launcher.up(s, [ESCAPER])
        assert res.pid is not None
        os.kill(res.pid, signal.SIGKILL)
        _wait_until(lambda: launcher.status(s, [ESCAPER])[0].state != "running", "the server is seen gone")
        (st,) = launcher.status(s, [ESCAPER])
        assert st.state == "half-dead" and "fleetloop up escaper" in st.detail
        (stopped,) = launcher.down(s, [ESCAPER])
        assert stopped.action in ("stopped", "killed")
        assert _port_free(s.mlflow_port) and _marked_pids(s, "escaper") == []
    finally:
        launcher.down(s, [ESCAPER])


def test_a_foreign_process_on_the_port_is_named_and_left_running(tmp_path: Path, stack_settings: Settings) -> None:
    s = _fresh_settings(tmp_path, stack_settings)
    foreign = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(s.mlflow_port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until(lambda: not _port_free(s.mlflow_port), "the foreign server listens")
        up = _cli(s, "up", "mlflow")
        assert up.returncode == 3, up.stdout + up.stderr
        message = " ".join(up.stderr.split())  # rich wraps long lines
        assert str(s.mlflow_port) in message and f"pid {foreign.pid}" in message
        assert f"ss -ltnp 'sport = :{s.mlflow_port}'" in message and "FLEETLOOP_MLFLOW_PORT" in message
        assert foreign.poll() is None, "a process the launcher did not start is never stopped by it"
        assert _status_of(s, "mlflow")["state"] == "stopped"
    finally:
        foreign.terminate()
        foreign.wait(timeout=10)
        launcher.down(s, [MLFLOW])
