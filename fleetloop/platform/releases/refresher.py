"""Keep the signed timestamp fresh: the release server's own thread re-signs it before vehicles would refuse it.

A vehicle refuses expired metadata, so a timestamp nobody re-signs stops every install within its lifetime (a
day). :class:`TimestampRefresher` calls :func:`~fleetloop.platform.releases.api.refresh_timestamp` at start and
then every :func:`check_period_s`; the repository decides what is due (:func:`.signing.needs_refresh`), under
the publish lock, so a refresh never interleaves with a publish from the CLI.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from fleetloop.platform.errors import FleetloopError
from fleetloop.platform.releases.signing import Lifetimes

__all__ = ["CHECKS_PER_MARGIN", "TimestampRefresher", "check_period_s"]

log = logging.getLogger(__name__)

# Checks within the refresh margin: a failed check (a held lock, a full disk) still leaves several more tries
# before the timestamp runs out.
CHECKS_PER_MARGIN = 6


def check_period_s(lifetimes: Lifetimes) -> float:
    """How often to check, in seconds: a sixth of the timestamp's refresh margin (1 h for a 1-day timestamp)."""
    return lifetimes.margin("timestamp") / timedelta(seconds=1) / CHECKS_PER_MARGIN


class TimestampRefresher:
    """A daemon thread that calls ``refresh()`` now and every ``period_s`` until :meth:`stop`.

    ``refresh`` returns the roles it re-signed (empty when none was due); ``on_result`` sees each outcome
    (the roles, or the error), e.g. to count it in metrics. A failure is logged and retried at the next period,
    never fatal: the server keeps serving what is signed.
    """

    def __init__(
        self,
        refresh: Callable[[], list[str]],
        period_s: float,
        on_result: Callable[[list[str] | FleetloopError], None] | None = None,
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"refresh period must be positive, got {period_s} s")
        self._refresh = refresh
        self.period_s = period_s
        self._on_result = on_result
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ota-timestamp-refresher", daemon=True)

    def start(self) -> TimestampRefresher:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)

    def check_once(self) -> list[str] | FleetloopError:
        """One check: the roles re-signed, or the platform error that stopped it (logged)."""
        result: list[str] | FleetloopError
        try:
            roles = self._refresh()
        except FleetloopError as exc:
            log.error("timestamp refresh failed (retrying in %.0f s): %s", self.period_s, exc)
            result = exc
        else:
            if roles:
                log.info("re-signed %s", ", ".join(roles))
            result = roles
        if self._on_result is not None:
            self._on_result(result)
        return result

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            self._stop.wait(self.period_s)
