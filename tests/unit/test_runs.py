"""Run records: every run leaves one, whatever way it ends, and it can be found again."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import fleetloop
from fleetloop.platform.errors import NotFoundError, ServiceUnavailable, SetupError
from fleetloop.platform.runs import RunRecord, find_run, list_runs, run_record, runs_dir, to_jsonable
from fleetloop.platform.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path)


def _stored(settings: Settings, run_id: str) -> dict[str, object]:
    data = json.loads((runs_dir(settings.state_dir) / f"{run_id}.json").read_text())
    assert isinstance(data, dict)
    return data


def test_a_successful_run_is_recorded_with_seed_versions_params_and_summary(settings: Settings) -> None:
    with run_record(settings, command="sim run", params={"vehicles": 500, "weather": "fog"}, seed=7) as rec:
        # Saved at the start, so a run killed mid-way still leaves a trace.
        assert _stored(settings, rec.id)["status"] == "running"
        rec.summary = {"collisions": 2, "vehicle_steps_per_s": 1.5e6}
    data = _stored(settings, rec.id)
    assert data["status"] == "ok"
    assert data["command"] == "sim run"
    assert data["seed"] == 7
    assert data["params"] == {"vehicles": 500, "weather": "fog"}
    assert data["summary"] == {"collisions": 2, "vehicle_steps_per_s": 1.5e6}
    assert data["error"] is None
    versions = data["versions"]
    assert isinstance(versions, dict)
    assert versions["fleetloop"] == fleetloop.__version__
    assert versions["python"].count(".") == 2
    assert "torch" in versions  # installed in this environment; looked up without importing torch
    assert isinstance(data["duration_s"], float) and data["duration_s"] >= 0
    assert str(data["started_utc"]).endswith("Z") and str(data["ended_utc"]) >= str(data["started_utc"])


def test_a_failed_run_records_the_error_and_reraises_it(settings: Settings) -> None:
    with (
        pytest.raises(ServiceUnavailable, match="kafka did not answer"),
        run_record(settings, command="pipeline run") as rec,
    ):
        rec.summary = {"frames_collected": 10}
        raise ServiceUnavailable("kafka did not answer")
    data = _stored(settings, rec.id)
    assert data["status"] == "failed"
    assert data["error"] == {"type": "ServiceUnavailable", "message": "kafka did not answer", "exit_code": 4}
    assert data["summary"] == {"frames_collected": 10}  # what was done before the failure is kept


def test_ctrl_c_is_recorded_as_interrupted_and_reraised(settings: Settings) -> None:
    with pytest.raises(KeyboardInterrupt), run_record(settings, command="fl round", seed=1) as rec:
        raise KeyboardInterrupt
    data = _stored(settings, rec.id)
    assert data["status"] == "interrupted"
    assert data["error"] is not None and data["error"]["type"] == "KeyboardInterrupt"  # type: ignore[index]


@pytest.mark.parametrize(("code", "status"), [(0, "ok"), (None, "ok"), (3, "failed")])
def test_sys_exit_is_ok_only_with_a_zero_code(settings: Settings, code: int | None, status: str) -> None:
    with pytest.raises(SystemExit), run_record(settings, command="demo") as rec:
        sys.exit(code)
    assert _stored(settings, rec.id)["status"] == status


def test_a_summary_that_cannot_be_stored_fails_where_it_is_set(settings: Settings) -> None:
    with (
        pytest.raises(TypeError, match=r"summary\['model'\] is of type object"),
        run_record(settings, command="train") as rec,
    ):
        rec.summary = {"model": object()}
    assert _stored(settings, rec.id)["status"] == "failed"


def test_bad_params_are_refused_before_the_run_starts(settings: Settings) -> None:
    with (
        pytest.raises(TypeError, match=r"params\['f'\]"),
        run_record(settings, command="sim run", params={"f": lambda: 0}),
    ):
        pytest.fail("the body must not run")
    assert not runs_dir(settings.state_dir).exists()


@pytest.mark.parametrize("seed", [1.5, "7", True])
def test_seed_must_be_an_int(settings: Settings, seed: object) -> None:
    with (
        pytest.raises(TypeError, match="seed must be an int"),
        run_record(settings, command="sim run", seed=seed),  # type: ignore[arg-type]
    ):
        pass


def test_an_unwritable_state_dir_is_a_setup_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    with (
        pytest.raises(SetupError, match="cannot write the run record"),
        run_record(Settings(state_dir=blocker), command="sim run"),
    ):
        pytest.fail("the body must not run when the record cannot be written")


def test_failing_to_write_the_final_record_never_masks_the_runs_own_error(settings: Settings) -> None:
    with pytest.raises(RuntimeError, match="the real failure"), run_record(settings, command="sim run"):
        # The state directory breaks mid-run: the runs directory is replaced by a file.
        directory = runs_dir(settings.state_dir)
        for f in directory.iterdir():
            f.unlink()
        directory.rmdir()
        directory.write_text("not a directory")
        raise RuntimeError("the real failure")


class _Weather(enum.Enum):
    FOG = "fog"


@dataclasses.dataclass
class _Cfg:
    vehicles: int
    root: Path


def test_to_jsonable_converts_what_commands_pass_and_keeps_non_finite_floats_visible() -> None:
    out = to_jsonable(
        {
            "cfg": _Cfg(3, Path("/tmp/x")),
            "weather": _Weather.FOG,
            "ids": {3, 1, 2},
            "pair": (1, 2),
            "rate": math.nan,
            "ceiling": math.inf,
            "floor": -math.inf,
            5: "int key",
        }
    )
    assert out == {
        "cfg": {"vehicles": 3, "root": "/tmp/x"},
        "weather": "fog",
        "ids": [1, 2, 3],
        "pair": [1, 2],
        "rate": "NaN",
        "ceiling": "Infinity",
        "floor": "-Infinity",
        "5": "int key",
    }
    json.dumps(out, allow_nan=False)  # strict JSON, readable by jq


def test_to_jsonable_converts_numpy_values() -> None:
    np = pytest.importorskip("numpy")
    assert to_jsonable({"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(3)}) == {
        "n": 3,
        "x": 0.5,
        "a": [0, 1, 2],
    }


def test_list_is_newest_first_and_honours_the_limit(settings: Settings) -> None:
    ids = []
    for i in range(5):
        with run_record(settings, command=f"step {i}", seed=i) as rec:
            pass
        ids.append(rec.id)
    listing = list_runs(settings.state_dir)
    assert [r.id for r in listing.records] == ids[::-1]
    assert [r.id for r in list_runs(settings.state_dir, limit=2).records] == ids[::-1][:2]
    assert list_runs(settings.state_dir, limit=0).records == []
    assert list_runs(settings.state_dir / "nothing-here").records == []


def test_unreadable_records_are_reported_and_skipped(settings: Settings) -> None:
    with run_record(settings, command="sim run"):
        pass
    directory = runs_dir(settings.state_dir)
    (directory / "29990101T000000Z-aaaaaa.json").write_text("{not json")
    (directory / "29990101T000000Z-bbbbbb.json").write_text(json.dumps({"schema_version": 99}))
    listing = list_runs(settings.state_dir, limit=1)
    assert [r.command for r in listing.records] == ["sim run"]
    reasons = sorted(why for _, why in listing.unreadable)
    assert len(reasons) == 2
    assert "not readable JSON" in reasons[0] and "schema_version 99" in reasons[1]


def test_a_running_record_of_a_dead_process_reads_back_as_lost(settings: Settings) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    common = {"command": "pipeline serve", "started_utc": "2026-01-01T00:00:00.000Z", "host": socket.gethostname()}
    RunRecord(id="20260101T000000Z-000001", pid=child.pid, **common).save(settings.state_dir)
    RunRecord(id="20260101T000000Z-000002", pid=os.getpid(), **common).save(settings.state_dir)
    assert find_run(settings.state_dir, "20260101T000000Z-000001").effective_status == "lost"
    assert find_run(settings.state_dir, "20260101T000000Z-000002").effective_status == "running"
    # The file keeps what was written; `lost` is what a reader concludes.
    assert _stored(settings, "20260101T000000Z-000001")["status"] == "running"


def test_show_accepts_a_unique_prefix_and_refuses_an_ambiguous_or_unknown_one(settings: Settings) -> None:
    common = {"command": "sim run", "started_utc": "2026-01-01T00:00:00.000Z"}
    for suffix in ("abc123", "abd456"):
        RunRecord(id=f"20260101T000000Z-{suffix}", status="ok", **common).save(settings.state_dir)
    assert find_run(settings.state_dir, "20260101T000000Z-abc").id == "20260101T000000Z-abc123"
    assert find_run(settings.state_dir, "20260101T000000Z-abd456").id == "20260101T000000Z-abd456"
    with pytest.raises(NotFoundError, match="matches 2 runs"):
        find_run(settings.state_dir, "20260101T000000Z-ab")
    with pytest.raises(NotFoundError, match="no run id starts with 'zzz'"):
        find_run(settings.state_dir, "zzz")
    for hostile in ("", "../x", ".hidden"):
        with pytest.raises(NotFoundError):
            find_run(settings.state_dir, hostile)


def test_an_exact_id_wins_over_longer_ids_it_prefixes(settings: Settings) -> None:
    common = {"command": "sim run", "started_utc": "2026-01-01T00:00:00.000Z", "status": "ok"}
    RunRecord(id="20260101T000000Z-abc", **common).save(settings.state_dir)  # type: ignore[arg-type]
    RunRecord(id="20260101T000000Z-abcdef", **common).save(settings.state_dir)  # type: ignore[arg-type]
    assert find_run(settings.state_dir, "20260101T000000Z-abc").id == "20260101T000000Z-abc"


def test_records_round_trip(settings: Settings) -> None:
    with run_record(settings, command="sim run", params={"v": [1, 2]}, seed=3) as rec:
        rec.summary = {"ok": True}
    again = find_run(settings.state_dir, rec.id)
    assert again.as_dict() == rec.as_dict()
