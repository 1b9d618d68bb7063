"""`fleetloop pipeline serve`: the stages run unattended as launcher services and report health by heartbeat."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fleetloop.platform.settings import Settings


@pytest.mark.integration
def test_stage_services_start_answer_and_stop(stack_settings: Settings, kafka_bootstrap: str, mlflow_uri: str) -> None:
    from fleetloop.pipelines.serve import service_name, stage_specs
    from fleetloop.platform import launcher

    specs = launcher.select(stage_specs(min_new_frames=64), [service_name(s) for s in ("label", "collect")])
    assert [s.name for s in specs] == ["pipeline-collect", "pipeline-label"]  # loop order, whatever was asked
    try:
        up = launcher.up(stack_settings, specs)
        assert [s.state for s in up] == ["running", "running"], [s.detail for s in up]
        st = launcher.status(stack_settings, specs)
        assert all(s.healthy and s.pid for s in st)
    finally:
        launcher.down(stack_settings, specs)
    assert [s.state for s in launcher.status(stack_settings, specs)] == ["stopped", "stopped"]


def test_a_stale_heartbeat_is_unhealthy(tmp_path: object) -> None:
    import os
    import time
    from pathlib import Path

    from fleetloop.pipelines.serve import STALE_S, heartbeat_health, heartbeat_path
    from fleetloop.platform.settings import Settings

    settings = Settings(state_dir=Path(str(tmp_path)))
    assert not heartbeat_health(settings, "train").ok  # never beat
    path = heartbeat_path(settings, "train")
    path.parent.mkdir(parents=True)
    path.write_text("1 0\n")
    assert heartbeat_health(settings, "train").ok
    old = time.time() - STALE_S - 5
    os.utime(path, (old, old))
    assert not heartbeat_health(settings, "train").ok
