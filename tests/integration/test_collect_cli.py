"""`fleetloop pipeline run --stage collect --json` and `fleetloop lake inspect --json` on the real broker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fleetloop.cli import lake, pipeline
from fleetloop.platform.bus import TELEMETRY, TELEMETRY_FRAMES, BusProducer, FrameBatch, TriggerFlag
from fleetloop.platform.bus.admin import ensure_topics
from fleetloop.platform.settings import Settings

pytestmark = pytest.mark.integration

# Mounted as the lead wires them into `fleetloop` (cli/main.py).
cli = typer.Typer()
cli.add_typer(pipeline.app, name="pipeline")
cli.add_typer(lake.app, name="lake")


def test_pipeline_run_collect_then_lake_inspect(
    stack_settings: Settings, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_topics(stack_settings, [TELEMETRY])
    cols = TELEMETRY_FRAMES.zeros(300)
    cols["seq"] = np.arange(300, dtype=np.uint32)
    cols["tick"] = cols["seq"]  # collect refuses a batch whose ticks repeat
    cols["est_visibility_m"][:] = 30.0  # dense fog
    cols["trigger_flags"][:100] = int(TriggerFlag.NEAR_MISS)
    with BusProducer(stack_settings) as p:
        p.send(TELEMETRY, FrameBatch.build(TELEMETRY_FRAMES, f"veh-cli-{tmp_path.name}", cols))
    monkeypatch.setenv("FLEETLOOP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("FLEETLOOP_KAFKA_BOOTSTRAP", kafka_bootstrap)
    runner = CliRunner()
    res = runner.invoke(cli, ["pipeline", "run", "--stage", "collect", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)["collect"]
    assert summary["rows_collected"] >= 300 and summary["segments_sealed"] >= 1  # >=: the topic is shared
    res = runner.invoke(cli, ["lake", "inspect", "--json"])
    assert res.exit_code == 0, res.output
    inspected = json.loads(res.output)
    assert inspected["rows"] == summary["rows_collected"]
    assert inspected["visibility"]["dense fog <50 m"] >= 300 and inspected["triggers"]["NEAR_MISS"] >= 100
    res = runner.invoke(cli, ["lake", "inspect"])  # the table for people renders too
    assert res.exit_code == 0 and "dense fog" in res.output
    res = runner.invoke(cli, ["pipeline", "run", "--stage", "nope"])
    assert res.exit_code != 0
