"""The fleet runner: steps the world and every vehicle's on-board stack in lockstep, for one shard of the fleet.

Per tick, for the vehicles of this shard (one batch, on one device)::

    observe -> vehicle_step (faults, conditions, inference, fallback, arbiter, triggers) -> step the world
    -> events -> summary sums; the frame goes to the on-board buffer; frames whose upload was decided this tick
    (those of ``pre_s`` ago, read back from the buffer) go to the telemetry sink with their ground truth
    -> scenes that ended (duration reached or crashed) respawn with a new scene drawn per (vehicle id, tick)

Optionally a second copy of the same scenes is driven by the privileged expert (the progress reference; evaluation
only, it never reaches a vehicle). All randomness is counter-based per vehicle id, so a vehicle's run does not
depend on its shard or batch.

``set_model(vehicle_ids, version)`` switches the model of chosen vehicles from the next tick on (the arbiter lets
the fallback drive for a few ticks after a switch): the seam the OTA client drives. ``load_model`` adds versions.

Everything a run needs is in ``FleetConfig`` (weather, scene draw, arbiter, triggers, ...) and the constructor's
arguments (models, which version each vehicle starts on, the sink): no caller patches a runner after construction.

Imports torch, numpy, ``fleetloop.sim``, the edge_agent numeric core and ``fleetloop.platform.errors`` (which
imports nothing) only; telemetry goes through a ``TelemetrySink`` the caller passes
(``fleetloop.edge_agent.telemetry``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from fleetloop.edge_agent.arbiter import REASON_NAMES, ArbiterConfig
from fleetloop.edge_agent.buffer import OnboardBuffer, pack_camera_tensor
from fleetloop.edge_agent.buffer_store import shard_buffer_name
from fleetloop.edge_agent.faults import parse_faults
from fleetloop.edge_agent.heartbeat import (
    HeartbeatConfig,
    HeartbeatState,
    emit_heartbeats,
    heartbeat_step,
    signals_from_tick,
)
from fleetloop.edge_agent.inference import NO_MODEL, STATUS_NAMES, EngineConfig, InferenceEngine
from fleetloop.edge_agent.summary import (
    COLUMNS,
    MAX_VERSIONS,
    NO_MODEL_LABEL,
    FleetSummary,
    SummaryAccumulator,
    condition_codes,
)
from fleetloop.edge_agent.telemetry import TelemetrySink, UploadedFrames
from fleetloop.edge_agent.triggers import TriggerConfig
from fleetloop.edge_agent.vehicle_step import VehicleConfig, VehicleState, VehicleTick, vehicle_step
from fleetloop.platform.errors import FleetConfigError, UserInputError
from fleetloop.sim import (
    FAMILIES,
    PRESETS,
    ScenarioSpec,
    Weather,
    World,
    WorldState,
    detect_events,
    draw_scenarios,
    expert_control,
    ground_truth,
    init_state,
    observe,
    respawn,
    step,
    weather_preset,
)
from fleetloop.sim.compile import compile_graph
from fleetloop.sim.state import KIND_CODES

__all__ = ["FleetConfig", "FleetRunner", "TickHook", "TickReport", "version_number"]

FAR_GAP_M = 1.0e5  # [m] the world reports "nothing in path" as a gap beyond this
NIGHT_LIGHT = 0.5  # [-] ground-truth is_night threshold
RESPAWN_SEED_MULT = 1_000_003  # new scenes at tick t are drawn with seed * this + t + 1
_HAZARD_TYPE = {  # sim actor kind code -> bus HazardType code
    KIND_CODES["vehicle"]: 1,
    KIND_CODES["pedestrian"]: 2,
    KIND_CODES["stopped_vehicle"]: 3,
    KIND_CODES["debris"]: 3,
    KIND_CODES["work_zone"]: 3,
}


def version_number(label: str | None) -> int:
    """The telemetry ``model_version`` (u16) of a version label: its registry number, 0 for none / local files."""
    if label is None or not label.isdigit():
        return 0
    n = int(label)
    return n if 0 < n < 65536 else 0


def summary_rows(
    ev: Any,
    driver: torch.Tensor,
    reason: torch.Tensor,
    started: torch.Tensor,
    deadline_missed: torch.Tensor,
    expert_dist: torch.Tensor,
    visibility_m: torch.Tensor,
    light: torch.Tensor,
    rain: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One tick's summary rows [B, len(COLUMNS)] (float32) and true-condition codes [B]: what ``FleetSummary``
    sums per model version and condition (pure; the compiled tick compiles it)."""
    f32 = torch.float32
    cols = {
        "vehicle_ticks": torch.ones_like(ev.distance_m),
        "distance_m": ev.distance_m,
        "expert_distance_m": expert_dist,
        "collisions": ev.collision.to(f32),
        "near_misses": ev.near_miss.to(f32),
        "hard_brakes": ev.hard_brake.to(f32),
        "phantom_brakes": ev.phantom_brake.to(f32),
        "harsh_jerks": ev.harsh_jerk.to(f32),
        "impact_speed_sum_mps": ev.impact_speed_mps,
        "model_ticks": (driver == 0).to(f32),
        "fallback_ticks": (driver != 0).to(f32),
        "deadline_misses": deadline_missed.to(f32),
    }
    one_hot = torch.nn.functional.one_hot(reason, len(REASON_NAMES))[:, 1:] * started.unsqueeze(-1)
    first = [cols[c].to(f32) for c in COLUMNS[: len(cols)]]
    rows = torch.cat([torch.stack(first, -1), one_hot.to(f32)], -1)
    return rows, condition_codes(visibility_m, light, rain)


@dataclass(frozen=True)
class FleetConfig:
    """What the fleet drives and how: every backend (in-process runner, process shards, Ray actors) builds its runner
    from this alone (plus the models), so nothing is patched into a runner after construction.

    Attributes:
        scenario: the scene draw: a family of ``fleetloop.sim.FAMILIES`` (drawn per vehicle id from the seed) or
            fixed scenes (vehicle id i drives ``scenario[i % len(scenario)]``, again after each respawn).
        weather: the world's weather: a ``fleetloop.sim.PRESETS`` name, or a ``fleetloop.sim.Weather`` field
            (validate's steady intermediate conditions).
        seed: keys every random draw (scenes, sensors, faults, latency jitter, upload sample).
        device: torch device of the world and the vehicles ("cpu", "cuda", "cuda:1").
        faults: ``--inject`` strings (``fleetloop.edge_agent.faults``).
        respawn: start a new scene where one ended (duration reached or crashed); else the scene stays.
        progress_reference: also drive the same scenes with the expert, to report progress against it.
        buffer_frames: on-board ring size per vehicle [frames] (at least the triggers' pre-trigger ticks + 1).
        buffer_save_dir: save each shard's on-board buffer under this folder (``buffer_store``: one folder per
            shard, saved every ``buffer_frames`` ticks and at ``close``); None: the buffer stays in memory.
        ground_truth_audit: pass the ground truth of uploaded frames to the sink (the audit topic).
        fog_onset_s: with a preset name, a fog bank rolls in at this simulated time
            (``weather_preset(fog_onset_s=...)``).
        max_uncertainty_mps2: the arbiter's low-confidence threshold, calibrated to the model
            (``ArbiterConfig.for_model``); None keeps the arbiter's default (or, in a shard, calibrates it to the
            model the vehicles start on). Give this or ``arbiter``, not both.
        arbiter: every arbiter threshold (None: ``ArbiterConfig()`` with ``max_uncertainty_mps2``); its ``dt_s``
            must be the world's tick.
        triggers: the trigger thresholds and upload budget (None: ``TriggerConfig`` at the world's tick); its
            ``dt_s`` must be the world's tick.
        engine: the inference engine's settings (its device and tick come from the run).
        compile: run the tick's pure tensor stages (sensors, world physics, conditions estimate, policy features, policy
            forward, arbiter + trigger bits, summary rows) as ``torch.compile``d graphs (ADR 0101): same random bits,
            floats within rounding of the eager tick; the first tick compiles (a minute or more on a small CPU, ~15 s
            from inductor's on-disk cache in ``~/.cache/fleetloop/inductor``).
        heartbeat_s: every vehicle closes a heartbeat (``fleetloop.edge_agent.heartbeat``) after this much simulated
            time and hands it to the sink [s] (rounded to whole ticks); None: no heartbeats.
    """

    scenario: str | tuple[ScenarioSpec, ...] = "mixed"
    weather: str | Weather = "clear"
    seed: int = 0
    device: str = "cpu"
    faults: tuple[str, ...] = ()
    respawn: bool = True
    progress_reference: bool = True
    buffer_frames: int = 64
    buffer_save_dir: str | None = None
    ground_truth_audit: bool = True
    fog_onset_s: float | None = None
    max_uncertainty_mps2: float | None = None
    arbiter: ArbiterConfig | None = None
    triggers: TriggerConfig | None = None
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(device="cpu"))
    compile: bool = False
    heartbeat_s: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.scenario, str):
            if self.scenario not in FAMILIES:
                raise FleetConfigError(f"unknown scenario {self.scenario!r}; valid scenarios: {', '.join(FAMILIES)}")
        elif not self.scenario:
            raise FleetConfigError("scenario: give a family name or at least one ScenarioSpec")
        if isinstance(self.weather, Weather):
            if self.fog_onset_s is not None:
                raise FleetConfigError("fog_onset_s goes with a weather preset name; add the fog patch to the Weather")
        elif self.weather not in PRESETS:
            raise FleetConfigError(f"unknown weather {self.weather!r}; valid weather: {', '.join(PRESETS)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise FleetConfigError(f"device {self.device!r} invalid; use cpu, cuda or cuda:N")
        if self.buffer_frames < 1:
            raise FleetConfigError(f"buffer_frames must be >= 1, got {self.buffer_frames}")
        if self.arbiter is not None and self.max_uncertainty_mps2 is not None:
            raise FleetConfigError("give max_uncertainty_mps2 or a whole arbiter configuration, not both")
        tick_s = self.world().dt_s
        if self.triggers is not None and abs(self.triggers.dt_s - tick_s) > 1e-9:
            raise FleetConfigError(f"triggers.dt_s ({self.triggers.dt_s} s) must be the world's tick ({tick_s} s)")
        if self.arbiter is not None and abs(self.arbiter.dt_s - tick_s) > 1e-9:
            raise FleetConfigError(f"arbiter.dt_s ({self.arbiter.dt_s} s) must be the world's tick ({tick_s} s)")
        parse_faults(self.faults)  # raises FaultError listing the valid faults
        if self.heartbeat_s is not None and not (math.isfinite(self.heartbeat_s) and self.heartbeat_s >= tick_s):
            raise FleetConfigError(f"heartbeat_s must be at least one tick ({tick_s} s), got {self.heartbeat_s}")

    def world(self) -> World:
        """The world this fleet drives in (its weather; the tick ``World.dt_s``)."""
        if isinstance(self.weather, Weather):
            return World(weather=self.weather)
        return World(weather=weather_preset(self.weather, seed=self.seed, fog_onset_s=self.fog_onset_s))

    def vehicle_config(self, world: World) -> VehicleConfig:
        """The on-board stack's configuration in ``world`` (arbiter, triggers, faults from this config)."""
        arbiter = self.arbiter
        if arbiter is None and self.max_uncertainty_mps2 is not None:
            arbiter = ArbiterConfig(max_uncertainty=self.max_uncertainty_mps2, dt_s=world.dt_s)
        triggers = self.triggers or TriggerConfig(dt_s=world.dt_s)
        faults = parse_faults(self.faults)
        return VehicleConfig.for_world(
            world, seed=self.seed, faults=faults, arbiter=arbiter or ArbiterConfig(dt_s=world.dt_s), triggers=triggers
        )

    def scenes(self, vehicle_ids: Sequence[int], seed: int) -> list[ScenarioSpec]:
        """The scenes ``vehicle_ids`` start (or, with a respawn seed, restart) with: drawn per id from ``seed`` for a
        family, else the fixed scenes cycled by id."""
        if isinstance(self.scenario, str):
            return draw_scenarios(self.scenario, vehicle_ids, seed)
        return [self.scenario[i % len(self.scenario)] for i in vehicle_ids]


@dataclass(frozen=True)
class TickReport:
    """What one tick changed, for progress bars and live metrics (plain numbers)."""

    tick: int
    vehicle_steps: int
    collisions: int
    near_misses: int
    fallback_activations: int
    uploaded_frames: int


class TickHook(Protocol):
    """Something on board that acts at every tick boundary (the OTA client): called after each tick with the
    runner (its ``last_tick`` outputs, ``set_model``, ``load_model``); its counts join ``FleetRunner.counts``."""

    def after_tick(self, runner: FleetRunner, report: TickReport) -> None: ...

    def counts(self) -> dict[str, Any]: ...

    def close(self, timeout_s: float) -> None: ...

    def model_slots(self) -> Sequence[str] | None:
        """The A/B slot each vehicle of the shard runs its model from, in vehicle order (None: the hook keeps
        no slots); the heartbeats report it."""
        ...


class FleetRunner:
    """Drives ``vehicle_ids`` through the world (see the module docstring).

    Args:
        config: the run's configuration.
        vehicle_ids: the ids of this shard's vehicles (unique, >= 0).
        models: version label -> policy module, loaded into the inference engine.
        initial_version: the version every vehicle starts on (None: fallback only), unless ``initial_versions``
            names another for it.
        sink: where uploaded frames go (None: nowhere; they stay in the on-board buffer).
        initial_versions: vehicle id -> the version that vehicle starts on (None: fallback only), overriding
            ``initial_version`` (canary cohorts, federated clients); every id must be one of ``vehicle_ids``.
        hooks: called at every tick boundary, in order (``TickHook``: the OTA client).
    """

    def __init__(
        self,
        config: FleetConfig,
        vehicle_ids: Sequence[int],
        models: Mapping[str, nn.Module] | None = None,
        initial_version: str | None = None,
        sink: TelemetrySink | None = None,
        initial_versions: Mapping[int, str | None] | None = None,
        hooks: Sequence[TickHook] = (),
    ) -> None:
        ids = [int(i) for i in vehicle_ids]
        if not ids:
            raise FleetConfigError("a fleet shard needs at least one vehicle id")
        if min(ids) < 0 or len(set(ids)) != len(ids):
            raise FleetConfigError("vehicle ids must be unique and >= 0")
        self.config = config
        self.device = torch.device(config.device)
        self.world = config.world()
        self.ids = torch.tensor(ids, dtype=torch.int64, device=self.device)
        self._ids_np = np.asarray(ids, dtype=np.int64)
        self.vcfg = config.vehicle_config(self.world)
        pre = self.vcfg.triggers.pre_ticks
        if config.buffer_frames < pre + 1:
            raise FleetConfigError(
                f"buffer_frames must be >= {pre + 1} (the triggers decide a frame {pre} ticks later)"
            )
        specs = config.scenes(ids, config.seed)
        self._durations = torch.tensor([s.duration_s for s in specs], dtype=torch.float32, device=self.device)
        self.state = init_state(self.world, specs, ids, config.seed, device=self.device)
        self.expert_state: WorldState | None = None
        if config.progress_reference:
            self.expert_state = init_state(self.world, specs, ids, config.seed, device=self.device)
        self.engine: InferenceEngine | None = None
        self.labels: list[str] = [NO_MODEL_LABEL]
        for label, model in (models or {}).items():
            self.load_model(label, model)
        starts = self._start_versions(ids, initial_version, initial_versions or {})
        slot_of = {v: NO_MODEL if v is None else self._engine().slot(v) for v in set(starts)}
        self.slots = torch.tensor([slot_of[v] for v in starts], dtype=torch.int64).to(self.device)
        index_of = {v: 0 if v is None else self.labels.index(v) for v in set(starts)}
        self.version_index = torch.tensor([index_of[v] for v in starts], dtype=torch.int64).to(self.device)
        self._pending: list[tuple[torch.Tensor, str | None]] = []
        self._any_model = any(v is not None for v in starts)  # some vehicle runs a model (no device sync per tick)
        n = len(ids)
        self._no_switch = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.vstate = VehicleState.init(self.vcfg, n, self.device)
        arb = self.vstate.arbiter
        # A vehicle that starts without a model starts on the fallback: that is no activation.
        self.vstate = _replace(self.vstate, arbiter=_replace(arb, on_fallback=self.slots == NO_MODEL))
        self.buffer = OnboardBuffer(self._ids_np, config.buffer_frames, self.device)
        self.buffer_path = (
            None if config.buffer_save_dir is None else Path(config.buffer_save_dir) / (shard_buffer_name(ids))
        )
        self.sink = sink
        self.hooks = tuple(hooks)
        # The last pre + 1 ticks' columns that are not in the buffer (road position, own estimate, ground truth),
        # as tensors: only the rows uploaded pre ticks later are ever copied to the host.
        self._ring: list[dict[str, torch.Tensor] | None] = [None] * (pre + 1)
        self.acc = SummaryAccumulator(self.device)
        self._status = torch.zeros(len(STATUS_NAMES), dtype=torch.int64, device=self.device)
        self._kind_lut = torch.zeros(max(KIND_CODES.values()) + 1, dtype=torch.uint8, device=self.device)
        for code, hz in _HAZARD_TYPE.items():
            self._kind_lut[code] = hz
        self._version_lut = torch.zeros(0, dtype=torch.int64, device=self.device)
        self.failures: dict[str, str] = {}
        self.respawns = 0
        self.ticks = 0
        self.last_tick: VehicleTick | None = None  # the last tick's on-board outputs (evaluations read them)
        self.last_events: Any = None  # the last tick's ``Events``
        self.last_true_ttc_s: torch.Tensor | None = None  # ground-truth TTC [B] at the start of the last tick
        self._init_heartbeats()

    def _start_versions(
        self, ids: list[int], default: str | None, per_vehicle: Mapping[int, str | None]
    ) -> list[str | None]:
        """The version each row starts on; every version named must be loaded, every id one of this runner's."""
        unknown_ids = sorted(set(per_vehicle) - set(ids))
        if unknown_ids:
            raise FleetConfigError(f"initial_versions names vehicle ids not in this fleet: {unknown_ids[:10]}")
        starts = [per_vehicle.get(i, default) for i in ids]
        for v in sorted(v for v in {default, *per_vehicle.values()} if v is not None):
            if v not in self.labels:
                raise FleetConfigError(f"initial version {v!r} is not among the models given: {self.labels[1:]}")
        return starts

    # -- models (the OTA seam) -------------------------------------------------------------------

    def _engine(self) -> InferenceEngine:
        if self.engine is None:
            self.engine = InferenceEngine(
                EngineConfig(
                    **{
                        **self.config.engine.__dict__,
                        "device": str(self.device),
                        "tick_s": self.world.dt_s,
                        "compile": self.config.engine.compile or self.config.compile,
                    }
                )
            )
        return self.engine

    def load_model(self, label: str, model: nn.Module) -> None:
        """Make version ``label`` available to ``set_model`` (refuses NaN / Inf weights)."""
        if label == NO_MODEL_LABEL:
            raise FleetConfigError(f"{NO_MODEL_LABEL!r} is reserved for vehicles without a model")
        if label not in self.labels and len(self.labels) >= MAX_VERSIONS:
            raise FleetConfigError(f"at most {MAX_VERSIONS - 1} model versions per run")
        self._engine().add_model(label, model)
        if label not in self.labels:
            self.labels.append(label)

    def set_model(self, vehicle_ids: Sequence[int] | torch.Tensor, version: str | None) -> int:
        """Switch ``vehicle_ids`` of this shard to ``version`` (None: no model) from the next tick; returns how
        many of them are in this shard. Unknown versions raise ``KeyError`` listing the loaded ones."""
        if version is not None:
            self._engine().slot(version)
        want = torch.as_tensor(vehicle_ids, dtype=torch.int64).to(self.device)
        mask = torch.isin(self.ids, want)
        self._pending.append((mask, version))
        return int(mask.sum())

    @property
    def status_counts(self) -> np.ndarray:
        """Vehicle-ticks per inference status (``STATUS_NAMES`` order)."""
        return self._status.cpu().numpy()

    def _apply_pending(self) -> torch.Tensor:
        if not self._pending:
            return self._no_switch
        switched = torch.zeros_like(self.slots, dtype=torch.bool)
        for mask, version in self._pending:
            slot = NO_MODEL if version is None else self._engine().slot(version)
            vidx = self.labels.index(version) if version is not None else 0
            changed = mask & (self.slots != slot)
            switched |= changed
            self.slots = torch.where(mask, torch.full_like(self.slots, slot), self.slots)
            self.version_index = torch.where(mask, torch.full_like(self.version_index, vidx), self.version_index)
        self._pending.clear()
        self._any_model = bool((self.slots != NO_MODEL).any())
        return switched & (self.slots != NO_MODEL)

    # -- scenes ------------------------------------------------------------------------------------

    def _respawn(self, done: torch.Tensor) -> None:
        idx = torch.nonzero(done).squeeze(-1)
        ids = self.ids[idx].tolist()
        specs = self.config.scenes(ids, self.config.seed * RESPAWN_SEED_MULT + self.state.tick + 1)
        self.state = respawn(self.world, self.state, done, specs)
        if self.expert_state is not None:
            self.expert_state = respawn(self.world, self.expert_state, done, specs)
        self._durations[idx] = torch.tensor([s.duration_s for s in specs], dtype=torch.float32, device=self.device)
        self.vstate = self.vstate.reset_rows(done)
        self.respawns += len(ids)

    # -- one tick ----------------------------------------------------------------------------------

    def step(self) -> TickReport:
        """Advance the shard by one tick."""
        tick = self.state.tick
        switched = self._apply_pending()
        comp = self.config.compile
        obs = observe(self.world, self.state, compiled=comp)
        engine = self.engine if self._any_model else None
        t0 = time.perf_counter()
        self.vstate, vt = vehicle_step(
            self.vcfg,
            self.vstate,
            obs,
            engine,
            self.slots,
            self.ids,
            tick,
            switched,
            self.state.ego_v0_mps,
            compiled=comp,
        )
        if engine is not None:
            self.acc.add_wall_latency(time.perf_counter() - t0)  # the whole on-board step, inference included
        expert_dist = torch.zeros_like(self.state.ego_v_mps)
        if self.expert_state is not None:
            e_cmd = expert_control(self.world, self.expert_state)
            e_next = step(self.world, self.expert_state, e_cmd, self.world.dt_s, compiled=comp)
            expert_dist = (e_next.ego_s_m - self.expert_state.ego_s_m).to(torch.float32)
            self.expert_state = e_next
        nxt = step(self.world, self.state, vt.command_mps2, self.world.dt_s, compiled=comp)
        ev = detect_events(self.world, self.state, nxt)
        self._accumulate(vt, ev, expert_dist)
        self._heartbeat_tick(vt, ev.collision)
        self.last_tick, self.last_events, self.last_true_ttc_s = vt, ev, self.state.ttc_s
        done = nxt.collided | (nxt.scene_t_s >= self._durations - 1e-4) if self.config.respawn else None
        # Every number the host needs from this tick, in one transfer (one device sync).
        up = vt.upload.upload if vt.upload.frame_tick >= 0 else self._no_switch
        counts = [ev.collision, ev.near_miss, vt.decision.started, up] + ([] if done is None else [done])
        n_coll, n_near, n_started, n_up, *n_done = torch.stack([c.sum() for c in counts]).tolist()
        uploaded = self._record_frame(tick, vt, int(n_up))
        self.state = nxt
        self.ticks += 1
        if done is not None and n_done[0] > 0:
            self._respawn(done)
        if self.buffer_path is not None and self.ticks % self.config.buffer_frames == 0:
            self.buffer.save(self.buffer_path)  # the ring turned over once: every frame in it is new
        report = TickReport(
            tick=tick,
            vehicle_steps=int(self.ids.shape[0]),
            collisions=int(n_coll),
            near_misses=int(n_near),
            fallback_activations=int(n_started),
            uploaded_frames=uploaded,
        )
        for hook in self.hooks:
            hook.after_tick(self, report)
        return report

    def _accumulate(self, vt: VehicleTick, ev: Any, expert_dist: torch.Tensor) -> None:
        d, st = vt.decision, self.state
        args = (ev, d.driver, d.reason, d.started, vt.policy.deadline_missed, expert_dist)
        conds = (st.visibility_m, st.light, st.rain)
        build = compile_graph(summary_rows) if self.config.compile else summary_rows
        rows, cond = build(*args, *conds)
        self.acc.add(self.version_index, cond, rows, checked=True)  # load_model keeps versions < MAX_VERSIONS
        self.acc.add_sim_latency(vt.policy.latency_s, self.slots != NO_MODEL)
        self._status += torch.bincount(vt.policy.status.to(torch.int64), minlength=len(STATUS_NAMES))
        for version, failure in vt.policy.failures.items():
            self.failures.setdefault(version, str(failure))

    # -- frames: buffer and uploads ----------------------------------------------------------------

    def _record_frame(self, tick: int, vt: VehicleTick, n_upload: int) -> int:
        obs, d, p = vt.obs, vt.decision, vt.policy
        ran = p.valid
        n = self.ids.shape[0]
        stamp = torch.full((n,), tick, dtype=torch.int64, device=self.device)
        if self._version_lut.shape[0] != len(self.labels):
            self._version_lut = torch.from_numpy(self._version_numbers().astype(np.int64)).to(self.device)
        frame = {
            "tick": stamp,
            "seq": stamp,
            "model_version": self._version_lut[self.version_index],
            "camera": (compile_graph(pack_camera_tensor) if self.config.compile else pack_camera_tensor)(obs.camera),
            "camera_valid": obs.camera_valid,
            "lidar_range_m": obs.lidar_range_m,
            "radar_range_m": obs.radar_range_m,
            "radar_range_rate_mps": obs.radar_range_rate_mps,
            "radar_azimuth_rad": obs.radar_azimuth_rad,
            "radar_valid": obs.radar_valid,
            "ego_speed_mps": obs.ego_speed_mps,
            "ego_accel_mps2": obs.ego_accel_mps2,
            "command_accel_mps2": vt.command_mps2,
            "driver": d.driver,
            "fallback_reason": d.reason,
            "fallback_stage": vt.fallback.stage,
            "hazard_prob": torch.where(ran, p.hazard_prob, float("nan")),
            "uncertainty": torch.where(ran, p.uncertainty_mps2, float("nan")),
            "trigger_bits": vt.upload.current_bits,
            "uploaded": self._no_switch,
        }
        self.buffer.append_tensors(frame)
        pre = self.vcfg.triggers.pre_ticks
        if self.sink is not None:
            extra = {
                "road_pos_m": self.state.ego_s_m,
                "est_visibility_m": vt.estimate.visibility_m,
                "est_light": vt.estimate.light,
                "est_friction": vt.estimate.friction,
            }
            if self.config.ground_truth_audit:
                extra.update(self._ground_truth_columns(tick))
            self._ring[tick % (pre + 1)] = extra
        up = vt.upload
        if up.frame_tick < 0 or n_upload == 0:
            return 0
        rows = torch.nonzero(up.upload).squeeze(-1)
        self.buffer.mark_uploaded(rows, pre)
        if self.sink is not None:
            old = self._ring[up.frame_tick % (pre + 1)]
            if old is None:  # unreachable: the ring holds the last pre + 1 ticks
                raise RuntimeError(f"frame of tick {up.frame_tick} is no longer in the upload ring")
            self.sink.submit(self._uploaded(rows, old, up.bits[rows]))
        return n_upload

    def _version_numbers(self) -> np.ndarray:
        return np.asarray([version_number(None if i == 0 else lab) for i, lab in enumerate(self.labels)], np.uint16)

    def _ground_truth_columns(self, tick: int) -> dict[str, torch.Tensor]:
        gt = ground_truth(self.world, self.state)
        gap = gt.in_path_gap_m
        present = gap < FAR_GAP_M
        # The in-path obstacle's kind: the actor ahead whose rear is at the in-path gap.
        rear = torch.where(gt.actor_kind > 0, gt.actor_x_m - self.state.actor_len_m, 1e9)
        nearest = (rear - gap.unsqueeze(-1)).abs().argmin(-1, keepdim=True)
        kind = torch.gather(gt.actor_kind, -1, nearest).squeeze(-1)
        return {
            "gt.true_hazard_dist_m": torch.where(present, gap, float("inf")),
            "gt.true_hazard_type": torch.where(present, self._kind_lut[kind], 0),
            "gt.true_ttc_s": gt.ttc_s,
            "gt.true_visibility_m": gt.visibility_m,
            "gt.true_friction": gt.friction,
            "gt.is_night": (gt.light < NIGHT_LIGHT).to(torch.uint8),
            "gt.expert_accel_mps2": gt.expert_accel_mps2,
        }

    def _uploaded(self, rows: torch.Tensor, extra: Mapping[str, torch.Tensor], bits: torch.Tensor) -> Any:
        pre = self.vcfg.triggers.pre_ticks
        names = (
            "seq",
            "tick",
            "model_version",
            "camera",
            "lidar_range_m",
            "radar_range_m",
            "radar_range_rate_mps",
            "radar_azimuth_rad",
            "radar_valid",
            "ego_speed_mps",
            "ego_accel_mps2",
            "command_accel_mps2",
            "driver",
            "fallback_reason",
            "hazard_prob",
            "uncertainty",
        )
        c = self.buffer.gather(rows, pre, names)
        ex = {k: v[rows].cpu().numpy() for k, v in extra.items()}
        radar_bits = np.packbits(c["radar_valid"], axis=1, bitorder="little")[:, 0]
        tel = {
            "seq": c["seq"],
            "tick": c["tick"],
            "model_version": c["model_version"],
            "road_pos_m": ex["road_pos_m"],
            "camera": c["camera"],
            "lidar_range_m": c["lidar_range_m"],
            "radar_range_m": c["radar_range_m"],
            "radar_range_rate_mps": c["radar_range_rate_mps"],
            "radar_azimuth_rad": c["radar_azimuth_rad"],
            "radar_valid_bits": radar_bits,
            "ego_speed_mps": c["ego_speed_mps"],
            "ego_accel_mps2": c["ego_accel_mps2"],
            "command_accel_mps2": c["command_accel_mps2"],
            "driver": c["driver"],
            "fallback_reason": c["fallback_reason"],
            "hazard_prob": c["hazard_prob"],
            "uncertainty": c["uncertainty"],
            "est_visibility_m": ex["est_visibility_m"],
            "est_friction": ex["est_friction"],
            "trigger_flags": bits.cpu().numpy().astype(np.uint16),
            "est_light": ex["est_light"],
        }
        gt = None
        if "gt.true_ttc_s" in ex:
            gt = {k[3:]: v for k, v in ex.items() if k.startswith("gt.")}
            gt["seq"] = tel["seq"]
            gt["tick"] = tel["tick"]
        return UploadedFrames(self._ids_np[rows.cpu().numpy()], tel, gt)

    # -- running -------------------------------------------------------------------------------------

    def run(self, ticks: int, on_tick: Callable[[TickReport], None] | None = None) -> FleetSummary:
        """Advance ``ticks`` ticks (calling ``on_tick`` after each) and return the summary so far."""
        if ticks < 1:
            raise UserInputError(f"ticks must be >= 1, got {ticks}")
        for _ in range(ticks):
            report = self.step()
            if on_tick is not None:
                on_tick(report)
        return self.summary()

    def counts(self) -> dict[str, Any]:
        """Counters beside the event sums: uploads, buffer, inference status, fallback episodes, telemetry."""
        tri = self.vstate.triggers.totals()
        arb = self.vstate.arbiter.totals()
        out: dict[str, Any] = {
            "uploads": {
                "frames_uploaded": int(sum(tri["uploaded"].values())),
                "uploaded_by_reason": tri["uploaded"],
                "refused_by_budget": tri["refused_by_budget"],
                "uploaded_by_condition": tri["uploaded_by_condition"],
                "frames_decided": tri["decided"]["frames"],
            },
            "buffer": {
                "frames_written": int(self.buffer.written.sum()),
                "frames_overwritten": int(self.buffer.overwritten.sum()),
            },
            "inference_status": dict(zip(STATUS_NAMES, self._status.tolist(), strict=True)),
            "fallback_episodes": {"ended": arb["episodes_ended"], "ended_ticks": arb["ended_ticks"]},
            "respawns": self.respawns,
        }
        if self.failures:
            out["model_failures"] = {v: 1 for v in self.failures}
        if self.sink is not None:
            out["telemetry"] = _numeric(self.sink.stats())
        out.update(self.hook_counts())
        return out

    def hook_counts(self) -> dict[str, Any]:
        """The hooks' counts so far (with OTA: statuses, fetches, shadow mode's sums), for live metrics."""
        out: dict[str, Any] = {}
        for hook in self.hooks:
            out.update(hook.counts())
        return out

    def group_sums(self) -> dict[str, dict[str, dict[str, float]]]:
        """The summed columns so far by model version and condition (``FleetSummary.groups``), for live metrics."""
        return self.acc.result(self.labels, int(self.ids.shape[0]), self.ticks, self.world.dt_s).groups

    def summary(self) -> FleetSummary:
        """The run's sums so far."""
        return self.acc.result(self.labels, int(self.ids.shape[0]), self.ticks, self.world.dt_s, self.counts())

    def close(self, timeout_s: float = 30.0) -> FleetSummary:
        """Close the hooks and the telemetry sink (delivering what they can, the last partial heartbeat included),
        save the on-board buffer when asked to, and return the final summary."""
        for hook in self.hooks:
            hook.close(timeout_s)
        self._emit_heartbeats()
        if self.sink is not None:
            self.sink.close(timeout_s)
        if self.buffer_path is not None and self.ticks % self.config.buffer_frames != 0:
            self.buffer.save(self.buffer_path)  # (a turn-over tick has just saved it)
        return self.summary()

    # -- heartbeats (FleetConfig.heartbeat_s) --------------------------------------------------------

    def _init_heartbeats(self) -> None:
        """Heartbeats need a sink to go to and a period; without either the tick does no heartbeat work."""
        period_s = self.config.heartbeat_s
        self._hb_cfg = HeartbeatConfig(dt_s=self.world.dt_s)
        self._hb_ticks = 0 if period_s is None or self.sink is None else max(1, round(period_s / self.world.dt_s))
        self._hb_state = HeartbeatState.init(int(self.ids.shape[0]), self.device) if self._hb_ticks else None
        self._hb_seq = 0
        self._hb_since = 0  # ticks in the open beat

    def _heartbeat_tick(self, vt: VehicleTick, impact: torch.Tensor) -> None:
        """Add this tick to every vehicle's open beat (the set speed of the scene it drove); close it when due."""
        if self._hb_state is None:
            return
        sig = signals_from_tick(vt, impact, self.state.ego_v0_mps)
        self._hb_state = heartbeat_step(self._hb_cfg, self._hb_state, sig)
        self._hb_since += 1
        if self._hb_since >= self._hb_ticks:
            self._emit_heartbeats()

    def _emit_heartbeats(self) -> None:
        """Close the open beat and hand every vehicle's heartbeat to the sink (keys: the plain vehicle ids)."""
        if self._hb_state is None or self.sink is None or self._hb_since == 0:
            return
        self._hb_seq += 1
        numbers = self._version_numbers()[self.version_index.cpu().numpy()].tolist()
        keys = [str(i) for i in self._ids_np.tolist()]
        slots: Sequence[str] = [""] * len(keys)  # no OTA client: no slots
        for hook in self.hooks:
            slots = hook.model_slots() or slots
        self._hb_state, beats = emit_heartbeats(self._hb_cfg, self._hb_state, keys, numbers, slots, self._hb_seq)
        self._hb_since = 0
        self.sink.submit_heartbeats(beats)


def _numeric(d: Mapping[str, Any]) -> dict[str, Any]:
    """Only the numbers of a stats dict (what merges across shards)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out[k] = _numeric(v)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = v
    return out


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)
