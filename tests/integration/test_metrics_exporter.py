"""The exporter serves real Prometheus exposition over HTTP and registers itself for file_sd discovery."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetloop.platform.errors import SetupError
from fleetloop.platform.metrics import (
    counter,
    histogram,
    list_targets,
    prune_stale_targets,
    start_exporter,
    targets_dir,
)
from fleetloop.platform.settings import Settings

pytestmark = pytest.mark.integration


def _scrape(address: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """GET http://address/metrics and parse it the way Prometheus does: sample name -> labels -> value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def _target_address(path: Path) -> str:
    (group,) = json.loads(path.read_text())
    (address,) = group["targets"]
    assert isinstance(address, str)
    return address


def test_a_counter_incremented_here_is_scraped_from_the_registered_target(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    frames = counter("fleetloop_itest_frames_total", "Frames the integration test pretends to send.", ["topic"])
    latency = histogram("fleetloop_itest_step_seconds", "Duration of the integration test's fake step.")
    handle = start_exporter(settings, "itest")
    try:
        assert handle.host == "127.0.0.1"
        path = targets_dir(tmp_path) / f"itest-{os.getpid()}.json"
        assert handle.target_path == path and path.exists()
        (group,) = json.loads(path.read_text())
        assert group["labels"] == {"process": "itest", "pid": str(os.getpid())}
        # Scrape the address a Prometheus server would read from the file, not the handle's.
        address = _target_address(path)
        assert address == handle.address == f"127.0.0.1:{handle.port}"

        before = _scrape(address).get("fleetloop_itest_frames_total", {}).get((("topic", "telemetry"),), 0.0)
        frames.labels(topic="telemetry").inc(41)
        frames.labels(topic="telemetry").inc()
        latency.observe(0.02)
        samples = _scrape(address)
        assert samples["fleetloop_itest_frames_total"][(("topic", "telemetry"),)] == before + 42
        assert samples["fleetloop_itest_step_seconds_count"][()] >= 1
        (build,) = samples["fleetloop_build_info"]
        assert dict(build)["version"] and samples["fleetloop_build_info"][build] == 1.0
        assert samples["process_cpu_seconds_total"][()] > 0

        # The same process asking again gets the running exporter, not a second port.
        assert start_exporter(settings, "itest") is handle
        assert [t.address for t in list_targets(tmp_path).targets] == [address]
    finally:
        handle.close()
    assert not path.exists()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{address}/metrics", timeout=2)
    handle.close()  # idempotent


def test_a_requested_port_in_use_is_a_setup_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SetupError, match=f"metrics port {port} on 127.0.0.1 is in use"):
            start_exporter(Settings(state_dir=tmp_path), "itest-busy", port=port)
    assert list_targets(tmp_path).targets == []


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from fleetloop.platform.metrics import counter, start_exporter
    from fleetloop.platform.settings import Settings

    handle = start_exporter(Settings(state_dir=Path(sys.argv[1])), "child")
    counter("fleetloop_itest_child_ticks_total", "Ticks of the child process.").inc(7)
    print(handle.address, flush=True)
    sys.stdin.readline()  # wait for the parent, then exit normally
    """
)


def _start_child(state: Path) -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(state)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    address = child.stdout.readline().strip()
    assert address, "the child did not start its exporter"
    return child, address


def _stop(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.kill()
    child.wait(timeout=30)
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            pipe.close()


def test_a_process_that_exits_cleanly_removes_its_target(tmp_path: Path) -> None:
    child, address = _start_child(tmp_path)
    try:
        path = targets_dir(tmp_path) / f"child-{child.pid}.json"
        assert _target_address(path) == address
        assert _scrape(address)["fleetloop_itest_child_ticks_total"][()] == 7.0
        assert child.stdin is not None
        child.stdin.write("bye\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        _stop(child)
    assert not path.exists()  # removed by the atexit hook


def test_a_killed_process_leaves_a_stale_target_that_prune_removes(tmp_path: Path) -> None:
    child, address = _start_child(tmp_path)
    path = targets_dir(tmp_path) / f"child-{child.pid}.json"
    try:
        assert _scrape(address)["fleetloop_itest_child_ticks_total"][()] == 7.0
    finally:
        child.send_signal(signal.SIGKILL)
        _stop(child)
    assert path.exists()  # no chance to clean up
    (target,) = list_targets(tmp_path).targets
    assert target.pid == child.pid and target.alive is False
    assert prune_stale_targets(tmp_path) == [path]
    assert not path.exists()
    assert list_targets(tmp_path).targets == []
