"""Sensor models: a low-resolution camera grid, a lidar scan and radar targets, each with noise, dropout and range
limits set by physics, and the ``Observation`` the vehicle receives (never the true weather).

- Camera [8 x 16]: rows are range bins ahead (``CAMERA_ROW_EDGES_M``), columns lateral bins of 0.875 m across
  +-7 m around the ego. A cell holds the apparent contrast of the nearest object in it plus sensor noise.
  Contrast decays with fog as exp(-3 r / visibility) (Koschmieder: 5 % at the visibility distance); at night only
  the headlights light the scene (fading beyond ~60 m), and noise rises as light falls. Rain dims it a little.
- Lidar [32 beams] over +-15 deg: range of the nearest object face hit, or ``LIDAR_MAX_RANGE_M``. A return needs
  reflectivity * (R0 / r)^2 * exp(-6 r / visibility) (two-way fog extinction) above 1 with log-normal fading;
  fog also produces short spurious returns (backscatter); 1 % of beams drop.
- Radar [8 targets]: range, range-rate and azimuth with a validity mask. Fog- and night-proof, but pedestrians
  and debris reflect weakly (lower detection probability), rain adds clutter, and fixed road furniture (overhead
  signs, bridges: a field over road position) shows up as stationary ghost targets in the lane.
- Occlusion: a pedestrian whose sight line from the ego's front centre passes through a vehicle (moving or
  parked) is hidden from the camera and the radar (the Euro NCAP child stepping out from behind parked cars);
  the lidar already returns only the nearest face per beam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from fleetloop.sim import rng
from fleetloop.sim.compile import compile_graph, const_table, materialize
from fleetloop.sim.state import KIND_CODES, World, WorldState

__all__ = [
    "CAMERA_COLS",
    "CAMERA_ROWS",
    "CAMERA_ROW_EDGES_M",
    "LIDAR_BEAMS",
    "LIDAR_BEAM_COS",
    "LIDAR_BEAM_RAD",
    "LIDAR_BEAM_SIN",
    "LIDAR_MAX_RANGE_M",
    "RADAR_MAX_RANGE_M",
    "RADAR_TARGETS",
    "Observation",
    "observe",
    "pedestrians_occluded",
]

CAMERA_ROWS, CAMERA_COLS = 8, 16
CAMERA_ROW_EDGES_M = (0.0, 8.0, 16.0, 25.0, 35.0, 50.0, 70.0, 95.0, 125.0)  # [m]
CAMERA_HALF_WIDTH_M = 7.0  # [m]
CAMERA_HEADLIGHT_M = 60.0  # [m] headlight reach at night
CAMERA_NOISE_DAY = 0.03  # [-] noise sigma in daylight
CAMERA_NOISE_NIGHT = 0.12  # [-] extra noise sigma in the dark
CAMERA_DROPOUT = 0.002  # [-] probability a frame is lost
LIDAR_BEAMS = 32
LIDAR_FOV_RAD = math.radians(15.0)  # half field of view
# Beam angles, left to right [rad], and their sine and cosine: constants, so a compiled graph loads them instead of
# recomputing the transcendental functions for every vehicle (float32, as torch computes them).
_THETA = torch.linspace(LIDAR_FOV_RAD, -LIDAR_FOV_RAD, LIDAR_BEAMS)
LIDAR_BEAM_RAD = tuple(_THETA.tolist())
LIDAR_BEAM_SIN = tuple(torch.sin(_THETA).tolist())
LIDAR_BEAM_COS = tuple(torch.cos(_THETA).tolist())
LIDAR_MAX_RANGE_M = 120.0  # [m]
LIDAR_R0_M = 110.0  # [m] range at which a reflectivity-1 target fades to threshold in clear air
LIDAR_FADING_SIGMA = 0.25  # [-] log-normal fading of the return
LIDAR_NOISE_M = 0.05  # [m]
LIDAR_BEAM_DROPOUT = 0.01
LIDAR_BACKSCATTER = 0.06  # [-] spurious return probability per beam in thick fog (scaled by exp(-vis/80 m))
RADAR_TARGETS = 8
RADAR_MAX_RANGE_M = 150.0  # [m]
RADAR_FOV_RAD = math.radians(45.0)
RADAR_RANGE_NOISE_M = 0.25
RADAR_RATE_NOISE_MPS = 0.15
RADAR_AZ_NOISE_RAD = math.radians(0.5)
RADAR_RAIN_CLUTTER = 0.25  # [-] clutter target probability per tick in heavy rain
RADAR_RAIN_LOSS = 0.15  # [-] detection loss in heavy rain
RADAR_FURNITURE_CELL_M = 400.0  # [m] one possible overhead reflector per road cell of this length
RADAR_FURNITURE_RATE = 0.35  # [-] fraction of cells with an overhead reflector
RADAR_FURNITURE_SEEN = (15.0, 70.0)  # [m] range window where its elevation is not resolved
RADAR_FURNITURE_P = 0.6  # [-] per-tick probability it shows up as a target in that window
# Per kind (index = KIND_CODES): camera contrast, lidar reflectivity, radar detection probability.
CAMERA_CONTRAST = (0.0, 0.8, 0.55, 0.8, 0.45, 0.9)
LIDAR_REFLECTIVITY = (0.0, 1.0, 0.5, 1.0, 0.35, 0.8)
RADAR_DETECT_P = (0.0, 0.98, 0.55, 0.95, 0.3, 0.8)
VEHICLE, PEDESTRIAN, STOPPED = KIND_CODES["vehicle"], KIND_CODES["pedestrian"], KIND_CODES["stopped_vehicle"]


def pedestrians_occluded(state: WorldState, rel_y: torch.Tensor) -> torch.Tensor:
    """[B, K] bool: pedestrians hidden behind a vehicle (``rel_y`` [B, K]: lateral offsets from the ego, + left).

    The sight line runs from the ego's front centre to the pedestrian's centre; it is blocked where it crosses a
    vehicle's box (axis-aligned, so the line's lateral span over the box's longitudinal extent decides).
    """
    kind = state.actor_kind
    ped = kind == PEDESTRIAN
    occluder = (kind == VEHICLE) | (kind == STOPPED)
    px = (state.actor_x_m - 0.5 * state.actor_len_m).unsqueeze(-1)  # [B, K, 1] target centre
    py = rel_y.unsqueeze(-1)
    x_lo = (state.actor_x_m - state.actor_len_m).unsqueeze(-2)  # [B, 1, K] occluder near face
    x_hi = state.actor_x_m.unsqueeze(-2)
    a = x_lo.clamp_min(0.0)
    b = torch.minimum(x_hi, px)
    slope = py / px.clamp_min(0.1)
    y_a, y_b = slope * a, slope * b
    half_w = 0.5 * state.actor_width_m.unsqueeze(-2)
    oy = rel_y.unsqueeze(-2)
    crosses = (torch.minimum(y_a, y_b) < oy + half_w) & (torch.maximum(y_a, y_b) > oy - half_w)
    blocked = occluder.unsqueeze(-2) & (b > a) & crosses & (px > 0)
    return ped & blocked.any(-1)


@dataclass(frozen=True)
class Observation:
    """What one tick's sensors give each vehicle: tensors on the world's device, float32 unless noted.

    Attributes:
        camera: [B, 8, 16] apparent contrast per cell (row 0 nearest), noisy.
        camera_valid: [B] bool, False when the frame was lost (camera is then all zeros).
        lidar_range_m: [B, 32] range per beam, left to right; ``LIDAR_MAX_RANGE_M`` when nothing returned.
        radar_range_m, radar_range_rate_mps, radar_azimuth_rad: [B, 8] targets nearest first
            (range-rate < 0: closing; azimuth > 0: left); zeros where invalid.
        radar_valid: [B, 8] bool.
        ego_speed_mps, ego_accel_mps2: [B] the ego's own odometry (slightly noisy).
    """

    camera: torch.Tensor
    camera_valid: torch.Tensor
    lidar_range_m: torch.Tensor
    radar_range_m: torch.Tensor
    radar_range_rate_mps: torch.Tensor
    radar_azimuth_rad: torch.Tensor
    radar_valid: torch.Tensor
    ego_speed_mps: torch.Tensor
    ego_accel_mps2: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Field name -> tensor."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _camera(
    world: World,
    state: WorldState,
    rel_y: torch.Tensor,
    hidden: torch.Tensor,
    noise: torch.Tensor,
    u_valid: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Camera grid and frame validity; ``hidden`` [B, K] occluded actors, ``noise`` [B, 128] unit noise per cell,
    ``u_valid`` [B] uniform."""
    b = state.actor_kind.shape[0]
    near = state.actor_x_m - state.actor_len_m  # [B, K] distance to the near face
    r = near.clamp_min(0.5)
    vis = state.visibility_m.unsqueeze(-1)
    light = state.light.unsqueeze(-1)
    lit = light + (1.0 - light) * torch.exp(-((r / CAMERA_HEADLIGHT_M) ** 2))
    contrast = const_table(CAMERA_CONTRAST, r)[state.actor_kind]
    signal = contrast * torch.exp(-3.0 * r / vis) * lit * (1.0 - 0.2 * state.rain.unsqueeze(-1))
    edges = const_table(CAMERA_ROW_EDGES_M, r)
    row = torch.bucketize(near, edges, right=True) - 1  # [B, K]
    in_view = (state.actor_kind > 0) & (near > 0) & (row >= 0) & (row < CAMERA_ROWS) & ~hidden
    col_w = 2 * CAMERA_HALF_WIDTH_M / CAMERA_COLS
    half_w = 0.5 * state.actor_width_m
    c0 = torch.floor((rel_y - half_w + CAMERA_HALF_WIDTH_M) / col_w).to(torch.int64)
    c1 = torch.floor((rel_y + half_w + CAMERA_HALF_WIDTH_M) / col_w).to(torch.int64)
    span = torch.arange(3, device=r.device)
    cols = c0.unsqueeze(-1) + span  # [B, K, 3]: an object covers at most 3 columns
    ok = in_view.unsqueeze(-1) & (cols <= c1.unsqueeze(-1)) & (cols >= 0) & (cols < CAMERA_COLS)
    flat = (torch.arange(b, device=r.device).view(b, 1, 1) * (CAMERA_ROWS * CAMERA_COLS)) + (
        row.clamp(0, CAMERA_ROWS - 1).unsqueeze(-1) * CAMERA_COLS + cols.clamp(0, CAMERA_COLS - 1)
    )
    vals = torch.where(ok, signal.unsqueeze(-1), 0.0)
    grid = torch.zeros(b * CAMERA_ROWS * CAMERA_COLS, device=r.device)
    grid = grid.scatter_reduce(0, flat.reshape(-1), vals.reshape(-1), reduce="amax").view(b, CAMERA_ROWS, CAMERA_COLS)
    sigma = CAMERA_NOISE_DAY + CAMERA_NOISE_NIGHT * (1.0 - state.light)
    grid = grid + sigma.view(b, 1, 1) * noise.view(b, CAMERA_ROWS, CAMERA_COLS)
    valid = u_valid >= CAMERA_DROPOUT
    return torch.where(valid.view(b, 1, 1), grid, 0.0), valid


def _lidar(world: World, state: WorldState, rel_y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Lidar ranges [B, beams]; ``u`` [B, K + 3 * beams] uniforms."""
    b, k = state.actor_kind.shape
    theta = const_table(LIDAR_BEAM_RAD, rel_y)  # left to right
    near = state.actor_x_m - state.actor_len_m
    half_w = 0.5 * state.actor_width_m
    safe_near = near.clamp_min(0.1).unsqueeze(-1)
    th_lo = torch.atan2((rel_y - half_w).unsqueeze(-1), safe_near)
    th_hi = torch.atan2((rel_y + half_w).unsqueeze(-1), safe_near)
    # Whether an object returns is decided once per object and tick at its near-face range (the 1/cos stretch
    # across +-15 deg is under 4 %); fading is per object and tick (its pose and surface).
    fade = torch.exp(LIDAR_FADING_SIGMA * (u[:, :k] * 3.46 - 1.73))
    refl = const_table(LIDAR_REFLECTIVITY, near)[state.actor_kind]
    r_near = near.clamp_min(0.1)
    power = refl * (LIDAR_R0_M / r_near) ** 2 * torch.exp(-6.0 * r_near / state.visibility_m.unsqueeze(-1)) * fade
    returns = (state.actor_kind > 0) & (near > 0.1) & (power > 1.0) & (r_near < LIDAR_MAX_RANGE_M)
    face = torch.where(returns.unsqueeze(-1), safe_near, LIDAR_MAX_RANGE_M)  # [B, K, 1]
    # Computed once per object, not once per object and beam, in a compiled graph.
    th_lo, th_hi, face = materialize(th_lo), materialize(th_hi), materialize(face)
    hit = (theta >= th_lo) & (theta <= th_hi)  # [B, K, beams]
    # Nearest face per beam, then the 1/cos stretch: dividing by the same positive number is monotonic, so this
    # equals dividing every object's range first (and costs [B, beams] instead of [B, K, beams]).
    r_min = torch.where(hit, face, LIDAR_MAX_RANGE_M).amin(dim=1)
    rng_m = (r_min / const_table(LIDAR_BEAM_COS, r_min)).clamp_max(LIDAR_MAX_RANGE_M)  # [B, beams]
    tail = u[:, k:].view(b, 3, LIDAR_BEAMS)
    rng_m = rng_m + LIDAR_NOISE_M * (tail[:, 0] - 0.5) * 3.46 * (rng_m < LIDAR_MAX_RANGE_M)
    p_back = LIDAR_BACKSCATTER * torch.exp(-state.visibility_m / 80.0).unsqueeze(-1)
    back_r = 2.0 + tail[:, 2] * (0.5 * state.visibility_m.unsqueeze(-1)).clamp(max=LIDAR_MAX_RANGE_M)
    back = tail[:, 1] < p_back
    rng_m = torch.where(back, torch.minimum(rng_m, back_r), rng_m)
    dropped = (tail[:, 1] > 1.0 - LIDAR_BEAM_DROPOUT) & ~back
    return torch.where(dropped, LIDAR_MAX_RANGE_M, rng_m).clamp(0.0, LIDAR_MAX_RANGE_M)


def _furniture_salt(seed: int) -> int:
    """The road-furniture hash salt of ``seed`` (a 32-bit value; cached, computed on the CPU)."""
    cache: dict[int, int] = _furniture_salt.__dict__.setdefault("cache", {})
    if seed not in cache:
        cache[seed] = int(rng.hash32(torch.tensor([(seed & rng.MASK32) ^ 0x68E31DA4], dtype=torch.int64))[0])
    return cache[seed]


def _radar(
    world: World,
    state: WorldState,
    rel_y: torch.Tensor,
    hidden: torch.Tensor,
    u: torch.Tensor,
    z: torch.Tensor,
    salt: int | torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Radar targets; ``hidden`` [B, K] occluded actors, ``u`` [B, K + 8] uniforms, ``z`` [B, 3 * (K + 2)] unit
    noise, ``salt`` the road furniture's hash salt (``_furniture_salt(state.seed)``; a 0-d int64 tensor in the
    compiled graph)."""
    b, k = state.actor_kind.shape
    near = state.actor_x_m - state.actor_len_m
    rng_t = torch.sqrt(near * near + rel_y * rel_y)
    az = torch.atan2(rel_y, near)
    rate = (state.actor_v_mps - state.ego_v_mps.unsqueeze(-1)) * torch.cos(az)
    z = z.view(b, 3, k + 2)
    p = const_table(RADAR_DETECT_P, near)[state.actor_kind] * (1.0 - RADAR_RAIN_LOSS * state.rain.unsqueeze(-1))
    det = (state.actor_kind > 0) & (near > 0.3) & (rng_t < RADAR_MAX_RANGE_M) & (az.abs() < RADAR_FOV_RAD)
    det = det & (u[:, :k] < p) & ~hidden
    extra = u[:, k:]
    # Overhead road furniture: a property of the road cell (shared by every vehicle), seen as a stationary target.
    # The cell of the ego and the two ahead, in one hash.
    cell = torch.floor(state.ego_s_m / RADAR_FURNITURE_CELL_M).to(torch.int64)
    c = cell.unsqueeze(-1) + torch.arange(3, device=cell.device)  # [B, 3]
    hc = rng.hash32((c & rng.MASK32) ^ salt)
    has = (hc & 0xFFFF).to(torch.float32) / 65536.0 < RADAR_FURNITURE_RATE
    pos = (c.to(torch.float64) + ((hc >> 16).to(torch.float64) / 65536.0)) * RADAR_FURNITURE_CELL_M
    d_f = (pos - state.ego_s_m.unsqueeze(-1)).to(torch.float32)
    ok_f = has & (d_f > RADAR_FURNITURE_SEEN[0]) & (d_f < RADAR_FURNITURE_SEEN[1])
    first = ok_f.to(torch.int64).argmax(-1, keepdim=True)
    furn_r = torch.gather(d_f, -1, first).squeeze(-1)
    furn_ok = ok_f.any(-1) & (extra[:, 0] < RADAR_FURNITURE_P)
    clutter_ok = extra[:, 1] < RADAR_RAIN_CLUTTER * state.rain
    clutter_r = 5.0 + 55.0 * extra[:, 2]
    ghost_r = torch.stack([furn_r, clutter_r], -1)
    ghost_az = torch.stack([torch.zeros_like(furn_r), (extra[:, 3] - 0.5) * 0.35], -1)
    ghost_rate = torch.stack([-state.ego_v_mps, -state.ego_v_mps + 4.0 * (extra[:, 4] - 0.5)], -1)
    all_r = torch.cat([rng_t, ghost_r], -1) + RADAR_RANGE_NOISE_M * z[:, 0]
    all_rate = torch.cat([rate, ghost_rate], -1) + RADAR_RATE_NOISE_MPS * z[:, 1]
    all_az = torch.cat([az, ghost_az], -1) + RADAR_AZ_NOISE_RAD * z[:, 2]
    all_ok = torch.cat([det, torch.stack([furn_ok, clutter_ok], -1)], -1)
    key_r = torch.where(all_ok, all_r, math.inf)
    n = min(RADAR_TARGETS, key_r.shape[-1])
    order = torch.topk(key_r, n, dim=-1, largest=False).indices
    valid = torch.gather(all_ok, -1, order)
    # The three target fields travel together: one gather.
    fields3 = torch.stack([all_r, all_rate, all_az], 1)  # [B, 3, K + 2]
    picked = torch.where(
        valid.unsqueeze(1), torch.gather(fields3, -1, order.unsqueeze(1).expand(-1, 3, -1)), 0.0
    )  # [B, 3, n]
    out = list(picked.unbind(1))
    if n < RADAR_TARGETS:
        pad = RADAR_TARGETS - n
        out = [torch.nn.functional.pad(x, (0, pad)) for x in out]
        valid = torch.nn.functional.pad(valid, (0, pad))
    return out[0].clamp_min(0.0), out[1], out[2], valid


_STREAMS = (rng.STREAM_CAMERA, rng.STREAM_LIDAR, rng.STREAM_RADAR, rng.STREAM_GHOST)


def _segments(k: int) -> tuple[tuple[int, int, int], ...]:
    """Every draw of a tick (key column, first index, count) for K actor slots: noise first (camera cells, indices
    1..128 of the camera stream; radar measurement noise; odometry), then uniforms (camera frame loss, lidar,
    radar). Key columns: camera, lidar, radar, odometry, then the derived keys of the camera's frame loss and of
    the radar's measurement noise."""
    cells = CAMERA_ROWS * CAMERA_COLS
    n_lidar, n_radar, n_radar_z = k + 3 * LIDAR_BEAMS, k + 8, 3 * (k + 2)
    return ((0, 1, cells), (5, 0, n_radar_z), (3, 0, 2), (4, 0, 1), (1, 0, n_lidar), (2, 0, n_radar))


def _derived_keys(keys: torch.Tensor) -> torch.Tensor:
    return torch.cat([keys, rng.derive(keys[:, 0:1], 0x5BD1E995), rng.derive(keys[:, 2:3], 0x27D4EB2F)], -1)


def _from_bits(
    world: World, state: WorldState, bits: torch.Tensor, salt: int | torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The ``Observation`` fields from the tick's bits (``_segments`` layout)."""
    ego_y = world.lane_center_m(state.ego_lane.to(torch.float32)).unsqueeze(-1)  # type: ignore[union-attr]
    rel_y = state.actor_y_m - ego_y  # + left of the ego
    k = state.actor_kind.shape[1]
    cells = CAMERA_ROWS * CAMERA_COLS
    n_lidar, n_radar_z = k + 3 * LIDAR_BEAMS, 3 * (k + 2)
    n_noise = cells + n_radar_z + 2
    z = rng.bits_noise(bits[:, :n_noise])
    u = rng.bits_uniform(bits[:, n_noise:])
    hidden = pedestrians_occluded(state, rel_y)
    cam, cam_ok = _camera(world, state, rel_y, hidden, z[:, :cells], u[:, 0])
    lidar = _lidar(world, state, rel_y, u[:, 1 : 1 + n_lidar])
    r, rr, az, ok = _radar(world, state, rel_y, hidden, u[:, 1 + n_lidar :], z[:, cells : cells + n_radar_z], salt)
    odo = z[:, cells + n_radar_z :]
    ego_speed = (state.ego_v_mps + 0.05 * odo[:, 0]).clamp_min(0.0)
    return cam, cam_ok, lidar, r, rr, az, ok, ego_speed, state.ego_a_mps2 + 0.1 * odo[:, 1]


def _bits_graph(
    base: torch.Tensor, tick: torch.Tensor, h: torch.Tensor, segments: tuple[tuple[int, int, int], ...]
) -> torch.Tensor:
    """The tick's bits (``_segments`` layout) from the cached base keys, with the tick as a tensor (one graph for
    every tick and seed). A graph of its own: its output is the bits in memory, so every consumer in
    ``_from_bits`` reads its slice instead of re-hashing it, with no copy."""
    return rng.draw_bits_segmented(_derived_keys(rng.tick_keys(base, tick)), segments, h)


def observe(world: World, state: WorldState, *, compiled: bool = False) -> Observation:
    """Sensor readings of every vehicle at the state's tick (noise keyed by seed, vehicle id, tick and sensor).

    ``compiled``: run it as one ``torch.compile``d graph (ADR 0101): the same random bits, floats within
    rounding of the eager result. The first call compiles (see ``fleetloop.sim.compile.compile_graph``).
    """
    k = state.actor_kind.shape[1]
    salt = _furniture_salt(state.seed)
    if compiled:
        base = rng.base_keys(state.seed, state.vehicle_ids, _STREAMS)
        segments = _segments(k)
        h = rng.draw_layout(segments, state.vehicle_ids.device)
        tick = rng.signed_tick(state.tick, base.device)
        salt_t = torch.tensor(salt, dtype=torch.int64, device=base.device)
        bits = compile_graph(_bits_graph)(base, tick, h, segments)
        return Observation(*compile_graph(_from_bits)(world, state, bits, salt_t))
    # Every draw of the tick in one hash (ADR 0100).
    keys = _derived_keys(rng.vehicle_keys(state.seed, state.vehicle_ids, state.tick, _STREAMS))
    return Observation(*_from_bits(world, state, rng.draw_bits(keys, _segments(k)), salt))
