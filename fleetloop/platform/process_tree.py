"""The processes a service owns, found through ``/proc`` (Linux): its whole tree, wherever its members moved.

The launcher puts a marker variable in each service's environment (``LAUNCHED_BY_FLEETLOOP=<name>@<state_dir>``).
Every descendant inherits it, whatever session or process group it moves to and whoever its parent becomes
after the service's main process dies, so one scan of ``/proc/*/environ`` finds the whole tree; members of
the carriers' process groups count too (a child that cleared its environment but stayed in the group).
A process that carries no marker and sits in none of those groups is never ours: it is never signalled.
Why a marker and not only the process group, a subreaper or a cgroup: docs/adr/0005.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MARKER_VARIABLE",
    "Proc",
    "command_of",
    "listening_pids",
    "marker_of",
    "marker_value",
    "owned",
    "snapshot",
    "start_ticks",
    "stop",
]

MARKER_VARIABLE = "LAUNCHED_BY_FLEETLOOP"  # outside the FLEETLOOP_ prefix: settings reject unknown FLEETLOOP_*
_PROC = Path("/proc")
_TCP_LISTEN = "0A"  # socket state in /proc/net/tcp


@dataclass(frozen=True)
class Proc:
    """One live (not zombie) process as ``/proc`` shows it."""

    pid: int
    pgid: int
    start_ticks: int  # clock ticks after boot: with the pid, an identity that a recycled pid does not share
    marker: str | None  # the value of the marker variable in its environment, if any


def marker_value(name: str, state_dir: Path) -> str:
    """The marker of service ``name`` of the stack under ``state_dir`` (absolute, so any working directory agrees)."""
    return f"{name}@{state_dir.resolve()}"


def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state [0], pgrp [2], num_threads [17], starttime [19])."""
    try:
        return (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()
    except (OSError, IndexError):
        return None


def _live(stat: list[str]) -> bool:
    """Not yet exited. A zombie whose other threads still run (a JVM's main thread ends before its shutdown
    hooks do) still holds its sockets: it counts as live until its last thread is gone."""
    return stat[0] not in ("Z", "X") or int(stat[17]) > 1


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot), or None if it is gone or a zombie."""
    stat = _stat_fields(pid)
    if stat is None or not _live(stat):
        return None
    return int(stat[19])


def _environ(pid: int | str) -> bytes:
    """The environment ``pid`` started with; read through a live thread if its main thread already ended."""
    with contextlib.suppress(OSError):
        env = (_PROC / str(pid) / "environ").read_bytes()
        if env:
            return env
    with contextlib.suppress(OSError):
        for task in (_PROC / str(pid) / "task").iterdir():
            with contextlib.suppress(OSError):
                env = (task / "environ").read_bytes()
                if env:
                    return env
    return b""  # gone, a kernel thread, or another user's process: no marker either way


def marker_of(pid: int | str) -> str | None:
    """The value of the marker variable in ``pid``'s environment (None: none, or not readable by this user)."""
    prefix = MARKER_VARIABLE.encode() + b"="
    for entry in _environ(pid).split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def snapshot() -> list[Proc]:
    """Every live process, with its marker; one pass over /proc (status asks each service from one snapshot)."""
    out = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat_fields(entry.name)
        if stat is None or not _live(stat):  # a zombie holds no port and cannot be signalled away
            continue
        out.append(Proc(int(entry.name), int(stat[2]), int(stat[19]), marker_of(entry.name)))
    return out


def owned(procs: Iterable[Proc], marker: str, extra_pgids: Iterable[int] = ()) -> list[Proc]:
    """The processes of the tree marked ``marker``: its carriers and the members of their process groups.

    A group counts only while its leader carries the marker or is gone (the service's main process leads its
    group; once it died, the group lives on without a leader): a carrier that somehow sits in a group led by a
    process without the marker does not drag that group in. ``extra_pgids`` adds the members of a recorded
    group (a service started before the marker existed). The calling process is never part of the result.
    """
    procs = list(procs)
    by_pid = {p.pid: p for p in procs}
    carriers = [p for p in procs if p.marker == marker]
    groups = {p.pgid for p in carriers if p.pgid not in by_pid or by_pid[p.pgid].marker == marker}
    groups |= set(extra_pgids)
    me = os.getpid()
    return sorted((p for p in procs if p.pid != me and (p.marker == marker or p.pgid in groups)), key=lambda p: p.pid)


def command_of(pid: int, limit: int = 80) -> str:
    """A short command line for messages (``?`` when it cannot be read)."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host byte order."""
    raw = bytes.fromhex(hex_addr)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def _covers(listening: ipaddress.IPv4Address | ipaddress.IPv6Address, host: str | None) -> bool:
    """Whether a socket listening on ``listening`` takes the port on ``host`` too (None: any host)."""
    if host is None or listening.is_unspecified:
        return True
    try:
        wanted = ipaddress.ip_address(host)
    except ValueError:  # a host name: cannot tell, so every address counts
        return True
    mapped = listening.ipv4_mapped if isinstance(listening, ipaddress.IPv6Address) else None
    return wanted in (listening, mapped)


def _listening_inodes(port: int, host: str | None) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) <= 9 or cols[3] != _TCP_LISTEN:
                continue
            addr, _, hex_port = cols[1].rpartition(":")
            if int(hex_port, 16) == port and _covers(_address(addr), host):
                inodes.add(cols[9])
    return inodes


def _socket_inodes(pid: int) -> Iterator[str]:
    fd_dir = _PROC / str(pid) / "fd"
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                yield link[len("socket:[") : -1]


def listening_pids(port: int, host: str | None = None, among: Iterable[int] | None = None) -> list[int]:
    """The processes (``among`` these, else all visible to this user) with a TCP socket listening on ``port``
    on ``host`` (or on every address; None: on any address)."""
    inodes = _listening_inodes(port, host)
    if not inodes:
        return []
    pids = among if among is not None else (int(e.name) for e in _PROC.iterdir() if e.name.isdigit())
    return sorted(pid for pid in pids if any(i in inodes for i in _socket_inodes(pid)))


def _signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop(find: Callable[[], list[Proc]], timeout_s: float) -> bool:
    """SIGTERM every process ``find`` returns, and any that appear meanwhile; after ``timeout_s`` SIGKILL what is
    left. Returns True if it had to kill."""
    deadline = time.monotonic() + timeout_s
    termed: set[tuple[int, int]] = set()
    while time.monotonic() < deadline:
        left = find()
        if not left:
            return False
        _signal_all((p.pid for p in left if (p.pid, p.start_ticks) not in termed), signal.SIGTERM)
        termed |= {(p.pid, p.start_ticks) for p in left}
        time.sleep(0.2)
    for _ in range(50):
        left = find()
        if not left:
            break
        _signal_all((p.pid for p in left), signal.SIGKILL)
        time.sleep(0.1)
    return True
