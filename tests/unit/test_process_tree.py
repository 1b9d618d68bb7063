"""The launcher's view of a service's process tree: who carries the marker, who shares their group, who listens."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetloop.platform import process_tree
from fleetloop.platform.process_tree import MARKER_VARIABLE, Proc

OURS = "mlflow@/state"


def test_the_tree_is_the_marker_carriers_and_their_groups_wherever_they_moved() -> None:
    procs = [
        Proc(100, 100, 1, OURS),  # the main process, leader of the service's group
        Proc(101, 100, 2, None),  # a child that cleared its environment but stayed in the group
        Proc(102, 102, 3, OURS),  # a worker that started its own session
        Proc(200, 200, 4, "mlflow@/other-state"),  # the same service of another stack
        Proc(201, 201, 5, "kafka@/state"),  # another service of this stack
        Proc(300, 300, 6, None),  # a foreign process
    ]
    assert [p.pid for p in process_tree.owned(procs, OURS)] == [100, 101, 102]
    assert process_tree.owned(procs, "label@/state") == []


def test_a_carrier_in_a_group_led_by_a_foreign_process_does_not_drag_the_group_in() -> None:
    procs = [Proc(50, 50, 1, None), Proc(51, 50, 2, None), Proc(52, 50, 3, OURS)]
    assert [p.pid for p in process_tree.owned(procs, OURS)] == [52]


def test_the_group_of_a_dead_main_process_still_counts() -> None:
    procs = [Proc(101, 100, 2, None), Proc(102, 100, 3, OURS)]  # leader 100 is gone
    assert [p.pid for p in process_tree.owned(procs, OURS)] == [101, 102]


def test_a_recorded_group_counts_for_a_service_started_before_the_marker() -> None:
    procs = [Proc(100, 100, 1, None), Proc(101, 100, 2, None), Proc(300, 300, 3, None)]
    assert [p.pid for p in process_tree.owned(procs, OURS, extra_pgids=[100])] == [100, 101]


def test_the_calling_process_is_never_part_of_a_tree() -> None:
    me = os.getpid()
    assert process_tree.owned([Proc(me, me, 1, OURS)], OURS) == []


def test_a_marker_is_found_in_a_childs_environment_and_the_state_dir_is_absolute(tmp_path: Path) -> None:
    value = process_tree.marker_value("mlflow", Path(os.path.relpath(tmp_path)))
    assert value == f"mlflow@{tmp_path.resolve()}"
    env = dict(os.environ, **{MARKER_VARIABLE: value})
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env, start_new_session=True)
    try:
        # exec publishes the new command line and environment a moment after Popen returns
        _wait_until(lambda: bool(Path(f"/proc/{child.pid}/cmdline").read_bytes()))
        assert process_tree.marker_of(child.pid) == value
        assert [p.pid for p in process_tree.owned(process_tree.snapshot(), value)] == [child.pid]
        assert process_tree.stop(lambda: process_tree.owned(process_tree.snapshot(), value), 5.0) is False
        assert child.wait(timeout=5) != 0  # ended by SIGTERM within the grace period
    finally:
        child.kill()
        child.wait()


def _wait_until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_process_listening_on_a_port_is_named() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        # (another process may listen on the same number on an IPv6-only socket: only this process is asserted on)
        assert os.getpid() not in process_tree.listening_pids(port, "127.0.0.1")  # bound, not listening yet
        listener.listen()
        assert os.getpid() in process_tree.listening_pids(port, "127.0.0.1")
        assert os.getpid() not in process_tree.listening_pids(port, "127.0.0.2")  # another address, free to bind
        other = subprocess.Popen(["sleep", "30"])  # another process (pid + 1 may be a thread of this one)
        try:
            assert process_tree.listening_pids(port, "127.0.0.1", among=[other.pid]) == []
        finally:
            other.kill()
            other.wait()


def test_a_socket_on_every_address_holds_the_port_on_loopback_too() -> None:
    try:
        listener = socket.socket(socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 on this machine")
    with listener:
        listener.bind(("::", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert process_tree.listening_pids(port, "127.0.0.1") == [os.getpid()]


# The main thread ends while another thread still runs, as a JVM's does before its shutdown hooks finish.
_MAIN_THREAD_ENDS_FIRST = """
import ctypes, threading, time
threading.Thread(target=lambda: time.sleep(30)).start()
time.sleep(0.2)
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_process_whose_main_thread_ended_first_is_still_part_of_the_tree(tmp_path: Path) -> None:
    value = process_tree.marker_value("kafka", tmp_path)
    env = dict(os.environ, **{MARKER_VARIABLE: value})
    child = subprocess.Popen([sys.executable, "-c", _MAIN_THREAD_ENDS_FIRST], env=env, start_new_session=True)
    try:
        stat = Path(f"/proc/{child.pid}/stat")
        _wait_until(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")  # main thread gone, process not
        assert process_tree.marker_of(child.pid) == value
        assert [p.pid for p in process_tree.owned(process_tree.snapshot(), value)] == [child.pid]
        assert process_tree.start_ticks(child.pid) is not None
    finally:
        child.kill()
        child.wait()
    assert process_tree.owned(process_tree.snapshot(), value) == []
