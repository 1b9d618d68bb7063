"""`fleetloop runs list | show`: the table people read and the JSON scripts parse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fleetloop.platform.errors import NotFoundError
from fleetloop.platform.runs import run_record
from fleetloop.platform.settings import Settings

with warnings.catch_warnings():
    # typer 0.20 imports a helper that click 8.5 deprecates; the warning is theirs, not ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from typer.testing import CliRunner

    from fleetloop.cli.runs import app, format_duration

runner = CliRunner()


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLEETLOOP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.chdir(tmp_path)  # no stray fleetloop.toml from the working directory
    return tmp_path


def _record_three(state: Path) -> list[str]:
    settings = Settings(state_dir=state)
    ids = []
    with run_record(settings, command="sim run", params={"vehicles": 8}, seed=11) as rec:
        rec.summary = {"collisions": 0}
    ids.append(rec.id)
    with pytest.raises(RuntimeError), run_record(settings, command="pipeline run", seed=12) as rec:
        raise RuntimeError("label stage crashed")
    ids.append(rec.id)
    with pytest.raises(KeyboardInterrupt), run_record(settings, command="fl round") as rec:
        raise KeyboardInterrupt
    ids.append(rec.id)
    return ids


def test_list_json_is_newest_first_with_status_and_seed(state: Path) -> None:
    ids = _record_three(state)
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == ids[::-1]
    assert [r["status"] for r in rows] == ["interrupted", "failed", "ok"]
    assert [r["seed"] for r in rows] == [None, 12, 11]
    assert rows[1]["error"]["message"] == "label stage crashed"


def test_list_limit(state: Path) -> None:
    ids = _record_three(state)
    result = runner.invoke(app, ["list", "--json", "--limit", "1"])
    assert [r["id"] for r in json.loads(result.stdout)] == [ids[-1]]


def test_list_table_shows_each_run(state: Path) -> None:
    ids = _record_three(state)
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    for run_id, command, status in zip(
        ids, ["sim run", "pipeline run", "fl round"], ["ok", "failed", "interrupted"], strict=True
    ):
        line = next(line for line in result.stdout.splitlines() if run_id in line)
        assert command in line and status in line


def test_list_with_no_runs_says_so(state: Path) -> None:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    assert "no runs recorded" in result.stdout


def test_show_by_prefix_prints_the_whole_record(state: Path) -> None:
    ids = _record_three(state)
    result = runner.invoke(app, ["show", ids[0][:-2], "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["id"] == ids[0]
    assert record["params"] == {"vehicles": 8}
    assert record["summary"] == {"collisions": 0}
    assert record["versions"]["fleetloop"]


def test_show_table_includes_the_error_of_a_failed_run(state: Path) -> None:
    ids = _record_three(state)
    result = runner.invoke(app, ["show", ids[1]])
    assert result.exit_code == 0, result.output
    assert "RuntimeError: label stage crashed" in result.stdout


def test_show_unknown_id_raises_not_found(state: Path) -> None:
    _record_three(state)
    result = runner.invoke(app, ["show", "nope"])
    assert isinstance(result.exception, NotFoundError)


def test_the_fleetloop_command_maps_an_unknown_run_to_exit_code_2(state: Path) -> None:
    env = {**os.environ, "FLEETLOOP_STATE_DIR": str(state)}
    done = subprocess.run(
        [sys.executable, "-m", "fleetloop.cli.main", "runs", "show", "nope"],
        env=env,
        cwd=state,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == NotFoundError.exit_code == 2
    assert "no run id starts with 'nope'" in done.stderr


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, ""), (0.4213, "0.42 s"), (12.34, "12.3 s"), (245.0, "4 min 05 s"), (7380.0, "2 h 03 min")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text
