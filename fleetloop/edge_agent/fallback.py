"""The rule-based fallback: model-independent longitudinal control from the vehicle's own radar and lidar.

Three layers, batched over vehicles (tensors [B]); see docs/fallback.md for the thresholds and their sources:

1. Following control: IDM (Treiber et al. 2000) behind the nearest *perceived* in-path obstacle.
2. Staged emergency braking from time-to-collision (TTC), the stages of production AEB systems and of the
   Euro NCAP AEB C2C test protocol: forward-collision warning, partial braking, full braking. The literature
   thresholds (FCW ~2.6 s, partial ~1.6 s, full ~0.9-1.0 s) assume a brake system that acts at once; ours are
   shifted by the world's dead time plus the brake build-up, and a deceleration criterion scales them with the
   friction the vehicle believes it has.
3. Minimal-risk manoeuvre (MRM): a gentle stop to standstill when the sensors fail (debounced, see ``sensor_ok``).

Perception (``perceive_in_path``) fuses radar and lidar the way production AEB does against radar ghosts:
a *moving* radar target in the corridor is trusted; a *stationary* one (overhead signs, bridges, clutter) needs a
lidar return at about the same range; lidar alone needs two adjacent beams that agree (fog backscatter hits
single beams at random ranges).

Path prediction (ADR 0112): the fallback also tracks the in-path obstacle's lateral position (radar azimuth, or the
lidar returns at its range) and its lateral speed, and reports ``clearing`` where the obstacle moves out of the
corridor and will have left it before the ego gets there (a pedestrian who has crossed the lane, walking on). The
fallback's own stages and command ignore it (fallback alone is unchanged); the arbiter uses it to keep a TTC stage
from overriding a model for an obstacle that is leaving the path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from fleetloop.sim.compile import const_table, materialize
from fleetloop.sim.sensors import LIDAR_BEAM_COS, LIDAR_BEAM_SIN, LIDAR_BEAMS, LIDAR_MAX_RANGE_M, Observation
from fleetloop.sim.state import GRAVITY_MPS2, World
from fleetloop.sim.traffic import IdmParams, idm_acceleration

__all__ = [
    "STAGE_FULL",
    "STAGE_MRM",
    "STAGE_NAMES",
    "STAGE_NONE",
    "STAGE_PARTIAL",
    "STAGE_WARNING",
    "FallbackConfig",
    "FallbackOutput",
    "FallbackState",
    "Perceived",
    "Track",
    "fallback_control",
    "perceive_in_path",
]

STAGE_NONE, STAGE_WARNING, STAGE_PARTIAL, STAGE_FULL, STAGE_MRM = 0, 1, 2, 3, 4
STAGE_NAMES = ("none", "warning", "partial", "full", "mrm")

CORRIDOR_HALF_WIDTH_M = 1.3  # [m] ego half width 0.9 m + 0.4 m margin
STATIONARY_MPS = 1.0  # [m/s] a radar target slower than this (over ground) is treated as stationary
CONFIRM_RANGE_M = 3.0  # [m] radar and lidar agree on a target when their ranges differ by less
LIDAR_PAIR_M = 1.5  # [m] two adjacent beams see the same object when their ranges differ by less
NO_OBSTACLE_M = 1.0e6  # [m] gap reported when nothing is in path
FALLBACK_IDM = IdmParams(
    v0_mps=33.3, time_headway_s=1.5, min_gap_m=3.0, accel_mps2=1.0, comfort_decel_mps2=2.0, delta=4.0
)  # following control: 1.5 s time gap, 3 m standstill gap, 2 m/s² comfortable braking
TRACK_COAST_TICKS = 10  # a lidar-only obstacle keeps the radar speed of its track this long after radar lost it
# Path prediction (ADR 0112). Lidar returns within this lateral distance beyond the corridor, at the obstacle's range,
# belong to it (a pedestrian leaving the corridor is partly outside it).
LATERAL_WINDOW_M = 1.0  # [m]
RADAR_HALF_WIDTH_M = 0.9  # [m] half width assumed for an obstacle only radar sees (a car: it leaves the path last)
LATERAL_GAIN = 0.5  # [-] alpha of the alpha-beta filter on the lateral position
LATERAL_RATE_GAIN = 0.2  # [-] beta of the alpha-beta filter (lateral speed)
CLEAR_MIN_TICKS = 3  # lateral track length before a leaving obstacle counts as clearing [ticks]
CLEAR_MIN_SPEED_MPS = 0.5  # [m/s] outward lateral speed below this is no evidence of leaving (noise, drift)
CLEAR_HOLD_TICKS = 10  # clearing holds this long through lost frames, unless a new track says otherwise [ticks]
# A car beside the path whose near side is in the corridor (ADR 0113): radar reports its centre, up to a car's width
# outside the corridor; the lidar its near side, inside. Their near edges agree within this [m] (radar azimuth noise
# 0.5 deg is 0.3 m at 35 m; the lidar's beams are 1 deg apart, 0.35 m at 20 m).
BESIDE_EDGE_TOL_M = 0.8
# The tracked obstacle's acceleration (ADR 0113): an alpha-beta filter on its radar speed over ground (radar range-rate
# noise 0.15 m/s a tick: about 0.4 m/s² of noise left; a lead braking at 5 m/s² reads beyond 2.5 m/s² within 0.3 s).
SPEED_GAIN = 0.5  # [-] alpha (speed)
ACCEL_GAIN = 0.2  # [-] beta (acceleration)
LEAD_BRAKING_MPS2 = 1.0  # [m/s²] a filtered deceleration beyond this is the obstacle braking (2.5 noise sigmas)


@dataclass(frozen=True)
class FallbackConfig:
    """Fallback thresholds; ``for_world`` adapts the TTC stages to the world's actuators.

    Attributes:
        warning_ttc_s, partial_ttc_s, full_ttc_s: TTC thresholds of an instantly acting brake [s]
            (FCW 2.6 s, partial 1.6 s, full 1.0 s: Euro NCAP AEB C2C protocol and published AEB literature).
        lag_s: actuator dead time plus half the brake build-up time [s], added to every TTC threshold.
        partial_decel_mps2: partial-braking deceleration (0.4 g, typical of production AEB) [m/s²].
        full_decel_mps2: full-braking command [m/s²] (the actuators clip it to friction).
        partial_need_mps2: a required deceleration above this starts partial braking [m/s²].
        full_need_fraction: a required deceleration above this fraction of the available grip starts full braking.
        assumed_friction: the friction coefficient assumed where no estimate is given [-].
        stop_margin_m: distance kept to an obstacle when stopping behind it [m].
        mrm_decel_mps2: minimal-risk stop deceleration [m/s²] (gentle, so traffic behind can react).
        hold_decel_mps2: brake held at standstill [m/s²].
        sensor_debounce_ticks: a sensor counts as failed after this many bad frames in a row.
        latch_ticks: an emergency stage is held at least this long once reached (no brake flicker on noise).
        dt_s: tick length [s] (to predict the track one tick ahead).
        confirm_ticks: 2 = an obstacle must be perceived on two consecutive ticks, where the track predicts it,
            before the fallback acts on it (M-of-N track confirmation of radar/lidar trackers; 1 = act on one
            frame). Measured: removes most fog-backscatter emergency brakes; CCRs 10-50 km/h still all avoided.
        confirm_gap_m: the second sighting must lie within this distance of the predicted gap [m] (the radar /
            lidar agreement window, ``CONFIRM_RANGE_M``).
        need_min_closing_mps: the needed-deceleration criteria of the partial and full stages apply only where the
            ego closes on the obstacle faster than this [m/s] (2 m/s = 7 km/h, below Euro NCAP's slowest CCRs test,
            10 km/h; ADR 0113). Slower, the obstacle is inside the stop margin only because the car creeps up to it
            (the needed deceleration of a 0.5 m/s creep 0.2 m inside the margin is 3 m/s²); the TTC criteria still
            apply. 0: always.
        idm: following-control parameters (desired speed comes per vehicle, else the current speed is held).
    """

    warning_ttc_s: float = 2.6
    partial_ttc_s: float = 1.6
    full_ttc_s: float = 1.0
    lag_s: float = 0.36
    partial_decel_mps2: float = 4.0
    full_decel_mps2: float = 9.5
    partial_need_mps2: float = 3.0
    full_need_fraction: float = 0.6
    assumed_friction: float = 0.8
    stop_margin_m: float = 2.0
    mrm_decel_mps2: float = 2.0
    hold_decel_mps2: float = 1.5
    sensor_debounce_ticks: int = 3
    latch_ticks: int = 5
    dt_s: float = 0.1
    confirm_ticks: int = 2
    confirm_gap_m: float = 3.0
    need_min_closing_mps: float = 2.0
    idm: IdmParams = field(default_factory=lambda: FALLBACK_IDM)

    @classmethod
    def for_world(cls, world: World, **overrides: float) -> FallbackConfig:
        """Thresholds for ``world``'s actuators: lag = dead time + half the time brake pressure takes to build."""
        lag = world.dead_time_s + 0.5 * world.max_brake_mps2 / world.brake_jerk_mps3
        base = cls(lag_s=lag, full_decel_mps2=world.max_brake_mps2, dt_s=world.dt_s)
        return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Perceived:
    """The nearest in-path obstacle as the vehicle's own sensors see it, tensors [B].

    ``gap_m`` is ``NO_OBSTACLE_M`` where nothing is in path; ``closing_mps`` > 0 when approaching;
    ``obstacle_speed_mps`` is over ground (ego speed minus closing speed).
    """

    present: torch.Tensor
    gap_m: torch.Tensor
    closing_mps: torch.Tensor
    obstacle_speed_mps: torch.Tensor
    ttc_s: torch.Tensor
    radar_seen: torch.Tensor
    lateral_m: torch.Tensor | None = None
    """[B] lateral position of the obstacle's edge nearest the ego's centre line (+ left) [m], 0 where it covers
    the centre line or where ``lateral_source`` is 0: the lidar returns at its range, else the radar target's centre
    less ``RADAR_HALF_WIDTH_M``."""
    lateral_source: torch.Tensor | None = None
    """[B] int64: 0 no lateral measurement, 1 lidar, 2 radar."""


@dataclass(frozen=True)
class Track:
    """Last tick's in-path obstacle, tensors [B]: gap [m], speed over ground [m/s], ticks since radar saw it; and
    its lateral track (ADR 0112): filtered lateral position of its near edge [m] and speed [m/s] (+ left), for how
    many consecutive ticks it has been tracked laterally (0: no lateral track), the source of the last lateral
    measurement, and how many ticks a ``clearing`` verdict still holds; and its filtered speed over ground [m/s] and
    acceleration [m/s²] (ADR 0113; from radar, predicted while radar misses it)."""

    gap_m: torch.Tensor
    speed_mps: torch.Tensor
    age_ticks: torch.Tensor
    lateral_m: torch.Tensor
    lateral_rate_mps: torch.Tensor
    lateral_ticks: torch.Tensor
    lateral_source: torch.Tensor
    clear_hold: torch.Tensor
    speed_f_mps: torch.Tensor
    accel_mps2: torch.Tensor


@dataclass(frozen=True)
class FallbackState:
    """What the fallback carries between ticks, tensors [B]: bad-frame counts per sensor [B, 3] (camera, lidar,
    radar), the latched emergency stage, how many ticks it is still held, and the in-path track."""

    bad_ticks: torch.Tensor
    latched_stage: torch.Tensor
    latch_left: torch.Tensor
    track: Track

    @staticmethod
    def init(batch: int, device: torch.device | str = "cpu") -> FallbackState:
        """A fresh state for ``batch`` vehicles."""
        z = torch.zeros(batch, dtype=torch.int64, device=device)
        far = torch.full((batch,), NO_OBSTACLE_M, device=device)
        zf = torch.zeros(batch, device=device)
        track = Track(
            far,
            zf,
            torch.full_like(z, TRACK_COAST_TICKS + 1),
            zf.clone(),
            zf.clone(),
            z.clone(),
            z.clone(),
            z.clone(),
            zf.clone(),
            zf.clone(),
        )
        return FallbackState(torch.zeros(batch, 3, dtype=torch.int64, device=device), z, z.clone(), track)


@dataclass(frozen=True)
class FallbackOutput:
    """One tick of the fallback, tensors [B].

    Attributes:
        accel_mps2: the fallback's command (always finite).
        stage: ``STAGE_*`` code (int64).
        ttc_s: perceived TTC (inf: nothing closing).
        gap_m: perceived in-path gap (``NO_OBSTACLE_M``: none).
        sensor_ok: [B, 3] bool, camera / lidar / radar healthy after debouncing.
        sensor_fault: bool, some sensor failed (the arbiter then hands the vehicle to the fallback).
        clearing: bool, the perceived obstacle is leaving the corridor and will be out of it before the ego
            reaches it (path prediction, ADR 0112; None: not computed). Informs the arbiter only.
        need_mps2: the deceleration the perceived (confirmed) obstacle requires [m/s²] (0: none; None: not
            computed), counting its own braking where the track sees it brake (ADR 0113; the fallback's stages use
            the constant-speed need). Informs the arbiter only.
    """

    accel_mps2: torch.Tensor
    stage: torch.Tensor
    ttc_s: torch.Tensor
    gap_m: torch.Tensor
    sensor_ok: torch.Tensor
    sensor_fault: torch.Tensor
    clearing: torch.Tensor | None = None
    need_mps2: torch.Tensor | None = None


def _lidar_points(lidar_range_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per beam [B, beams]: lateral (+ left) and longitudinal position of the return [m], and whether it returned."""
    r = lidar_range_m
    sin, cos = const_table(LIDAR_BEAM_SIN, r), const_table(LIDAR_BEAM_COS, r)
    return r * sin, r * cos, r < LIDAR_MAX_RANGE_M - 0.5


def _lidar_in_path(
    lidar_range_m: torch.Tensor, lat: torch.Tensor, lon: torch.Tensor, returned: torch.Tensor
) -> torch.Tensor:
    """Nearest lidar obstacle in the corridor [B] confirmed by two adjacent beams (``NO_OBSTACLE_M`` if none);
    ``lat``, ``lon``, ``returned`` from ``_lidar_points``."""
    r = lidar_range_m
    ok = returned & (lat.abs() < CORRIDOR_HALF_WIDTH_M)
    pair = ok[:, 1:] & ok[:, :-1] & ((r[:, 1:] - r[:, :-1]).abs() < LIDAR_PAIR_M)
    lon_pair = torch.maximum(lon[:, 1:], lon[:, :-1])
    far = torch.full_like(lon_pair, NO_OBSTACLE_M)
    return torch.where(pair, lon_pair, far).min(dim=-1).values


def _lidar_edge(
    lat: torch.Tensor, lon: torch.Tensor, returned: torch.Tensor, gap_m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lateral position [B] (+ left) of the edge nearest the ego's centre line of the lidar returns at the
    obstacle's range ``gap_m`` within ``LATERAL_WINDOW_M`` of the corridor (0 where they cover the centre line), and
    whether at least two beams returned there (``lat``, ``lon``, ``returned`` from ``_lidar_points``). The nearest
    edge, not the centre: close up, the lidar's field of view cuts off the outer part of an obstacle beside the
    path."""
    member = (
        returned
        & ((lon - gap_m.unsqueeze(-1)).abs() < LIDAR_PAIR_M)
        & (lat.abs() < CORRIDOR_HALF_WIDTH_M + LATERAL_WINDOW_M)
    )
    lo = torch.where(member, lat, torch.full_like(lat, math.inf)).amin(-1)
    hi = torch.where(member, lat, torch.full_like(lat, -math.inf)).amax(-1)
    seen = member.sum(-1) >= 2
    edge = torch.where(lo > 0, lo, torch.where(hi < 0, hi, torch.zeros_like(lo)))
    return torch.where(seen, edge, torch.zeros_like(edge)), seen


def _beside_target(
    moving: torch.Tensor,
    lon: torch.Tensor,
    lat: torch.Tensor,
    over_ground: torch.Tensor,
    gap_m: torch.Tensor,
    edge_m: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The car beside the path whose near side the lidar sees in the corridor (ADR 0113): among the ``moving`` radar
    targets [B, 8] outside the corridor at the obstacle's range ``gap_m`` [B] (within ``CONFIRM_RANGE_M``), the
    nearest in range whose near edge (its centre less ``RADAR_HALF_WIDTH_M``) lies on the side and within
    ``BESIDE_EDGE_TOL_M`` of the lidar's near edge ``edge_m`` [B] (0: the lidar obstacle covers the centre line, no
    car beside it). Returns whether there is one [B] and its speed over ground [B]."""
    near_edge = torch.sign(lat) * (lat.abs() - RADAR_HALF_WIDTH_M)
    d_lon = (lon - gap_m.unsqueeze(-1)).abs()
    ok = (
        moving
        & (lat.abs() >= CORRIDOR_HALF_WIDTH_M)
        & (d_lon < CONFIRM_RANGE_M)
        & (lat * edge_m.unsqueeze(-1) > 0)
        & ((near_edge - edge_m.unsqueeze(-1)).abs() < BESIDE_EDGE_TOL_M)
    )
    best = torch.where(ok, d_lon, torch.full_like(lon, math.inf)).argmin(-1, keepdim=True)
    return ok.any(-1), torch.gather(over_ground, -1, best).squeeze(-1)


def perceive_in_path(
    lidar_range_m: torch.Tensor,
    radar_range_m: torch.Tensor,
    radar_range_rate_mps: torch.Tensor,
    radar_azimuth_rad: torch.Tensor,
    radar_valid: torch.Tensor,
    ego_speed_mps: torch.Tensor,
    lidar_ok: torch.Tensor | None = None,
    radar_ok: torch.Tensor | None = None,
    prior: Track | None = None,
    dt_s: float = 0.1,
) -> Perceived:
    """The nearest in-path obstacle from radar [B, 8] and lidar [B, beams] (also used by the hindsight labeller).

    ``lidar_ok`` / ``radar_ok`` [B] mask out a failed sensor (its readings are then ignored). ``prior`` is last
    tick's track: a lidar-only obstacle where the track predicts one keeps the track's radar speed for a while
    (radar misses a target now and then; without this a followed car would look stationary for that tick).
    """
    if lidar_range_m.shape[-1] != LIDAR_BEAMS:
        raise ValueError(f"lidar_range_m must have {LIDAR_BEAMS} beams, got shape {tuple(lidar_range_m.shape)}")
    lidar = lidar_range_m.float()
    if lidar_ok is not None:
        lidar = torch.where(lidar_ok.unsqueeze(-1), lidar, torch.full_like(lidar, LIDAR_MAX_RANGE_M))
    lidar = torch.nan_to_num(lidar, nan=LIDAR_MAX_RANGE_M, posinf=LIDAR_MAX_RANGE_M)
    lid_lat, lid_lon, lid_returned = _lidar_points(lidar)
    lidar_gap = materialize(_lidar_in_path(lidar, lid_lat, lid_lon, lid_returned))
    valid = radar_valid.bool() & torch.isfinite(radar_range_m) & torch.isfinite(radar_range_rate_mps)
    if radar_ok is not None:
        valid = valid & radar_ok.unsqueeze(-1)
    rng_m = torch.nan_to_num(radar_range_m.float())
    az = torch.nan_to_num(radar_azimuth_rad.float())
    # The targets' positions and speeds once into memory: several reductions below read them.
    lon = materialize(rng_m * torch.cos(az))
    lat = materialize(rng_m * torch.sin(az))
    in_path = valid & (lat.abs() < CORRIDOR_HALF_WIDTH_M) & (lon > 0)
    rate = torch.nan_to_num(radar_range_rate_mps.float())
    v_ego = ego_speed_mps.float().unsqueeze(-1)
    over_ground = materialize(v_ego + rate / torch.cos(az).clamp_min(0.2))
    stationary = over_ground.abs() < STATIONARY_MPS
    moving_in_path = in_path & ~stationary
    # A lidar return explained by a moving radar target does not confirm a stationary one at the same range.
    explained = (moving_in_path & ((lon - lidar_gap.unsqueeze(-1)).abs() < CONFIRM_RANGE_M)).any(-1, keepdim=True)
    confirmed = ((lon - lidar_gap.unsqueeze(-1)).abs() < CONFIRM_RANGE_M) & ~explained
    trusted = in_path & (~stationary | confirmed)
    radar_gap = torch.where(trusted, lon, torch.full_like(lon, NO_OBSTACLE_M))
    best = radar_gap.argmin(dim=-1, keepdim=True)
    r_gap = torch.gather(radar_gap, -1, best).squeeze(-1)
    r_speed = torch.gather(over_ground, -1, best).squeeze(-1)
    # A lidar-only obstacle has no range rate: the speed of the moving car beside the path whose near side it is
    # (ADR 0113), else its track's speed while radar lost it briefly, else assume it stands still (the cautious
    # reading).
    use_lidar = lidar_gap < r_gap - CONFIRM_RANGE_M
    v = ego_speed_mps.float()
    gap = materialize(torch.where(use_lidar, lidar_gap, r_gap))
    lid_edge, lid_seen = _lidar_edge(lid_lat, lid_lon, lid_returned, gap)
    lid_edge = materialize(lid_edge)  # once: the speed below and everything after it reads it
    lidar_speed = torch.zeros_like(r_speed)
    if prior is not None:
        predicted = prior.gap_m - (v - prior.speed_mps) * dt_s
        coast = (prior.age_ticks < TRACK_COAST_TICKS) & ((lidar_gap - predicted).abs() < CONFIRM_RANGE_M)
        lidar_speed = torch.where(coast, prior.speed_mps, lidar_speed)
    beside, beside_speed = _beside_target(valid & ~stationary & (lon > 0), lon, lat, over_ground, gap, lid_edge)
    beside = beside & use_lidar & lid_seen
    lidar_speed = torch.where(beside, beside_speed, lidar_speed)
    # Computed once into memory: inductor would otherwise redo the beam and target reductions behind it in every
    # later loop that broadcasts the speed (BENCHMARKS.md, the full loop: 5.8 -> 9.0 ms compiled without it).
    speed = materialize(torch.where(use_lidar, lidar_speed, r_speed).clamp_min(0.0))
    present = gap < NO_OBSTACLE_M
    closing = torch.where(present, v - speed, torch.zeros_like(v))
    inf = torch.full_like(v, math.inf)
    ttc = torch.where(present & (closing > 0.1), gap.clamp_min(0.0) / closing.clamp_min(0.1), inf)
    # Where the obstacle's near edge is laterally: the lidar returns at its range, else the radar target's centre
    # less the half width of a car (the cautious guess: it puts the edge nearer the path).
    lid_seen = lid_seen & present
    radar_c = torch.gather(lat, -1, best).squeeze(-1)
    radar_edge = torch.sign(radar_c) * (radar_c.abs() - RADAR_HALF_WIDTH_M).clamp_min(0.0)
    radar_only = present & ~use_lidar & ~lid_seen
    source = torch.where(lid_seen, 1, torch.where(radar_only, 2, 0))
    return Perceived(
        present=present,
        gap_m=gap,
        closing_mps=closing,
        obstacle_speed_mps=speed,
        ttc_s=ttc,
        radar_seen=present & (~use_lidar | beside),
        lateral_m=torch.where(lid_seen, lid_edge, torch.where(radar_only, radar_edge, torch.zeros_like(radar_edge))),
        lateral_source=source,
    )


def _lateral_track(
    gap_m: torch.Tensor,
    speed_mps: torch.Tensor,
    age_ticks: torch.Tensor,
    speed_f_mps: torch.Tensor,
    accel_mps2: torch.Tensor,
    prior: Track,
    p: Perceived,
    persists: torch.Tensor,
    dt_s: float,
) -> tuple[Track, torch.Tensor]:
    """The obstacle's lateral track and whether it clears the path (ADR 0112). The track is an alpha-beta filter on
    the near edge over the ticks the obstacle persists (``persists``: where the longitudinal track predicts it); a
    change of sensor restarts the position but keeps the speed. Clearing: tracked for ``CLEAR_MIN_TICKS``, its near
    edge moving outward at ``CLEAR_MIN_SPEED_MPS`` or more, and out of the corridor (beyond
    ``CORRIDOR_HALF_WIDTH_M``) before the ego gets there (perceived TTC). The verdict holds ``CLEAR_HOLD_TICKS``
    through lost frames unless a track of ``CLEAR_MIN_TICKS`` says otherwise.
    Returns (this tick's track: the longitudinal fields given, the lateral ones updated; clearing [B])."""
    zero = torch.zeros_like(p.gap_m)
    zi = torch.zeros_like(prior.age_ticks)
    src = p.lateral_source if p.lateral_source is not None else zi
    meas = p.lateral_m if p.lateral_m is not None else zero
    prev_lat, prev_rate, prev_ticks = prior.lateral_m, prior.lateral_rate_mps, prior.lateral_ticks
    prev_src, prev_hold = prior.lateral_source, prior.clear_hold
    seen = src > 0
    tracked = persists & seen & (prev_ticks > 0)
    same = tracked & (src == prev_src)
    guess = prev_lat + prev_rate * dt_s
    residual = meas - guess
    lat = torch.where(same, guess + LATERAL_GAIN * residual, meas)
    rate = torch.where(same, prev_rate + (LATERAL_RATE_GAIN / dt_s) * residual, torch.where(tracked, prev_rate, zero))
    ticks = torch.where(tracked, prev_ticks + 1, torch.where(seen, torch.ones_like(prev_ticks), zi))
    mature = tracked & (ticks >= CLEAR_MIN_TICKS)
    outward = (lat * rate > 0) & (rate.abs() >= CLEAR_MIN_SPEED_MPS)
    t_exit = (CORRIDOR_HALF_WIDTH_M - lat.abs()).clamp_min(0.0) / rate.abs().clamp_min(CLEAR_MIN_SPEED_MPS)
    now = mature & outward & (t_exit < p.ttc_s)
    clearing = now | ((prev_hold > 0) & ~mature)
    hold = torch.where(now, torch.full_like(prev_hold, CLEAR_HOLD_TICKS), (prev_hold - 1).clamp_min(0))
    return Track(gap_m, speed_mps, age_ticks, lat, rate, ticks, src, hold, speed_f_mps, accel_mps2), clearing


def _speed_track(prior: Track, p: Perceived, persists: torch.Tensor, dt_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The obstacle's filtered speed over ground and acceleration [B] (ADR 0113): an alpha-beta filter updated
    where radar measures the obstacle's speed, predicted where the obstacle persists without one, restarted (speed
    as perceived, no acceleration) on a new obstacle."""
    guess = prior.speed_f_mps + prior.accel_mps2 * dt_s
    residual = p.obstacle_speed_mps - guess
    measured = persists & p.radar_seen
    speed = torch.where(measured, guess + SPEED_GAIN * residual, torch.where(persists, guess, p.obstacle_speed_mps))
    accel = torch.where(
        measured,
        prior.accel_mps2 + (ACCEL_GAIN / dt_s) * residual,
        torch.where(persists, prior.accel_mps2, torch.zeros_like(residual)),
    )
    return speed.clamp_min(0.0), accel


def lead_stop_distance_m(speed_mps: torch.Tensor, decel_mps2: torch.Tensor, braking_mps2: float) -> torch.Tensor:
    """How far an obstacle at ``speed_mps`` braking at ``decel_mps2`` (> 0: slowing) goes on until it stops [m]:
    u² / 2a where it brakes harder than ``braking_mps2``, else inf (it is not braking to a stop). Shared by the
    fallback's need and the hindsight labeller, so both read a braking lead the same way."""
    stop = speed_mps * speed_mps / (2.0 * decel_mps2.clamp_min(braking_mps2))
    return torch.where(decel_mps2 > braking_mps2, stop, torch.full_like(stop, math.inf))


def _space_after_lag(cfg: FallbackConfig, p: Perceived) -> tuple[torch.Tensor, torch.Tensor]:
    """Closing speed (>= 0) [m/s] and the space left to brake in once the lag has passed [m] (>= 5 cm), keeping
    ``stop_margin_m``."""
    closing = p.closing_mps.clamp_min(0.0)
    return closing, (p.gap_m - cfg.stop_margin_m - closing * cfg.lag_s).clamp_min(0.05)


def _braking_lead_need(cfg: FallbackConfig, p: Perceived, v: torch.Tensor, accel: torch.Tensor) -> torch.Tensor:
    """Constant deceleration that stops ``stop_margin_m`` behind an obstacle braking to a stop at ``accel`` [B]
    (where it brakes harder than ``LEAD_BRAKING_MPS2``, else 0), after the lag: v² / 2 (space + its stopping
    distance), the expert's reading of a braking lead (``fleetloop.sim.expert``)."""
    braking = p.present & (accel < -LEAD_BRAKING_MPS2)
    lead_stop = lead_stop_distance_m(p.obstacle_speed_mps, -accel, LEAD_BRAKING_MPS2)
    _, space = _space_after_lag(cfg, p)
    need = v * v / (2.0 * (space + lead_stop))
    return torch.where(braking, need, torch.zeros_like(need)).clamp(0.0, 50.0)


def _required_decel(cfg: FallbackConfig, p: Perceived, v: torch.Tensor) -> torch.Tensor:
    """Constant deceleration that stops (or matches speed) ``stop_margin_m`` behind the obstacle after the lag."""
    closing, space = _space_after_lag(cfg, p)
    stationary = p.obstacle_speed_mps < STATIONARY_MPS
    need = torch.where(stationary, v * v, closing * closing) / (2.0 * space)
    return torch.where(p.present & (closing > 0.1), need, torch.zeros_like(need)).clamp(0.0, 50.0)


def fallback_control(
    cfg: FallbackConfig,
    state: FallbackState,
    obs: Observation,
    *,
    lidar_ok: torch.Tensor | None = None,
    radar_ok: torch.Tensor | None = None,
    desired_speed_mps: torch.Tensor | None = None,
    friction_est: torch.Tensor | None = None,
) -> tuple[FallbackState, FallbackOutput]:
    """One tick of the fallback for every vehicle.

    ``lidar_ok`` / ``radar_ok`` [B] report sensor diagnostics (e.g. injected dropout; the sim gives no lidar or
    radar health flag, so missing means healthy); the camera's health is ``obs.camera_valid``.
    ``desired_speed_mps`` [B] is the set speed (default: hold the current speed); ``friction_est`` [B] the
    vehicle's own friction estimate (default ``cfg.assumed_friction``).
    """
    v = obs.ego_speed_mps.float()
    b = v.shape[0]
    ones = torch.ones(b, dtype=torch.bool, device=v.device)
    raw_ok = torch.stack(
        [
            obs.camera_valid.bool(),
            ones if lidar_ok is None else lidar_ok.bool(),
            ones if radar_ok is None else radar_ok,
        ],
        dim=-1,
    )
    bad = torch.where(raw_ok, torch.zeros_like(state.bad_ticks), state.bad_ticks + 1)
    sensor_ok = bad < cfg.sensor_debounce_ticks
    p = perceive_in_path(
        obs.lidar_range_m,
        obs.radar_range_m,
        obs.radar_range_rate_mps,
        obs.radar_azimuth_rad,
        obs.radar_valid,
        v,
        lidar_ok=raw_ok[:, 1],
        radar_ok=raw_ok[:, 2],
        prior=state.track,
        dt_s=cfg.dt_s,
    )
    age = torch.where(p.radar_seen, torch.zeros_like(state.track.age_ticks), state.track.age_ticks + 1)
    # Track confirmation (2 of 2): the fallback acts on an obstacle only once it was perceived on the previous tick
    # too, where the track predicts it. Fog backscatter and ghost coincidences come at random ranges and rarely
    # twice in a row; a real obstacle costs one tick (0.1 s) at first sight.
    prior = state.track
    predicted = prior.gap_m - (v - prior.speed_mps) * cfg.dt_s
    persists = p.present & (prior.gap_m < NO_OBSTACLE_M) & ((p.gap_m - predicted).abs() < cfg.confirm_gap_m)
    speed_f, accel = _speed_track(prior, p, persists, cfg.dt_s)
    track, clearing = _lateral_track(p.gap_m, p.obstacle_speed_mps, age, speed_f, accel, prior, p, persists, cfg.dt_s)
    if cfg.confirm_ticks > 1:
        far = torch.full_like(p.gap_m, NO_OBSTACLE_M)
        zero = torch.zeros_like(v)
        p = Perceived(
            present=persists,
            gap_m=torch.where(persists, p.gap_m, far),
            closing_mps=torch.where(persists, p.closing_mps, zero),
            obstacle_speed_mps=torch.where(persists, p.obstacle_speed_mps, zero),
            ttc_s=torch.where(persists, p.ttc_s, torch.full_like(v, math.inf)),
            radar_seen=p.radar_seen & persists,
        )
    # Following control.
    v0 = v if desired_speed_mps is None else desired_speed_mps.float()
    follow = idm_acceleration(v, p.gap_m, p.closing_mps, cfg.idm, v0_mps=v0.clamp_min(0.5))
    follow = torch.where(v0 < 0.5, -torch.full_like(v, cfg.hold_decel_mps2), follow)
    follow = follow.clamp(-cfg.full_decel_mps2, cfg.idm.accel_mps2)
    # Staged emergency braking.
    mu = torch.full_like(v, cfg.assumed_friction) if friction_est is None else friction_est.float().clamp(0.1, 1.2)
    need = _required_decel(cfg, p, v)
    ttc = p.ttc_s
    stage = torch.full_like(state.latched_stage, STAGE_NONE)
    stage = torch.where(ttc < cfg.warning_ttc_s + cfg.lag_s, torch.full_like(stage, STAGE_WARNING), stage)
    # The needed-deceleration criterion only above a creeping closing speed (ADR 0113): creeping up inside the stop
    # margin of a stopped obstacle is following control's job; the TTC criteria still apply.
    need_stage = torch.where(p.closing_mps > cfg.need_min_closing_mps, need, torch.zeros_like(need))
    partial = (ttc < cfg.partial_ttc_s + cfg.lag_s) | (need_stage > cfg.partial_need_mps2)
    stage = torch.where(partial, torch.full_like(stage, STAGE_PARTIAL), stage)
    full = (ttc < cfg.full_ttc_s + cfg.lag_s) | (need_stage > cfg.full_need_fraction * mu * GRAVITY_MPS2)
    stage = torch.where(full, torch.full_like(stage, STAGE_FULL), stage)
    # Hold an emergency stage a little (noisy TTC must not make the brake flicker), until standstill.
    held = (state.latch_left > 0) & (v > 0.3)
    stage = torch.where(held, torch.maximum(stage, state.latched_stage), stage)
    rising = stage > torch.where(held, state.latched_stage, torch.zeros_like(stage))
    latch_left = torch.where(
        rising & (stage >= STAGE_PARTIAL), torch.full_like(stage, cfg.latch_ticks), (state.latch_left - 1).clamp_min(0)
    )
    latched = torch.where(latch_left > 0, stage, torch.zeros_like(stage))
    cmd = follow
    cmd = torch.where(stage == STAGE_PARTIAL, torch.minimum(cmd, torch.full_like(v, -cfg.partial_decel_mps2)), cmd)
    cmd = torch.where(stage == STAGE_FULL, torch.full_like(v, -cfg.full_decel_mps2), cmd)
    # Stopped behind an obstacle: hold the brake instead of creeping into it.
    stopped_close = p.present & (p.gap_m < cfg.stop_margin_m + cfg.idm.min_gap_m) & (v < 0.5)
    cmd = torch.where(stopped_close, torch.minimum(cmd, torch.full_like(v, -cfg.hold_decel_mps2)), cmd)
    # Minimal-risk stop: no ranging sensor left, or the camera plus one ranging sensor gone.
    ok_c, ok_l, ok_r = sensor_ok.unbind(-1)
    mrm = (~ok_l & ~ok_r) | (~ok_c & (~ok_l | ~ok_r))
    mrm_cmd = torch.where(v > 0.3, -torch.full_like(v, cfg.mrm_decel_mps2), -torch.full_like(v, cfg.hold_decel_mps2))
    # An emergency brake still wins over the gentle stop if a (remaining) sensor sees a threat.
    cmd = torch.where(mrm, torch.minimum(mrm_cmd, torch.where(stage >= STAGE_PARTIAL, cmd, mrm_cmd)), cmd)
    stage = torch.where(mrm & (stage < STAGE_PARTIAL), torch.full_like(stage, STAGE_MRM), stage)
    cmd = torch.nan_to_num(cmd, nan=-cfg.mrm_decel_mps2, posinf=0.0, neginf=-cfg.full_decel_mps2)
    out = FallbackOutput(
        accel_mps2=cmd,
        stage=stage,
        ttc_s=ttc,
        gap_m=p.gap_m,
        sensor_ok=sensor_ok,
        sensor_fault=~sensor_ok.all(dim=-1),
        clearing=clearing,
        need_mps2=torch.maximum(need, _braking_lead_need(cfg, p, v, accel)),
    )
    return FallbackState(bad_ticks=bad, latched_stage=latched, latch_left=latch_left, track=track), out
