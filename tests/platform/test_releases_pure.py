"""The pure decisions of signed releases: no files, no clock, no network."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from fleetloop.edge_agent.ota_verify import SignedWave, check_release, choose_wave
from fleetloop.platform.releases.cohorts import HashRange, VehicleList, cohort_bucket, in_cohort
from fleetloop.platform.releases.errors import (
    BadReleaseInput,
    NotAssigned,
    ReleaseRejected,
    ReplayedMetadata,
    UnsupportedSchema,
)
from fleetloop.platform.releases.fields import ReleaseFields, check_signable
from fleetloop.platform.releases.server import Unsatisfiable, parse_range
from fleetloop.platform.releases.signing import Lifetimes, needs_refresh, release_target_path

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FIELDS = ReleaseFields(
    release=5,
    model_name="policy",
    version="7",
    run_id="r",
    sha256="aa" * 32,
    length_bytes=10,
    input_schema_version=3,
    parent_version="6",
    validation_report_sha256="bb" * 32,
)
HASHES = {"sha256": "aa" * 32}


def wave(n: int, rule: dict[str, object], release: int = 5, hashes: dict[str, str] = HASHES) -> SignedWave:
    return SignedWave(n, hashes, {"release": release, "wave": n, "cohort": rule})


def test_timestamp_is_refreshed_within_a_quarter_of_its_lifetime_and_not_before() -> None:
    margin = Lifetimes().margin("timestamp")
    assert margin == timedelta(hours=6)
    assert not needs_refresh(NOW + timedelta(hours=7), NOW, margin)
    assert needs_refresh(NOW + timedelta(hours=5), NOW, margin)
    assert needs_refresh(NOW - timedelta(seconds=1), NOW, margin)  # already expired


def test_float_in_signed_fields_is_refused_naming_the_key() -> None:
    check_signable({"a": 1, "b": ["x", {"c": 2}]})
    with pytest.raises(BadReleaseInput, match=r"custom\.b\[1\]\.c = 0\.5"):
        check_signable({"a": 1, "b": ["x", {"c": 0.5}]})
    with pytest.raises(BadReleaseInput, match="True"):
        check_signable({"flag": True})


def test_release_fields_round_trip_and_malformed_ones_are_the_repositorys_fault() -> None:
    assert ReleaseFields.from_custom(FIELDS.to_custom(), "p") == FIELDS
    broken = {**FIELDS.to_custom(), "release": "5"}
    with pytest.raises(ReleaseRejected, match="'release'"):
        ReleaseFields.from_custom(broken, "p")


def test_path_traversal_in_a_model_name_is_refused() -> None:
    assert release_target_path("policy", "7") == "models/policy/7/artifact"
    for bad in ("../etc", "a/b", "", ".."):
        with pytest.raises(BadReleaseInput):
            release_target_path(bad, "7")


def test_hash_range_cohort_covers_its_share_of_the_fleet() -> None:
    ids = [f"v-{i:05d}" for i in range(4000)]
    share = sum(in_cohort(HashRange(0, 1000), v) for v in ids) / len(ids)
    assert 0.08 < share < 0.12  # 10 % of the buckets
    assert all(0 <= cohort_bucket(v, 10_000) < 10_000 for v in ids[:50])
    with pytest.raises(BadReleaseInput):
        HashRange(500, 500)


def test_vehicle_in_a_later_wave_is_found_and_others_are_not_assigned() -> None:
    waves = [
        wave(1, {"kind": "vehicle_ids", "vehicle_ids": ["v-1"]}),
        wave(2, {"kind": "vehicle_ids", "vehicle_ids": ["v-2"]}),
    ]
    assert choose_wave(FIELDS, HASHES, waves, "v-2") == 2
    with pytest.raises(NotAssigned, match="v-3 is in none of the 2"):
        choose_wave(FIELDS, HASHES, waves, "v-3")


def test_wave_of_another_release_or_other_bytes_authorises_nothing() -> None:
    rule = {"kind": "vehicle_ids", "vehicle_ids": ["v-1"]}
    with pytest.raises(NotAssigned):
        choose_wave(FIELDS, HASHES, [wave(1, rule, release=4)], "v-1")
    with pytest.raises(NotAssigned):
        choose_wave(FIELDS, HASHES, [wave(1, rule, hashes={"sha256": "cc" * 32})], "v-1")


def test_malformed_cohort_rule_is_rejected_not_treated_as_everyone() -> None:
    with pytest.raises(ReleaseRejected, match="unknown cohort rule"):
        choose_wave(FIELDS, HASHES, [wave(1, {"kind": "everyone"})], "v-1")


def test_vehicle_refuses_an_unsupported_schema_and_an_older_release() -> None:
    check_release(FIELDS, frozenset({3}), installed_release=5)  # reinstalling what runs is fine
    with pytest.raises(UnsupportedSchema, match="input schema 3"):
        check_release(FIELDS, frozenset({2}), installed_release=0)
    with pytest.raises(ReplayedMetadata, match="older than the installed release 6"):
        check_release(FIELDS, frozenset({3}), installed_release=6)
    check_release(replace(FIELDS, release=7), frozenset({3}), installed_release=6)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 99)),
        ("bytes=100-", (100, 999)),
        ("bytes=900-5000", (900, 999)),
        ("bytes=-100", (900, 999)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
    ],
)
def test_range_header_is_parsed_into_inclusive_bytes(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == expected


def test_range_past_the_end_is_unsatisfiable() -> None:
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=1000-", 1000)


def test_empty_vehicle_list_is_refused_at_signing_time() -> None:
    with pytest.raises(BadReleaseInput, match="non-empty"):
        VehicleList(())
