"""`fleetloop sim run` and the broker, as a user meets them: refused before driving when Kafka is down; exit 4 with
the count when Kafka goes away mid-run, the undelivered uploads spooled and delivered by the next run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleetloop.edge_agent.telemetry_spool import TelemetrySpool
from fleetloop.platform import launcher
from fleetloop.platform.bus import TELEMETRY, BusConsumer, FrameBatch
from fleetloop.platform.runs import list_runs
from fleetloop.platform.services.kafka import SPEC as KAFKA
from fleetloop.platform.settings import Settings
from tests.conftest import cli_env, free_port
from tests.integration.private_kafka import private_kafka


def _env(bootstrap: str, state: Path) -> dict[str, str]:
    return cli_env(
        drop=("KAFKA_BOOTSTRAP_SERVERS",), FLEETLOOP_KAFKA_BOOTSTRAP=bootstrap, FLEETLOOP_STATE_DIR=str(state)
    )


def _sim(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    code = "from fleetloop.cli.main import main; main()"
    cmd = [sys.executable, "-c", code, "sim", "run", "--fallback-only", "--json", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _frames_of_run(settings: Settings, run_id: str, group: str) -> set[tuple[str, int]]:
    """(vehicle id, seq) of every telemetry frame of one run on the topic (duplicates collapse)."""
    seen: set[tuple[str, int]] = set()
    with BusConsumer(settings, [TELEMETRY], group_id=group, client_id="test") as consumer:
        for polled in consumer.poll_batches(idle_timeout_s=10.0):
            for d in polled.deliveries:
                if isinstance(d.value, FrameBatch) and d.value.vehicle_id.startswith(run_id + "-"):
                    seen.update((d.value.vehicle_id, int(s)) for s in np.asarray(d.value.seq))
            consumer.commit(polled)
    return seen


def _first_frame_arrives(settings: Settings, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    with BusConsumer(settings, [TELEMETRY], group_id="watch-first-frame", client_id="test") as consumer:
        while time.monotonic() < deadline:
            if any(isinstance(d.value, FrameBatch) for d in consumer.poll(1.0).deliveries):
                return True
    return False


def test_sim_run_with_the_broker_down_exits_4_before_driving(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    proc = _sim(_env(address, tmp_path), "--vehicles", "4", "--minutes", "0.5")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err
    assert out == ""
    assert f"Kafka at {address} does not answer" in " ".join(err.split())
    assert "fleetloop up" in err and "--no-telemetry" in err
    assert time.monotonic() - t0 < 60  # no 30 s wait for the client library, no 300 ticks driven
    (record,) = list_runs(tmp_path).records
    assert record.status == "failed" and record.error is not None and record.error["exit_code"] == 4
    assert not record.summary  # it never drove


@pytest.mark.integration
def test_broker_stopped_mid_run_exits_4_with_the_count_and_the_next_run_delivers_the_spool(
    stack_settings: Settings, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with private_kafka(stack_settings, tmp_path / "kafka") as kafka:
        env = _env(kafka.bootstrap_servers, state)
        proc = _sim(env, "--vehicles", "20", "--minutes", "1", "--seed", "3")
        try:
            assert _first_frame_arrives(kafka, timeout_s=180), "the run sent nothing while the broker was up"
            launcher.down(kafka, [KAFKA])
            out, err = proc.communicate(timeout=400)
        finally:
            proc.kill()
        assert proc.returncode == 4, err
        first: dict[str, Any] = json.loads(out)  # the summary still comes, whole
        rep = first["telemetry_delivery"]
        undelivered, submitted = rep["frames_undelivered"], rep["frames_submitted"]
        assert 0 < undelivered <= submitted == first["counts"]["uploads"]["frames_uploaded"]
        assert rep["frames_delivered"] + undelivered == submitted
        assert rep["frames_lost"] == {} and sum(rep["frames_spooled"].values()) == undelivered
        message = " ".join(err.split())
        assert f"{undelivered:,} of {submitted:,} uploaded frames were not delivered" in message
        assert f"Kafka at {kafka.bootstrap_servers}" in message and "Kafka does not answer now" in message
        spool = TelemetrySpool.of_state_dir(state)
        assert spool.frames_waiting() == undelivered

        launcher.up(kafka, [KAFKA])
        proc = _sim(env, "--vehicles", "2", "--minutes", "0.05")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        backlog = json.loads(out)["telemetry_delivery"]["backlog"]
        assert backlog["frames_sent"] == undelivered and backlog["frames_waiting"] == 0
        assert spool.files() == []
        # every frame of the interrupted run is on the topic now, once deduplicated on (vehicle id, seq)
        assert len(_frames_of_run(kafka, first["run_id"], "count-first-run")) == submitted
