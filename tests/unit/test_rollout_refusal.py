"""A start the rollout controller refuses is recorded with why, and the command that waits on it says so at once
(it waited out its whole timeout on "did not finish", the reason only in the controller's log)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from fleetloop.cli.ota import wait_rollout
from fleetloop.platform.canary.policy import CanaryPolicy
from fleetloop.platform.canary.rollouts import RolloutStore
from fleetloop.platform.canary.service import ControllerService
from fleetloop.platform.errors import ServiceUnavailable
from fleetloop.platform.registry import Registry
from fleetloop.platform.settings import Settings


def test_a_refused_start_is_recorded_and_the_waiting_command_says_why(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    store = RolloutStore(tmp_path)
    policy: dict[str, Any] = {**CanaryPolicy().to_dict(), "a_key_from_a_newer_release": 1}
    start = {"model": "m", "canary_version": 2, "production_version": 1, "canary_release": 3, "policy": policy}
    store.submit("start", "m-v2-x", start=start)
    service = ControllerService(settings, cast(Registry, None))  # a policy it cannot read is refused first

    applied = service._requests(now=0.0)

    assert len(applied) == 1  # applied (refused), not retried
    why = store.refusal("m-v2-x")
    assert why is not None and "a_key_from_a_newer_release" in why
    with pytest.raises(ServiceUnavailable, match=r"refused to start rollout m-v2-x: .*a_key_from_a_newer_release"):
        wait_rollout(store, "m-v2-x", timeout_s=30.0, on_progress=lambda _: None)
    assert store.refusal("m-v3-y") is None
