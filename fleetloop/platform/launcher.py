"""A generic service launcher: start, health-check, stop and purge local services under the state directory.

A service is a :class:`~fleetloop.platform.services.spec.ServiceSpec` value (name, command, address,
real-protocol health check, metrics port). The verbs take the specs to act on, in start order: the CLI builds
the stack's list (``fleetloop.cli.services``) and hands it over, so later parts (the release server, Prometheus,
the canary controller) join by one entry in that list, and nothing is registered as an import side effect.

State layout, per service::

    <state_dir>/services/<name>/process.json   pid, process group, address, start time (present while up)
    <state_dir>/services/<name>/service.log    stdout + stderr of the process
    <state_dir>/services/<name>/data/          what ``down --purge`` deletes, along with the rest of the folder

Each service runs in its own session (process group), so ``down`` can stop children that outlive a plain
SIGTERM to the parent (MLflow's workers, for example).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fleetloop.platform.atomic import write_text_atomic
from fleetloop.platform.errors import NotFoundError, ServiceUnavailable, SetupError
from fleetloop.platform.services.spec import Health, ServiceSpec
from fleetloop.platform.settings import Settings, child_env

__all__ = [
    "ServiceStatus",
    "StopResult",
    "down",
    "select",
    "service_dir",
    "status",
    "up",
]


@dataclass
class ServiceStatus:
    """What ``status`` reports for one service."""

    name: str
    state: str  # running | stopped | external | unhealthy | crashed
    healthy: bool
    address: str
    pid: int | None = None
    started_at: str | None = None
    metrics_port: int | None = None
    detail: str = ""
    log: str | None = None
    required: bool = True  # part of the stack `fleetloop up` starts (on-demand services are not)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # started by this process, reaped on stop


def select(specs: Sequence[ServiceSpec], names: Iterable[str]) -> list[ServiceSpec]:
    """The specs named in ``names``, in the order of ``specs`` (the start order); unknown names are an error."""
    known = [s.name for s in specs]
    wanted = set(names)
    unknown = sorted(wanted - set(known))
    if unknown:
        raise NotFoundError(f"unknown service(s) {unknown}; known: {', '.join(known)}")
    return [s for s in specs if s.name in wanted]


def service_dir(settings: Settings, name: str) -> Path:
    """A service's folder: ``<state_dir>/services/<name>``."""
    return settings.state_dir / "services" / name


# -- process bookkeeping --------------------------------------------------------------------------


def _record_path(settings: Settings, name: str) -> Path:
    return service_dir(settings, name) / "process.json"


def _read_record(settings: Settings, name: str) -> dict[str, object] | None:
    path = _record_path(settings, name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a torn record is treated as absent; the process check below decides
    return data if isinstance(data, dict) else None


def _write_record(settings: Settings, name: str, record: dict[str, object]) -> None:
    write_text_atomic(_record_path(settings, name), json.dumps(record, indent=2))


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)


def _alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs and is the process we started (its command line has ``marker``)."""
    _reap(pid)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # zombie: exited, not yet reaped by its parent
        return False
    return marker in cmdline


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left in the group count as gone.
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(stat[2]) == pgid and stat[0] != "Z":
            return True
    return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


# -- the three verbs ------------------------------------------------------------------------------


def _status_one(settings: Settings, spec: ServiceSpec) -> ServiceStatus:
    address = spec.address(settings)
    if spec.is_external(settings):
        h = spec.health(settings)
        return ServiceStatus(spec.name, "external", h.ok, address, detail=h.detail)
    rec = _read_record(settings, spec.name)
    log = str(service_dir(settings, spec.name) / "service.log")
    if rec is None:
        return ServiceStatus(spec.name, "stopped", False, address, log=log)
    pid = int(str(rec["pid"]))
    if not _alive(pid, spec.cmdline_marker):
        return ServiceStatus(
            spec.name, "crashed", False, address, pid=pid, started_at=str(rec.get("started_at")),
            detail="the process is gone; see its log, then run `fleetloop up` again", log=log,
        )  # fmt: skip
    h = spec.health(settings)
    return ServiceStatus(
        spec.name,
        "running" if h.ok else "unhealthy",
        h.ok,
        address,
        pid=pid,
        started_at=str(rec.get("started_at")),
        metrics_port=spec.metrics_port(settings),
        detail=h.detail,
        log=log,
    )


def status(settings: Settings, specs: Sequence[ServiceSpec]) -> list[ServiceStatus]:
    """Ask each service how it is, with a real protocol call."""
    out = []
    for spec in specs:
        st = _status_one(settings, spec)
        st.required = spec.autostart
        out.append(st)
    return out


def _wait_healthy(settings: Settings, spec: ServiceSpec, proc: subprocess.Popen[bytes], log: Path) -> Health:
    deadline = time.monotonic() + settings.startup_timeout_s
    last = Health(False, "not checked yet")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceUnavailable(
                f"{spec.name} exited with code {proc.returncode} while starting; last lines of {log}:\n"
                + _log_tail(log)
            )
        last = spec.health(settings)
        if last.ok:
            return last
        time.sleep(0.5)
    _stop_group(proc.pid, settings.stop_timeout_s)
    raise ServiceUnavailable(
        f"{spec.name} did not become healthy within {settings.startup_timeout_s:.0f} s ({last.detail}); "
        f"it was stopped. Raise FLEETLOOP_STARTUP_TIMEOUT_S on a slow machine. Last lines of {log}:\n" + _log_tail(log)
    )


def _start_one(settings: Settings, spec: ServiceSpec) -> ServiceStatus:
    current = _status_one(settings, spec)
    if current.state == "external":
        if not current.healthy:
            raise ServiceUnavailable(
                f"{spec.name} is configured to use an existing service at {current.address}, which does not "
                f"answer ({current.detail}); start it, or unset the setting to let `fleetloop up` run one"
            )
        return current
    if current.state == "running":
        return current  # `up` twice is a no-op
    if current.state == "unhealthy":
        # Ours and alive but not answering (still starting, or wedged): give it the startup window.
        deadline = time.monotonic() + settings.startup_timeout_s
        while time.monotonic() < deadline:
            h = spec.health(settings)
            if h.ok:
                return _status_one(settings, spec)
            time.sleep(0.5)
        raise ServiceUnavailable(
            f"{spec.name} (pid {current.pid}) runs but does not answer: {current.detail}; "
            "run `fleetloop down` and `fleetloop up` again"
        )
    busy = [p for p in spec.ports(settings) if not _port_free(settings.host, p)]
    if busy:
        raise SetupError(
            f"port(s) {busy} on {settings.host} needed by {spec.name} are in use by another process; "
            f"stop that process or choose other ports (see `fleetloop config show` for the {spec.name} settings)"
        )
    folder = service_dir(settings, spec.name)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    if spec.prepare is not None:
        spec.prepare(settings, folder)
    cmd = spec.command(settings, folder)
    log = folder / "service.log"
    with open(log, "ab") as out:
        out.write(f"\n=== {datetime.now(UTC).isoformat()} starting: {' '.join(cmd)}\n".encode())
        out.flush()
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(settings, spec.extra_env(settings)),
                start_new_session=True,  # its own process group: `down` signals the whole group
            )
        except FileNotFoundError as e:
            raise SetupError(f"cannot run {cmd[0]!r} for {spec.name}: {e}") from e
    _CHILDREN[proc.pid] = proc
    _write_record(
        settings,
        spec.name,
        {
            "pid": proc.pid,
            "pgid": proc.pid,
            "address": spec.address(settings),
            "command": cmd,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    try:
        health = _wait_healthy(settings, spec, proc, log)
    except BaseException:
        _stop_group(proc.pid, settings.stop_timeout_s)
        _record_path(settings, spec.name).unlink(missing_ok=True)
        raise
    note = spec.post_start(settings) if spec.post_start is not None else None
    result = _status_one(settings, spec)
    result.detail = health.detail + (f"; {note}" if note else "")
    return result


def up(
    settings: Settings,
    specs: Sequence[ServiceSpec],
    on_event: Callable[[str, str], None] | None = None,
) -> list[ServiceStatus]:
    """Start each service, in the order given, unless it is already healthy; wait until each answers."""
    out = []
    for spec in specs:
        if on_event:
            on_event(spec.name, "starting")
        st = _start_one(settings, spec)
        if on_event:
            on_event(spec.name, st.state)
        out.append(st)
    return out


def _stop_group(pgid: int, timeout_s: float) -> bool:
    """SIGTERM the group, wait, then SIGKILL what is left. Returns True if it had to kill."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pgid)
        if not _group_alive(pgid):
            return False
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    for _ in range(50):
        _reap(pgid)
        if not _group_alive(pgid):
            break
        time.sleep(0.1)
    return True


@dataclass
class StopResult:
    """What ``down`` did to one service."""

    name: str
    action: str  # stopped | killed | not-running | external
    purged: list[str] = field(default_factory=list)


def down(settings: Settings, specs: Sequence[ServiceSpec], purge: bool = False) -> list[StopResult]:
    """Stop each service's whole process group, in reverse order; with ``purge`` also delete its folder."""
    results = []
    for spec in reversed(specs):
        if spec.is_external(settings):
            results.append(StopResult(spec.name, "external"))
            continue
        rec = _read_record(settings, spec.name)
        action = "not-running"
        if rec is not None:
            pgid = int(str(rec.get("pgid", rec["pid"])))
            if _group_alive(pgid):
                action = "killed" if _stop_group(pgid, settings.stop_timeout_s) else "stopped"
            child = _CHILDREN.pop(int(str(rec["pid"])), None)
            if child is not None:  # started by this process: reap it, so no zombie outlives `down`
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=5)
            _record_path(settings, spec.name).unlink(missing_ok=True)
        res = StopResult(spec.name, action)
        folder = service_dir(settings, spec.name)
        if purge and folder.exists():
            shutil.rmtree(folder)
            res.purged.append(str(folder))
        results.append(res)
    return results
