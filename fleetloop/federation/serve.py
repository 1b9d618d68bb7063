"""The deployment engine's servers as one launcher service (``flower``): a SuperLink and one SuperNode per vehicle.

One process (``python -m fleetloop.federation.serve``) starts, as its children:

- ``flower-superlink --insecure`` on ``settings.host:settings.flower_port`` (loopback by default: plain HTTP,
  never for a network), with runtime dependency installation switched off (the SuperLink would otherwise run
  ``uv sync`` on every run's app);
- one ``flower-supernode --insecure`` per vehicle in ``vehicles.json`` (``fleetloop fl serve`` writes it: the
  vehicle's id and the saved on-board buffer holding it, as the SuperNode's node config), each with its own free
  loopback port for its ClientApp runtime; SuperNodes never install dependencies either.

Every Flower process inherits the launcher's marker, so ``fleetloop down`` stops the whole tree (the
SuperExec and ClientApp / ServerApp processes Flower starts included). Health is a heartbeat file the process
rewrites while its SuperLink runs, with how many SuperNodes are alive; the process exits when the SuperLink does.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from fleetloop.platform.atomic import write_text_atomic
from fleetloop.platform.errors import SetupError
from fleetloop.platform.launcher import service_dir
from fleetloop.platform.services.spec import Health, ServiceSpec, heartbeat_file_health
from fleetloop.platform.settings import Settings, child_env, load_settings

__all__ = [
    "NAME",
    "SPEC",
    "ServedVehicle",
    "flower_env",
    "flower_home",
    "main",
    "read_vehicles",
    "superlink_address",
    "write_vehicles",
]

log = logging.getLogger(__name__)
NAME = "flower"
BEAT_S = 2.0  # [s] how often the process rewrites its heartbeat file
STALE_S = 15.0  # [s] older than this: unhealthy
SUPERLINK_START_S = 60.0  # [s] the SuperLink imports Flower and opens its port
_MARKER = "fleetloop.federation.serve"


@dataclass(frozen=True)
class ServedVehicle:
    """One SuperNode of ``fleetloop fl serve``: a vehicle and the saved on-board buffer holding it."""

    vehicle_id: int
    buffer_path: str


def superlink_address(settings: Settings) -> str:
    """``host:port`` of the SuperLink's HTTP APIs (Fleet, Control and ServerAppIo share it in Flower 1.42)."""
    return f"{settings.host}:{settings.flower_port}"


def flower_home(settings: Settings) -> Path:
    """Our own Flower home (``FLWR_HOME``): the SuperLink connection, the installed FABs."""
    return Path(settings.state_dir) / "federation" / "flower-home"


def flower_env(settings: Settings) -> dict[str, str]:
    """The environment of every Flower process we start: phone-home off, our Flower home, and this
    interpreter's scripts first on PATH (the SuperLink and SuperNodes start ``flower-superexec`` by name)."""
    scripts = str(Path(sys.executable).parent)
    return child_env(
        settings, {"FLWR_HOME": str(flower_home(settings)), "PATH": scripts + os.pathsep + os.environ.get("PATH", "")}
    )


def vehicles_path(settings: Settings) -> Path:
    return service_dir(settings, NAME) / "vehicles.json"


def beat_path(settings: Settings) -> Path:
    return service_dir(settings, NAME) / "heartbeat"


def write_vehicles(settings: Settings, vehicles: list[ServedVehicle]) -> None:
    """The vehicles the next start serves, one SuperNode each (a buffer path must be a plain path: Flower's node
    config takes no quote or space)."""
    for v in vehicles:
        if any(c in v.buffer_path for c in " \"'="):
            raise SetupError(
                f"the buffer path {v.buffer_path!r} holds a space, quote or '=', which a SuperNode's node config "
                "cannot carry; use a state directory (FLEETLOOP_STATE_DIR) without them"
            )
    vehicles_path(settings).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(vehicles_path(settings), json.dumps([v.__dict__ for v in vehicles], indent=1))


def read_vehicles(settings: Settings) -> list[ServedVehicle]:
    """The vehicles the service serves (empty when ``fleetloop fl serve`` never wrote them)."""
    path = vehicles_path(settings)
    if not path.exists():
        return []
    return [ServedVehicle(int(v["vehicle_id"]), str(v["buffer_path"])) for v in json.loads(path.read_text())]


def flower_health(settings: Settings) -> Health:
    """Healthy while the heartbeat (written only while the SuperLink runs) is younger than ``STALE_S``."""
    h = heartbeat_file_health(beat_path(settings), STALE_S)
    if not h.ok:
        return h
    try:
        nodes = beat_path(settings).read_text().split()[-1]
    except (OSError, IndexError):
        nodes = "?"
    return Health(True, f"{h.detail}; SuperNodes alive {nodes}")


def _command(settings: Settings, folder: Path) -> list[str]:
    return [sys.executable, "-m", _MARKER]


SPEC = ServiceSpec(
    name=NAME,
    description="Flower SuperLink and one SuperNode per vehicle (deployment engine; insecure, loopback only)",
    address=superlink_address,
    is_external=lambda s: False,
    ports=lambda s: [s.flower_port],
    command=_command,
    health=flower_health,
    cmdline_marker=_MARKER,
    autostart=False,  # started by `fleetloop fl serve` (or `fleetloop up flower` with the vehicles it wrote)
)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def _scripts(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def superlink_command(settings: Settings) -> list[str]:
    return [
        _scripts("flower-superlink"),
        "--insecure",  # plain HTTP: bound to settings.host, loopback unless the operator changed it
        "--host",
        settings.host,
        "--port",
        str(settings.flower_port),
        "--disable-runtime-dependency-installation",
    ]


def supernode_command(settings: Settings, vehicle: ServedVehicle, port: int) -> list[str]:
    return [
        _scripts("flower-supernode"),
        "--insecure",
        "--superlink",
        superlink_address(settings),
        "--host",
        settings.host,
        "--port",
        str(port),
        "--node-config",
        f'vehicle-id={vehicle.vehicle_id} buffer-path="{vehicle.buffer_path}"',
    ]


def main() -> int:
    """Run the SuperLink and the SuperNodes until SIGTERM (or until the SuperLink ends)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_settings()
    vehicles = read_vehicles(settings)
    env = flower_env(settings)
    stopping = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    children: list[subprocess.Popen[bytes]] = []
    superlink = subprocess.Popen(superlink_command(settings), env=env, stdin=subprocess.DEVNULL)
    children.append(superlink)
    deadline = time.monotonic() + SUPERLINK_START_S
    while not _answers(settings.host, settings.flower_port):
        if superlink.poll() is not None or time.monotonic() > deadline or stopping:
            log.error("the SuperLink did not open %s", superlink_address(settings))
            return _stop(children, 1)
        time.sleep(0.5)
    for v in vehicles:
        cmd = supernode_command(settings, v, _free_port(settings.host))
        children.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL))
    log.info("SuperLink at %s, %d SuperNode(s): vehicles %s", superlink_address(settings), len(vehicles),
             [v.vehicle_id for v in vehicles])  # fmt: skip
    beat = beat_path(settings)
    while not stopping and superlink.poll() is None:
        alive = sum(c.poll() is None for c in children[1:])
        write_text_atomic(beat, f"{time.time():.3f} {alive}/{len(vehicles)}\n")
        time.sleep(BEAT_S)
    beat.unlink(missing_ok=True)
    return _stop(children, 0 if stopping else 1)


def _stop(children: list[subprocess.Popen[bytes]], code: int) -> int:
    """SIGTERM the SuperNodes, then the SuperLink; what outlives 10 s the launcher's stop finishes."""
    for c in reversed(children):
        if c.poll() is None:
            c.terminate()
    deadline = time.monotonic() + 10.0
    for c in children:
        try:
            c.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
    return code


if __name__ == "__main__":
    sys.exit(main())
