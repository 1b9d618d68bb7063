"""A canary rollout on a live stack, as an operator runs it: real Kafka, real MLflow, the real ota-repo service, the
real ota-controller service and a real simulated fleet (`fleetloop sim run --ota`, heartbeats every 2 simulated
seconds), every command in a fresh process. While the fleet drives, a good candidate goes staging -> canary ->
waves -> production and the fleet ends on it, the old production archived, and ``ota history`` tells it.

The policy is small (waves of 25 %, 50 %, then everyone; 0.3 matched km per wave; progress ratios loose and no hold
on the canary's first events: a few vehicles' numbers depend on their traffic more than on their model; alpha
0.05, as the defaults: at 0.2 a candidate with production's very weights was once rolled back in its second wave
for fallback activations in clear) so that it
fits a few minutes of an 8-vehicle fleet (docs/canary.md, "The live path"). The live rollback of a one-slice
regression needs a parent that brakes where it should (the demo's genesis model: tests/integration/
test_demo_quick.py); the untrained test model's regression drives no worse.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetloop.platform import launcher
from fleetloop.platform.canary.rollouts import RolloutStore
from fleetloop.platform.registry import open_registry
from fleetloop.platform.services import ota_controller
from fleetloop.platform.settings import Settings
from tests.integration.test_ota_sim import register, stack
from tests.integration.test_registry_cli import as_json, fleetloop

__all__ = ["stack"]

pytestmark = pytest.mark.integration

VEHICLES = 8
WEATHER = "fog"
POLICY = """
waves = [0.25, 0.5, 1.0]
min_exposure_km = 0.3
margin = 0.5
alpha = 0.05
metrics = ["near_misses", "fallback_activations"]
counter_metrics = []
progress_min_ratio = 0.5
progress_rollback_ratio = 0.3
progress_min_beats = 4
hold_min_events = 3
"""


@pytest.fixture
def live_stack(stack: tuple[dict[str, str], Settings]) -> Iterator[tuple[dict[str, str], Settings]]:
    """``test_ota_sim``'s stack; the ota-controller that `ota rollout` starts is stopped at the end."""
    try:
        yield stack
    finally:
        launcher.down(stack[1], [ota_controller.SPEC])


def drive(env: dict[str, str], minutes: float, log: Path) -> subprocess.Popen[str]:
    """`fleetloop sim run --ota` in the background: the fleet starts on production and follows OTA commands.

    Its stderr goes to ``log``, not a pipe: nobody reads a pipe while the fleet drives, and once its buffer is
    full every thread that logs (the vehicles' download workers among them) blocks, so no vehicle installs."""
    code = "from fleetloop.cli.main import main; main()"
    args = ["sim", "run", "--ota", "--vehicles", str(VEHICLES), "--minutes", str(minutes), "--heartbeat-s", "2"]
    args += ["--weather", WEATHER]
    with log.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-c", code, *args, "--json"], env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )


def stop(fleet: subprocess.Popen[str]) -> None:
    """End the fleet: SIGTERM, not SIGINT, which a process started in the background by a non-interactive shell
    (a CI job) inherits as ignored; killed if it has not ended within a minute."""
    fleet.send_signal(signal.SIGTERM)
    try:
        fleet.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        fleet.kill()
        fleet.communicate()


def rollout(env: dict[str, str], *args: str) -> dict:
    """`fleetloop ota rollout ... --wait --json` (waits for the outcome: longer than other commands)."""
    code = "from fleetloop.cli.main import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "ota", "rollout", *args, "--wait", "--wait-timeout-s", "400", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=460,
        check=False,
    )
    return as_json(proc)


def fleet_versions(settings: Settings, since_s: float) -> dict[str, int]:
    """Each vehicle heard since ``since_s``: the version its latest believed heartbeat reports."""
    return {
        v: int(row[1]) for v, row in RolloutStore(settings.state_dir).load_fleet().vehicles.items() if row[3] >= since_s
    }


def rolled_back_on_board(settings: Settings, name: str) -> set[str]:
    """Vehicles whose own health check rolled an update of ``name`` back (OTA status ``rolled_back``): they keep the
    version they had, whatever the controller decided for the fleet."""
    return {
        v
        for rec in RolloutStore(settings.state_dir).records(name)
        for v, st in rec.ota_state.items()
        if st == "rolled_back"
    }


def wait_fleet_on(
    settings: Settings, version: int, since_s: float, name: str, timeout_s: float = 120.0
) -> tuple[dict[str, int], set[str]]:
    """Every vehicle heard since ``since_s`` on ``version``, but those that rolled it back on board (returned too)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = fleet_versions(settings, since_s)
        back = rolled_back_on_board(settings, name) & set(got)  # this fleet's vehicles only
        if len(got) == VEHICLES and all(v == version for k, v in got.items() if k not in back):
            return got, back
        if time.monotonic() > deadline:
            raise AssertionError(f"the fleet did not end on v{version}: {got} (rolled back on board: {back})")
        time.sleep(1.0)


@pytest.mark.timeout(1500)  # minutes on an idle 2-core machine; the fleet's simulated time slows under load
def test_a_good_candidate_reaches_production_through_the_waves_and_the_fleet_ends_on_it(
    live_stack: tuple[dict[str, str], Settings], tmp_path: Path
) -> None:
    env, settings = live_stack
    name = settings.model_name
    v1 = register(settings, tmp_path, 1, "production")
    v2 = register(settings, tmp_path, 1, "staging")  # the same weights: as safe as production, by construction
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    t0 = time.time()
    fleet_log = tmp_path / "fleet.stderr"
    fleet = drive(env, minutes=20.0, log=fleet_log)
    try:
        good = rollout(env, name, v2, "--policy", str(policy))
        assert good["outcome"] == "promoted", (good, fleet_log.read_text()[-3000:])
        got, back = wait_fleet_on(settings, int(v2), t0, name)
        # A vehicle's own health check may roll an update back (a surge of fallback activations or deadline misses
        # in its first 10 s, here on noise: the weights are the same); it stays on v1 and says so. The rest: v2.
        assert len(back) <= 1 and all(got[v] == int(v1) for v in back), (got, back)
        registry = open_registry(settings)
        assert registry.production(name).version == v2
        assert registry.get(name, v1).stage.value == "archived"
    finally:
        stop(fleet)
    [told] = as_json(fleetloop(env, "ota", "history", name, "--json"))["rollouts"]
    assert (told["phase"], told["canary_version"], told["production_version"]) == ("promoted", int(v2), int(v1))
    assert [(w["wave"], w["verdict"]) for w in told["waves"]] == [(1, "next_wave"), (2, "next_wave")]
