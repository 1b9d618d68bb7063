"""The frozen held-out scenario suite that validate judges every candidate on.

A suite is plain data: slices (scenario x condition), each driven for ``ticks`` by ``vehicles`` vehicles, under
every one of several ``seeds``. It is stored once as canonical JSON with its SHA-256 beside it
(``<state_dir>/suites/<name>.json`` and ``.sha256``); :func:`frozen_suite` loads it and refuses a file whose
hash no longer matches, so a suite cannot drift between two validations (docs/adr/0090-frozen-held-out-suite.md).

Held out by construction:

- **scenes**: the Euro NCAP CCR matrix (24 tests) and scenario families drawn from seeds in the reserved
  ``HELD_OUT_SEED_BASE`` range; training data only ever comes from the lake (fleet telemetry), never from here;
- **condition intensities**: fixed intermediate strengths no training preset holds (fog at strength 0.8,
  about 140 m visibility, steady; night with fog at 0.9; rain at 0.7), beside clear weather. The training
  presets are full-strength patches (``clear``, ``fog``, ``rain``, ``night``, ``mixed``); fog rolling in
  passes intermediate strengths only transiently.

Every slice names the *data condition* it stands for (``clear``, ``fog``, ``rain``, ``night``), which the
improvement gate matches against the conditions the candidate's training data came from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fleetloop.platform.atomic import write_bytes_atomic
from fleetloop.platform.errors import DataError, UserInputError
from fleetloop.sim import FAMILIES, Weather, WeatherPatch

__all__ = [
    "CONDITIONS",
    "DATA_CONDITIONS",
    "HELD_OUT_SEED_BASE",
    "NCAP_CCR",
    "HeldOutSuite",
    "SuiteCondition",
    "SuiteSlice",
    "default_suite",
    "describe",
    "frozen_suite",
    "load_suite",
    "save_suite",
    "slice_seconds",
    "suite_dir",
    "tiny_suite",
]

HELD_OUT_SEED_BASE = 9_100_000  # suite seeds live here; training fleets use small seeds (docs: the ADR)
NCAP_CCR = "ncap_ccr"  # scenario name of the Euro NCAP car-to-car rear matrix
DATA_CONDITIONS = ("clear", "fog", "rain", "night")
SUITE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SuiteCondition:
    """A steady weather over the whole road: ``patches`` of (kind, strength 0..1), and the data condition it
    stands for."""

    name: str
    patches: tuple[tuple[str, float], ...]
    data_condition: str

    def __post_init__(self) -> None:
        if self.data_condition not in DATA_CONDITIONS:
            raise UserInputError(f"condition {self.name}: data condition must be one of {', '.join(DATA_CONDITIONS)}")
        for kind, strength in self.patches:
            if kind not in ("fog", "rain", "night") or not 0.0 < strength <= 1.0:
                raise UserInputError(
                    f"condition {self.name}: patch ({kind!r}, {strength}) must be fog/rain/night, 0..1"
                )

    def weather(self) -> Any:
        """The ``fleetloop.sim.Weather`` of this condition."""
        return Weather(tuple(WeatherPatch(kind=k, strength=s) for k, s in self.patches), name=self.name)


CONDITIONS: dict[str, SuiteCondition] = {
    c.name: c
    for c in (
        SuiteCondition("clear", (), "clear"),
        SuiteCondition("fog_0.8", (("fog", 0.8),), "fog"),
        SuiteCondition("night_fog_0.9", (("night", 1.0), ("fog", 0.9)), "fog"),
        SuiteCondition("rain_0.7", (("rain", 0.7),), "rain"),
    )
}


@dataclass(frozen=True)
class SuiteSlice:
    """One scenario x condition slice.

    Attributes:
        scenario: ``ncap_ccr`` (the 24 Euro NCAP CCR tests, one per vehicle, cycled) or a scenario family.
        condition: the weather.
        vehicles: vehicles driven side by side.
        ticks: ticks driven (0.1 s each); scenes restart when they end.
    """

    scenario: str
    condition: SuiteCondition
    vehicles: int
    ticks: int

    @property
    def name(self) -> str:
        return f"{self.scenario}/{self.condition.name}"


@dataclass(frozen=True)
class HeldOutSuite:
    """The frozen held-out suite: slices x seeds."""

    name: str
    slices: tuple[SuiteSlice, ...]
    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.slices or not self.seeds:
            raise UserInputError(f"suite {self.name}: needs at least one slice and one seed")
        names = [s.name for s in self.slices]
        if len(set(names)) != len(names):
            raise UserInputError(f"suite {self.name}: duplicate slices")
        for s in self.slices:
            if s.scenario != NCAP_CCR and s.scenario not in FAMILIES:
                raise UserInputError(
                    f"suite slice {s.name}: unknown scenario; use {NCAP_CCR} or one of {', '.join(FAMILIES)}"
                )
            if s.vehicles < 1 or s.ticks < 1:
                raise UserInputError(f"suite slice {s.name}: vehicles and ticks must be >= 1")
        for seed in self.seeds:
            if seed < HELD_OUT_SEED_BASE:
                raise UserInputError(
                    f"suite {self.name}: seed {seed} is below the held-out range (>= {HELD_OUT_SEED_BASE})"
                )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format_version"] = SUITE_FORMAT_VERSION
        return d

    @staticmethod
    def from_dict(d: Any) -> HeldOutSuite:
        """Parse ``to_dict`` output; ``DataError`` says what is wrong."""
        try:
            if d.get("format_version") != SUITE_FORMAT_VERSION:
                raise ValueError(f"format_version {d.get('format_version')!r}, this code reads {SUITE_FORMAT_VERSION}")
            slices = tuple(
                SuiteSlice(
                    scenario=s["scenario"],
                    condition=SuiteCondition(
                        s["condition"]["name"],
                        tuple((str(k), float(v)) for k, v in s["condition"]["patches"]),
                        s["condition"]["data_condition"],
                    ),
                    vehicles=int(s["vehicles"]),
                    ticks=int(s["ticks"]),
                )
                for s in d["slices"]
            )
            return HeldOutSuite(str(d["name"]), slices, tuple(int(x) for x in d["seeds"]))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"held-out suite description is malformed ({e}); regenerate it") from e

    def canonical_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def content_hash(self) -> str:
        """``sha256:<hex>`` of the canonical JSON: the suite's identity in every validation report."""
        return "sha256:" + hashlib.sha256(self.canonical_json()).hexdigest()

    @property
    def runs(self) -> int:
        """Closed-loop runs per model (slices x seeds)."""
        return len(self.slices) * len(self.seeds)


def default_suite(seeds: int = 3) -> HeldOutSuite:
    """The standard suite: CCR matrix and the ``mixed`` family under clear, fog 0.8, night fog 0.9 and rain 0.7.

    Per model: 8 slices x ``seeds`` runs; the CCR slices drive the 24 tests for 15 s, the mixed slices 128
    vehicles for 30 s."""
    slices = []
    for cond in CONDITIONS.values():
        slices.append(SuiteSlice(NCAP_CCR, cond, vehicles=24, ticks=150))
        slices.append(SuiteSlice("mixed", cond, vehicles=128, ticks=300))
    return HeldOutSuite("heldout-v1", tuple(slices), tuple(HELD_OUT_SEED_BASE + i for i in range(seeds)))


def tiny_suite() -> HeldOutSuite:
    """A seconds-long suite for tests: CCR in clear and fog 0.8, two seeds."""
    slices = (
        SuiteSlice(NCAP_CCR, CONDITIONS["clear"], vehicles=24, ticks=60),
        SuiteSlice(NCAP_CCR, CONDITIONS["fog_0.8"], vehicles=24, ticks=60),
    )
    return HeldOutSuite("heldout-tiny", slices, (HELD_OUT_SEED_BASE, HELD_OUT_SEED_BASE + 1))


def suite_dir(state_dir: Path) -> Path:
    """``<state_dir>/suites``."""
    return Path(state_dir) / "suites"


def save_suite(path: Path, suite: HeldOutSuite) -> str:
    """Write ``suite`` as canonical JSON at ``path`` and its hash at ``path.sha256`` (atomically); returns the hash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, data in ((path, suite.canonical_json()), (path.with_suffix(".sha256"), suite.content_hash.encode())):
        write_bytes_atomic(target, data)
    return suite.content_hash


def load_suite(path: Path) -> HeldOutSuite:
    """Read a stored suite and check it against its stored hash (``DataError`` if it changed)."""
    try:
        raw = path.read_bytes()
        stored = path.with_suffix(".sha256").read_text().strip()
    except OSError as e:
        raise DataError(f"cannot read the held-out suite at {path} ({e}); delete it to regenerate") from e
    try:
        suite = HeldOutSuite.from_dict(json.loads(raw))
    except json.JSONDecodeError as e:
        raise DataError(f"held-out suite {path} is not JSON ({e})") from e
    if suite.content_hash != stored or "sha256:" + hashlib.sha256(raw).hexdigest() != stored:
        raise DataError(
            f"held-out suite {path} does not match its stored hash {stored}: a frozen suite must not change; "
            "restore it, or start a new suite under a new name"
        )
    return suite


def frozen_suite(state_dir: Path, template: HeldOutSuite | None = None) -> HeldOutSuite:
    """The suite named like ``template`` (default :func:`default_suite`) under ``state_dir``: stored on first use,
    verified against its hash afterwards (the stored one wins, so the suite stays frozen)."""
    suite = template or default_suite()
    path = suite_dir(state_dir) / f"{suite.name}.json"
    if path.exists():
        return load_suite(path)
    save_suite(path, suite)
    return suite


def slice_seconds(s: SuiteSlice, dt_s: float = 0.1) -> float:
    """Simulated time of one run of a slice [s]."""
    return s.ticks * dt_s


def describe(suite: HeldOutSuite) -> list[dict[str, Any]]:
    """One row per slice (for reports)."""
    return [
        {
            "slice": s.name,
            "scenario": s.scenario,
            "condition": s.condition.name,
            "data_condition": s.condition.data_condition,
            "vehicles": s.vehicles,
            "simulated_s": round(slice_seconds(s), 3),
            "seeds": len(suite.seeds),
        }
        for s in suite.slices
    ]
