"""A segment no label run can use is set aside, and the operator's commands for it, as a user runs them.

Every command runs as a subprocess of ``python -m fleetloop.cli.main``: exit codes and stdout as a user sees
them. The label stage announces its datasets, so the broker is real; the long-running label member too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from fleetloop.pipelines.datasets import list_labelled
from fleetloop.pipelines.label import run_label
from fleetloop.pipelines.lake import lake_quarantine, load_manifests
from fleetloop.platform.bus.admin import ensure_topics
from fleetloop.platform.bus.events import DatasetSealed
from fleetloop.platform.bus.producer import BusProducer
from fleetloop.platform.bus.topics import DEAD_LETTER, PIPELINE_EVENTS
from fleetloop.platform.settings import Settings
from tests.pipelines.bad_lake import write_bad_lake

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def fleetloop(state: Path, bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FLEETLOOP_STATE_DIR": str(state),
        "FLEETLOOP_KAFKA_BOOTSTRAP": bootstrap,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "fleetloop.cli.main", *args],
        env=env,
        cwd=state,
        capture_output=True,
        text=True,
        timeout=300,
    )


def label_json(state: Path, bootstrap: str) -> dict[str, Any]:
    done = fleetloop(state, bootstrap, "pipeline", "run", "--stage", "label", "--json")
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)["label"]
    return summary


def test_a_segment_that_repeats_a_tick_is_set_aside_and_the_rest_is_labelled(
    stack_settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    ensure_topics(stack_settings, [PIPELINE_EVENTS])
    lake = write_bad_lake(tmp_path)

    first = label_json(tmp_path, kafka_bootstrap)
    assert sorted(d["dataset"] for d in first["datasets"]) == sorted(lake.good)
    assert first["events_emitted"] == 2
    (q,) = first["quarantined"]
    assert q["segment_id"] == lake.bad and q["reason"] == "repeated_tick"
    assert "two frames at tick 0" in q["message"]
    assert sorted(d.dataset_id for d in list_labelled(tmp_path)) == sorted(lake.good)

    people = fleetloop(tmp_path, kafka_bootstrap, "pipeline", "run", "--stage", "label")
    assert people.returncode == 0, people.stderr
    assert "1 already quarantined" in people.stdout and "fleetloop lake quarantine list" in people.stdout

    listed = fleetloop(tmp_path, kafka_bootstrap, "lake", "quarantine", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (rec,) = json.loads(listed.stdout)["records"]
    assert rec["segment_id"] == lake.bad and rec["table"] == "telemetry" and rec["stage"] == "label"
    assert rec["error"] == "DataError" and rec["frames"] == lake.frames_bad and rec["status"] == "quarantined"
    assert "repeated_tick" in fleetloop(tmp_path, kafka_bootstrap, "lake", "quarantine", "list").stdout

    inspected = json.loads(fleetloop(tmp_path, kafka_bootstrap, "lake", "inspect", "--json").stdout)
    assert inspected["segments"] == 2 and inspected["quarantined_segments"] == 1
    assert inspected["quarantined_rows"] == lake.frames_bad

    released = fleetloop(tmp_path, kafka_bootstrap, "lake", "quarantine", "release", lake.bad)
    assert released.returncode == 0, released.stderr
    assert "next label run" in released.stdout
    again = label_json(tmp_path, kafka_bootstrap)  # tried again, refused again for the same reason
    assert again["datasets"] == [] and again["skipped_already_labelled"] == 2
    (q2,) = again["quarantined"]
    assert q2["segment_id"] == lake.bad and q2["message"] == q["message"]

    unknown = fleetloop(tmp_path, kafka_bootstrap, "lake", "quarantine", "drop", "no-such-segment")
    assert unknown.returncode == 2
    assert "fleetloop lake quarantine list" in unknown.stderr

    dropped = fleetloop(tmp_path, kafka_bootstrap, "lake", "quarantine", "drop", lake.bad, "--json")
    assert dropped.returncode == 0, dropped.stderr
    gone = json.loads(dropped.stdout)
    assert gone["segment_id"] == lake.bad and gone["frames"] == lake.frames_bad and gone["files_deleted"] >= 2
    assert lake.bad not in {m.segment_id for m in load_manifests(tmp_path, "telemetry")}
    assert (
        json.loads(fleetloop(tmp_path, kafka_bootstrap, "lake", "quarantine", "list", "--json").stdout)["records"] == []
    )
    assert label_json(tmp_path, kafka_bootstrap)["quarantined"] == []


def test_the_label_member_sets_the_bad_segment_aside_and_handles_every_announcement(
    stack_settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    ensure_topics(stack_settings, [PIPELINE_EVENTS, DEAD_LETTER])
    settings = stack_settings.model_copy(update={"state_dir": tmp_path})
    lake = write_bad_lake(tmp_path)
    run_id = uuid.uuid4().hex[:8]
    with BusProducer(settings) as p:
        for sid in (*lake.good, lake.bad):  # one key: one partition, so one poll takes them together
            p.send(PIPELINE_EVENTS, DatasetSealed(dataset_id=sid, uri=f"file:///{sid}", n_frames=1), key=run_id)
        p.flush()
    report = run_label(settings, group_id=f"label-{run_id}", idle_timeout_s=3.0)
    # The group reads the shared topic from its start: other tests' announcements name segments not in this lake.
    assert report.dead_lettered.get("DataError", 0) == 0
    assert report.events_handled >= 3 and report.events_emitted >= 2
    assert sorted(d.dataset_id for d in list_labelled(tmp_path)) == sorted(lake.good)
    assert lake_quarantine(tmp_path).held_ids() == {lake.bad}
