"""`fleetloop watch` against real exporters and a real Prometheus: a target that stops answering shows as down and
the rest is read as before; a Prometheus that goes away and comes back is read again at the next refresh."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from fleetloop.cli.watch import plot_history
from fleetloop.platform import launcher
from fleetloop.platform.metrics import MetricsRegistry, register_target, start_exporter
from fleetloop.platform.metrics.query import Snapshot, Watcher, query_history
from fleetloop.platform.services import prometheus
from fleetloop.platform.settings import Settings
from tests.conftest import free_port

T = TypeVar("T")


def _wait_for(what: str, probe: Callable[[], T | None], timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"no {what} within {timeout_s:.0f} s")


def _fleet_registry() -> MetricsRegistry:
    """A private registry holding what a sim process exports: 2 collisions in 10 km of fog on version v3."""
    reg = MetricsRegistry(process_collectors=False)
    labels = {"model_version": "v3", "condition": "fog"}
    reg.counter("fleetloop_sim_distance_meters_total", "m", ["model_version", "condition"]).labels(**labels).inc(1e4)
    events = reg.counter("fleetloop_sim_condition_events_total", "e", ["model_version", "condition", "event"])
    events.labels(**labels, event="collision").inc(2)
    reg.gauge("fleetloop_sim_vehicle_steps_per_second", "s").set(1234.0)
    return reg


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a process stuck in its own code)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def test_a_target_that_stops_answering_shows_as_down_and_the_rest_is_read(tmp_path: Path, hung_port: int) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    reg = _fleet_registry()
    with start_exporter(settings, "sim", registry=reg):
        register_target(settings.state_dir, "collect", f"127.0.0.1:{hung_port}", pid=os.getpid())
        register_target(settings.state_dir, "label", f"127.0.0.1:{free_port()}", pid=os.getpid())  # refuses
        t0 = time.monotonic()
        snap = Watcher(settings, "exporters", timeout_s=1.0).poll()
        assert time.monotonic() - t0 < 5  # scraped in parallel: one timeout, not one per target
    assert snap.source == "exporters" and snap.alerts is None
    assert {(t.process, t.up) for t in snap.targets} == {("sim", True), ("collect", False), ("label", False)}
    assert "timed out" in next(t.error or "" for t in snap.targets if t.process == "collect")
    assert "refused" in next(t.error or "" for t in snap.targets if t.process == "label")
    (fog,) = snap.safety
    assert (fog.model_version, fog.condition, fog.km, fog.collisions) == ("v3", "fog", 10.0, 2)
    assert fog.per_1000_km == pytest.approx(200.0)
    assert snap.vehicle_steps_per_s == 1234.0


def test_once_json_prints_one_document_that_lists_a_dead_process_as_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    register_target(state, "sim", f"127.0.0.1:{free_port()}", pid=int(dead.stdout))
    env = {**os.environ, "FLEETLOOP_STATE_DIR": str(state), "FLEETLOOP_PROMETHEUS_PORT": str(free_port())}
    cmd = [sys.executable, "-m", "fleetloop.cli.main", "watch", "--once", "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)  # exactly one JSON document on stdout
    assert doc["source"] == "exporters" and "does not answer" in doc["source_note"]
    (target,) = doc["targets"]
    assert target["up"] is False and "has exited" in target["error"]

    # The exporters keep no history: a plot needs Prometheus, and says how to start it (exit 3: missing set-up).
    plot = tmp_path / "watch.png"
    cmd = [sys.executable, "-m", "fleetloop.cli.main", "watch", "--plot", str(plot)]
    done = subprocess.run(cmd, env={**env, "COLUMNS": "300"}, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 3 and "fleetloop up prometheus" in done.stderr and not plot.exists()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus is not installed (`make prometheus`)")
def test_the_watch_reads_prometheus_again_after_it_restarts_and_plots_its_history(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", prometheus_port=free_port(), prometheus_scrape_interval_s=1.0)
    watcher = Watcher(settings, "auto", timeout_s=1.0)

    def from_prometheus_with_the_fleet() -> Snapshot | None:
        snap = watcher.poll()
        # Scraped by this very server (a restarted one still answers from its store before its first scrape).
        scraped = snap.targets and all(t.up for t in snap.targets)
        return snap if snap.source == "prometheus" and snap.safety and scraped else None

    reg = _fleet_registry()
    with start_exporter(settings, "sim", registry=reg):
        try:
            launcher.up(settings, [prometheus.SPEC])
            snap = _wait_for("the fleet's series through Prometheus", from_prometheus_with_the_fleet, 60)
            assert snap.alerts is not None and [t.up for t in snap.targets] == [True]
            assert snap.safety[0].per_1000_km == pytest.approx(200.0)

            launcher.down(settings, [prometheus.SPEC])
            gone = watcher.poll()  # no exception: the exporters are read, and the note says why
            assert gone.source == "exporters" and "does not answer" in (gone.source_note or "")
            assert gone.safety == snap.safety

            launcher.up(settings, [prometheus.SPEC])
            back = _wait_for("Prometheus again", from_prometheus_with_the_fleet, 60)
            assert back.source_note is None and back.alerts is not None

            # The fleet drives on in fog: 1 collision per 10 km, which the plotted history shows as 100 per 1,000 km.
            labels = {"model_version": "v3", "condition": "fog"}
            for _ in range(10):
                reg.counter("fleetloop_sim_distance_meters_total", "m", ["model_version", "condition"]).labels(
                    **labels
                ).inc(1e4)
                reg.counter(
                    "fleetloop_sim_condition_events_total", "e", ["model_version", "condition", "event"]
                ).labels(**labels, event="collision").inc(1)
                time.sleep(0.5)
            history = query_history(settings, 2)
            rates = [v for _t, v in history.panels["collisions + near misses per 1,000 km"]["v3/fog"]]
            assert rates and rates[-1] == pytest.approx(100.0, rel=0.2)
            png = tmp_path / "watch.png"
            plot_history(history, png)
            assert png.read_bytes()[:4] == b"\x89PNG"
        finally:
            launcher.down(settings, [prometheus.SPEC])
