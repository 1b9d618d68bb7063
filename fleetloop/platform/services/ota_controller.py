"""The rollout controller of the local stack (``ota-controller``): canary rollouts judged on the fleet's heartbeats.

One process (``python -m fleetloop.platform.services.ota_controller``) runs
:class:`~fleetloop.platform.canary.service.ControllerService` against the stack's Kafka and MLflow and the release
repository under the state directory, until SIGTERM (``fleetloop down``): the cycle in hand finishes, its records
are written and its offsets committed. Started on demand (``fleetloop up ota-controller``, or by
``fleetloop ota rollout``), not by a plain ``fleetloop up``.

Health is a heartbeat file: the process rewrites ``<state>/services/ota-controller/heartbeat`` every
``BEAT_S`` from a thread of its own; healthy while it is younger than ``STALE_S``. Metrics go to a free loopback
port registered under ``<state_dir>/metrics/targets`` (``fleetloop_rollout_*``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

from fleetloop.platform.bus.loop import StopFlag, stop_on_signals
from fleetloop.platform.canary.service import ControllerConfig, ControllerService
from fleetloop.platform.launcher import service_dir
from fleetloop.platform.metrics import start_exporter
from fleetloop.platform.registry import open_registry
from fleetloop.platform.services.spec import Health, ServiceSpec, beat_heartbeat_file, heartbeat_file_health, stack_env
from fleetloop.platform.settings import Settings, load_settings

__all__ = ["BEAT_S", "NAME", "SPEC", "STALE_S", "controller_health", "main"]

log = logging.getLogger(__name__)
NAME = "ota-controller"
BEAT_S = 2.0  # [s] how often the process rewrites its heartbeat file
STALE_S = 15.0  # [s] older than this: unhealthy
_MARKER = "fleetloop.platform.services.ota_controller"


def beat_path(settings: Settings) -> Path:
    return service_dir(settings, NAME) / "heartbeat"


def controller_health(settings: Settings) -> Health:
    """Healthy while the process's heartbeat file is younger than ``STALE_S``."""
    return heartbeat_file_health(beat_path(settings), STALE_S)


def _command(settings: Settings, folder: Path) -> list[str]:
    return [sys.executable, "-m", _MARKER]


SPEC = ServiceSpec(
    name=NAME,
    description="canary rollout controller (judges waves on the fleet's heartbeats; signs waves, rolls back)",
    address=lambda s: "consumer group fleetloop-ota-controller",
    is_external=lambda s: False,
    ports=lambda s: [],
    command=_command,
    health=controller_health,
    cmdline_marker=_MARKER,
    extra_env=stack_env,
    autostart=False,  # started by `fleetloop ota rollout` or `fleetloop up ota-controller`
)


def main(argv: list[str] | None = None) -> None:
    """Run the controller until SIGTERM / Ctrl-C (settings from the environment)."""
    parser = argparse.ArgumentParser(prog=f"python -m {_MARKER}", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--evaluate-every-s",
        type=float,
        default=ControllerConfig.evaluate_every_s,
        help="wall seconds between evaluations (default %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ota-controller %(message)s")
    settings = load_settings()
    stop = StopFlag()
    with stop_on_signals(stop):  # SIGTERM / Ctrl-C set it without a lock (safe in a signal handler)
        beat = threading.Thread(target=beat_heartbeat_file, args=(beat_path(settings), stop, BEAT_S), daemon=True)
        beat.start()
        exporter = start_exporter(settings, NAME)
        service = ControllerService(
            settings, open_registry(settings), ControllerConfig(evaluate_every_s=args.evaluate_every_s)
        )
        log.info("judging rollouts from %s; metrics at %s", settings.bootstrap_servers, exporter.url)
        try:
            service.run(stop)
        finally:
            stop.set()
            exporter.close()


if __name__ == "__main__":
    main()
