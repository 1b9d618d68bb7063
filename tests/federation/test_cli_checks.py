"""`fleetloop fl round` refuses what cannot work before anything starts (exit 2), with a message saying why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def fl_round(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETLOOP_STATE_DIR": str(state)}
    cmd = [sys.executable, "-m", "fleetloop.cli.main", "fl", "round", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_an_unknown_strategy_exits_2(tmp_path: Path) -> None:
    out = fl_round(tmp_path, "--strategy", "fedfancy")
    assert out.returncode == 2 and "unknown strategy 'fedfancy'" in out.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--strategy", "bulyan", "--clients", "5", "--byzantine", "0.2"], "Bulyan tolerating 1 attacker(s) needs"),
        (["--strategy", "krum", "--clients", "3", "--byzantine", "0.3"], "krum tolerating 1 attacker(s) needs"),
    ],
)
def test_a_robust_strategy_with_too_few_vehicles_for_its_attackers_exits_2(
    fleet_buffers: Path, tmp_path: Path, args: list[str], says: str
) -> None:
    state = tmp_path / "state"
    (state / "fleet").mkdir(parents=True)
    (state / "fleet" / "buffers").symlink_to(fleet_buffers)
    out = fl_round(state, *args)
    assert out.returncode == 2, out.stderr
    assert says in out.stderr
