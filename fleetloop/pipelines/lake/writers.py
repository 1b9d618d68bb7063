"""Who is writing a lake table right now: one lease file per live writer, held by an ``flock`` for the
process's lifetime, so a starting collect member cleans up only what dead writers left (docs/adr/0076).

    <state_dir>/lake/<table>/_writers/<token>.lock      (pid, process start time and host inside, for people)

The kernel drops the lock when the process dies, ``kill -9`` included, so liveness needs no clock, no pid
reuse check and no heartbeat: a lease whose lock can be taken belongs to a dead writer. Its token is in the
names of the segments it writes (``part-<time>-<token>-<random>``), which is how ``remove_orphans`` tells
a live writer's half-written segment from a crash orphan.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path

from fleetloop.pipelines.lake.durable import mkdirs_durably
from fleetloop.pipelines.lake.segments import table_dir

__all__ = ["WRITERS_DIRNAME", "WriterLease", "live_writers"]

WRITERS_DIRNAME = "_writers"


def _writers_dir(state_dir: Path, table: str) -> Path:
    return table_dir(state_dir, table) / WRITERS_DIRNAME


class WriterLease:
    """This process's lease on writing ``table``: taken on construction, given back by :meth:`release` (or
    by the process's death). ``token`` names the segments it writes."""

    def __init__(self, state_dir: Path, table: str) -> None:
        folder = _writers_dir(state_dir, table)
        mkdirs_durably(folder)
        self.token = uuid.uuid4().hex[:8]
        self.path = folder / f"{self.token}.lock"
        # Locked under a name no reader globs, then renamed: a lease is never visible unlocked.
        tmp = folder / f".{self.token}.lock.tmp"
        self._fd: int | None = os.open(tmp, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        who = {"pid": os.getpid(), "host": socket.gethostname(), "started_at_s": time.time()}
        os.write(self._fd, json.dumps(who).encode())
        os.replace(tmp, self.path)

    def release(self) -> None:
        """Give the lease back (the file goes; the lock with it)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def live_writers(state_dir: Path, table: str) -> set[str]:
    """Tokens of the writers of ``table`` alive now; leases of dead writers are removed on the way."""
    folder = _writers_dir(state_dir, table)
    if not folder.is_dir():
        return set()
    live = set()
    for p in folder.glob("*.lock"):
        try:
            fd = os.open(p, os.O_RDWR)
        except FileNotFoundError:
            continue  # released meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            live.add(p.stem)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()  # its writer is gone (we hold its lock, so it cannot come back)
        finally:
            os.close(fd)
    return live
