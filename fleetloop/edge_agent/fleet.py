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

Imports torch, numpy, ``fleetloop.sim`` and the edge_agent numeric core only; telemetry goes through a
``TelemetrySink`` the caller passes (``fleetloop.edge_agent.telemetry``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fleetloop.edge_agent.arbiter import REASON_NAMES
from fleetloop.edge_agent.buffer import OnboardBuffer, pack_camera
from fleetloop.edge_agent.faults import parse_faults
from fleetloop.edge_agent.inference import NO_MODEL, STATUS_NAMES, EngineConfig, InferenceEngine
from fleetloop.edge_agent.summary import (
    COL,
    COLUMNS,
    NO_MODEL_LABEL,
    FleetSummary,
    SummaryAccumulator,
    condition_codes,
)
from fleetloop.edge_agent.telemetry import TelemetrySink, UploadedFrames
from fleetloop.edge_agent.vehicle_step import VehicleConfig, VehicleState, VehicleTick, vehicle_step
from fleetloop.sim import (
    FAMILIES,
    PRESETS,
    ScenarioSpec,
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
from fleetloop.sim.state import KIND_CODES

__all__ = ["FleetConfig", "FleetRunner", "TickReport", "version_number"]

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


@dataclass(frozen=True)
class FleetConfig:
    """What the fleet drives and how.

    Attributes:
        scenario: a family of ``fleetloop.sim.FAMILIES`` or fixed scenes (vehicle id i drives
            ``scenario[i % len(scenario)]``, again after each respawn).
        weather: a ``fleetloop.sim.PRESETS`` name.
        seed: keys every random draw (scenes, sensors, faults, latency jitter, upload sample).
        device: torch device of the world and the vehicles ("cpu", "cuda", "cuda:1").
        faults: ``--inject`` strings (``fleetloop.edge_agent.faults``).
        respawn: start a new scene where one ended (duration reached or crashed); else the scene stays.
        progress_reference: also drive the same scenes with the expert, to report progress against it.
        buffer_frames: on-board ring size per vehicle [frames] (at least the triggers' pre-trigger ticks + 1).
        ground_truth_audit: pass the ground truth of uploaded frames to the sink (the audit topic).
        fog_onset_s: with it, a fog bank rolls in at this simulated time (``weather_preset(fog_onset_s=...)``).
    """

    scenario: str | tuple[ScenarioSpec, ...] = "mixed"
    weather: str = "clear"
    seed: int = 0
    device: str = "cpu"
    faults: tuple[str, ...] = ()
    respawn: bool = True
    progress_reference: bool = True
    buffer_frames: int = 64
    ground_truth_audit: bool = True
    fog_onset_s: float | None = None
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(device="cpu"))

    def __post_init__(self) -> None:
        if isinstance(self.scenario, str):
            if self.scenario not in FAMILIES:
                raise ValueError(f"unknown scenario {self.scenario!r}; valid scenarios: {', '.join(FAMILIES)}")
        elif not self.scenario:
            raise ValueError("scenario: give a family name or at least one ScenarioSpec")
        if self.weather not in PRESETS:
            raise ValueError(f"unknown weather {self.weather!r}; valid weather: {', '.join(PRESETS)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device {self.device!r} invalid; use cpu, cuda or cuda:N")
        parse_faults(self.faults)  # raises FaultError listing the valid faults


@dataclass(frozen=True)
class TickReport:
    """What one tick changed, for progress bars and live metrics (plain numbers)."""

    tick: int
    vehicle_steps: int
    collisions: int
    near_misses: int
    fallback_activations: int
    uploaded_frames: int


class FleetRunner:
    """Drives ``vehicle_ids`` through the world (see the module docstring).

    Args:
        config: the run's configuration.
        vehicle_ids: the ids of this shard's vehicles (unique, >= 0).
        models: version label -> policy module, loaded into the inference engine.
        initial_version: the version every vehicle starts on (None: fallback only).
        sink: where uploaded frames go (None: nowhere; they stay in the on-board buffer).
    """

    def __init__(
        self,
        config: FleetConfig,
        vehicle_ids: Sequence[int],
        models: Mapping[str, nn.Module] | None = None,
        initial_version: str | None = None,
        sink: TelemetrySink | None = None,
    ) -> None:
        ids = [int(i) for i in vehicle_ids]
        if not ids:
            raise ValueError("a fleet shard needs at least one vehicle id")
        if min(ids) < 0 or len(set(ids)) != len(ids):
            raise ValueError("vehicle ids must be unique and >= 0")
        self.config = config
        self.device = torch.device(config.device)
        weather = weather_preset(config.weather, seed=config.seed, fog_onset_s=config.fog_onset_s)
        self.world = World(weather=weather)
        self.ids = torch.tensor(ids, dtype=torch.int64, device=self.device)
        self._ids_np = np.asarray(ids, dtype=np.int64)
        self.vcfg = VehicleConfig.for_world(self.world, seed=config.seed, faults=parse_faults(config.faults))
        pre = self.vcfg.triggers.pre_ticks
        if config.buffer_frames < pre + 1:
            raise ValueError(f"buffer_frames must be >= {pre + 1} (the triggers decide a frame {pre} ticks later)")
        specs = self._draw(ids, config.seed)
        self._durations = torch.tensor([s.duration_s for s in specs], dtype=torch.float32, device=self.device)
        self.state = init_state(self.world, specs, ids, config.seed, device=self.device)
        self.expert_state: WorldState | None = None
        if config.progress_reference:
            self.expert_state = init_state(self.world, specs, ids, config.seed, device=self.device)
        self.engine: InferenceEngine | None = None
        self.labels: list[str] = [NO_MODEL_LABEL]
        for label, model in (models or {}).items():
            self.load_model(label, model)
        if initial_version is not None and initial_version not in self.labels:
            raise ValueError(f"initial version {initial_version!r} is not among the models given: {self.labels[1:]}")
        n = len(ids)
        start = NO_MODEL if initial_version is None else self._engine().slot(initial_version)
        self.slots = torch.full((n,), start, dtype=torch.int64, device=self.device)
        self.version_index = torch.full(
            (n,), 0 if initial_version is None else self.labels.index(initial_version), dtype=torch.int64
        ).to(self.device)
        self._pending: list[tuple[torch.Tensor, str | None]] = []
        self.vstate = VehicleState.init(self.vcfg, n, self.device)
        arb = self.vstate.arbiter
        # A vehicle that starts without a model starts on the fallback: that is no activation.
        self.vstate = _replace(self.vstate, arbiter=_replace(arb, on_fallback=self.slots == NO_MODEL))
        self.buffer = OnboardBuffer(self._ids_np, config.buffer_frames)
        self.sink = sink
        self._ring: list[dict[str, np.ndarray] | None] = [None] * (pre + 1)
        self.acc = SummaryAccumulator(self.device)
        self.status_counts = np.zeros(len(STATUS_NAMES), dtype=np.int64)
        self.failures: dict[str, str] = {}
        self.respawns = 0
        self.ticks = 0
        self.last_tick: VehicleTick | None = None  # the last tick's on-board outputs (evaluations read them)
        self.last_events: Any = None  # the last tick's ``Events``
        self.last_true_ttc_s: torch.Tensor | None = None  # ground-truth TTC [B] at the start of the last tick

    # -- models (the OTA seam) -------------------------------------------------------------------

    def _engine(self) -> InferenceEngine:
        if self.engine is None:
            self.engine = InferenceEngine(
                EngineConfig(**{**self.config.engine.__dict__, "device": str(self.device), "tick_s": self.world.dt_s})
            )
        return self.engine

    def load_model(self, label: str, model: nn.Module) -> None:
        """Make version ``label`` available to ``set_model`` (refuses NaN / Inf weights)."""
        if label == NO_MODEL_LABEL:
            raise ValueError(f"{NO_MODEL_LABEL!r} is reserved for vehicles without a model")
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

    def _apply_pending(self) -> torch.Tensor:
        switched = torch.zeros_like(self.slots, dtype=torch.bool)
        for mask, version in self._pending:
            slot = NO_MODEL if version is None else self._engine().slot(version)
            vidx = self.labels.index(version) if version is not None else 0
            changed = mask & (self.slots != slot)
            switched |= changed
            self.slots = torch.where(mask, torch.full_like(self.slots, slot), self.slots)
            self.version_index = torch.where(mask, torch.full_like(self.version_index, vidx), self.version_index)
        self._pending.clear()
        return switched & (self.slots != NO_MODEL)

    # -- scenes ------------------------------------------------------------------------------------

    def _draw(self, ids: Sequence[int], seed: int) -> list[ScenarioSpec]:
        sc = self.config.scenario
        if isinstance(sc, str):
            return draw_scenarios(sc, ids, seed)
        return [sc[i % len(sc)] for i in ids]

    def _respawn(self, done: torch.Tensor) -> None:
        idx = torch.nonzero(done).squeeze(-1)
        ids = self.ids[idx].tolist()
        specs = self._draw(ids, self.config.seed * RESPAWN_SEED_MULT + self.state.tick + 1)
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
        obs = observe(self.world, self.state)
        engine = self.engine if bool((self.slots != NO_MODEL).any()) else None
        t0 = time.perf_counter()
        self.vstate, vt = vehicle_step(
            self.vcfg, self.vstate, obs, engine, self.slots, self.ids, tick, switched, self.state.ego_v0_mps
        )
        if engine is not None:
            self.acc.add_wall_latency(time.perf_counter() - t0)  # the whole on-board step, inference included
        expert_dist = torch.zeros_like(self.state.ego_v_mps)
        if self.expert_state is not None:
            e_next = step(self.world, self.expert_state, expert_control(self.world, self.expert_state), self.world.dt_s)
            expert_dist = (e_next.ego_s_m - self.expert_state.ego_s_m).to(torch.float32)
            self.expert_state = e_next
        nxt = step(self.world, self.state, vt.command_mps2, self.world.dt_s)
        ev = detect_events(self.world, self.state, nxt)
        self._accumulate(vt, ev, expert_dist)
        self.last_tick, self.last_events, self.last_true_ttc_s = vt, ev, self.state.ttc_s
        uploaded = self._record_frame(tick, vt)
        self.state = nxt
        self.ticks += 1
        if self.config.respawn:
            done = nxt.collided | (nxt.scene_t_s >= self._durations - 1e-4)
            if bool(done.any()):
                self._respawn(done)
        return TickReport(
            tick=tick,
            vehicle_steps=int(self.ids.shape[0]),
            collisions=int(ev.collision.sum()),
            near_misses=int(ev.near_miss.sum()),
            fallback_activations=int(vt.decision.started.sum()),
            uploaded_frames=uploaded,
        )

    def _accumulate(self, vt: VehicleTick, ev: Any, expert_dist: torch.Tensor) -> None:
        d = vt.decision
        rows = torch.zeros(self.ids.shape[0], len(COLUMNS), dtype=torch.float32, device=self.device)
        rows[:, COL["vehicle_ticks"]] = 1.0
        rows[:, COL["distance_m"]] = ev.distance_m
        rows[:, COL["expert_distance_m"]] = expert_dist
        rows[:, COL["collisions"]] = ev.collision.float()
        rows[:, COL["near_misses"]] = ev.near_miss.float()
        rows[:, COL["hard_brakes"]] = ev.hard_brake.float()
        rows[:, COL["phantom_brakes"]] = ev.phantom_brake.float()
        rows[:, COL["harsh_jerks"]] = ev.harsh_jerk.float()
        rows[:, COL["impact_speed_sum_mps"]] = ev.impact_speed_mps
        rows[:, COL["model_ticks"]] = (d.driver == 0).float()
        rows[:, COL["fallback_ticks"]] = (d.driver != 0).float()
        rows[:, COL["deadline_misses"]] = vt.policy.deadline_missed.float()
        first = COL["activations.deadline"]
        one_hot = torch.nn.functional.one_hot(d.reason, len(REASON_NAMES))[:, 1:].float()
        rows[:, first : first + one_hot.shape[1]] = one_hot * d.started.unsqueeze(-1).float()
        cond = condition_codes(self.state.visibility_m, self.state.light, self.state.rain)
        self.acc.add(self.version_index, cond, rows)
        ran = self.slots != NO_MODEL
        self.acc.add_sim_latency(vt.policy.latency_s[ran])
        self.status_counts += torch.bincount(
            vt.policy.status.to(torch.int64).cpu(), minlength=len(STATUS_NAMES)
        ).numpy()
        for version, failure in vt.policy.failures.items():
            self.failures.setdefault(version, str(failure))

    # -- frames: buffer and uploads ----------------------------------------------------------------

    def _record_frame(self, tick: int, vt: VehicleTick) -> int:
        obs, d, p = vt.obs, vt.decision, vt.policy
        nan = torch.full_like(p.hazard_prob, float("nan"))
        ran = p.valid
        frame = {
            "tick": np.full(len(self._ids_np), tick, dtype=np.uint32),
            "seq": np.full(len(self._ids_np), tick, dtype=np.uint32),
            "model_version": self._version_numbers()[self.version_index.cpu().numpy()],
            "camera": pack_camera(obs.camera.cpu().numpy()),
            "camera_valid": obs.camera_valid.cpu().numpy(),
            "lidar_range_m": obs.lidar_range_m.cpu().numpy(),
            "radar_range_m": obs.radar_range_m.cpu().numpy(),
            "radar_range_rate_mps": obs.radar_range_rate_mps.cpu().numpy(),
            "radar_azimuth_rad": obs.radar_azimuth_rad.cpu().numpy(),
            "radar_valid": obs.radar_valid.cpu().numpy(),
            "ego_speed_mps": obs.ego_speed_mps.cpu().numpy(),
            "ego_accel_mps2": obs.ego_accel_mps2.cpu().numpy(),
            "command_accel_mps2": vt.command_mps2.cpu().numpy(),
            "driver": d.driver.cpu().numpy(),
            "fallback_reason": d.reason.cpu().numpy(),
            "fallback_stage": vt.fallback.stage.cpu().numpy(),
            "hazard_prob": torch.where(ran, p.hazard_prob, nan).cpu().numpy(),
            "uncertainty": torch.where(ran, p.uncertainty_mps2, nan).cpu().numpy(),
            "trigger_bits": vt.upload.current_bits.cpu().numpy(),
            "uploaded": np.zeros(len(self._ids_np), dtype=bool),
        }
        self.buffer.append(frame)
        pre = self.vcfg.triggers.pre_ticks
        extra: dict[str, np.ndarray] = {
            "road_pos_m": self.state.ego_s_m.cpu().numpy(),
            "est_visibility_m": vt.estimate.visibility_m.cpu().numpy(),
            "est_friction": vt.estimate.friction.cpu().numpy(),
        }
        if self.sink is not None and self.config.ground_truth_audit:
            extra.update(self._ground_truth_columns(tick))
        self._ring[tick % (pre + 1)] = extra
        up = vt.upload
        if up.frame_tick < 0:
            return 0
        rows = np.flatnonzero(up.upload.cpu().numpy())
        if rows.size == 0:
            return 0
        slot = (self.buffer.written[rows] - 1 - pre) % self.buffer.capacity
        self.buffer.columns["uploaded"][rows, slot] = True
        if self.sink is not None:
            old = self._ring[up.frame_tick % (pre + 1)]
            if old is None:  # unreachable: the ring holds the last pre + 1 ticks
                raise RuntimeError(f"frame of tick {up.frame_tick} is no longer in the upload ring")
            bits = up.bits.cpu().numpy()[rows]
            self.sink.submit(self._uploaded(rows, slot, old, bits))
        return int(rows.size)

    def _version_numbers(self) -> np.ndarray:
        return np.asarray([version_number(None if i == 0 else lab) for i, lab in enumerate(self.labels)], np.uint16)

    def _ground_truth_columns(self, tick: int) -> dict[str, np.ndarray]:
        gt = ground_truth(self.world, self.state)
        gap = gt.in_path_gap_m
        present = gap < FAR_GAP_M
        # The in-path obstacle's kind: the actor ahead whose rear is at the in-path gap.
        rear = torch.where(gt.actor_kind > 0, gt.actor_x_m - self.state.actor_len_m, torch.full_like(gt.actor_x_m, 1e9))
        nearest = (rear - gap.unsqueeze(-1)).abs().argmin(-1, keepdim=True)
        kind = torch.gather(gt.actor_kind, -1, nearest).squeeze(-1).cpu().numpy()
        lut = np.zeros(max(KIND_CODES.values()) + 1, dtype=np.uint8)
        for code, hz in _HAZARD_TYPE.items():
            lut[code] = hz
        present_np = present.cpu().numpy()
        return {
            "gt.true_hazard_dist_m": np.where(present_np, gap.cpu().numpy(), np.inf),
            "gt.true_hazard_type": np.where(present_np, lut[kind], 0).astype(np.uint8),
            "gt.true_ttc_s": gt.ttc_s.cpu().numpy(),
            "gt.true_visibility_m": gt.visibility_m.cpu().numpy(),
            "gt.true_friction": gt.friction.cpu().numpy(),
            "gt.is_night": (gt.light < NIGHT_LIGHT).cpu().numpy().astype(np.uint8),
            "gt.expert_accel_mps2": gt.expert_accel_mps2.cpu().numpy(),
        }

    def _uploaded(self, rows: np.ndarray, slot: np.ndarray, extra: Mapping[str, np.ndarray], bits: np.ndarray) -> Any:
        c = self.buffer.columns

        def col(name: str) -> np.ndarray:
            return np.asarray(c[name][rows, slot])

        radar_bits = np.packbits(col("radar_valid"), axis=1, bitorder="little")[:, 0]
        tel = {
            "seq": col("seq"),
            "tick": col("tick"),
            "model_version": col("model_version"),
            "road_pos_m": extra["road_pos_m"][rows],
            "camera": col("camera"),
            "lidar_range_m": col("lidar_range_m"),
            "radar_range_m": col("radar_range_m"),
            "radar_range_rate_mps": col("radar_range_rate_mps"),
            "radar_azimuth_rad": col("radar_azimuth_rad"),
            "radar_valid_bits": radar_bits,
            "ego_speed_mps": col("ego_speed_mps"),
            "ego_accel_mps2": col("ego_accel_mps2"),
            "command_accel_mps2": col("command_accel_mps2"),
            "driver": col("driver"),
            "fallback_reason": col("fallback_reason"),
            "hazard_prob": col("hazard_prob"),
            "uncertainty": col("uncertainty"),
            "est_visibility_m": extra["est_visibility_m"][rows],
            "est_friction": extra["est_friction"][rows],
            "trigger_flags": bits.astype(np.uint16),
        }
        gt = None
        if "gt.true_ttc_s" in extra:
            gt = {k[3:]: v[rows] for k, v in extra.items() if k.startswith("gt.")}
            gt["seq"] = tel["seq"]
            gt["tick"] = tel["tick"]
        return UploadedFrames(self._ids_np[rows], tel, gt)

    # -- running -------------------------------------------------------------------------------------

    def run(self, ticks: int, on_tick: Callable[[TickReport], None] | None = None) -> FleetSummary:
        """Advance ``ticks`` ticks (calling ``on_tick`` after each) and return the summary so far."""
        if ticks < 1:
            raise ValueError(f"ticks must be >= 1, got {ticks}")
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
                "frames_decided": tri["decided"]["frames"],
            },
            "buffer": {
                "frames_written": int(self.buffer.written.sum()),
                "frames_overwritten": int(self.buffer.overwritten.sum()),
            },
            "inference_status": dict(zip(STATUS_NAMES, self.status_counts.tolist(), strict=True)),
            "fallback_episodes": {"ended": arb["episodes_ended"], "ended_ticks": arb["ended_ticks"]},
            "respawns": self.respawns,
        }
        if self.failures:
            out["model_failures"] = {v: 1 for v in self.failures}
        if self.sink is not None:
            out["telemetry"] = _numeric(self.sink.stats())
        return out

    def summary(self) -> FleetSummary:
        """The run's sums so far."""
        return self.acc.result(self.labels, int(self.ids.shape[0]), self.ticks, self.world.dt_s, self.counts())

    def close(self, timeout_s: float = 30.0) -> FleetSummary:
        """Close the telemetry sink (delivering what it can) and return the final summary."""
        if self.sink is not None:
            self.sink.close(timeout_s)
        return self.summary()


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
