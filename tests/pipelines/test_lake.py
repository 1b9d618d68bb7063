"""The lake on a real file system: atomic segments, manifests as commit point, orphans, retention, inspect."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pytest

from fleetloop.pipelines.collect import CollectState
from fleetloop.pipelines.lake import (
    Chunk,
    LakeRetention,
    inspect_lake,
    load_manifests,
    prune_lake,
    read_segment,
    read_table,
    remove_orphans,
    write_segments,
)
from fleetloop.platform.bus import TELEMETRY_FRAMES, TriggerFlag
from fleetloop.platform.errors import UserInputError

HOUR_MS = 3_600_000
T0_MS = int(dt.datetime(2024, 3, 1, 10, 15, tzinfo=dt.UTC).timestamp() * 1000)


def chunk(vehicle: str, seqs: range, ts_ms: int = T0_MS, offset: int = 0) -> Chunk:
    n = len(seqs)
    cols = TELEMETRY_FRAMES.zeros(n)
    rng = np.random.default_rng(len(vehicle) + n)
    cols["seq"] = np.asarray(seqs, dtype=np.uint32)
    cols["camera"] = rng.integers(0, 255, (n, 8, 16), dtype=np.uint8)
    cols["lidar_range_m"] = rng.uniform(0, 100, (n, 32)).astype(np.float16)
    cols["est_visibility_m"][:] = 80.0
    cols["trigger_flags"] = np.where(np.arange(n) % 2 == 0, int(TriggerFlag.HARD_BRAKE), 0).astype(np.uint16)
    return Chunk(vehicle, cols, "fleetloop.telemetry", 0, offset, ts_ms)


def test_a_segment_round_trips_every_column_bit_for_bit(tmp_path: Path) -> None:
    chunks = [chunk("v1", range(0, 100)), chunk("v2", range(5, 55), offset=1)]
    (m,) = write_segments(tmp_path, "telemetry", TELEMETRY_FRAMES, chunks)
    back = read_segment(m.parquet_path)
    for c in TELEMETRY_FRAMES.columns:
        want = np.concatenate([ch.columns[c.name] for ch in chunks])
        assert back[c.name].dtype == c.np_dtype and back[c.name].shape == want.shape, c.name
        assert np.array_equal(back[c.name].view(np.uint8), want.view(np.uint8)), c.name
    assert back["vehicle_id"].tolist() == ["v1"] * 100 + ["v2"] * 50
    assert m.rows == 150 and m.vehicles == {"v1": [[0, 99]], "v2": [[5, 54]]}
    assert m.content_sha256 == hashlib.sha256(m.parquet_path.read_bytes()).hexdigest()
    assert m.offsets == {"fleetloop.telemetry:0": [0, 2]}


def test_a_segment_of_an_older_minor_reads_with_the_new_columns_defaulted(tmp_path: Path) -> None:
    """Telemetry 1.0 had no ``est_light``: its segments read back with NaN there and concatenate with 1.1 ones."""
    import dataclasses

    old = dataclasses.replace(TELEMETRY_FRAMES, minor=0, columns=TELEMETRY_FRAMES.columns_at(0))
    legacy = chunk("v1", range(0, 4))
    legacy = dataclasses.replace(legacy, columns={c.name: legacy.columns[c.name] for c in old.columns})
    write_segments(tmp_path, "telemetry", old, [legacy])
    new = chunk("v2", range(0, 3), ts_ms=T0_MS + HOUR_MS)
    new.columns["est_light"][:] = 0.25
    write_segments(tmp_path, "telemetry", TELEMETRY_FRAMES, [new])
    both = read_table(tmp_path, "telemetry")
    assert both["vehicle_id"].tolist() == ["v1"] * 4 + ["v2"] * 3
    assert np.isnan(both["est_light"][:4]).all() and both["est_light"][4:].tolist() == [0.25] * 3
    assert both["est_light"].dtype == np.float16
    picked = read_table(tmp_path, "telemetry", columns=["seq", "est_light"])
    assert set(picked) == {"seq", "est_light"} and len(picked["est_light"]) == 7


def test_chunks_of_two_hours_become_two_partitions(tmp_path: Path) -> None:
    ms = write_segments(
        tmp_path, "telemetry", TELEMETRY_FRAMES, [chunk("v", range(3)), chunk("v", range(3, 5), T0_MS + HOUR_MS)]
    )
    assert [m.partition for m in ms] == ["date=2024-03-01/hour=10", "date=2024-03-01/hour=11"]
    assert (tmp_path / "lake/telemetry/date=2024-03-01/hour=11" / ms[1].file).is_file()


def test_a_parquet_file_without_manifest_is_invisible_and_removed(tmp_path: Path) -> None:
    (m,) = write_segments(tmp_path, "telemetry", TELEMETRY_FRAMES, [chunk("v", range(10))])
    m.path.unlink()  # type: ignore[union-attr]  # the crash came between the file and its manifest
    (m.parquet_path.parent / ".part-x.parquet.1234.tmp").write_bytes(b"half")
    assert load_manifests(tmp_path, "telemetry") == [] and read_table(tmp_path, "telemetry") == {}
    assert remove_orphans(tmp_path, "telemetry") == 2
    assert list(m.parquet_path.parent.iterdir()) == []


def test_the_dedup_state_rebuilt_from_manifests_drops_what_the_lake_holds(tmp_path: Path) -> None:
    write_segments(tmp_path, "telemetry", TELEMETRY_FRAMES, [chunk("v1", range(0, 10)), chunk("v1", range(20, 30))])
    state = CollectState()
    for m in load_manifests(tmp_path, "telemetry"):
        state.absorb(m)
    assert state.seen["v1"].intervals() == [[0, 9], [20, 29]]


def test_inspect_counts_partitions_rows_vehicles_conditions_triggers(tmp_path: Path) -> None:
    write_segments(
        tmp_path, "telemetry", TELEMETRY_FRAMES, [chunk("v1", range(10)), chunk("v2", range(4), T0_MS + HOUR_MS)]
    )
    s = inspect_lake(tmp_path)
    assert (s.rows, s.vehicles, s.segments, len(s.partitions)) == (14, 2, 2, 2)
    assert s.visibility["fog 50-150 m"] == 14 and s.visibility["clear >=400 m"] == 0
    assert s.triggers["HARD_BRAKE"] == 5 + 2 and s.triggers["none"] == 5 + 2
    assert s.size_bytes == sum(p["size_bytes"] for p in s.partitions) > 0
    assert s.unannounced_segments == 2


def test_retention_deletes_whole_old_partitions_and_says_how_many(tmp_path: Path) -> None:
    for h in range(4):
        write_segments(
            tmp_path, "telemetry", TELEMETRY_FRAMES, [chunk("v", range(h * 10, h * 10 + 10), T0_MS + h * HOUR_MS)]
        )
    now_s = T0_MS / 1000 + 4 * 3600  # 14:15; hour 10 ended 3h15 ago, hour 11 2h15 ago
    r = prune_lake(tmp_path, "telemetry", LakeRetention(max_age_h=2.5), now_s=now_s)
    assert r.partitions == ["date=2024-03-01/hour=10"] and r.rows == 10 and r.segments == 1
    one = inspect_lake(tmp_path).partitions[0]["size_bytes"]
    r = prune_lake(tmp_path, "telemetry", LakeRetention(max_bytes=one), now_s=now_s)
    assert r.partitions == ["date=2024-03-01/hour=11", "date=2024-03-01/hour=12"]
    assert [p["partition"] for p in inspect_lake(tmp_path).partitions] == ["date=2024-03-01/hour=13"]
    assert prune_lake(tmp_path, "telemetry", LakeRetention(max_bytes=0), now_s=now_s).rows == 0  # newest stays


def test_bad_retention_and_table_names_are_refused() -> None:
    with pytest.raises(UserInputError, match="max_age_h"):
        LakeRetention(max_age_h=0)
    with pytest.raises(UserInputError, match="table name"):
        inspect_lake(Path("/tmp"), "../etc")
