"""What the registry writes into MLflow tags and reads back: transition records, metadata, stage tags."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from fleetloop.platform.errors import DataError, UserInputError
from fleetloop.platform.registry.records import (
    METADATA_TAG,
    STAGE_TAG,
    TransitionRecord,
    metadata_from_tags,
    stage_from_tags,
    transition_tag_key,
    transitions_from_tags,
    validate_metadata,
)
from fleetloop.platform.registry.stages import Stage, StageChange


def record(at: datetime, step: int = 0, **kw: object) -> TransitionRecord:
    change = StageChange("3", Stage.CANARY, Stage.PRODUCTION, "rollout done", via_rollout=True)
    return TransitionRecord.from_change("fleet-policy", change, actor="ota@host", at=at, decision="d1", step=step)


def test_record_round_trips_through_its_tag_value() -> None:
    r = record(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
    back = TransitionRecord.from_json(r.to_json(), where="test")
    assert back == r
    assert back.at == "2026-01-02T03:04:05.000006+00:00"
    assert back.via_rollout and back.from_stage == "canary" and back.to_stage == "production"


def test_record_time_is_stored_in_utc_whatever_the_clock_zone() -> None:
    cest = timezone(timedelta(hours=2))
    r = record(datetime(2026, 6, 1, 14, 0, tzinfo=cest))
    assert r.at == "2026-06-01T12:00:00.000000+00:00"


def test_a_record_from_a_newer_fleetloop_is_a_data_error_not_a_guess() -> None:
    raw = json.loads(record(datetime.now(UTC)).to_json())
    raw["schema"] = 99
    with pytest.raises(DataError, match="upgrade fleetloop"):
        TransitionRecord.from_json(json.dumps(raw), where="v3")
    with pytest.raises(DataError, match="cannot be read"):
        TransitionRecord.from_json("{not json", where="v3")


def test_transitions_are_read_back_in_time_order_and_other_tags_ignored() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    late, early = record(t0 + timedelta(seconds=5)), record(t0)
    tags = {
        transition_tag_key({}, "aaaa"): late.to_json(),
        "fleetloop.transition.0001-bbbb": early.to_json(),
        STAGE_TAG: "production",
        "someone.else": "x",
    }
    assert transitions_from_tags(tags, where="v3") == [early, late]


def test_transition_tag_keys_count_up_and_stay_unique() -> None:
    tags = {"fleetloop.transition.0000-ab": "{}", "fleetloop.transition.0001-cd": "{}", STAGE_TAG: "staging"}
    assert transition_tag_key(tags, "ef") == "fleetloop.transition.0002-ef"
    assert transition_tag_key(tags, "ef") != transition_tag_key(tags, "gh")


def test_stage_tag_with_a_foreign_value_is_a_data_error_that_lists_stages() -> None:
    assert stage_from_tags({}, where="v1") is None
    assert stage_from_tags({STAGE_TAG: "canary"}, where="v1") is Stage.CANARY
    with pytest.raises(DataError, match="not a stage; set the tag to one of candidate"):
        stage_from_tags({STAGE_TAG: "Production"}, where="v1")


def test_metadata_round_trips_and_keeps_unknown_keys() -> None:
    meta = {"format": "safetensors", "training_data_hashes": ["sha256:ab"], "parent_version": "2", "note": "x"}
    assert metadata_from_tags({METADATA_TAG: validate_metadata(meta)}, where="v1") == meta


@pytest.mark.parametrize(
    ("meta", "complaint"),
    [
        ({"a": float("nan")}, "must be JSON"),
        ({"a": object()}, "must be JSON"),
        ({1: "x"}, "non-empty strings"),
        ({"training_data_hashes": "sha256:ab"}, "list of strings"),
        ({"parent_version": "latest"}, "registry version number"),
        ({"blob": "x" * 60_000}, "over the 50000 limit"),
    ],
)
def test_bad_metadata_is_refused_with_what_to_fix(meta: dict, complaint: str) -> None:
    with pytest.raises(UserInputError, match=complaint):
        validate_metadata(meta)


def test_metadata_tag_that_is_not_an_object_is_a_data_error() -> None:
    with pytest.raises(DataError, match="not a JSON object"):
        metadata_from_tags({METADATA_TAG: "[1, 2]"}, where="v1")
