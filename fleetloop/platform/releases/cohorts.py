"""Which vehicles a rollout wave covers, as a rule signed into the wave's delegated role. Pure.

Two kinds of rule: an explicit list of vehicle ids, or a range of hash buckets (``sha256(vehicle_id)`` mod
``buckets``), so a wave of "10 % of the fleet" needs no list and a vehicle can check it alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetloop.platform.releases.errors import BadReleaseInput, ReleaseRejected

__all__ = [
    "DEFAULT_BUCKETS",
    "CohortRule",
    "HashRange",
    "VehicleList",
    "cohort_bucket",
    "in_cohort",
    "rule_from_custom",
    "rule_to_custom",
]

DEFAULT_BUCKETS = 10_000  # 0.01 % of the fleet per bucket


@dataclass(frozen=True)
class VehicleList:
    """Exactly these vehicles."""

    vehicle_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.vehicle_ids or not all(isinstance(v, str) and v for v in self.vehicle_ids):
            raise BadReleaseInput(f"a wave's vehicle list must be non-empty strings, got {self.vehicle_ids!r}")


@dataclass(frozen=True)
class HashRange:
    """The vehicles whose bucket ``cohort_bucket(id, buckets)`` lies in ``[lo_bucket, hi_bucket)``."""

    lo_bucket: int
    hi_bucket: int
    buckets: int = DEFAULT_BUCKETS

    def __post_init__(self) -> None:
        if not 0 <= self.lo_bucket < self.hi_bucket <= self.buckets:
            raise BadReleaseInput(
                f"hash range [{self.lo_bucket}, {self.hi_bucket}) must satisfy 0 <= lo < hi <= buckets={self.buckets}"
            )


CohortRule = VehicleList | HashRange


def cohort_bucket(vehicle_id: str, buckets: int) -> int:
    """The vehicle's stable bucket: the first 8 bytes of sha256(id) mod ``buckets`` (the same on every machine)."""
    return int.from_bytes(hashlib.sha256(vehicle_id.encode()).digest()[:8], "big") % buckets


def in_cohort(rule: CohortRule, vehicle_id: str) -> bool:
    """Whether the rule covers the vehicle."""
    if isinstance(rule, VehicleList):
        return vehicle_id in rule.vehicle_ids
    return rule.lo_bucket <= cohort_bucket(vehicle_id, rule.buckets) < rule.hi_bucket


def rule_to_custom(rule: CohortRule) -> dict[str, Any]:
    """The rule as a signable dict (strings and ints only)."""
    if isinstance(rule, VehicleList):
        return {"kind": "vehicle_ids", "vehicle_ids": list(rule.vehicle_ids)}
    return {"kind": "hash_range", "lo_bucket": rule.lo_bucket, "hi_bucket": rule.hi_bucket, "buckets": rule.buckets}


def rule_from_custom(custom: object, where: str) -> CohortRule:
    """Parse a signed rule; a malformed one is the repository's fault (ReleaseRejected)."""
    try:
        if isinstance(custom, Mapping) and custom.get("kind") == "vehicle_ids":
            return VehicleList(tuple(custom["vehicle_ids"]))
        if isinstance(custom, Mapping) and custom.get("kind") == "hash_range":
            return HashRange(int(custom["lo_bucket"]), int(custom["hi_bucket"]), int(custom["buckets"]))
    except (KeyError, TypeError, ValueError, BadReleaseInput) as exc:
        raise ReleaseRejected(f"{where}: malformed cohort rule {custom!r} ({exc})") from exc
    raise ReleaseRejected(f"{where}: unknown cohort rule {custom!r}")
