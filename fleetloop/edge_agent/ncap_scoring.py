"""Euro NCAP AEB scoring: points per test from its relative impact speed, totals per group (pure, no I/O).

Each test earns a share of one point by the band its relative impact speed falls in: below the band's edge
[km/h] it earns the band's share (green 1, yellow 0.75, orange 0.5, brown 0.25), at or above every edge nothing
(red). The band tables are keyed by group and test speed; where each comes from, and which are fleetloop's own
stand-ins, is in ``band_table``'s ``source`` and docs/euroncap.md (ADR 0116).

Gates, before the bands:

- a test run is *valid* only while the ego stays within the protocol's speed tolerance (never above its test speed
  + ``SPEED_TOLERANCE_KMH``) until the test ends; an invalid run earns nothing and is counted;
- only an impact before the test's end counts (the ego at standstill, or slower than a target it was closing on).

A group's total is the sum of its tests' points out of one point per test; the car-to-car and pedestrian totals
sum their groups. Every test weighs the same (the protocol's weighting of groups into the Safety Assist and VRU
scores is not reproduced).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "BAND_POINTS",
    "SPEED_TOLERANCE_KMH",
    "BandTable",
    "GroupScore",
    "TestResult",
    "TestScore",
    "band_table",
    "score_groups",
    "score_test",
]

BAND_POINTS = (1.0, 0.75, 0.5, 0.25)  # green, yellow, orange, brown; red earns 0
BAND_NAMES = ("green", "yellow", "orange", "brown", "red")
SPEED_TOLERANCE_KMH = 1.0  # [km/h] the ego may run up to this much above its test speed
SOURCE_PROTOCOL = "SA v9.1 §6.1.3 (as transcribed by BeamNG's beamng_ncap)"
SOURCE_PATTERN = "same table as the equal closing speed (SA v9.1 pattern)"
SOURCE_EXTRAPOLATED = "fleetloop extrapolation (edges closing-10, -25, -40, 5 km/h)"
SOURCE_PEDESTRIAN = "fleetloop stand-in: the CCRs table at the test speed"
SOURCE_AVOID = "avoidance only (as transcribed by BeamNG's beamng_ncap)"

# Impact-speed band edges [km/h], green first: an impact below edges[-1] is green, below edges[-2] yellow, ...
# (a table with fewer edges starts lower: (15, 5) is green below 5, orange below 15).
_CCRS: dict[int, tuple[float, ...]] = {
    10: (1,),
    15: (1,),
    20: (1,),
    25: (15, 5),
    30: (25, 15, 5),
    35: (25, 15, 5),
    40: (35, 25, 15, 5),
    45: (35, 25, 15, 5),
    50: (40, 30, 15, 5),
}
_CCRM: dict[int, tuple[float, ...]] = {
    30: (5,),
    35: (5,),
    40: (15, 5),
    45: (15, 5),
    50: (25, 15, 5),
    55: (25, 15, 5),
    60: (35, 25, 15, 5),
    65: (35, 25, 15, 5),
    70: (40, 30, 15, 5),
    75: (45, 30, 15, 5),
    80: (50, 35, 20, 5),
}
# Which band shares a table of n edges gives, green first.
_SHARES = {1: (1.0,), 2: (1.0, 0.5), 3: (1.0, 0.75, 0.5), 4: (1.0, 0.75, 0.5, 0.25)}


@dataclass(frozen=True)
class BandTable:
    """Impact-speed bands of one (group, test speed).

    Attributes:
        edges_kmh: band edges [km/h], highest first.
        shares: the bands' shares of a point, green first (below the lowest edge), one per edge.
        source: where the table comes from.
    """

    edges_kmh: tuple[float, ...]
    shares: tuple[float, ...]
    source: str

    def points(self, impact_kmh: float) -> float:
        """Share of a point for a relative impact speed [km/h] (0: avoided)."""
        earned = 0.0
        for edge, share in zip(self.edges_kmh, self.shares[::-1], strict=True):
            if impact_kmh < edge:
                earned = share
        return earned


def _table(edges: tuple[float, ...], source: str) -> BandTable:
    return BandTable(edges, _SHARES[len(edges)], source)


def _ccrs_table(kmh: int) -> BandTable:
    if kmh in _CCRS:
        return _table(_CCRS[kmh], SOURCE_PROTOCOL)
    closing_twin = kmh + 20  # the CCRm test with the same closing speed
    if closing_twin in _CCRM:
        return _table(_CCRM[closing_twin], SOURCE_PATTERN)
    return _table((kmh - 10.0, kmh - 25.0, kmh - 40.0, 5.0), SOURCE_EXTRAPOLATED)


def band_table(group: str, test_kmh: float) -> BandTable:
    """The bands that score a test of ``group`` at ``test_kmh``; raises ``ValueError`` for an unknown pair."""
    kmh = round(test_kmh)
    if abs(kmh - test_kmh) > 1e-6 or kmh % 5 or kmh < 10:
        raise ValueError(f"no Euro NCAP bands for a test speed of {test_kmh} km/h (10 km/h and up, in 5 km/h steps)")
    if group == "CCRs":
        return _ccrs_table(kmh)
    if group == "CCRm":
        if kmh not in _CCRM:
            raise ValueError(f"CCRm is tested at 30-80 km/h, not {test_kmh}")
        return _table(_CCRM[kmh], SOURCE_PROTOCOL)
    if group == "CCRb":
        return _table((1.0,), SOURCE_AVOID)
    if group in ("CPNA", "CPFA", "CPNC", "CPLA"):
        return BandTable(_ccrs_table(kmh).edges_kmh, _ccrs_table(kmh).shares, SOURCE_PEDESTRIAN)
    raise ValueError(f"unknown Euro NCAP group {group!r}")


@dataclass(frozen=True)
class TestResult:
    """What one test run measured (plain numbers, from the fleet run).

    Attributes:
        group, test_kmh: which test (``fleetloop.sim.ncap.NcapTest``).
        impact_kmh: relative speed of the first impact before the test ended [km/h] (0: avoided).
        max_speed_kmh: the ego's highest speed before the test ended [km/h] (the tolerance gate).
    """

    group: str
    test_kmh: float
    impact_kmh: float
    max_speed_kmh: float

    __test__ = False  # not a pytest class


@dataclass(frozen=True)
class TestScore:
    """A test's points and why."""

    points: float
    band: str
    valid: bool
    source: str

    __test__ = False


def score_test(result: TestResult) -> TestScore:
    """Points of one test run: 0 when invalid, else its band's share."""
    table = band_table(result.group, result.test_kmh)
    valid = result.max_speed_kmh <= result.test_kmh + SPEED_TOLERANCE_KMH + 1e-9
    points = table.points(result.impact_kmh) if valid else 0.0
    band = BAND_NAMES[BAND_POINTS.index(points)] if points in BAND_POINTS else "red"
    return TestScore(points, band, valid, table.source)


@dataclass(frozen=True)
class GroupScore:
    """Points of a group (or of several: the car-to-car and pedestrian totals)."""

    points: float
    max_points: float
    tests: int
    avoided: int
    invalid: int

    @property
    def percent(self) -> float:
        """Points as a percentage of the maximum (nan for no tests)."""
        return 100.0 * self.points / self.max_points if self.max_points else float("nan")


def score_groups(
    results: Sequence[TestResult], totals: Iterable[tuple[str, Sequence[str]]] = ()
) -> dict[str, GroupScore]:
    """Per-group scores of ``results`` (in order of first appearance), then each named total of ``totals``
    (name, groups) over the groups present."""
    scored = [(r, score_test(r)) for r in results]
    out: dict[str, GroupScore] = {}

    def total(keep: Sequence[str]) -> GroupScore:
        mine = [(r, s) for r, s in scored if r.group in keep]
        return GroupScore(
            points=sum(s.points for _, s in mine),
            max_points=float(len(mine)),
            tests=len(mine),
            avoided=sum(1 for r, s in mine if s.valid and r.impact_kmh == 0.0),
            invalid=sum(1 for _, s in mine if not s.valid),
        )

    for group in dict.fromkeys(r.group for r in results):
        out[group] = total((group,))
    for name, groups in totals:
        if any(g in out for g in groups):
            out[name] = total(groups)
    return out
