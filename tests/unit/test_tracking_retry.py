"""MLflow outages: a call retries with a bounded back-off, says so and why, then fails with the server's address
and what to run; a refused request fails at once. A fake clock and sleep; no server."""

from __future__ import annotations

import pytest

from fleetloop.platform.errors import NotFoundError, ServiceUnavailable
from fleetloop.platform.tracking import Tracking, backoff_delays_s

ADDRESS = "http://127.0.0.1:1"  # never contacted: the calls below are fakes


class FakeTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now_s += seconds

    def clock(self) -> float:
        return self.now_s


def tracking(retry_s: float, t: FakeTime, notices: list[str]) -> Tracking:
    return Tracking(ADDRESS, retry_s=retry_s, on_retry=notices.append, sleep=t.sleep, clock=t.clock)


def refused() -> None:
    raise ConnectionRefusedError(111, "Connection refused")


@pytest.mark.parametrize("total_s", [0.0, 0.3, 1.0, 30.0, 100.0])
def test_the_back_off_doubles_to_its_cap_and_never_outlasts_its_total(total_s: float) -> None:
    delays = backoff_delays_s(total_s)
    assert sum(delays) == pytest.approx(total_s)
    assert all(0 < d <= 8.0 for d in delays)


def test_the_default_bound_pauses_half_a_second_doubling_to_eight() -> None:
    assert backoff_delays_s(30.0) == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 6.5]


def test_a_server_that_stays_down_fails_after_the_bound_naming_it_and_what_to_run() -> None:
    t, notices = FakeTime(), []
    with pytest.raises(ServiceUnavailable) as caught:
        tracking(30.0, t, notices).call("creating a run", refused)
    assert t.now_s == pytest.approx(30.0)  # the whole bound, not MLflow's own 250 s
    message = str(caught.value)
    assert ADDRESS in message and "fleetloop status" in message and "fleetloop up" in message
    assert "connection refused" in message and "creating a run" in message
    assert caught.value.exit_code == 4
    assert len(notices) == len(t.slept) >= 5
    assert all("retrying in" in n and "connection refused" in n and ADDRESS in n for n in notices)


def test_a_server_back_within_the_bound_answers_the_retried_call() -> None:
    t, notices = FakeTime(), []
    answers = iter([OSError("Connection refused"), OSError("Connection refused"), "run-1"])

    def flaky() -> str:
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    assert tracking(30.0, t, notices).call("creating a run", flaky) == "run-1"
    assert t.slept == [0.5, 1.0] and len(notices) == 2


def test_a_refused_request_is_not_retried() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    t, notices = FakeTime(), []

    def unknown() -> None:
        raise MlflowException("run x not found", error_code=RESOURCE_DOES_NOT_EXIST)

    with pytest.raises(NotFoundError):
        tracking(30.0, t, notices).call("reading run x", unknown)
    assert t.slept == [] and notices == []


def test_no_retry_time_tries_once() -> None:
    t, notices = FakeTime(), []
    with pytest.raises(ServiceUnavailable):
        tracking(0.0, t, notices).call("tagging run x", refused)
    assert t.slept == [] and notices == []
