"""Shard backends: one fleet split into K shards of contiguous vehicle ids, each a ``FleetRunner`` elsewhere.

- ``processes``: K local processes (spawned, so CUDA works in them); with GPUs, one process per GPU
  (shard i on ``cuda:i``), else K CPU processes. ``devices=G`` instead keeps all K shards and puts shard i on
  ``cuda:(i % G)`` (several shards may share a GPU). CUDA is initialised only inside the shard processes (the
  driver only counts the GPUs). Commands go over a pipe. Needs torch + numpy only (a GPU box has no Ray).
- ``ray``: K Ray actors; ``ray_address`` joins a cluster (every node needs fleetloop installed), otherwise a
  local Ray is started with usage stats and the dashboard off and ``num_cpus`` = K.

The driver advances every shard by the same number of ticks at a time (``advance``), so shards stay in lockstep
between chunks: a chunk takes as long as its slowest shard. ``last_busy_s`` holds each shard's own seconds for the
last chunk (timed inside the shard), so a straggler shows against the driver's wall time. ``set_model`` is
forwarded to every shard (each applies it to the ids it holds). ``close`` returns
the merged ``FleetSummary``. Randomness is per vehicle id, so the merged totals equal the single-process run's
(event counts exactly on fixed scenarios; tested).

A shard is described by a picklable ``ShardSpec`` (configuration, its ids, model artifact paths, the version each
vehicle starts on, telemetry settings); each shard loads the artifacts itself (``load_artifact``: schema check, NaN
refusal) and builds its runner from the spec alone (``build_runner``), so every backend runs the same configuration.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fleetloop.edge_agent.arbiter import ArbiterConfig
from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner, TickReport
from fleetloop.edge_agent.summary import FleetSummary, merge_counts
from fleetloop.platform.errors import FleetConfigError, ShardError

if TYPE_CHECKING:
    from fleetloop.edge_agent.ota_agent import OtaSpec

__all__ = ["BACKENDS", "ShardError", "ShardSpec", "ShardedFleet", "build_runner", "split_ids"]

BACKENDS = ("processes", "ray")


@dataclass(frozen=True)
class ShardSpec:
    """Everything a shard needs to build its runner (picklable).

    Attributes:
        config: the fleet configuration (``device`` is set per shard).
        vehicle_ids: this shard's ids.
        model_paths: version label -> artifact path, loaded with ``load_artifact`` in the shard.
        initial_version: the version every vehicle starts on (None: fallback only), unless ``initial_versions``
            names another for it; the arbiter's low-confidence threshold is calibrated to this model unless the
            configuration sets ``max_uncertainty_mps2`` or ``arbiter``.
        initial_versions: vehicle id -> the version it starts on (None: fallback only); ``ShardedFleet`` hands each
            shard the entries of its own ids.
        telemetry: settings as a dict (``Settings.model_dump()``) for a ``BusTelemetrySink``; None: no telemetry.
        fleet_tag: prefix of the telemetry vehicle ids.
        torch_threads: intra-op threads of the shard's torch (0: leave torch's default).
        ota: the vehicles follow OTA commands and signed releases (``OtaAgent`` as the runner's tick hook); None:
            they keep the models they start with.
    """

    config: FleetConfig
    vehicle_ids: tuple[int, ...]
    model_paths: dict[str, str] = field(default_factory=dict)
    initial_version: str | None = None
    initial_versions: dict[int, str | None] = field(default_factory=dict)
    telemetry: dict[str, Any] | None = None
    fleet_tag: str = ""
    torch_threads: int = 0
    ota: OtaSpec | None = None


def split_ids(vehicle_ids: Sequence[int], shards: int) -> list[tuple[int, ...]]:
    """Contiguous, near-equal slices of ``vehicle_ids`` (no empty slice: at most one shard per vehicle)."""
    if shards < 1:
        raise FleetConfigError(f"shards must be >= 1, got {shards}")
    ids = list(vehicle_ids)
    k = min(shards, len(ids))
    bounds = [round(i * len(ids) / k) for i in range(k + 1)]
    return [tuple(ids[bounds[i] : bounds[i + 1]]) for i in range(k)]


def build_runner(spec: ShardSpec) -> FleetRunner:
    """The runner of one shard: loads its models, opens its telemetry sink."""
    import torch

    from fleetloop.edge_agent.model_artifact import load_artifact

    if spec.torch_threads > 0:
        torch.set_num_threads(spec.torch_threads)
    if spec.config.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(spec.config.device))  # this shard's GPU is its current device
    loaded = {label: load_artifact(path) for label, path in spec.model_paths.items()}
    models = {label: lp.model for label, lp in loaded.items()}
    config = spec.config
    if config.max_uncertainty_mps2 is None and config.arbiter is None and spec.initial_version in loaded:
        # The low-confidence threshold is in the model's own units: calibrate it to the model that drives.
        calibrated = ArbiterConfig.for_model(loaded[spec.initial_version].metadata).max_uncertainty
        config = replace(config, max_uncertainty_mps2=calibrated)
    sink = None
    if spec.telemetry is not None:
        from fleetloop.edge_agent.telemetry import BusTelemetrySink
        from fleetloop.platform.settings import Settings

        sink = BusTelemetrySink(Settings(**spec.telemetry), fleet_tag=spec.fleet_tag)
    hooks = []
    if spec.ota is not None:
        from fleetloop.edge_agent.ota_agent import OtaAgent  # python-tuf and kafka-python load only with OTA

        hooks.append(OtaAgent(spec.ota, spec.vehicle_ids))
    return FleetRunner(config, spec.vehicle_ids, models, spec.initial_version, sink, spec.initial_versions, hooks)


class _Worker:
    """The commands a shard understands, shared by both backends."""

    def __init__(self, spec: ShardSpec) -> None:
        self.runner = build_runner(spec)

    def advance(self, ticks: int) -> dict[str, Any]:
        """The summed tick reports of ``ticks`` ticks, plus ``busy_s``: this shard's own seconds for them (every
        tick ends in a device sync, so the time is complete), and the shard's ``groups`` and ``hooks`` counts so far
        (live metrics)."""
        t0 = time.perf_counter()
        totals = {"ticks": 0, "vehicle_steps": 0, "collisions": 0, "near_misses": 0, "fallback_activations": 0}
        totals["uploaded_frames"] = 0

        def add(r: TickReport) -> None:
            totals["ticks"] += 1
            totals["vehicle_steps"] += r.vehicle_steps
            totals["collisions"] += r.collisions
            totals["near_misses"] += r.near_misses
            totals["fallback_activations"] += r.fallback_activations
            totals["uploaded_frames"] += r.uploaded_frames

        for _ in range(ticks):
            add(self.runner.step())
        busy_s = time.perf_counter() - t0
        return {**totals, "busy_s": busy_s, "groups": self.runner.group_sums(), "hooks": self.runner.hook_counts()}

    def set_model(self, vehicle_ids: list[int], version: str | None) -> int:
        return self.runner.set_model(vehicle_ids, version)

    def close(self, timeout_s: float) -> dict[str, Any]:
        return self.runner.close(timeout_s).to_state()


def _process_main(conn: Any, spec: ShardSpec) -> None:
    """Body of a shard process: build the worker, then serve commands until ``close``."""
    try:
        worker = _Worker(spec)
        conn.send(("ready", None))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        cmd, arg = conn.recv()
        try:
            if cmd == "advance":
                conn.send(("ok", worker.advance(arg)))
            elif cmd == "set_model":
                conn.send(("ok", worker.set_model(*arg)))
            elif cmd == "close":
                conn.send(("ok", worker.close(arg)))
                return
            else:
                conn.send(("error", f"unknown shard command {cmd!r}"))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
            if cmd == "close":
                return


class _ProcessShards:
    def __init__(self, specs: list[ShardSpec]) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        for i, spec in enumerate(specs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_process_main, args=(child, spec), name=f"fleet-shard-{i}", daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self._gather("starting")

    def _gather(self, what: str) -> list[Any]:
        out = []
        errors = []
        for i, conn in enumerate(self.conns):
            try:
                status, value = conn.recv()
            except EOFError:
                status, value = "error", f"shard process {i} died (exit code {self.procs[i].exitcode})"
            if status == "error":
                errors.append(f"shard {i} failed while {what}:\n{value}")
            out.append(value)
        if errors:
            self.kill()
            raise ShardError("\n".join(errors))
        return out

    def call(self, cmd: str, arg: Any) -> list[Any]:
        for conn in self.conns:
            conn.send((cmd, arg))
        return self._gather(cmd)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(5.0)


class _RayShards:
    def __init__(self, specs: list[ShardSpec], address: str | None) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no FutureWarning on CPU-only hosts
        import ray

        if not ray.is_initialized():
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=len(specs),
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
        self.ray = ray
        actor_cls = ray.remote(num_cpus=1)(_Worker)
        self.actors: list[Any] = [actor_cls.remote(spec) for spec in specs]  # type: ignore[attr-defined]

    def call(self, cmd: str, arg: Any) -> list[Any]:
        ray = self.ray
        if cmd == "set_model":
            refs = [a.set_model.remote(*arg) for a in self.actors]
        else:
            refs = [getattr(a, cmd).remote(arg) for a in self.actors]
        try:
            return list(ray.get(refs))
        except ray.exceptions.RayError as e:
            raise ShardError(f"a Ray shard failed while {cmd}: {e}") from e

    def kill(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


class ShardedFleet:
    """A fleet run over K shards (see the module docstring).

    Args:
        spec: the run's shard spec with *all* vehicle ids; it is split into contiguous slices.
        shards: K (with the ``processes`` backend and GPUs present, at most one shard per GPU is used unless
            ``devices`` is given).
        backend: ``processes`` or ``ray``.
        ray_address: a Ray cluster to join (``ray`` backend only).
        devices: on CUDA, the number of GPUs to use (the first ``devices`` visible ones); all K shards run,
            shard i on ``cuda:(i % devices)``. None: every visible GPU, one shard per GPU.
    """

    def __init__(
        self,
        spec: ShardSpec,
        shards: int,
        backend: str = "processes",
        ray_address: str | None = None,
        devices: int | None = None,
    ):
        if backend not in BACKENDS:
            raise FleetConfigError(f"unknown shard backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
        if ray_address and backend != "ray":
            raise FleetConfigError("--ray-address needs --backend ray")
        specs = self.plan(spec, shards, backend, devices)
        self.specs = specs
        self.backend = backend
        self.impl: _ProcessShards | _RayShards = (
            _ProcessShards(specs) if backend == "processes" else _RayShards(specs, ray_address)
        )
        self.closed = False
        self.last_busy_s: list[float] = []  # each shard's own seconds for the last ``advance`` (shard order)

    @staticmethod
    def plan(spec: ShardSpec, shards: int, backend: str, devices: int | None = None) -> list[ShardSpec]:
        """The per-shard specs: contiguous id slices; devices cuda:(i % GPUs) when the fleet runs on CUDA.

        Counts the GPUs without initialising CUDA in this process (only the shards do)."""
        import torch

        k = shards
        device = spec.config.device
        gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
        if device.startswith("cuda") and gpus == 0:
            raise FleetConfigError("device cuda asked for, but torch sees no CUDA device; use --device cpu")
        if devices is not None:
            if not device.startswith("cuda"):
                raise FleetConfigError("devices (a GPU count) needs device cuda")
            if not 1 <= devices <= gpus:
                raise FleetConfigError(f"devices must be between 1 and the {gpus} visible GPU(s), got {devices}")
            gpus = devices
        elif gpus and backend == "processes":
            k = min(k, gpus)
        unknown = sorted(set(spec.initial_versions) - set(spec.vehicle_ids))
        if unknown:
            raise FleetConfigError(f"initial_versions names vehicle ids not in this fleet: {unknown[:10]}")
        out = []
        for i, ids in enumerate(split_ids(spec.vehicle_ids, k)):
            dev = f"cuda:{i % gpus}" if gpus else "cpu"
            own = {v: spec.initial_versions[v] for v in ids if v in spec.initial_versions}
            out.append(replace(spec, vehicle_ids=ids, config=replace(spec.config, device=dev), initial_versions=own))
        return out

    def advance(self, ticks: int) -> dict[str, Any]:
        """Advance every shard by ``ticks`` ticks; returns the summed tick reports (and ``groups``, summed).

        Each shard's own time for these ticks goes to ``last_busy_s`` (not into the returned counts)."""
        parts = self.impl.call("advance", ticks)
        self.last_busy_s = [float(p.pop("busy_s", 0.0)) for p in parts]
        total: dict[str, Any] = {}
        for p in parts:
            total = merge_counts(total, p)
        total["ticks"] = ticks
        return total

    def set_model(self, vehicle_ids: Sequence[int], version: str | None) -> int:
        """Switch these vehicles (in whichever shard) to ``version`` from the next tick."""
        return int(sum(self.impl.call("set_model", (list(vehicle_ids), version))))

    def close(self, timeout_s: float = 30.0) -> FleetSummary:
        """Close every shard (telemetry delivered or counted lost) and merge their summaries."""
        if self.closed:
            raise RuntimeError("this sharded fleet is already closed")
        self.closed = True
        states = self.impl.call("close", timeout_s)
        if isinstance(self.impl, _ProcessShards):
            for proc in self.impl.procs:
                proc.join(10.0)
        return FleetSummary.merge_all([FleetSummary.from_state(s) for s in states])

    def kill(self) -> None:
        """Stop every shard now (Ctrl-C)."""
        self.closed = True
        self.impl.kill()
