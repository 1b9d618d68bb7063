"""`fleetloop pipeline serve`: the data-loop stages as unattended services of the launcher.

Each stage (collect, groundtruth, label, train, validate) is a service ``pipeline-<stage>``: its own process
(``python -m fleetloop.pipelines.serve STAGE``), its own consumer group, running until stopped (``fleetloop down``
sends SIGTERM; the stage shells finish the batch in hand, seal and commit). The stages hand off through pipeline
events on Kafka, so a candidate is produced whenever enough new data has arrived: train runs on every
``labels.ready`` but trains only once ``min_new_frames`` valid labelled frames not yet trained on have piled up
(below that it says so and keeps them for the next event).

Health is a heartbeat: the process rewrites ``<state>/services/pipeline-<stage>/heartbeat`` every
``HEARTBEAT_S`` from a thread of its own; the launcher checks the process is alive (pid + command line) and the
heartbeat is younger than ``STALE_S``. A stage busy training or validating keeps beating; a hung interpreter or
a dead process does not.

:func:`stage_specs` builds the stages' service specs; the CLI puts them in the stack's list and hands that to the
launcher (``platform`` cannot import ``pipelines``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetloop.platform.launcher import service_dir
from fleetloop.platform.logs import bind_log_context, configure_logging
from fleetloop.platform.metrics import start_exporter
from fleetloop.platform.services.spec import Health, ServiceSpec, beat_heartbeat_file, heartbeat_file_health, stack_env

if TYPE_CHECKING:
    from fleetloop.platform.settings import Settings

__all__ = [
    "HEARTBEAT_S",
    "SERVE_STAGES",
    "STALE_S",
    "heartbeat_health",
    "heartbeat_path",
    "serve_stage",
    "service_name",
    "stage_specs",
]

SERVE_STAGES = ("collect", "groundtruth", "label", "train", "validate")
HEARTBEAT_S = 2.0  # [s] how often a stage process rewrites its heartbeat
STALE_S = 15.0  # [s] a heartbeat older than this is unhealthy
_MARKER = "fleetloop.pipelines.serve"


def service_name(stage: str) -> str:
    return f"pipeline-{stage}"


def heartbeat_path(settings: Settings, stage: str) -> Path:
    return service_dir(settings, service_name(stage)) / "heartbeat"


def heartbeat_health(settings: Settings, stage: str) -> Health:
    """Healthy when the stage's heartbeat is younger than ``STALE_S``."""
    return heartbeat_file_health(heartbeat_path(settings, stage), STALE_S)


def serve_stage(settings: Settings, stage: str, *, min_new_frames: int | None = None, stop: Any = None) -> Any:
    """Run one stage until stopped (SIGTERM / Ctrl-C or ``stop``), beating the heartbeat; returns its report."""
    if stage not in SERVE_STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(SERVE_STAGES)}")
    start_exporter(settings, service_name(stage), labels={"stage": stage})
    bind_log_context(stage=stage)
    done = threading.Event()
    beat = threading.Thread(
        target=beat_heartbeat_file, args=(heartbeat_path(settings, stage), done, HEARTBEAT_S), daemon=True
    )
    beat.start()
    try:
        # Each stage is imported in its own process only: importing them all costs torch (~6 s measured) in
        # every process that merely lists the services.
        if stage == "collect":
            from fleetloop.pipelines.collect import run_collect

            return run_collect(settings, idle_timeout_s=None, stop=stop)
        if stage == "groundtruth":
            from fleetloop.pipelines.ground_truth import run_ground_truth

            return run_ground_truth(settings, idle_timeout_s=None)  # stops on SIGTERM / Ctrl-C
        if stage == "label":
            from fleetloop.pipelines.label import run_label

            return run_label(settings, idle_timeout_s=None, stop=stop)
        if stage == "train":
            from fleetloop.pipelines.train import TrainConfig, run_train_stage

            cfg = TrainConfig() if min_new_frames is None else TrainConfig(min_frames=min_new_frames)
            return run_train_stage(settings, cfg, idle_timeout_s=None, stop=stop)
        from fleetloop.pipelines.validate import run_validate_stage

        return run_validate_stage(settings, idle_timeout_s=None, stop=stop)
    finally:
        done.set()
        beat.join(timeout=HEARTBEAT_S + 1)


def _spec(stage: str, min_new_frames: int | None) -> ServiceSpec:
    def command(settings: Settings, folder: Path) -> list[str]:
        cmd = [sys.executable, "-m", _MARKER, stage]
        return cmd + (["--min-new-frames", str(min_new_frames)] if min_new_frames is not None else [])

    return ServiceSpec(
        name=service_name(stage),
        description=f"data-loop stage {stage} (consumer group fleetloop-{stage})",
        address=lambda s: f"consumer group fleetloop-{stage}",
        is_external=lambda s: False,
        ports=lambda s: [],
        command=command,
        health=lambda s: heartbeat_health(s, stage),
        cmdline_marker=f"{_MARKER} {stage}",
        extra_env=stack_env,
        autostart=False,  # started by `fleetloop pipeline serve`, not by `fleetloop up`
    )


def stage_specs(min_new_frames: int | None = None) -> list[ServiceSpec]:
    """A launcher service per stage, in loop order (start them after Kafka and MLflow); started on demand by
    ``fleetloop pipeline serve``, not by a plain ``fleetloop up``."""
    return [_spec(st, min_new_frames) for st in SERVE_STAGES]


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m fleetloop.pipelines.serve STAGE``: one stage process (settings from the environment)."""
    import argparse

    from fleetloop.platform.settings import load_settings

    p = argparse.ArgumentParser(prog=f"python -m {_MARKER}", description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=SERVE_STAGES)
    p.add_argument("--min-new-frames", type=int, default=None, help="train only once this many new labelled frames")
    args = p.parse_args(argv)
    configure_logging(process=service_name(args.stage))  # FLEETLOOP_LOG_FORMAT, inherited from `fleetloop`
    report = serve_stage(load_settings(), args.stage, min_new_frames=args.min_new_frames)
    print(getattr(report, "as_dict", lambda: report)(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
