"""A generic service launcher: start, health-check, stop and purge local services under the state directory.

A service is a :class:`~fleetloop.platform.services.spec.ServiceSpec` value (name, command, address,
real-protocol health check, metrics port). The verbs take the specs to act on, in start order: the CLI builds
the stack's list (``fleetloop.cli.services``) and hands it over, so later parts (the release server, Prometheus,
the canary controller) join by one entry in that list, and nothing is registered as an import side effect.

State layout, per service::

    <state_dir>/services/<name>/process.json   pid, start time, process group, marker, address (present while up)
    <state_dir>/services/<name>/service.log    stdout + stderr of the process
    <state_dir>/services/<name>/data/          what ``down --purge`` deletes, along with the rest of the folder

The launcher owns each service's whole process tree: the service starts in its own session, and a marker in its
environment (``fleetloop.platform.process_tree``) follows every descendant, even one that leaves the group or
outlives the main process (MLflow's uvicorn worker, for example). ``down`` stops the whole tree; ``status``
calls a tree whose main process is gone "half-dead"; ``up`` stops such a tree before it starts the service
again. ``up`` also restarts a running service that runs fleetloop's own code (the release server, the rollout
controller) when that code changed since it started (``code`` in process.json, a digest of the package's
sources): an updated CLI must not talk to a controller of the previous release. A process without the marker is
never signalled (docs/adr/0005). Every message that describes a state to fix names the command that fixes it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fleetloop.platform import process_tree
from fleetloop.platform.atomic import write_text_atomic
from fleetloop.platform.errors import NotFoundError, ServiceUnavailable, SetupError
from fleetloop.platform.process_tree import MARKER_VARIABLE, Proc
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
    state: str  # running | stopped | external | unhealthy | half-dead | crashed
    healthy: bool
    address: str
    pid: int | None = None
    started_at: str | None = None
    metrics_port: int | None = None
    detail: str = ""
    log: str | None = None
    required: bool = True  # part of the stack `fleetloop up` starts (on-demand services are not)
    orphans: list[int] = field(default_factory=list)  # half-dead: processes of its tree left without their main one

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # started by this process, reaped once they exit


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


def _up_hint(spec: ServiceSpec) -> str:
    return f"`fleetloop up {spec.name}`"


def _down_hint(spec: ServiceSpec) -> str:
    return f"`fleetloop down {spec.name}`"


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
        return None  # a torn record is treated as absent; the marker scan still finds the processes
    return data if isinstance(data, dict) else None


def _write_record(settings: Settings, name: str, record: dict[str, object]) -> None:
    write_text_atomic(_record_path(settings, name), json.dumps(record, indent=2))


def _reap_finished() -> None:
    """Collect the exit status of the services this process started that have exited (no zombie outlives them)."""
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]


def _marker(settings: Settings, spec: ServiceSpec) -> str:
    return process_tree.marker_value(spec.name, settings.state_dir)


def _recorded_groups(rec: dict[str, object] | None) -> list[int]:
    """Process groups that are ours by the record alone: that of a service started before the marker existed,
    and that of a main process this process started and has not reaped (its pid cannot be reused meanwhile;
    right after exec its marker may not be readable yet)."""
    if rec is None or ("marker" in rec and int(str(rec["pid"])) not in _CHILDREN):
        return []
    return [int(str(rec.get("pgid", rec["pid"])))]


def _tree(
    settings: Settings, spec: ServiceSpec, rec: dict[str, object] | None, procs: list[Proc] | None = None
) -> list[Proc]:
    """Every live process of the service's tree (from ``procs``, else a fresh look at /proc)."""
    if procs is None:
        _reap_finished()
        procs = process_tree.snapshot()
    return process_tree.owned(procs, _marker(settings, spec), _recorded_groups(rec))


def _main_alive(rec: dict[str, object], spec: ServiceSpec) -> bool:
    """True while the recorded main process runs: the same pid with the same start time (a recycled pid has
    another); a record from before start times were kept is checked by the command line instead."""
    pid = int(str(rec["pid"]))
    ticks = process_tree.start_ticks(pid)
    if ticks is None:
        return False
    if "start_ticks" in rec:
        return ticks == int(str(rec["start_ticks"]))
    return spec.cmdline_marker in process_tree.command_of(pid, limit=100_000)


def _stop_tree(settings: Settings, spec: ServiceSpec, rec: dict[str, object] | None) -> tuple[list[int], bool]:
    """SIGTERM the service's whole tree, SIGKILL what outlives the grace period; returns the pids found and
    whether any had to be killed."""
    found = [p.pid for p in _tree(settings, spec, rec)]
    killed = bool(found) and process_tree.stop(lambda: _tree(settings, spec, rec), settings.stop_timeout_s)
    _reap_finished()
    return found, killed


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


def _append_log(log: Path, line: str) -> None:
    with open(log, "a") as out:
        out.write(f"\n=== {datetime.now(UTC).isoformat()} {line}\n")


# -- what a state means and which command fixes it ------------------------------------------------


def _describe(pids: Sequence[int], shown: int = 3) -> str:
    named = ", ".join(f"pid {p} ({process_tree.command_of(p, 60)})" for p in pids[:shown])
    return named + (f" and {len(pids) - shown} more" if len(pids) > shown else "")


def _half_dead_detail(settings: Settings, spec: ServiceSpec, main_pid: int | None, tree: Sequence[Proc]) -> str:
    pids = [p.pid for p in tree]
    held = [port for port in spec.ports(settings) if process_tree.listening_pids(port, settings.host, among=pids)]
    main = f"its main process (pid {main_pid}) is gone" if main_pid is not None else "no main process is recorded"
    ports = f" and hold port {', '.join(map(str, held))}" if held else ""
    return (
        f"{main}, but {len(pids)} process(es) it started still run: {_describe(pids)}{ports}; "
        f"run {_up_hint(spec)} to stop them and start it again (or {_down_hint(spec)} to only stop them)"
    )


def _external_fix(spec: ServiceSpec) -> str:
    return (
        f"start it, or unset the setting that points {spec.name} there (see `fleetloop config show`) "
        f"to let {_up_hint(spec)} run one"
    )


def _port_setting(settings: Settings, port: int) -> str:
    """How to give a service another port: the setting that chose ``port``."""
    names = [k for k, v in settings.model_dump().items() if k.endswith("_port") and v == port]
    if not names:
        return "change the port in its settings"
    return f"set FLEETLOOP_{names[0].upper()} (or {names[0]} in the config file) to a free port"


def _holder(pid: int) -> str:
    marker = process_tree.marker_of(pid)
    if marker is None:
        return f"pid {pid} ({process_tree.command_of(pid, 60)}), which fleetloop did not start"
    name, _, state_dir = marker.partition("@")
    return (
        f"pid {pid}, service {name} of the fleetloop stack under {state_dir} "
        f"(stop it with `FLEETLOOP_STATE_DIR={state_dir} fleetloop down {name}`)"
    )


def _port_in_use(settings: Settings, spec: ServiceSpec, port: int) -> SetupError:
    holders = process_tree.listening_pids(port, settings.host)
    who = "; ".join(_holder(p) for p in holders) if holders else "a process this user cannot see"
    return SetupError(
        f"port {port} on {settings.host}, which {spec.name} needs, is in use by another process: {who}. "
        f"Stop that process (find it with `ss -ltnp 'sport = :{port}'` or `lsof -iTCP:{port} -sTCP:LISTEN`), "
        f"or {_port_setting(settings, port)}; `fleetloop config show` lists the settings. "
        f"Then run {_up_hint(spec)} again"
    )


# -- the three verbs ------------------------------------------------------------------------------


def _status_one(settings: Settings, spec: ServiceSpec, procs: list[Proc]) -> ServiceStatus:
    address = spec.address(settings)
    if spec.is_external(settings):
        h = spec.health(settings)
        return ServiceStatus(
            spec.name, "external", h.ok, address, detail=h.detail if h.ok else f"{h.detail}; {_external_fix(spec)}"
        )
    rec = _read_record(settings, spec.name)
    log = service_dir(settings, spec.name) / "service.log"
    pid = int(str(rec["pid"])) if rec is not None else None
    started_at = str(rec.get("started_at")) if rec is not None else None
    if rec is not None and _main_alive(rec, spec):
        h = spec.health(settings)
        detail = h.detail if h.ok else (
            f"{h.detail}; if it stays so, see {log}, then run {_down_hint(spec)} and {_up_hint(spec)}"
        )  # fmt: skip
        return ServiceStatus(
            spec.name,
            "running" if h.ok else "unhealthy",
            h.ok,
            address,
            pid=pid,
            started_at=started_at,
            metrics_port=spec.metrics_port(settings),
            detail=detail,
            log=str(log),
        )
    tree = _tree(settings, spec, rec, procs)
    if tree:
        return ServiceStatus(
            spec.name, "half-dead", False, address, pid=pid, started_at=started_at,
            detail=_half_dead_detail(settings, spec, pid, tree), log=str(log), orphans=[p.pid for p in tree],
        )  # fmt: skip
    if rec is not None:
        return ServiceStatus(
            spec.name, "crashed", False, address, pid=pid, started_at=started_at,
            detail=f"its process (pid {pid}) exited and left none behind; see the end of {log}, "
            f"then run {_up_hint(spec)} to start it again",
            log=str(log),
        )  # fmt: skip
    start = "run `fleetloop up` to start it" if spec.autostart else f"on demand: {_up_hint(spec)} starts it"
    return ServiceStatus(spec.name, "stopped", False, address, detail=f"not running; {start}", log=str(log))


def status(settings: Settings, specs: Sequence[ServiceSpec]) -> list[ServiceStatus]:
    """Ask each service how it is, with a real protocol call; find what is left of the ones that are not."""
    _reap_finished()
    procs = process_tree.snapshot()  # one look at /proc for all services
    out = []
    for spec in specs:
        st = _status_one(settings, spec, procs)
        st.required = spec.autostart
        out.append(st)
    return out


def _wait_healthy(settings: Settings, spec: ServiceSpec, proc: subprocess.Popen[bytes], log: Path) -> Health:
    deadline = time.monotonic() + settings.startup_timeout_s
    last = Health(False, "not checked yet")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceUnavailable(
                f"{spec.name} exited with code {proc.returncode} while starting; fix what the last lines of {log} "
                f"name, then run {_up_hint(spec)} again:\n" + _log_tail(log)
            )
        last = spec.health(settings)
        if last.ok:
            return last
        time.sleep(0.5)
    raise ServiceUnavailable(
        f"{spec.name} did not become healthy within {settings.startup_timeout_s:.0f} s ({last.detail}); "
        f"it was stopped. On a slow machine raise FLEETLOOP_STARTUP_TIMEOUT_S and run {_up_hint(spec)} again; "
        f"last lines of {log}:\n" + _log_tail(log)
    )


def _wait_answering(settings: Settings, spec: ServiceSpec, current: ServiceStatus) -> ServiceStatus:
    """Ours and alive but not answering (still starting, or wedged): give it the startup window."""
    deadline = time.monotonic() + settings.startup_timeout_s
    while time.monotonic() < deadline:
        if spec.health(settings).ok:
            return status(settings, [spec])[0]
        time.sleep(0.5)
    # The detail names the fix (`down` then `up`): a wedged process is not stopped behind the user's back.
    raise ServiceUnavailable(
        f"{spec.name} (pid {current.pid}) runs but did not answer within {settings.startup_timeout_s:.0f} s: "
        + current.detail
    )


def _launch(settings: Settings, spec: ServiceSpec, folder: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = spec.command(settings, folder)
    env = child_env(settings, {**spec.extra_env(settings), MARKER_VARIABLE: _marker(settings, spec)})
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
                env=env,
                start_new_session=True,  # its own session and group, apart from the terminal's Ctrl-C
            )
        except FileNotFoundError as e:
            raise SetupError(
                f"cannot run {cmd[0]!r} for {spec.name}: {e}; install it or point its setting at it "
                f"(see `fleetloop config show`), then run {_up_hint(spec)}"
            ) from e
    _CHILDREN[proc.pid] = proc
    _write_record(
        settings,
        spec.name,
        {
            "pid": proc.pid,
            "start_ticks": process_tree.start_ticks(proc.pid) or 0,
            "pgid": proc.pid,
            "marker": _marker(settings, spec),
            "address": spec.address(settings),
            "command": cmd,
            "code": code_stamp() if runs_our_code(cmd) else None,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return proc


def runs_our_code(cmd: Sequence[str]) -> bool:
    """Whether a service's command runs a fleetloop module (``python -m fleetloop...``): an update changes it."""
    return any(a == "fleetloop" or a.startswith("fleetloop.") for a in cmd)


def code_stamp() -> str:
    """A digest of the fleetloop package's source files (path, size, modification time): it changes with an update
    or a checkout, and a service started before it runs the code it was started with."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _stale_code(record: dict[str, object] | None) -> str | None:
    """Why a running service of ours should be restarted (its record says it runs older fleetloop code), or None."""
    cmd = (record or {}).get("command")
    if not isinstance(cmd, list) or not runs_our_code([str(a) for a in cmd]):
        return None
    recorded = (record or {}).get("code")
    if recorded == code_stamp():
        return None
    return "its fleetloop code changed since it started" if recorded else "it was started by an older fleetloop"


def _start_one(settings: Settings, spec: ServiceSpec) -> ServiceStatus:
    (current,) = status(settings, [spec])
    if current.state == "external":
        if not current.healthy:
            raise ServiceUnavailable(
                f"{spec.name} is configured to use an existing service at {current.address}, which does not "
                f"answer ({current.detail})"
            )
        return current
    record = _read_record(settings, spec.name)
    # A controller of an older release refused a newer CLI's rollout policy: a running service of ours on older
    # code is restarted on the code now here.
    stale = _stale_code(record) if current.state == "running" else None
    if current.state == "running" and stale is None:
        return current  # `up` twice is a no-op
    if current.state == "unhealthy":
        return _wait_answering(settings, spec, current)
    folder = service_dir(settings, spec.name)
    log = folder / "service.log"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    cleaned: list[int] = []
    if stale is not None or current.state in ("half-dead", "crashed"):
        # What is left of an earlier run, or a run of older code, is ours (it carries our marker): stop it, so it
        # frees its ports.
        cleaned, _ = _stop_tree(settings, spec, record)
        _record_path(settings, spec.name).unlink(missing_ok=True)
        if stale is not None:
            _append_log(log, f"stopped {len(cleaned)} process(es) to restart: {stale}")
        elif cleaned:
            _append_log(log, f"stopped {len(cleaned)} process(es) left from an earlier run: {cleaned}")
    for port in spec.ports(settings):
        if not _port_free(settings.host, port):
            raise _port_in_use(settings, spec, port)
    if spec.prepare is not None:
        spec.prepare(settings, folder)
    proc = _launch(settings, spec, folder, log)
    try:
        health = _wait_healthy(settings, spec, proc, log)
    except BaseException:
        _stop_tree(settings, spec, _read_record(settings, spec.name))
        _record_path(settings, spec.name).unlink(missing_ok=True)
        raise
    note = spec.post_start(settings) if spec.post_start is not None else None
    (result,) = status(settings, [spec])
    result.detail = health.detail + (f"; {note}" if note else "") + (f"; restarted: {stale}" if stale else "")
    if cleaned and stale is None:
        result.detail += f"; first stopped {len(cleaned)} process(es) left from an earlier run ({cleaned})"
    return result


def up(
    settings: Settings,
    specs: Sequence[ServiceSpec],
    on_event: Callable[[str, str], None] | None = None,
) -> list[ServiceStatus]:
    """Start each service, in the order given, unless it is already healthy; wait until each answers.

    What is left of an earlier run of a service (a half-dead tree) is stopped first; a port held by a process
    that is not the service's own is an error that names the process and the setting to change.
    """
    out = []
    for spec in specs:
        if on_event:
            on_event(spec.name, "starting")
        st = _start_one(settings, spec)
        if on_event:
            on_event(spec.name, st.state)
        out.append(st)
    return out


@dataclass
class StopResult:
    """What ``down`` did to one service."""

    name: str
    action: str  # stopped | killed | not-running | external
    purged: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # the processes of its tree that were stopped


def down(settings: Settings, specs: Sequence[ServiceSpec], purge: bool = False) -> list[StopResult]:
    """Stop each service's whole process tree, in reverse order; with ``purge`` also delete its folder."""
    results = []
    for spec in reversed(specs):
        if spec.is_external(settings):
            results.append(StopResult(spec.name, "external"))
            continue
        pids, killed = _stop_tree(settings, spec, _read_record(settings, spec.name))
        _record_path(settings, spec.name).unlink(missing_ok=True)
        action = ("killed" if killed else "stopped") if pids else "not-running"
        res = StopResult(spec.name, action, pids=pids)
        folder = service_dir(settings, spec.name)
        if purge and folder.exists():
            shutil.rmtree(folder)
            res.purged.append(str(folder))
        results.append(res)
    return results
