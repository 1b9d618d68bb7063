"""kafka-python's IO loop runs a task queued from another thread at once (docs/adr/0166)."""

from __future__ import annotations

import threading
import time

from kafka.net.selector import NetworkSelector

from fleetloop.platform.bus import _kafka_wakeup


def test_a_task_queued_off_the_io_thread_runs_without_waiting_for_a_socket() -> None:
    assert _kafka_wakeup.install()
    net = NetworkSelector()
    net.start()
    try:
        ran = threading.Event()
        started = time.monotonic()
        net.call_soon(ran.set)  # the way a future resolved on this thread re-queues its waiting task
        assert ran.wait(5), "the IO loop slept through a task queued from another thread"
        assert time.monotonic() - started < 1.0
    finally:
        net.close()


def test_install_is_idempotent() -> None:
    assert _kafka_wakeup.install() and _kafka_wakeup.install()
    assert _kafka_wakeup.installed()
