"""The Euro NCAP AEB test matrix as the world can drive it, and the adverse conditions it is repeated in.

Car-to-car rear (Euro NCAP Test Protocol - AEB Car-to-Car systems): CCRs (stationary target, ego 10-80 km/h),
CCRm (target 20 km/h, ego 30-80 km/h), CCRb (both 50 km/h, target brakes at 2 or 6 m/s² after a steady phase,
gap 12 or 40 m), each at 100 %, -50 % and +50 % overlap. Pedestrians (Test Protocol - AEB VRU systems), ego 10-60
km/h: CPNA nearside adult 5 km/h hit at 25 % / 75 % of the width, CPFA farside adult 8 km/h at 50 %, CPNC
nearside child 5 km/h at 50 % stepping out from behind parked cars (hidden by the sensors' occlusion until its
sight line clears them), CPLA longitudinal adult walking 5 km/h ahead at 25 % / 50 %. docs/euroncap.md says
where each number comes from and where the world departs from the protocol.

Pure: plain data and arithmetic; ``ncap_layout`` places every (test, condition) pair on the shared road so that
one fleet run drives the whole matrix in every condition (ADR 0115).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleetloop.sim.errors import ScenarioError
from fleetloop.sim.scenarios import KMH, NCAP_START_TTC_S, ActorSpec, ScenarioSpec
from fleetloop.sim.state import EGO_WIDTH_M
from fleetloop.sim.weather import Weather, WeatherPatch

__all__ = [
    "CAR_TO_CAR_GROUPS",
    "CONDITIONS",
    "GROUPS",
    "PEDESTRIAN_GROUPS",
    "NcapLayout",
    "NcapTest",
    "ccrb_unbraked_impact_kmh",
    "euro_ncap_protocol",
    "ncap_layout",
]

CAR_TO_CAR_GROUPS = ("CCRs", "CCRm", "CCRb")
PEDESTRIAN_GROUPS = ("CPNA", "CPFA", "CPNC", "CPLA")
GROUPS = CAR_TO_CAR_GROUPS + PEDESTRIAN_GROUPS
OVERLAPS_PCT = (100, -50, 50)  # car-to-car overlaps: share of the ego's width behind the target [%]
CCRS_KMH = tuple(range(10, 85, 5))
CCRM_KMH = tuple(range(30, 85, 5))
CCRM_TARGET_KMH = 20.0
CCRB_KMH = 50.0
CCRB_GAPS_M = (12.0, 40.0)
CCRB_DECELS_MPS2 = (2.0, 6.0)
CCRB_BRAKE_AT_S = 2.0  # [s] steady phase before the target brakes
PEDESTRIAN_KMH = tuple(range(10, 65, 5))
ADULT_WALK_KMH = 5.0  # CPNA, CPNC (child), CPLA
FARSIDE_WALK_KMH = 8.0  # CPFA
NEARSIDE_START_M = 3.5  # [m] the nearside pedestrian starts this far outside the ego's right side (fleetloop's)
FARSIDE_START_M = 5.0  # [m] the farside pedestrian starts this far outside the ego's left side (fleetloop's)
PARKED_GAP_M = 0.5  # [m] gap between the child and each parked car, front and back
EGO_LANE = 1
LANE_WIDTH_M = 3.5  # the default world's lane width (``World.lane_width_m``); the layout checks it
CAR_DURATION_S = 10.0
CCRB_DURATION_S = 15.0
PEDESTRIAN_DURATION_S = 10.0
# Adverse conditions: weather kinds and strengths over a condition's stretch of road. "dry" is the protocol's.
CONDITIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "dry": (),
    "fog0.8": (("fog", 0.8),),  # visibility ~144 m, road mu 0.82
    "fog1.0": (("fog", 1.0),),  # visibility 50 m, road mu 0.8
    "rain": (("rain", 1.0),),  # mu 0.5, radar clutter, visibility 1.5 km
    "night": (("night", 1.0),),  # light 0.08, headlights ~60 m
    "low-friction": (("ice", 1.0),),  # mu 0.3, sensors as in daylight
}


@dataclass(frozen=True)
class NcapTest:
    """One test of the protocol matrix.

    Attributes:
        name: test id, e.g. ``ccrs_50_o-50``, ``cpna25_40``.
        group: one of ``GROUPS``.
        test_kmh: the ego's (VUT's) test speed [km/h].
        target_kmh: the target's longitudinal speed at the start [km/h].
        overlap_pct: car-to-car: overlap [%] (+: target offset to the right); pedestrians: impact position [%] of
            the ego's width from its right (nearside) edge.
        unbraked_impact_kmh: the relative speed at which an ego that never brakes hits the target [km/h].
        spec: the scene (the target is actor 0).
    """

    name: str
    group: str
    test_kmh: float
    target_kmh: float
    overlap_pct: int
    unbraked_impact_kmh: float
    spec: ScenarioSpec


def ccrb_unbraked_impact_kmh(speed_kmh: float, gap_m: float, decel_mps2: float) -> float:
    """Relative impact speed [km/h] of an ego holding ``speed_kmh`` behind a target at the same speed that brakes
    to a stop at ``decel_mps2`` from ``gap_m`` ahead (bumper to bumper)."""
    v = speed_kmh * KMH
    t_hit = math.sqrt(2.0 * gap_m / decel_mps2)  # gap closes as a t² / 2 while the target is still moving
    if t_hit <= v / decel_mps2:
        return decel_mps2 * t_hit / KMH
    return speed_kmh  # the target stopped first: the ego hits it standing


def _car_tests() -> list[NcapTest]:
    tests: list[NcapTest] = []
    for overlap in OVERLAPS_PCT:
        # the target's centre sits (1 - |overlap|) ego widths beside the ego's; + overlap: to the right (-y)
        offset = -math.copysign((1.0 - abs(overlap) / 100.0) * EGO_WIDTH_M, overlap)
        for kmh in CCRS_KMH:
            v = kmh * KMH
            target = ActorSpec(kind="stopped_vehicle", x_m=NCAP_START_TTC_S * v + 4.5, lane=EGO_LANE, y_offset_m=offset)
            spec = ScenarioSpec(f"ccrs_{kmh}_o{overlap}", v, v, EGO_LANE, (target,), CAR_DURATION_S)
            tests.append(NcapTest(spec.name, "CCRs", kmh, 0.0, overlap, float(kmh), spec))
        for kmh in CCRM_KMH:
            v, vt = kmh * KMH, CCRM_TARGET_KMH * KMH
            target = ActorSpec(x_m=NCAP_START_TTC_S * (v - vt) + 4.5, lane=EGO_LANE, speed_mps=vt, y_offset_m=offset)
            spec = ScenarioSpec(f"ccrm_{kmh}_o{overlap}", v, v, EGO_LANE, (target,), CAR_DURATION_S)
            tests.append(NcapTest(spec.name, "CCRm", kmh, CCRM_TARGET_KMH, overlap, kmh - CCRM_TARGET_KMH, spec))
        for decel in CCRB_DECELS_MPS2:
            for gap in CCRB_GAPS_M:
                v = CCRB_KMH * KMH
                target = ActorSpec(
                    x_m=gap + 4.5,
                    lane=EGO_LANE,
                    speed_mps=v,
                    brake_at_s=CCRB_BRAKE_AT_S,
                    brake_decel_mps2=decel,
                    y_offset_m=offset,
                )
                spec = ScenarioSpec(f"ccrb_d{decel:g}_g{gap:g}_o{overlap}", v, v, EGO_LANE, (target,), CCRB_DURATION_S)
                impact = ccrb_unbraked_impact_kmh(CCRB_KMH, gap, decel)
                tests.append(NcapTest(spec.name, "CCRb", CCRB_KMH, CCRB_KMH, overlap, impact, spec))
    return tests


def _crossing(
    group: str, kmh: int, impact_pct: int, walk_kmh: float, start_y_m: float, parked: bool = False
) -> NcapTest:
    """A pedestrian crossing from ``start_y_m`` (lateral, from the road's right edge) at ``walk_kmh``, placed so
    that it reaches ``impact_pct`` of the ego's width (from the right edge) as the ego's front arrives."""
    v, walk = kmh * KMH, walk_kmh * KMH
    ego_right_m = (EGO_LANE + 0.5) * LANE_WIDTH_M - 0.5 * EGO_WIDTH_M
    hit_y = ego_right_m + impact_pct / 100.0 * EGO_WIDTH_M
    t_hit = abs(hit_y - start_y_m) / walk
    x_centre = v * t_hit
    start_lane = math.floor(start_y_m / LANE_WIDTH_M)
    to_lane = 3 if hit_y > start_y_m else -1  # on to the far kerb: it does not stop in the ego's lane
    ped = ActorSpec(
        kind="pedestrian",
        x_m=x_centre + 0.25,
        lane=start_lane,
        y_offset_m=start_y_m - (start_lane + 0.5) * LANE_WIDTH_M,
        move_at_s=0.0,
        to_lane=to_lane,
        lateral_speed_mps=walk,
    )
    actors: tuple[ActorSpec, ...] = (ped,)
    if parked:  # two cars parked in the nearside lane, the child stepping out of the gap between them
        near = ActorSpec(kind="stopped_vehicle", x_m=x_centre - 0.25 - PARKED_GAP_M, lane=EGO_LANE - 1)
        far = ActorSpec(kind="stopped_vehicle", x_m=x_centre + 0.25 + PARKED_GAP_M + 4.5, lane=EGO_LANE - 1)
        actors = (ped, near, far)
    name = f"{group.lower()}{impact_pct}_{kmh}"
    spec = ScenarioSpec(name, v, v, EGO_LANE, actors, PEDESTRIAN_DURATION_S)
    return NcapTest(name, group, kmh, 0.0, impact_pct, float(kmh), spec)


def _pedestrian_tests() -> list[NcapTest]:
    ego_right_m = (EGO_LANE + 0.5) * LANE_WIDTH_M - 0.5 * EGO_WIDTH_M
    ego_left_m = ego_right_m + EGO_WIDTH_M
    child_start_m = EGO_LANE * LANE_WIDTH_M - 0.5 * LANE_WIDTH_M + 0.25  # inside the parked cars' width
    tests: list[NcapTest] = []
    for kmh in PEDESTRIAN_KMH:
        for pct in (25, 75):
            tests.append(_crossing("CPNA", kmh, pct, ADULT_WALK_KMH, ego_right_m - NEARSIDE_START_M))
        tests.append(_crossing("CPFA", kmh, 50, FARSIDE_WALK_KMH, ego_left_m + FARSIDE_START_M))
        tests.append(_crossing("CPNC", kmh, 50, ADULT_WALK_KMH, child_start_m, parked=True))
        for pct in (25, 50):
            v, walk = kmh * KMH, ADULT_WALK_KMH * KMH
            offset = (pct - 50) / 100.0 * EGO_WIDTH_M
            ped = ActorSpec(
                kind="pedestrian",
                x_m=NCAP_START_TTC_S * (v - walk) + 0.5,
                lane=EGO_LANE,
                speed_mps=walk,
                y_offset_m=offset,
            )
            name = f"cpla{pct}_{kmh}"
            spec = ScenarioSpec(name, v, v, EGO_LANE, (ped,), PEDESTRIAN_DURATION_S)
            tests.append(NcapTest(name, "CPLA", kmh, ADULT_WALK_KMH, pct, kmh - ADULT_WALK_KMH, spec))
    return tests


def euro_ncap_protocol(groups: Sequence[str] = GROUPS) -> list[NcapTest]:
    """Every test of ``groups`` (car-to-car first, then pedestrians), in a fixed order."""
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ScenarioError(f"unknown Euro NCAP group(s) {', '.join(unknown)}; valid groups: {', '.join(GROUPS)}")
    return [t for t in _car_tests() + _pedestrian_tests() if t.group in groups]


@dataclass(frozen=True)
class NcapLayout:
    """Where each (test, condition) pair drives: its vehicle id (which fixes its road position) and the weather
    field whose stretches hold the conditions.

    Attributes:
        vehicle_ids: ``vehicle_ids[c][i]`` drives test i in condition c.
        weather: the conditions' patches, one stretch of road each (clear daylight where none).
        stretch_m: length of each condition's stretch [m].
    """

    vehicle_ids: tuple[tuple[int, ...], ...]
    weather: Weather
    stretch_m: float


def ncap_layout(
    n_tests: int,
    conditions: Sequence[str],
    scene_spacing_m: float = 150.0,
    road_length_m: float = 50_000.0,
    travel_m: float = 400.0,
    catalogue: Mapping[str, tuple[tuple[str, float], ...]] = CONDITIONS,
) -> NcapLayout:
    """Place ``n_tests`` tests in each of ``conditions`` on the shared road (ADR 0115).

    ``catalogue`` names every condition a run may ask for, each as weather patches (kind, strength): by default
    ``CONDITIONS``; the validate stage passes its suite's conditions. Condition c of ``catalogue`` holds the
    stretch ``[c L, (c + 1) L)`` of the road, L = road length / number of conditions in ``catalogue``, whichever
    conditions are asked for (so a test in "dry" drives the same vehicle id, the same sensor noise and road
    furniture, in every run). Vehicle
    id i starts at ``i * scene_spacing_m`` (wrapped), so ids whose positions lie inside a stretch, at least
    ``travel_m`` before its end, are used, and positions repeat every ``road_length_m / gcd(spacing, length)`` ids:
    scenes may share a position (each ego's traffic is its own), never a condition.
    """
    unknown = [c for c in conditions if c not in catalogue]
    if unknown or not conditions:
        raise ScenarioError(
            f"unknown condition(s) {', '.join(unknown) or '(none given)'}; valid conditions: {', '.join(catalogue)}"
        )
    if len(set(conditions)) != len(conditions):
        raise ScenarioError("each condition may be given once")
    spacing, length = round(scene_spacing_m), round(road_length_m)
    if spacing != scene_spacing_m or length != road_length_m or spacing <= 0:
        raise ScenarioError("the layout needs a whole-metre scene spacing and road length")
    period = length // math.gcd(spacing, length)  # ids this far apart share a position
    stretch = road_length_m / len(catalogue)
    ids: list[tuple[int, ...]] = []
    patches: list[WeatherPatch] = []
    for name in conditions:
        c = list(catalogue).index(name)
        lo, hi = c * stretch + 1.0, (c + 1) * stretch - travel_m - 1.0
        first, last = math.ceil(lo / spacing), math.floor(hi / spacing)
        slots = last - first + 1
        if slots < 1:
            raise ScenarioError(f"{len(catalogue)} conditions leave no room on a {road_length_m:g} m road")
        ids.append(tuple(first + (i % slots) + (i // slots) * period for i in range(n_tests)))
        for kind, strength in catalogue[name]:
            patches.append(WeatherPatch(kind=kind, start_m=c * stretch, end_m=(c + 1) * stretch, strength=strength))
    return NcapLayout(tuple(ids), Weather(patches=tuple(patches), name="ncap:" + ",".join(conditions)), stretch)
