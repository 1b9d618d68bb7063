"""deploy/logging/fluent-bit.yaml reads what fleetloop really writes: a JSON line from a real command (`fleetloop
--log-format json sim run`) has the time field and format the parser expects, the fields the filters test, and
correlation ids the nest filter knows; the tail input globs the files the launcher writes."""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetloop.platform.launcher import service_dir
from fleetloop.platform.logs import CORRELATION_FIELDS, LINE_FIELDS
from fleetloop.platform.services.alertmanager import DEPLOY_DIR
from fleetloop.platform.settings import Settings

CONFIG = DEPLOY_DIR.parent / "logging" / "fluent-bit.yaml"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return doc


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The JSON log lines of a real, short fleet simulation."""
    state = tmp_path_factory.mktemp("state")
    cmd = [sys.executable, "-m", "fleetloop.cli.main", "--log-format", "json", "sim", "run", "--vehicles", "2"]
    cmd += ["--minutes", "0.02", "--fallback-only", "--no-telemetry", "--json"]
    env = {**os.environ, "FLEETLOOP_STATE_DIR": str(state)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    json.loads(done.stdout)  # the logs stay on stderr: stdout is still the one JSON document
    out = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert out, done.stderr[-2000:]
    return out


def _fluent_time_format(fmt: str) -> str:
    return fmt.replace("%L", "%f")  # Fluent Bit's fractional seconds; Python's %f takes 1-6 digits


def test_every_line_has_the_time_the_parser_reads_and_the_line_fields(
    config: dict[str, Any], lines: list[dict[str, Any]]
) -> None:
    (parser,) = config["parsers"]
    assert parser["format"] == "json"
    (tail,) = config["pipeline"]["inputs"]
    assert tail["parser"] == parser["name"]
    for line in lines:
        assert set(LINE_FIELDS) <= set(line), line
        stamp = dt.datetime.strptime(line[parser["time_key"]], _fluent_time_format(parser["time_format"]))
        assert abs(stamp.year - dt.datetime.now(dt.UTC).year) <= 1


def test_the_filters_name_fields_the_code_emits(config: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    filters = config["pipeline"]["filters"]
    tested = {f["condition"].split()[1] for f in filters if f["name"] == "modify"}
    assert tested == {"level"} and all("level" in line for line in lines)
    (nest,) = [f for f in filters if f["name"] == "nest"]
    assert set(nest["wildcard"]) == set(CORRELATION_FIELDS)
    # The real run's lines carry the ids sim run binds: its run record and the model version it drove.
    finished = [line for line in lines if line["message"].startswith("sim run finished")]
    assert finished and {"run_id", "command", "model_version"} <= set(finished[0])
    assert finished[0]["model_version"] == "fallback-only" and finished[0]["command"] == "sim run"
    assert set(finished[0]) - set(LINE_FIELDS) <= set(nest["wildcard"])  # every extra field is nested


def test_the_tail_input_globs_the_service_logs_the_launcher_writes(config: dict[str, Any], tmp_path: Path) -> None:
    (tail,) = config["pipeline"]["inputs"]
    settings = Settings(state_dir=tmp_path)
    written = service_dir(settings, "pipeline-collect") / "service.log"
    pattern = tail["path"].replace("${FLEETLOOP_STATE_DIR}", str(tmp_path))
    assert fnmatch.fnmatch(str(written), pattern)
    assert config["pipeline"]["outputs"][0]["name"] == "stdout"
