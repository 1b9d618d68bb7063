"""The operator's release commands, their pure parts: which versions may ship, what is signed, which vehicles."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fleetloop.cli.ota import MAX_LISTED_VEHICLES, cohort_rule, parse_vehicle_ids
from fleetloop.cli.release_source import check_publishable, input_schema_number, signed_fields
from fleetloop.platform.errors import DataError, FleetloopError, UserInputError
from fleetloop.platform.registry import ModelVersionInfo, Stage
from fleetloop.platform.releases.cohorts import DEFAULT_BUCKETS, HashRange, VehicleList, in_cohort
from fleetloop.platform.releases.errors import BadReleaseInput, KeysMissing
from fleetloop.platform.releases.refresher import TimestampRefresher, check_period_s
from fleetloop.platform.releases.signing import Lifetimes, needs_refresh


def _info(**metadata: object) -> ModelVersionInfo:
    return ModelVersionInfo(
        model="fleet-policy",
        version="7",
        stage=Stage.STAGING,
        aliases=(),
        created="2026-01-01T00:00:00+00:00",
        source="runs:/upload/model",
        run_id="upload",
        metadata=metadata,
    )


@pytest.mark.parametrize("stage", [Stage.STAGING, Stage.CANARY, Stage.PRODUCTION])
def test_validated_versions_may_be_published(stage: Stage) -> None:
    check_publishable("fleet-policy", "7", stage, rollback=False)


@pytest.mark.parametrize(
    ("stage", "says"),
    [
        (Stage.CANDIDATE, "only a version that passed validation"),
        (None, "without a stage"),
        (Stage.REJECTED, "rejected by validation"),
        (Stage.ARCHIVED, "--rollback"),
    ],
)
def test_unvalidated_rejected_or_archived_versions_are_refused_as_bad_input(stage: Stage | None, says: str) -> None:
    with pytest.raises(BadReleaseInput, match=says) as err:
        check_publishable("fleet-policy", "7", stage, rollback=False)
    assert err.value.exit_code == 2


def test_archived_version_ships_only_as_an_authorised_rollback_and_a_rejected_one_never() -> None:
    check_publishable("fleet-policy", "3", Stage.ARCHIVED, rollback=True)
    with pytest.raises(BadReleaseInput):
        check_publishable("fleet-policy", "3", Stage.REJECTED, rollback=True)
    with pytest.raises(BadReleaseInput):
        check_publishable("fleet-policy", "3", Stage.CANDIDATE, rollback=True)


def test_input_schema_name_becomes_the_signed_number_and_a_foreign_one_is_malformed() -> None:
    assert input_schema_number("policy-input/1") == 1
    assert input_schema_number("policy-input/12") == 12
    for bad in ("1.2", "policy-input/", "policy-input/x", ""):
        with pytest.raises(DataError, match="not <layout>/<number>"):
            input_schema_number(bad)


def test_signed_fields_take_the_training_run_lineage_and_report() -> None:
    info = _info(training_run_id="train-run", parent_version="6", input_schema_version="policy-input/1")
    custom, notes = signed_fields(info, "policy-input/1", "ab" * 32)
    assert custom == {
        "run_id": "train-run",
        "input_schema_version": 1,
        "parent_version": "6",
        "validation_report_sha256": "ab" * 32,
    }
    assert notes == []


def test_a_first_model_without_report_is_signed_with_empty_lineage_and_says_so() -> None:
    custom, notes = signed_fields(_info(), "policy-input/1", "")
    assert custom["run_id"] == "upload"  # the run that holds the artifact
    assert custom["parent_version"] == "" and custom["validation_report_sha256"] == ""
    assert notes == ["no parent version recorded (a first model)", "no validation report found"]


def test_registry_record_that_contradicts_the_artifact_schema_is_refused() -> None:
    with pytest.raises(DataError, match="registry records input schema 'policy-input/2'"):
        signed_fields(_info(input_schema_version="policy-input/2"), "policy-input/1", "")


def test_vehicle_ranges_and_ids_are_listed_in_order_without_repeats() -> None:
    assert parse_vehicle_ids("0-3") == ("0", "1", "2", "3")
    assert parse_vehicle_ids("5, 1-2,v-7,2") == ("5", "1", "2", "v-7")
    for bad in ("", " , ", "9-3"):
        with pytest.raises(BadReleaseInput):
            parse_vehicle_ids(bad)
    with pytest.raises(BadReleaseInput, match="--share"):
        parse_vehicle_ids(f"0-{MAX_LISTED_VEHICLES}")


def test_a_share_covers_that_share_of_the_fleet_and_a_wave_needs_exactly_one_cohort() -> None:
    rule = cohort_rule(None, 0.1)
    assert rule == HashRange(0, DEFAULT_BUCKETS // 10, DEFAULT_BUCKETS)
    covered = sum(in_cohort(rule, str(v)) for v in range(20_000))
    assert 1_800 < covered < 2_200
    assert cohort_rule("0-1", None) == VehicleList(("0", "1"))
    for vehicles, share in ((None, None), ("0-1", 0.5), (None, 0.0), (None, 1.5), (None, 1e-6)):
        with pytest.raises(UserInputError):
            cohort_rule(vehicles, share)


def test_refresh_checks_come_often_enough_that_the_timestamp_never_expires() -> None:
    life = Lifetimes()
    period = timedelta(seconds=check_period_s(life))
    assert period == timedelta(hours=1)  # a sixth of the 6 h margin of a 1-day timestamp
    # checks every period after signing: the first that finds it due still has most of the margin left
    expires, t = life.of("timestamp"), timedelta(0)
    while not needs_refresh(expires, t, life.margin("timestamp")):
        t += period
    assert expires - t >= life.margin("timestamp") - period > timedelta(0)


def test_a_failed_refresh_is_reported_and_retried_not_fatal() -> None:
    outcomes: list[list[str] | FleetloopError] = []
    answers: list[list[str] | FleetloopError] = [KeysMissing("timestamp.pem is missing"), ["timestamp"]]

    def refresh() -> list[str]:
        answer = answers.pop(0)
        if isinstance(answer, FleetloopError):
            raise answer
        return answer

    refresher = TimestampRefresher(refresh, period_s=60.0, on_result=outcomes.append)
    assert isinstance(refresher.check_once(), KeysMissing)
    assert refresher.check_once() == ["timestamp"]
    assert [type(o).__name__ for o in outcomes] == ["KeysMissing", "list"]
    with pytest.raises(ValueError, match="positive"):
        TimestampRefresher(refresh, period_s=0)
