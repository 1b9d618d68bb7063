"""The consumer loop's pure parts: the stop flag and its signal path, outages waited out, commits and dead letters
counted (a scripted consumer stands in for Kafka; the real one runs in the stage and controller tests)."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from fleetloop.platform.bus.loop import (
    WAIT_SLICE_S,
    BrokerOutage,
    StopFlag,
    commit_durable,
    member_timeouts,
    new_dead_letters,
    polls,
    stop_on_signals,
)
from fleetloop.platform.errors import ServiceUnavailable


def test_sigterm_during_wait_ends_the_wait() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only; a SIGTERM here would end the test run")
    flag = StopFlag()
    with stop_on_signals(flag):
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        t0 = time.monotonic()
        assert flag.wait(10.0)
        assert time.monotonic() - t0 < 2.0


def test_the_signal_handler_never_waits_for_the_flags_lock() -> None:
    """The deadlock it prevents: a signal arrives while the main thread, inside ``wait``, holds the lock of the
    event that wakes waiters; a handler that took that lock would wait for ever on the thread it interrupted."""
    flag = StopFlag()
    with stop_on_signals(flag):
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        caller = threading.Thread(target=handler, args=(signal.SIGTERM, None), daemon=True)
        with flag._wake._cond:  # type: ignore[attr-defined]  # what the main thread holds inside Event.wait
            caller.start()
            caller.join(2.0)
            returned = not caller.is_alive()
    assert returned, "the signal handler blocked on the lock its own thread holds"
    assert flag.is_set()


def test_a_second_ctrl_c_interrupts_hard_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    flag = StopFlag()
    with stop_on_signals(flag):
        handler = signal.getsignal(signal.SIGINT)
        assert callable(handler)
        handler(signal.SIGINT, None)
        assert flag.is_set()
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) is before


def test_set_from_a_thread_wakes_a_waiter_at_once_and_wait_times_out_unset() -> None:
    flag = StopFlag()
    t0 = time.monotonic()
    assert not flag.wait(3 * WAIT_SLICE_S)
    assert time.monotonic() - t0 >= 3 * WAIT_SLICE_S
    threading.Timer(0.1, flag.set).start()
    t0 = time.monotonic()
    assert flag.wait()
    assert time.monotonic() - t0 < 1.0


@dataclass
class _Counts:
    broker_outages: int = 0


@dataclass
class _Counters:
    dead_lettered: dict[str, int] = field(default_factory=dict)


class _ScriptedConsumer:
    """Answers each poll from a script: an item is returned, or raised if it is an exception."""

    def __init__(self, script: list[Any], stop: StopFlag) -> None:
        self.script = script
        self.stop = stop
        self.counters = _Counters()
        self.commit_answer: Any = True

    def poll(self, timeout_s: float) -> Any:
        if not self.script:
            self.stop.set()
            return "empty"
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def commit(self, polled: Any, timeout_s: float | None = None) -> bool:
        if isinstance(self.commit_answer, BaseException):
            raise self.commit_answer
        return bool(self.commit_answer)


def test_polls_wait_out_an_outage_and_count_it_once() -> None:
    stop, counts = StopFlag(), _Counts()
    away = ServiceUnavailable("broker away")
    consumer = _ScriptedConsumer(["a", away, away, "b", away, "c"], stop)
    got = list(polls(consumer, stop, BrokerOutage(60.0, counts), 0.1))  # type: ignore[arg-type]
    assert got == ["a", "b", "c", "empty"]
    assert counts.broker_outages == 2  # two outages, the first of two failed polls


def test_polls_give_up_once_the_broker_is_away_longer_than_allowed() -> None:
    stop, counts = StopFlag(), _Counts()
    away = ServiceUnavailable("broker away")
    consumer = _ScriptedConsumer([away] * 10, stop)
    with pytest.raises(ServiceUnavailable, match="broker away"):
        list(polls(consumer, stop, BrokerOutage(0.2, counts), 0.1))  # type: ignore[arg-type]
    assert counts.broker_outages == 1


def test_commit_outcomes() -> None:
    consumer = _ScriptedConsumer([], StopFlag())
    assert commit_durable(consumer, "p") == "committed"  # type: ignore[arg-type]
    consumer.commit_answer = False
    assert commit_durable(consumer, "p") == "deferred"  # type: ignore[arg-type]
    consumer.commit_answer = ServiceUnavailable("commit timed out")
    assert commit_durable(consumer, "p") == "failed"  # type: ignore[arg-type]


def test_new_dead_letters_are_counted_once() -> None:
    consumer = _ScriptedConsumer([], StopFlag())
    counted: dict[str, int] = {}
    consumer.counters.dead_lettered = {"bad_hash": 2}
    assert new_dead_letters(consumer, counted) == {"bad_hash": 2}  # type: ignore[arg-type]
    consumer.counters.dead_lettered = {"bad_hash": 3, "stale_beat": 1}
    assert new_dead_letters(consumer, counted) == {"bad_hash": 1, "stale_beat": 1}  # type: ignore[arg-type]
    assert new_dead_letters(consumer, counted) == {}  # type: ignore[arg-type]
    assert counted == {"bad_hash": 3, "stale_beat": 1}


def test_member_timeouts_heartbeat_a_third_of_the_session() -> None:
    assert member_timeouts(6.0) == {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000}
    assert member_timeouts(0.1)["heartbeat_interval_ms"] == 100
