"""The real Prometheus (and Alertmanager) of the stack against a running fleet: `fleetloop sim run` registers its
exporter, Prometheus finds it through the state directory and stores its series; an injected fault makes the
matching alert rule fire, and a killed process makes the exporter-down rule fire.

The rules are those of deploy/prometheus/rules with every `for:` cut to 0 s, scraped and evaluated every second,
so the test takes about a minute rather than the rules' minutes of patience."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fleetloop.edge_agent.bootstrap import BootstrapConfig, bootstrap_initial_model
from fleetloop.edge_agent.imitation import ImitationConfig
from fleetloop.platform import launcher
from fleetloop.platform.metrics.query import COLLISION_RATE_BY_MODEL_VERSION
from fleetloop.platform.services import alertmanager, prometheus
from fleetloop.platform.services.alertmanager import DEPLOY_DIR, get_json
from fleetloop.platform.settings import Settings
from tests.conftest import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="Prometheus is not installed (`make prometheus` installs it; CI always has it)",
    ),
]

VEHICLES = 10
FAULT_TICK = 100  # [ticks] 10 simulated seconds of a healthy model first
# Each tick, 30 % of the vehicles' inference runs 300 ms late (the deadline is 100 ms): the arbiter hands them to
# the fallback, thousands of times per vehicle-hour against the healthy model's hundred or two.
FAULT = f"latency_spike:p=0.3,ms=300,start={FAULT_TICK}"
SURGE = "FleetloopFallbackActivationSurge"
DISTANCE_BY_VERSION = "sum by (model_version) (fleetloop_sim_distance_meters_total)"
T = TypeVar("T")


def _short_windows(dst: Path) -> Path:
    dst.mkdir()
    for rules in (DEPLOY_DIR / "rules").glob("*.yml"):
        (dst / rules.name).write_text(re.sub(r"(?m)^(\s+for:) .*$", r"\1 0s", rules.read_text()))
    return dst


@pytest.fixture
def monitored(tmp_path: Path) -> Iterator[Settings]:
    """A private Prometheus (and Alertmanager, where installed) on free ports, scraping a fresh state directory."""
    settings = Settings(
        state_dir=tmp_path / "state",
        prometheus_port=free_port(),
        alertmanager_port=free_port(),
        prometheus_scrape_interval_s=1.0,
        prometheus_rules_dir=_short_windows(tmp_path / "rules"),
    )
    specs = [spec for spec in (alertmanager.SPEC, prometheus.SPEC) if spec.missing(settings) is None]
    try:
        launcher.up(settings, specs)
        yield settings
    finally:
        launcher.down(settings, specs)


def _query(settings: Settings, promql: str) -> list[dict[str, Any]]:
    url = f"{settings.prometheus_uri}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    result: list[dict[str, Any]] = get_json(url)["data"]["result"]
    return result


def _alerts(settings: Settings, name: str, state: str = "firing") -> list[dict[str, Any]]:
    alerts = get_json(f"{settings.prometheus_uri}/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == state]


def _wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, proc: subprocess.Popen[str] | None) -> T:
    """``probe()`` once it answers; fails after ``timeout_s``, or at once when ``proc`` (the fleet) has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"sim run exited ({proc.returncode}) before {what}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {timeout_s:.0f} s")


def test_a_latency_fault_fires_the_fallback_surge_alert_and_a_killed_fleet_the_exporter_down_alert(
    monitored: Settings, tmp_path: Path
) -> None:
    imitation = ImitationConfig(epochs=2, batch_size=512, max_seconds=5.0)
    model, _ = bootstrap_initial_model(
        BootstrapConfig(vehicles=32, ticks=60, imitation=imitation, output_dir=tmp_path / "model")
    )
    cmd = [sys.executable, "-m", "fleetloop.cli.main", "sim", "run", "--vehicles", str(VEHICLES), "--minutes", "2"]
    cmd += ["--model", str(model), "--no-telemetry", "--seed", "3", "--inject", FAULT, "--json"]
    env = {**os.environ, "FLEETLOOP_STATE_DIR": str(monitored.state_dir)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # The series arrive: Prometheus found the exporter through its target file in the state directory.
        steps = _wait_for(
            "vehicle-steps in Prometheus",
            lambda: _query(monitored, 'fleetloop_sim_vehicle_steps_total{job="fleetloop",process="sim"} > 0'),
            90,
            proc,
        )
        assert steps[0]["metric"]["pid"] == str(proc.pid)
        assert _query(monitored, f'up{{job="fleetloop",process="sim",pid="{proc.pid}"}} == 1')

        # The collision rate by model version that the README and docs/observability.md give: one series per
        # version that drove (0 where it has had no collision yet), and only those.
        rates = _wait_for(
            "the collision rate by model version",
            lambda: _query(monitored, COLLISION_RATE_BY_MODEL_VERSION),
            60,
            proc,
        )
        driven = {s["metric"]["model_version"] for s in _query(monitored, DISTANCE_BY_VERSION)}
        assert sorted(r["metric"]["model_version"] for r in rates) == sorted(driven) and driven
        assert all(set(r["metric"]) == {"model_version"} and float(r["value"][1]) >= 0 for r in rates)
        before_fault = float(steps[0]["value"][1]) < FAULT_TICK * VEHICLES
        if before_fault:  # (a machine slow to start Prometheus' first scrape may already be past the fault)
            assert _alerts(monitored, SURGE, "firing") == [] and _alerts(monitored, SURGE, "pending") == []

        # The fault: the surge rule fires, with the rate it saw.
        (alert,) = _wait_for("fallback surge alert", lambda: _alerts(monitored, SURGE), 120, proc)
        assert alert["labels"]["severity"] == "critical"
        assert float(alert["value"]) > 1000
        steps_then = _query(monitored, "max(fleetloop_sim_vehicle_steps_total)")
        assert float(steps_then[0]["value"][1]) > FAULT_TICK * VEHICLES  # it fired after the fault, not before
        if alertmanager.SPEC.missing(monitored) is None:  # Prometheus hands it on
            _wait_for(
                "the alert at Alertmanager",
                lambda: [
                    a
                    for a in get_json(f"{monitored.alertmanager_uri}/api/v2/alerts")
                    if a["labels"]["alertname"] == SURGE
                ],
                30,
                proc,
            )

        # A fleet killed without cleaning up leaves its target file: its exporter is down.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        (down,) = _wait_for(
            "exporter-down alert",
            lambda: [a for a in _alerts(monitored, "FleetloopExporterDown") if a["labels"]["pid"] == str(proc.pid)],
            30,
            None,
        )
        assert down["labels"]["process"] == "sim"
        # Nothing else breaks: Prometheus still scrapes itself and answers, and only that target is down.
        assert _query(monitored, 'up{job="prometheus"} == 1')
        assert [a["labels"]["pid"] for a in _alerts(monitored, "FleetloopExporterDown")] == [str(proc.pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
