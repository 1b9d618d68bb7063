"""Structured logs: correlation ids bound by a block stay in it, and a JSON line carries them."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import pytest

from fleetloop.platform import logs
from fleetloop.platform.logs import JsonFormatter, bind_log_context, current_log_context, log_context


@pytest.fixture(autouse=True)
def no_ids_bound_yet() -> Iterator[None]:
    """Each test starts with no ids bound: a command run in this process earlier (the CLI tests call ``main()``)
    may have bound some for the rest of its context."""
    token = logs._context.set({})
    yield
    logs._context.reset(token)


def _line(message: str) -> dict[str, object]:
    record = logging.LogRecord("fleetloop.test", logging.WARNING, __file__, 1, message, None, None)
    doc: dict[str, object] = json.loads(JsonFormatter("test").format(record))
    return doc


def test_a_block_binds_ids_for_itself_and_what_it_binds_inside_ends_with_it() -> None:
    with log_context(run_id="r1", command="sim run"):
        bind_log_context(model_version="v3")
        with log_context(round=2, vehicle_id=None):  # None: not known here, not logged
            assert current_log_context() == {"run_id": "r1", "command": "sim run", "model_version": "v3", "round": 2}
            line = _line("round done")
        assert "round" not in current_log_context()
    assert current_log_context() == {}
    assert line["round"] == 2 and line["model_version"] == "v3" and line["message"] == "round done"
    assert line["level"] == "warning" and line["process"] == "test" and str(line["ts"]).endswith("Z")


def test_another_thread_does_not_see_this_threads_ids() -> None:
    seen: list[dict[str, object]] = []
    with log_context(run_id="r1"):
        t = threading.Thread(target=lambda: seen.append(current_log_context()))
        t.start()
        t.join()
    assert seen == [{}]


def test_an_unknown_id_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown log context field.*run_id"), log_context(run="r1"):
        pass
