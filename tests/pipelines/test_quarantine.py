"""Quarantine: a segment or labelled dataset a stage cannot use is set aside with its reason; the rest goes on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from fleetloop.pipelines.datasets import labelled_quarantine, list_labelled, read_labelled
from fleetloop.pipelines.label import label_pending
from fleetloop.pipelines.lake import inspect_lake, lake_quarantine, load_manifests, write_segments
from fleetloop.pipelines.lake.quarantine import (
    QUARANTINED_METRIC,
    QuarantineRecord,
    QuarantineStore,
    find_record,
    isolate_failures,
    reason_code,
)
from fleetloop.pipelines.train import TrainConfig, run_train
from fleetloop.platform.bus.schemas import TELEMETRY_FRAMES
from fleetloop.platform.errors import DataError, NotFoundError, SchemaError, UserInputError
from fleetloop.platform.metrics import REGISTRY
from fleetloop.platform.settings import Settings
from tests.pipelines.bad_lake import clip_chunk, write_bad_lake, write_good_segments

# -- the pure parts -------------------------------------------------------------------------------------


class Summer:
    """An attempt that sums its items and refuses negative ones, and 3 together with 4; records its calls."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, items: Sequence[int]) -> int:
        self.calls.append(list(items))
        if any(i < 0 for i in items):
            raise DataError(f"negative item {min(items)}")
        if 3 in items and 4 in items:
            raise DataError("3 and 4 cannot go together")
        return sum(items)


def test_a_batch_that_passes_is_tried_once_and_kept_whole() -> None:
    attempt = Summer()
    assert isolate_failures([1, 2, 5], attempt) == ([1, 2, 5], 8, [])
    assert attempt.calls == [[1, 2, 5]]


def test_an_item_that_fails_alone_is_set_aside_with_its_error_and_the_rest_runs_together() -> None:
    kept, result, failed = isolate_failures([1, -2, 5, -7], Summer())
    assert (kept, result) == ([1, 5], 6)
    assert [(i, str(e)) for i, e in failed] == [(-2, "negative item -2"), (-7, "negative item -7")]


def test_items_that_fail_only_together_lose_the_later_one() -> None:
    kept, result, failed = isolate_failures([1, 3, 2, 4, 6], Summer())
    assert (kept, result) == ([1, 3, 2, 6], 12)
    assert [(i, str(e)) for i, e in failed] == [(4, "3 and 4 cannot go together")]


def test_nothing_usable_gives_no_result() -> None:
    assert isolate_failures([-1, -2], Summer())[:2] == ([], None)


def test_an_error_that_is_not_the_datas_fault_is_not_quarantined_but_raised() -> None:
    def attempt(items: Sequence[int]) -> int:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        isolate_failures([1, 2], attempt)


def test_reasons_are_short_and_bounded() -> None:
    assert reason_code(DataError("vehicle v has two frames at tick 0; collect should ...")) == "repeated_tick"
    assert reason_code(DataError("labelled dataset d does not match its hash sha256:..; relabel it")) == "hash_mismatch"
    assert reason_code(DataError("label needs telemetry columns ['tick']; is this ...")) == "missing_columns"
    assert reason_code(SchemaError("something new")) == "schema_error"


# -- the record store ----------------------------------------------------------------------------------


def test_a_record_says_who_refused_what_and_why_and_survives_a_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "part-x.parquet"
    data.write_bytes(b"12345")
    store = QuarantineStore(tmp_path / "_quarantine", "telemetry")
    rec = store.quarantine("seg-1", stage="label", error=DataError("two frames at tick 3"), frames=7, files=[data])
    assert (rec.reason, rec.error, rec.frames, rec.status) == ("repeated_tick", "DataError", 7, "quarantined")
    on_disk = json.loads((tmp_path / "_quarantine" / "seg-1.json").read_bytes())
    assert on_disk["stage"] == "label" and on_disk["message"] == "two frames at tick 3"
    assert QuarantineRecord.from_file(tmp_path / "_quarantine" / "seg-1.json") == rec
    assert store.held_ids() == {"seg-1"} and store.released_ids() == set()
    assert [p.name for p in (tmp_path / "_quarantine").iterdir()] == ["seg-1.json"]  # no temp file left


def test_release_puts_it_back_and_a_second_refusal_keeps_the_first_in_its_history(tmp_path: Path) -> None:
    data = tmp_path / "part-x.parquet"
    data.write_bytes(b"1")
    store = QuarantineStore(tmp_path / "_quarantine", "telemetry")
    store.quarantine("seg-1", stage="label", error=DataError("two frames at tick 3"), frames=1, files=[data])
    released = store.release("seg-1")
    assert released.status == "released" and released.released_at_s is not None
    assert store.held_ids() == set() and store.released_ids() == {"seg-1"}
    again = store.quarantine("seg-1", stage="label", error=DataError("two frames at tick 3"), frames=1, files=[data])
    assert again.status == "quarantined" and again.history == ("label: repeated_tick",)
    store.release("seg-1")
    assert store.clear_released(["seg-1", "seg-2"]) == 1 and store.records() == []


def test_drop_deletes_the_files_then_the_record_and_counts_them(tmp_path: Path) -> None:
    commit, data = tmp_path / "m.json", tmp_path / "d.parquet"
    commit.write_bytes(b"{}")
    data.write_bytes(b"x" * 100)
    store = QuarantineStore(tmp_path / "_quarantine", "telemetry")
    store.quarantine("seg-1", stage="label", error=DataError("x"), frames=3, files=[commit, data, tmp_path / "absent"])
    result = store.drop("seg-1")
    assert (result.files_deleted, result.bytes_deleted, result.frames) == (2, 102, 3)
    assert not commit.exists() and not data.exists() and store.records() == []


def test_an_unknown_id_is_bad_input_that_names_the_list_command(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "_quarantine", "telemetry")
    with pytest.raises(NotFoundError, match="fleetloop lake quarantine list") as e:
        store.drop("nope")
    assert e.value.exit_code == 2
    with pytest.raises(NotFoundError, match="fleetloop lake quarantine list"):
        find_record([store], "nope")


def test_a_record_is_found_by_a_long_enough_unique_prefix(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.write_bytes(b"1")
    store = QuarantineStore(tmp_path / "_quarantine", "telemetry")
    for sid in ("20240301T101500-aaaa", "20240301T101500-bbbb"):
        store.quarantine(sid, stage="label", error=DataError("x"), frames=1, files=[data])
    assert find_record([store], "20240301T101500-aa")[1].segment_id == "20240301T101500-aaaa"
    with pytest.raises(UserInputError, match="matches 2"):
        find_record([store], "20240301T1015")
    with pytest.raises(NotFoundError):
        find_record([store], "2024")  # too short to name one
    with pytest.raises(UserInputError, match="not a segment"):
        store.get("../escape")


def test_release_of_data_that_retention_deleted_says_to_drop_the_record(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "_quarantine", "telemetry")
    store.quarantine("seg-1", stage="label", error=DataError("x"), frames=1, files=[tmp_path / "gone.manifest.json"])
    with pytest.raises(UserInputError, match="quarantine drop seg-1"):
        store.release("seg-1")
    assert store.records()[0].as_dict()["files_present"] is False


# -- the label stage -----------------------------------------------------------------------------------


def quarantined_count(stage: str, reason: str) -> float:
    value = REGISTRY.collector_registry.get_sample_value(QUARANTINED_METRIC, {"stage": stage, "reason": reason})
    return value or 0.0


def test_label_sets_the_segment_that_repeats_a_tick_aside_and_labels_the_rest_as_without_it(tmp_path: Path) -> None:
    before = quarantined_count("label", "repeated_tick")
    lake = write_bad_lake(tmp_path / "bad")
    report, events = label_pending(tmp_path / "bad")
    assert sorted(e.dataset_id for e in events) == sorted(lake.good)
    (q,) = report.quarantined
    assert q["segment_id"] == lake.bad and q["reason"] == "repeated_tick" and "tick 0" in q["message"]
    assert lake_quarantine(tmp_path / "bad").held_ids() == {lake.bad}
    assert quarantined_count("label", "repeated_tick") == before + 1

    write_good_segments(tmp_path / "clean")
    label_pending(tmp_path / "clean")
    labels = {
        ds.rows: read_labelled(ds) for ds in list_labelled(tmp_path / "bad")
    }  # veh-b spans both good segments: its labels must be what they are without the bad segment
    clean = {ds.rows: read_labelled(ds) for ds in list_labelled(tmp_path / "clean")}
    assert sorted(labels) == sorted(clean)
    for rows, cols in labels.items():
        for c in ("label_hazard", "label_valid", "label_target_accel_mps2"):
            assert np.array_equal(cols[c], clean[rows][c])

    again, events = label_pending(tmp_path / "bad")
    assert (again.skipped_quarantined, again.quarantined, events) == (1, [], [])


def test_a_released_segment_is_labelled_again_even_by_a_member_told_about_other_segments(tmp_path: Path) -> None:
    lake = write_bad_lake(tmp_path)
    label_pending(tmp_path)
    lake_quarantine(tmp_path).release(lake.bad)
    report, events = label_pending(tmp_path, only=["some-new-segment"])
    assert events == [] and [q["segment_id"] for q in report.quarantined] == [lake.bad]
    assert lake_quarantine(tmp_path).get(lake.bad).history == ("label: repeated_tick",)  # type: ignore[union-attr]


def test_segments_that_clash_only_together_quarantine_the_later_one(tmp_path: Path) -> None:
    (first,) = write_segments(tmp_path, "telemetry", TELEMETRY_FRAMES, [clip_chunk("veh-d", list(range(40)))])
    (second,) = write_segments(
        tmp_path, "telemetry", TELEMETRY_FRAMES, [clip_chunk("veh-d", list(range(39, 60)), offset=40)]
    )
    report, events = label_pending(tmp_path)
    assert [e.dataset_id for e in events] == [first.segment_id]
    assert [q["segment_id"] for q in report.quarantined] == [second.segment_id]


def test_inspect_counts_quarantined_segments_apart(tmp_path: Path) -> None:
    lake = write_bad_lake(tmp_path)
    label_pending(tmp_path)
    s = inspect_lake(tmp_path)
    assert (s.segments, s.rows, s.vehicles) == (2, 120, 2)
    assert (s.quarantined_segments, s.quarantined_rows) == (1, lake.frames_bad)
    assert len(load_manifests(tmp_path, "telemetry")) == 3  # nothing deleted


# -- the train stage -----------------------------------------------------------------------------------


def test_train_sets_a_labelled_dataset_that_fails_its_hash_aside_and_goes_on(tmp_path: Path) -> None:
    lake = write_bad_lake(tmp_path)
    label_pending(tmp_path)
    victim = next(ds for ds in list_labelled(tmp_path) if ds.dataset_id == lake.good[0])
    Path(victim.path).write_bytes(Path(victim.path).read_bytes() + b"bitrot")
    valid = sum(ds.valid_rows for ds in list_labelled(tmp_path))
    out = run_train(Settings(state_dir=tmp_path), TrainConfig(min_frames=valid))  # enough only with both
    assert out.status == "skipped" and "too little labelled data" in out.reason
    assert [(q["segment_id"], q["reason"]) for q in out.quarantined] == [(victim.dataset_id, "hash_mismatch")]
    held = labelled_quarantine(tmp_path)
    assert held.held_ids() == {victim.dataset_id}
    again = run_train(Settings(state_dir=tmp_path), TrainConfig(min_frames=valid))
    assert again.quarantined == [] and victim.dataset_id not in again.dataset_ids
