"""`fleetloop sim run` and `fleetloop sim euroncap`: launch a fleet simulation; run the Euro NCAP CCR matrix.

The step functions (``resolve_model``, ``load_scenario``, ``simulate``, ``euroncap``) return JSON-ready results so
that the demo can compose them; the typer commands add the progress bar, the tables, ``--json``, the PNG plot,
the run record and the metrics exporter.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fleetloop.cli.output import console, emit, err_console
from fleetloop.cli.validate_args import ANY_INT, POSITIVE_FLOAT, POSITIVE_INT, SHARE
from fleetloop.edge_agent.buffer_store import (
    FRAME_BYTES,
    fleet_buffer_dir,
    prune_buffers,
    ring_bytes,
    ring_frames,
    shard_buffer_name,
)
from fleetloop.edge_agent.ota_shadow import shadow_rates
from fleetloop.edge_agent.telemetry import deliver_spooled
from fleetloop.edge_agent.telemetry_spool import TelemetrySpool
from fleetloop.platform.errors import DataError, NotFoundError, ServiceUnavailable, SetupError, UserInputError
from fleetloop.platform.logs import bind_log_context
from fleetloop.platform.registry import find_model_file, open_registry
from fleetloop.platform.runs import run_record
from fleetloop.platform.services.kafka import kafka_health
from fleetloop.platform.settings import Settings, load_settings

__all__ = ["app", "euroncap", "load_scenario", "require_broker", "require_delivered", "resolve_model", "simulate"]

app = typer.Typer(no_args_is_help=True)
log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")
CHUNK_TICKS = 10  # ticks between progress / metrics updates
DEFAULT_UPLOAD_BUDGET = 0.02  # share of frames a vehicle may upload (TriggerConfig.budget_fraction)
DEFAULT_HEARTBEAT_S = 10.0  # [s] simulated time between a vehicle's heartbeats (the canary judges them)


# -- inputs -----------------------------------------------------------------------------------------


def load_scenario(scenario: str) -> str | tuple[Any, ...]:
    """A family name, or a YAML file holding one scenario or a list of them (parsed here, validated by the sim)."""
    from fleetloop.sim import FAMILIES, ScenarioError, scenario_from_dict

    if scenario in FAMILIES:
        return scenario
    path = Path(scenario)
    if path.suffix.lower() not in (".yaml", ".yml") and not path.is_file():
        raise UserInputError(
            f"unknown scenario {scenario!r}; valid scenarios: {', '.join(FAMILIES)}, or a YAML file path"
        )
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise NotFoundError(f"cannot read scenario file {path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise UserInputError(f"scenario file {path} is not valid YAML: {e}") from e
    items = data if isinstance(data, list) else [data]
    try:
        return tuple(scenario_from_dict(d) for d in items)
    except ScenarioError as e:
        raise UserInputError(f"scenario file {path}: {e}") from e


def resolve_model(settings: Settings, model: str | None, fallback_only: bool, workdir: Path) -> tuple[str, Path] | None:
    """(version label, artifact path) of the model to drive with, or None for ``--fallback-only``.

    ``model`` is a local artifact path or a registry version; without it the registry's production version.
    """
    if fallback_only:
        if model:
            raise UserInputError("--fallback-only and --model exclude each other; give one")
        return None
    if model and (Path(model).exists() or not model.isdigit()):
        path = Path(model)
        if not path.exists():
            raise NotFoundError(f"model file {path} does not exist; give an artifact path or a registry version")
        found = find_model_file(path)
        return f"local:{found.stem}", found
    try:
        reg = open_registry(settings)
    except ServiceUnavailable as e:
        raise ServiceUnavailable(
            f"{e}; or drive without the registry: --model PATH (a local artifact) or --fallback-only"
        ) from e
    name = settings.model_name
    if model is None:
        try:
            version = reg.production(name).version
        except NotFoundError as e:
            raise NotFoundError(f"{e}; or drive with --fallback-only") from e
    else:
        version = str(int(model))
    return version, reg.download_model(name, version, workdir / f"v{version}")


# -- the run ----------------------------------------------------------------------------------------


def run_ticks(minutes: float, tick_s: float) -> int:
    """Ticks of ``tick_s`` (the world's tick, ``World.dt_s``) in ``minutes`` of simulated time (at least one)."""
    return max(1, round(minutes * 60.0 / tick_s))


def simulate(
    settings: Settings,
    *,
    vehicles: int,
    minutes: float,
    scenario: str = "mixed",
    weather: str = "clear",
    seed: int = 0,
    model: str | None = None,
    fallback_only: bool = False,
    inject: list[str] | None = None,
    device: str = "cpu",
    shards: int = 1,
    devices: int | None = None,
    backend: str = "processes",
    ray_address: str | None = None,
    telemetry: bool = True,
    fleet_tag: str = "",
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    fog_onset_s: float | None = None,
    triggers: Any | None = None,
    uploads: str = "triggers",
    upload_budget: float = DEFAULT_UPLOAD_BUDGET,
    compile: bool = False,
    ota: bool = False,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    buffer_seconds: float | None = None,
    stop_when: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run the fleet and return its summary (``FleetSummary.to_dict()`` plus what ran).

    ``on_start`` is called with the number of ticks to run (``minutes`` over the world's tick) before the first;
    ``on_progress`` with the summed tick reports of each chunk.

    ``fog_onset_s``: a fog bank rolls in over the whole road at this simulated time (``FleetConfig.fog_onset_s``).
    ``uploads``, ``upload_budget``: the vehicles' upload selection by name and its budget (share of frames;
    ``edge_agent.triggers.upload_policy``: triggers, valued, random). ``triggers``: a whole
    ``edge_agent.triggers.TriggerConfig`` instead (``FleetConfig.triggers``, honoured by every shard backend).
    ``compile``: the compiled tick (``FleetConfig.compile``, ADR 0101).
    ``ota``: the vehicles follow OTA commands from Kafka and install signed releases from the ota-repo service
    (``ota_spec``); their statuses go to ``fleetloop.ota-status`` and their counts to ``counts["ota"]``.
    ``heartbeat_s``: with telemetry, each vehicle's heartbeat goes to the fleet-health topic every this many
    simulated seconds (``FleetConfig.heartbeat_s``; docs/canary.md).
    ``buffer_seconds``: each vehicle's on-board ring holds this much driving and every shard saves it under the
    state directory for federated rounds (``persist_buffers``); None: the default ring, nothing saved.
    ``stop_when``: asked after each chunk of ticks; True ends the drive there (a rollout judged while the fleet
    drives: the drive lasts until its outcome, ``minutes`` at most).
    """
    from fleetloop.edge_agent.fleet import FleetConfig
    from fleetloop.edge_agent.shards import BACKENDS, ShardedFleet, ShardSpec, build_runner

    if vehicles < 1:
        raise UserInputError(f"--vehicles must be a positive count, got {vehicles}")
    if not minutes > 0 or not math.isfinite(minutes):
        raise UserInputError(f"--minutes must be a positive number, got {minutes}")
    if shards < 1:
        raise UserInputError(f"--shards must be a positive count, got {shards}")
    if device not in DEVICES:
        raise UserInputError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    if backend not in BACKENDS:
        raise UserInputError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserInputError("--device cuda: torch sees no CUDA device here; use --device cpu")
    scen = load_scenario(scenario)
    named = triggers is None
    if triggers is None:
        from fleetloop.edge_agent.triggers import upload_policy
        from fleetloop.sim import World

        triggers = upload_policy(uploads, upload_budget, World().dt_s)  # FleetConfigError (exit 2) says what is valid
    config = FleetConfig(  # raises FleetConfigError / FaultError (bad input, exit 2) saying what is valid
        scenario=scen,
        weather=weather,
        seed=seed,
        device=device,
        faults=tuple(inject or ()),
        fog_onset_s=fog_onset_s,
        triggers=triggers,
        compile=compile,
        heartbeat_s=heartbeat_s if telemetry else None,
    )
    config = persist_buffers(settings, config, buffer_seconds)
    backlog = telemetry_preflight(settings) if telemetry else None
    workdir = Path(settings.state_dir) / "sim" / "models"
    resolved = resolve_model(settings, model, fallback_only, workdir)
    paths = {} if resolved is None else {resolved[0]: str(resolved[1])}
    label = None if resolved is None else resolved[0]
    ticks = run_ticks(minutes, config.world().dt_s)
    bind_log_context(model_version=label or "fallback-only")  # for the rest of the run's record
    log.info("fleet simulation: %d vehicles, %d ticks, scenario %s, weather %s", vehicles, ticks, scenario, weather)
    spec = ShardSpec(
        config=config,
        vehicle_ids=tuple(range(vehicles)),
        model_paths=paths,
        initial_version=label,
        telemetry=settings.model_dump() if telemetry else None,
        fleet_tag=fleet_tag,
        ota=ota_spec(settings, fleet_tag) if ota else None,
    )
    if on_start:
        on_start(ticks)
    t0 = time.monotonic()
    if shards == 1 and backend == "processes":
        runner = build_runner(spec)
        done = 0
        while done < ticks:
            n = min(CHUNK_TICKS, ticks - done)
            before = runner.ticks
            reports = [runner.step() for _ in range(n)]
            done += runner.ticks - before
            if on_progress:
                on_progress({**_sum_reports(reports), "groups": runner.group_sums(), "hooks": runner.hook_counts()})
            if stop_when is not None and stop_when():
                break
        summary = runner.close()
    else:
        fleet = ShardedFleet(spec, shards, backend, ray_address, devices=devices)
        try:
            done = 0
            while done < ticks:
                n = min(CHUNK_TICKS, ticks - done)
                part = fleet.advance(n)
                done += n
                if on_progress:
                    on_progress(part)
                if stop_when is not None and stop_when():
                    break
            summary = fleet.close()
        except BaseException:
            if not fleet.closed:
                fleet.kill()
            raise
    wall = time.monotonic() - t0
    out = summary.to_dict()
    out["run"] = {
        "model": label or "fallback only",
        "model_path": None if resolved is None else str(resolved[1]),
        "scenario": scenario,
        "weather": weather,
        "seed": seed,
        "device": device,
        "shards": len(ShardedFleet.plan(spec, shards, backend)) if shards > 1 else 1,
        "backend": backend,
        "faults": list(inject or ()),
        "telemetry": telemetry,
        "ota": ota,
        "uploads": {"policy": uploads if named else "custom", "budget_fraction": triggers.budget_fraction},
        "wall_s": wall,
        "vehicle_steps_per_s": out["vehicle_steps"] / wall if wall > 0 else None,
    }
    shadow = out["counts"].get("ota", {}).get("shadow", {})
    if shadow.get("vehicle_ticks"):  # shadow mode's shares and means per condition class (sums: counts.ota.shadow)
        out["ota_shadow"] = shadow_rates(shadow)
    if telemetry:
        out["telemetry_delivery"] = delivery_report(settings, out["counts"].get("telemetry", {}), backlog)
    if config.buffer_save_dir is not None:
        out["buffers"] = buffers_report(config, ShardedFleet.plan(spec, shards, backend, devices))
    return out


def ota_spec(settings: Settings, fleet_tag: str) -> Any:
    """The vehicles' OTA settings for a run: the ota-repo service, the repository's root as the trust anchor they
    were built with, Kafka for commands and statuses, per-run work folder and consumer groups."""
    import uuid

    from fleetloop.edge_agent.ota_agent import OtaSpec
    from fleetloop.platform.releases.repository import ReleaseRepository
    from fleetloop.platform.services.ota_repo import ota_repo_url

    root = ReleaseRepository(settings.state_dir).metadata_dir / "1.root.json"
    if not root.exists():
        raise SetupError(
            f"--ota: no release repository in {root.parent.parent}; start it with `fleetloop up` "
            "(or `fleetloop ota keys init`)"
        )
    tag = fleet_tag or uuid.uuid4().hex[:8]
    return OtaSpec(
        model_name=settings.model_name,
        repo_url=ota_repo_url(settings),
        trusted_root=root.read_bytes(),
        work_dir=str(Path(settings.state_dir) / "sim" / "ota" / tag),
        bus=settings.model_dump(),
        group_tag=tag,
        vehicle_tag=fleet_tag,
    )


def _render_ota(ota: dict[str, Any]) -> None:
    """One line per part of the vehicles' OTA counts (``sim run --ota``)."""

    def join(d: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items())) or "none"

    f = ota.get("fetch", {})
    console.print(f"ota statuses: {join(ota.get('status', {}))}", highlight=False)
    if ota.get("rejected"):
        console.print(f"ota rejected: {join(ota['rejected'])}", highlight=False)
    if ota.get("rolled_back"):
        console.print(f"ota rolled back: {join(ota['rolled_back'])}", highlight=False)
    console.print(
        f"ota commands: {join(ota.get('commands', {}))}; fetches {f.get('jobs', 0):,} "
        f"({f.get('unavailable', 0):,} vehicle-fetches found the release server down, retried), "
        f"{f.get('vehicles_verified', 0):,} vehicles verified",
        highlight=False,
    )
    shadow = ota.get("shadow", {})
    if shadow.get("vehicle_ticks"):
        _render_shadow(shadow, ota.get("shadow_ended", {}))


def _render_shadow(shadow: dict[str, Any], ended_by: dict[str, int]) -> None:
    """Shadow mode's disagreement per condition class of the vehicles' own estimate."""
    per = shadow_rates(shadow)  # what --json carries as ota_shadow
    ended = ", ".join(f"ended {k} {v:,}" for k, v in sorted(ended_by.items()))
    console.print(
        f"ota shadow: {shadow['vehicle_ticks']:,} vehicle-ticks in shadow mode "
        f"({shadow.get('uncompared_vehicle_ticks', 0):,} with no model run to compare){'; ' + ended if ended else ''}",
        highlight=False,
    )
    table = Table(title="shadow mode: candidate vs active model, by the vehicles' own condition estimate")
    for col in ("condition", "compared ticks", "commands differ", "mean |Δaccel| m/s²", "mean |Δhazard|", "invalid"):
        table.add_column(col, justify="left" if col == "condition" else "right")
    for cond, r in per.items():
        if r["compared_ticks"] or cond == "all":
            table.add_row(
                cond,
                f"{int(r['compared_ticks']):,}",
                f"{r['differ_share']:.1%}",
                f"{r['accel_mae_mps2']:.3f}",
                f"{r['hazard_mae']:.3f}",
                f"{int(r['invalid_ticks']):,}",
            )
    console.print(table)


def _sum_reports(reports: list[Any]) -> dict[str, int]:
    keys = ("vehicle_steps", "collisions", "near_misses", "fallback_activations", "uploaded_frames")
    out = {k: sum(getattr(r, k) for r in reports) for k in keys}
    out["ticks"] = len(reports)
    return out


# -- on-board buffers for federated rounds ----------------------------------------------------------

BUFFER_SECONDS_HELP = (
    "Keep this many seconds of frames per vehicle on board and save every shard's buffer under the state "
    f"directory (fleet/buffers) for `fleetloop fl round`. Costs {FRAME_BYTES} bytes a frame, 10 frames a second, "
    "in memory and on disk: 25 s is 70 kB a vehicle, 70 MB for 1,000 vehicles. Default: the 6.4 s ring, nothing saved."
)


def persist_buffers(settings: Settings, config: Any, buffer_seconds: float | None) -> Any:
    """``config`` (a ``FleetConfig``) with rings of ``buffer_seconds`` saved under ``<state_dir>/fleet/buffers``;
    unchanged for None. ``UserInputError`` when the ring could not hold a frame until its upload is decided."""
    if buffer_seconds is None:
        return config
    tick_s = config.world().dt_s
    frames = ring_frames(buffer_seconds, tick_s)
    least = config.vehicle_config(config.world()).triggers.pre_ticks + 1
    if frames < least:
        raise UserInputError(
            f"--buffer-seconds {buffer_seconds:g} holds {frames} frame(s); a vehicle keeps a frame at least until its "
            f"upload is decided, {least} frames: give --buffer-seconds {least * tick_s:g} or more"
        )
    return dataclasses.replace(config, buffer_frames=frames, buffer_save_dir=str(fleet_buffer_dir(settings.state_dir)))


def buffers_report(config: Any, specs: list[Any]) -> dict[str, Any]:
    """Where the shards saved their buffers (``specs``: the run's ``ShardSpec`` per shard), after removing the
    folders an earlier run left with another split of the fleet."""
    names = [shard_buffer_name(s.vehicle_ids) for s in specs]
    vehicles = sum(len(s.vehicle_ids) for s in specs)
    frames = int(config.buffer_frames)
    return {
        "dir": config.buffer_save_dir,
        "shards": names,
        "removed_earlier": prune_buffers(config.buffer_save_dir, names),
        "vehicles": vehicles,
        "frames_per_vehicle": frames,
        "seconds_per_vehicle": frames * config.world().dt_s,
        "bytes_per_frame": FRAME_BYTES,
        "bytes": ring_bytes(vehicles, frames),
    }


def _render_buffers(d: dict[str, Any]) -> None:
    b = d.get("buffers")
    if not b:
        return
    console.print(
        f"on-board buffers: {b['vehicles']:,} vehicles x {b['seconds_per_vehicle']:.1f} s "
        f"({b['frames_per_vehicle']:,} frames, {b['bytes'] / 1e6:,.1f} MB) saved in {b['dir']} "
        f"({len(b['shards'])} shard folder(s)); `fleetloop fl round` trains on them",
        highlight=False,
    )


# -- telemetry delivery (ADR 0082) -----------------------------------------------------------------

BROKER_PROBE_TIMEOUT_S = 3.0  # a TCP connect to each bootstrap server before the (slower) protocol check


def require_broker(settings: Settings) -> None:
    """Raise ``ServiceUnavailable`` (exit 4) at once when Kafka does not answer, naming its address and the fix.

    A TCP connect first: kafka-python takes ~30 s to give up on a closed port; then a real describe-cluster call."""
    address = settings.bootstrap_servers
    fix = "start the stack with `fleetloop up`, or drive without uploads: `fleetloop sim run --no-telemetry`"
    if not any(_accepts_connections(hp) for hp in address.split(",")):
        raise ServiceUnavailable(f"Kafka at {address} does not answer (nothing accepts connections there); {fix}")
    health = kafka_health(settings)
    if not health.ok:
        raise ServiceUnavailable(f"Kafka at {address} does not answer ({health.detail}); {fix}")


def _accepts_connections(host_port: str) -> bool:
    host, _, port = host_port.strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), BROKER_PROBE_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def telemetry_preflight(settings: Settings) -> dict[str, Any]:
    """Before driving: the broker must answer; then the uploads earlier runs spooled are delivered first."""
    require_broker(settings)
    return deliver_spooled(settings)


def delivery_report(settings: Settings, tel: dict[str, Any], backlog: dict[str, Any] | None) -> dict[str, Any]:
    """How many of this run's uploads reached Kafka, how many wait in the spool, how many were lost, and why."""
    spooled, lost = tel.get("frames_spooled", {}), tel.get("frames_lost", {})
    submitted, sent = int(tel.get("frames_submitted", 0)), int(tel.get("frames_sent", 0))
    undelivered = int(sum(spooled.values()) + sum(lost.values()))
    report: dict[str, Any] = {
        "bootstrap": settings.bootstrap_servers,
        "frames_submitted": submitted,
        "frames_delivered": sent,
        "frames_undelivered": undelivered,
        "frames_spooled": dict(spooled),
        "frames_lost": dict(lost),
        "failed_attempts": int(tel.get("failed_attempts", 0)),
        "spool_dir": str(TelemetrySpool.of_state_dir(settings.state_dir).directory),
        "backlog": backlog,
        "reason": None,
    }
    if undelivered:
        try:
            require_broker(settings)
            now = "Kafka answers again now; it was away or too slow during the run"
        except ServiceUnavailable:
            now = "Kafka does not answer now"
        report["reason"] = f"{report['failed_attempts']:,} failed send attempts; {now}"
    return report


def require_delivered(result: dict[str, Any]) -> None:
    """Raise when uploads of the run were not delivered: ``ServiceUnavailable`` (exit 4), or ``DataError`` (exit 5)
    when the only loss is frames that did not encode. The summary was printed before; this says what it means."""
    rep = result.get("telemetry_delivery")
    if not rep or not rep["frames_undelivered"]:
        return
    spooled, lost = sum(rep["frames_spooled"].values()), sum(rep["frames_lost"].values())
    what = f"{rep['frames_undelivered']:,} of {rep['frames_submitted']:,} uploaded frames were not delivered"
    if set(rep["frames_lost"]) == {"malformed"} and not spooled:
        raise DataError(f"{what}: {lost:,} did not encode as telemetry batches (malformed); this is a bug, report it")
    parts = []
    if spooled:
        parts.append(
            f"{spooled:,} are kept in {rep['spool_dir']} ({_reasons(rep['frames_spooled'])}): the next "
            "`fleetloop sim run` delivers them once Kafka answers (`fleetloop up`)"
        )
    if lost:
        parts.append(f"{lost:,} are lost ({_reasons(rep['frames_lost'])})")
    raise ServiceUnavailable(f"{what} to Kafka at {rep['bootstrap']} ({rep['reason']}): {'; '.join(parts)}")


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items() if v)


def _uploads_line(policy: dict[str, Any], up: dict[str, Any], written: int) -> str:
    """``uploads (valued, budget 2 %): 1,234 of 60,000 frames (2.06 %), fog 90 %; 56 wanted but over budget``."""
    n = int(up.get("frames_uploaded", 0))
    head = "uploads"
    if policy:
        head += f" ({policy['policy']}, budget {100 * policy['budget_fraction']:g} %)"
    share = f" ({100 * n / written:.2f} %)" if written else ""
    by = {k: v for k, v in up.get("uploaded_by_condition", {}).items() if v}
    mix = ", ".join(f"{k} {100 * v / n:.0f} %" for k, v in by.items()) if n else ""
    refused = sum(up.get("refused_by_budget", {}).values())
    return (
        f"{head}: {n:,} of {written:,} frames{share}"
        + (f", {mix} by the vehicles' own condition estimate" if mix else "")
        + f"; {refused:,} wanted but over budget, kept on board"
    )


def _render_delivery(d: dict[str, Any]) -> None:
    rep, tel = d.get("telemetry_delivery"), d["counts"].get("telemetry")
    if not rep or not tel:
        return
    backlog = rep.get("backlog") or {}
    if backlog.get("frames_sent"):
        console.print(
            f"spooled uploads of earlier runs: {backlog['frames_sent']:,} frames delivered "
            f"({backlog['files_delivered']:,} files)",
            highlight=False,
        )
    line = (
        f"telemetry to Kafka at {rep['bootstrap']}: {rep['frames_delivered']:,} of {rep['frames_submitted']:,} "
        f"frames delivered, {tel.get('ground_truth_frames_sent', 0):,} ground-truth frames to the audit topic"
    )
    if rep["frames_undelivered"]:
        spooled, lost = sum(rep["frames_spooled"].values()), sum(rep["frames_lost"].values())
        line += f", [bold red]{rep['frames_undelivered']:,} not delivered[/] ({spooled:,} spooled, {lost:,} lost)"
    console.print(line, highlight=False)


# -- output -----------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}"


def _render_run(d: dict[str, Any]) -> None:
    run = d["run"]
    console.print(
        f"[bold]{d['vehicles']:,} vehicles[/], {d['simulated_s'] / 60:.1f} simulated min, model {run['model']}, "
        f"scenario {run['scenario']}, weather {run['weather']}, seed {run['seed']}, {run['shards']} shard(s) "
        f"on {run['device']}: {d['km']:,.1f} km, {d['vehicle_hours']:,.2f} vehicle-hours in {run['wall_s']:.1f} s "
        f"({_fmt(run['vehicle_steps_per_s'], 0)} vehicle-steps/s)",
        highlight=False,
    )
    table = Table(title="per 1,000 km (counts in brackets)")
    table.add_column("group", no_wrap=True)
    for col in ("km", "collisions", "near misses", "phantom brakes", "hard brakes", "fallback acts", "progress"):
        table.add_column(col, justify="right")

    def row(name: str, g: dict[str, Any]) -> None:
        per, ev = g["per_1000_km"], g["events"]
        table.add_row(
            name,
            _fmt(g["km"], 1),
            f"{_fmt(per['collisions'])} ({ev['collisions']})",
            f"{_fmt(per['near_misses'])} ({ev['near_misses']})",
            f"{_fmt(per['phantom_brakes'])} ({ev['phantom_brakes']})",
            f"{_fmt(per['hard_brakes'])} ({ev['hard_brakes']})",
            _fmt(g["fallback_activations_per_1000_km"]),
            _fmt(g["progress_vs_expert"], 3),
        )

    row("[bold]fleet[/]", d)
    for v, g in d["by_version"].items():
        row(f"model {v}", g)
    for c, g in d["by_condition"].items():
        row(f"in {c}", g)
    if len(d["by_version"]) > 1:
        for k, g in d["by_version_condition"].items():
            row(k, g)
    console.print(table)
    acts = {k: v for k, v in d["fallback_activations"].items() if v}
    lat = d["latency"]
    console.print(
        "fallback activations: " + (", ".join(f"{k} {v:,}" for k, v in acts.items()) or "none"),
        highlight=False,
    )
    console.print(
        f"inference latency: simulated p50 {_fmt(lat['simulated_p50_ms'])} ms, p99 {_fmt(lat['simulated_p99_ms'])} ms "
        f"({d['deadline_misses']:,} deadline misses); wall-clock per batched call p50 {_fmt(lat['wall_p50_ms'])} ms, "
        f"p99 {_fmt(lat['wall_p99_ms'])} ms",
        highlight=False,
    )
    c = d["counts"]
    up = c.get("uploads", {})
    console.print(
        _uploads_line(run.get("uploads", {}), up, c.get("buffer", {}).get("frames_written", 0)), highlight=False
    )
    _render_delivery(d)
    _render_buffers(d)
    if c.get("model_failures"):
        console.print(f"[bold red]model failures[/]: {', '.join(c['model_failures'])}", highlight=False)
    if run.get("ota"):
        _render_ota(c.get("ota", {}))


def _plot(d: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    conds = list(d["by_condition"])
    events = ("collisions", "near_misses", "phantom_brakes", "hard_brakes")
    width = 0.8 / max(len(events), 1)
    for i, ev in enumerate(events):
        vals = [d["by_condition"][c]["per_1000_km"][ev] for c in conds]
        axes[0].bar([j + i * width for j in range(len(conds))], [0 if math.isnan(v) else v for v in vals], width)
    axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(conds))], conds)
    axes[0].set_ylabel("events per 1,000 km")
    axes[0].legend([e.replace("_", " ") for e in events])
    axes[0].set_title("safety events by condition")
    acts = d["fallback_activations"]
    axes[1].barh(list(acts), list(acts.values()))
    axes[1].set_xlabel("fallback activations")
    axes[1].set_title("fallback activations by reason")
    run = d["run"]
    fig.suptitle(f"{d['vehicles']} vehicles, {d['simulated_s'] / 60:.1f} min, model {run['model']}, {run['weather']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _metrics(settings: Settings) -> Callable[[dict[str, Any]], None]:
    """Start the process's exporter; returns the per-chunk updater of the sim's counters."""
    from fleetloop.cli.sim_metrics import GroupCounters, ShadowCounters
    from fleetloop.platform.metrics import counter, gauge, start_exporter

    start_exporter(settings, "sim")
    steps = counter("fleetloop_sim_vehicle_steps_total", "Vehicle-steps simulated.")
    events = counter("fleetloop_sim_events_total", "Safety events in the simulated fleet.", ["event"])
    acts = counter("fleetloop_sim_fallback_activations_total", "Model -> fallback transitions.")
    uploads = counter("fleetloop_sim_uploaded_frames_total", "Frames the vehicles chose to upload.")
    rate = gauge("fleetloop_sim_vehicle_steps_per_second", "Vehicle-steps per wall-clock second (last chunk).")
    by_group = GroupCounters()
    shadow = ShadowCounters()
    last = [time.monotonic()]

    def update(part: dict[str, Any]) -> None:
        now = time.monotonic()
        steps.inc(part["vehicle_steps"])
        events.labels(event="collision").inc(part["collisions"])
        events.labels(event="near_miss").inc(part["near_misses"])
        acts.inc(part["fallback_activations"])
        uploads.inc(part["uploaded_frames"])
        by_group.update(part.get("groups", {}))
        shadow.update(part.get("hooks", {}).get("ota", {}).get("shadow", {}))
        if now > last[0]:
            rate.set(part["vehicle_steps"] / (now - last[0]))
        last[0] = now

    return update


@app.command("run")
def run_cmd(
    vehicles: int = typer.Option(100, "--vehicles", click_type=POSITIVE_INT, help="Fleet size (vehicles)."),
    minutes: float = typer.Option(1.0, "--minutes", click_type=POSITIVE_FLOAT, help="Simulated minutes."),
    scenario: str = typer.Option("mixed", "--scenario", help="Scenario family or a YAML scenario file."),
    weather: str = typer.Option("clear", "--weather", help="Weather preset: clear, fog, rain, night, mixed."),
    seed: int = typer.Option(0, "--seed", click_type=ANY_INT, help="Seed of every random draw."),
    model: str | None = typer.Option(None, "--model", help="Registry version or artifact path (default: production)."),
    fallback_only: bool = typer.Option(False, "--fallback-only", help="Drive with the rule-based fallback alone."),
    inject: list[str] = typer.Option([], "--inject", help="Fault, e.g. latency_spike:p=0.05,ms=80; repeatable."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    shards: int = typer.Option(1, "--shards", click_type=POSITIVE_INT, help="Split the fleet over K shards."),
    devices: int | None = typer.Option(
        None,
        "--devices",
        click_type=POSITIVE_INT,
        help="GPUs the shards share (default: one shard per GPU); CUDA only.",
    ),
    backend: str = typer.Option("processes", "--backend", help="Shard backend: processes or ray."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster to join (--backend ray)."),
    no_telemetry: bool = typer.Option(False, "--no-telemetry", help="Do not send uploads to Kafka."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG of the summary here."),
    heartbeat_s: float = typer.Option(
        DEFAULT_HEARTBEAT_S,
        "--heartbeat-s",
        click_type=POSITIVE_FLOAT,
        help="Simulated seconds between each vehicle's heartbeats to fleetloop.fleet-health (with telemetry).",
    ),
    compile: bool = typer.Option(
        False,
        "--compile",
        help="Compile the tick with torch.compile (faster ticks; the first tick compiles: a minute or more on a "
        "small CPU, ~15 s once cached in ~/.cache/fleetloop/inductor).",
    ),
    ota: bool = typer.Option(
        False,
        "--ota",
        help="Vehicles follow OTA commands (Kafka) and install signed releases from the ota-repo service.",
    ),
    buffer_seconds: float | None = typer.Option(
        None, "--buffer-seconds", click_type=POSITIVE_FLOAT, help=BUFFER_SECONDS_HELP
    ),
    uploads: str = typer.Option(
        "triggers",
        "--uploads",
        help="Which frames go to the cloud: triggers (every trigger above the near-miss reserve), valued (what a clip "
        "would teach: safety triggers, conditions the uploads lack; docs/fleet.md) or random (the random sample).",
    ),
    upload_budget: float = typer.Option(
        DEFAULT_UPLOAD_BUDGET,
        "--upload-budget",
        click_type=SHARE,
        help="Share of its frames a vehicle may upload, e.g. 0.02 for 2 percent (any run of ten minutes or more).",
    ),
) -> None:
    """Launch a fleet simulation and print what it amounts to."""
    settings = load_settings()
    params = {k: v for k, v in locals().items() if k != "settings"}
    with run_record(settings, command="sim run", params=params, seed=seed) as rec:
        update = _metrics(settings)
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"))
        with Progress(
            *columns, TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, disable=as_json
        ) as progress:
            task = progress.add_task(f"{vehicles:,} vehicles", total=None, info="")
            seen = {"collisions": 0, "near_misses": 0}

            def on_progress(part: dict[str, Any]) -> None:
                update(part)
                seen["collisions"] += part["collisions"]
                seen["near_misses"] += part["near_misses"]
                info = f"collisions {seen['collisions']:,}, near misses {seen['near_misses']:,}"
                progress.update(task, advance=part["ticks"], info=info)

            result = simulate(
                settings,
                vehicles=vehicles,
                minutes=minutes,
                scenario=scenario,
                weather=weather,
                seed=seed,
                model=model,
                fallback_only=fallback_only,
                inject=inject,
                device=device,
                shards=shards,
                devices=devices,
                backend=backend,
                ray_address=ray_address,
                telemetry=not no_telemetry,
                fleet_tag=rec.id,
                on_progress=on_progress,
                on_start=lambda ticks: progress.update(task, total=ticks),
                compile=compile,
                ota=ota,
                heartbeat_s=heartbeat_s,
                buffer_seconds=buffer_seconds,
                uploads=uploads,
                upload_budget=upload_budget,
            )
        if plot is not None:
            _plot(result, plot)
            result["plot"] = str(plot)
        rec.summary = result
        emit({**result, "run_id": rec.id}, as_json, _render_run)
        require_delivered(result)  # after the summary, inside the record: exit 4 and the record says why


# -- Euro NCAP --------------------------------------------------------------------------------------

NCAP_OFFICIAL = "dry"  # the protocol's condition: dry daylight
NCAP_TOTAL_NAMES = ("car-to-car", "pedestrian")  # the totals ``score_conditions`` adds after the groups


def parse_conditions(text: str) -> tuple[str, ...]:
    """``dry,fog0.8,...`` -> the conditions, checked against ``fleetloop.sim.ncap.CONDITIONS``."""
    from fleetloop.sim.ncap import CONDITIONS

    names = tuple(c.strip() for c in text.split(",") if c.strip())
    unknown = [c for c in names if c not in CONDITIONS]
    if unknown or not names:
        raise UserInputError(
            f"unknown condition(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(CONDITIONS)} "
            "(comma-separated)"
        )
    if len(set(names)) != len(names):
        raise UserInputError(f"--conditions names a condition twice: {text}")
    return names


def euroncap(
    settings: Settings,
    *,
    model: str | None = None,
    fallback_only: bool = False,
    conditions: tuple[str, ...] | None = None,
    on_tick: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Drive the whole Euro NCAP AEB matrix in every condition as one batched fleet (one vehicle per test and
    condition), score it per group and condition, and report every test. ``on_tick(done, total)`` follows the run."""
    from fleetloop.edge_agent.model_artifact import load_artifact
    from fleetloop.edge_agent.ncap_run import drive_ncap_matrix, score_conditions
    from fleetloop.sim.ncap import CONDITIONS, euro_ncap_protocol

    conds = tuple(CONDITIONS) if conditions is None else conditions
    resolved = resolve_model(settings, model, fallback_only, Path(settings.state_dir) / "sim" / "models")
    policy = None if resolved is None else load_artifact(resolved[1])
    rows = drive_ncap_matrix(policy, conds, on_tick=on_tick)
    scores = {
        cond: {name: {**vars(g), "percent": round(g.percent, 1)} for name, g in groups.items()}
        for cond, groups in score_conditions(rows).items()
    }
    ccrs_40 = [
        r
        for r in rows
        if r["condition"] == NCAP_OFFICIAL and r["group"] == "CCRs" and r["overlap_pct"] == 100 and r["test_kmh"] <= 40
    ]
    return {
        "model": "fallback only" if resolved is None else resolved[0],
        "conditions": list(conds),
        "official_condition": NCAP_OFFICIAL if NCAP_OFFICIAL in conds else None,
        "tests": rows,
        "scores": scores,
        "avoided": sum(not r["collided"] for r in rows),
        "total": len(rows),
        "vehicles": len(rows),
        "simulated_s": max(t.spec.duration_s for t in euro_ncap_protocol()),
        "ccrs_up_to_40_kmh_avoided": all(not r["collided"] for r in ccrs_40) if ccrs_40 else None,
    }


def _render_ncap(d: dict[str, Any]) -> None:
    conds = d["conditions"]
    title = (
        f"Euro NCAP AEB matrix, driven by {d['model']}: points per group ({d['vehicles']} tests in one run, "
        f"{d['avoided']}/{d['total']} avoided)"
    )
    table = Table(title=title)
    table.add_column("group", no_wrap=True)
    for c in conds:
        table.add_column(f"{c} (official)" if c == d["official_condition"] else c, justify="right", no_wrap=True)
    for name in d["scores"][conds[0]]:
        cells = []
        for c in conds:
            g = d["scores"][c][name]
            bad = f", {g['invalid']} invalid" if g["invalid"] else ""
            cells.append(f"{g['points']:.1f}/{g['max_points']:.0f} {g['percent']:.0f}%{bad}")
        bold = name in NCAP_TOTAL_NAMES
        table.add_row(f"[bold]{name}[/]" if bold else name, *cells)
    console.print(table)
    official = d["official_condition"] or conds[0]
    hits = [r for r in d["tests"] if r["condition"] == official and (r["collided"] or not r["valid"])]
    if hits:
        detail = Table(title=f"{official}: tests with an impact or out of tolerance ({len(hits)})")
        for col in ("test", "test km/h", "impact km/h", "band", "points", "TTC warn s"):
            detail.add_column(col, justify="left" if col in ("test", "band") else "right")
        for r in hits:
            band = r["band"] if r["valid"] else f"invalid (ego {r['max_speed_kmh']:.1f} km/h)"
            detail.add_row(
                r["test"],
                _fmt(r["test_kmh"], 0),
                _fmt(r["impact_kmh"], 1),
                band,
                _fmt(r["points"]),
                _fmt(r["ttc_at_warning_s"]),
            )
        console.print(detail)
    else:
        console.print(f"{official}: every test avoided.", highlight=False)
    if d.get("plot"):
        console.print(f"plot: {d['plot']}", highlight=False)


def _plot_ncap(d: dict[str, Any], path: Path) -> None:
    """Impact speed against test speed, one panel per group, one line per condition (mean over the variants)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r["group"] for r in d["tests"]))
    cols = 4
    fig, axes = plt.subplots((len(groups) + cols - 1) // cols, cols, figsize=(16, 7.5), squeeze=False)
    for ax, group in zip(axes.flat, groups, strict=False):
        rows = [r for r in d["tests"] if r["group"] == group]
        # CCRb runs at one speed: its variants differ in what they would hit at without braking
        x_key = "unbraked_impact_kmh" if group == "CCRb" else "test_kmh"
        for cond in d["conditions"]:
            mine = [r for r in rows if r["condition"] == cond]
            xs = sorted({r[x_key] for r in mine})
            ys = [sum(r["impact_kmh"] for r in mine if r[x_key] == x) / sum(r[x_key] == x for r in mine) for x in xs]
            ax.plot(xs, ys, marker="o", markersize=3, label=cond)
        xs = sorted({r[x_key] for r in rows})
        unbraked = [max(r["unbraked_impact_kmh"] for r in rows if r[x_key] == x) for x in xs]
        ax.plot(xs, unbraked, linestyle="--", color="grey", linewidth=1, label="no braking")
        ax.set_title(group)
        ax.set_xlabel("impact speed without braking [km/h]" if group == "CCRb" else "test speed [km/h]")
        ax.set_ylabel("mean impact speed [km/h]")
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Euro NCAP AEB matrix, {d['model']}: impact speed by test speed and condition")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@app.command("euroncap")
def euroncap_cmd(
    fallback_only: bool = typer.Option(False, "--fallback-only", help="The rule-based fallback alone."),
    model: str | None = typer.Option(None, "--model", help="Registry version or artifact path (default: production)."),
    conditions: str = typer.Option(
        "dry,fog0.8,fog1.0,rain,night,low-friction",
        "--conditions",
        help="Comma-separated: dry (the protocol's), fog0.8, fog1.0, rain, night, low-friction.",
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG of impact speed against test speed here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Drive the Euro NCAP AEB matrix (car-to-car rear, pedestrians) in each condition and print the scores."""
    settings = load_settings()
    conds = parse_conditions(conditions)
    params = {"fallback_only": fallback_only, "model": model, "conditions": list(conds)}
    with run_record(settings, command="sim euroncap", params=params, seed=0) as rec:
        columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console, disable=as_json) as progress:
            task = progress.add_task("Euro NCAP matrix", total=None)
            result = euroncap(
                settings,
                model=model,
                fallback_only=fallback_only,
                conditions=conds,
                on_tick=lambda done, total: progress.update(task, completed=done, total=total),
            )
        if plot is not None:
            _plot_ncap(result, plot)
            result["plot"] = str(plot)
        rec.summary = {k: v for k, v in result.items() if k != "tests"}
    emit(result, as_json, _render_ncap)
