"""Inductor's cache directory is set when compiling is asked for, not as a side effect of importing the world; a
directory the user chose is kept. Each case runs in a fresh interpreter (the setting is once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

IMPORT_ONLY = """
import json, os
before = dict(os.environ)
import fleetloop.sim.world, fleetloop.edge_agent.fleet
from fleetloop.sim import World, init_state
print(json.dumps({k: v for k, v in os.environ.items() if before.get(k) != v}))
"""

USE_CACHE = """
import json, os, sys
if sys.argv[1] == "dynamo-first":
    import torch._dynamo  # writes torch's default cache directory into the environment
from fleetloop.sim.compile import use_compile_cache
used = use_compile_cache()
print(json.dumps([str(used), os.environ["TORCHINDUCTOR_CACHE_DIR"]]))
"""


def _python(code: str, env: dict[str, str], *args: str) -> object:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "FLEETLOOP_COMPILE_CACHE_DIR")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def test_importing_the_world_and_the_fleet_writes_no_environment_variable() -> None:
    assert _python(IMPORT_ONLY, _env()) == {}


@pytest.mark.parametrize("order", ["fleetloop-first", "dynamo-first"])
def test_compiling_points_inductor_at_fleetloops_cache(tmp_path: Path, order: str) -> None:
    ours = str(tmp_path / "inductor")
    assert _python(USE_CACHE, _env(FLEETLOOP_COMPILE_CACHE_DIR=ours), order) == [ours, ours]


def test_a_cache_directory_the_user_chose_is_kept(tmp_path: Path) -> None:
    theirs = str(tmp_path / "theirs")
    env = _env(FLEETLOOP_COMPILE_CACHE_DIR=str(tmp_path / "ours"), TORCHINDUCTOR_CACHE_DIR=theirs)
    assert _python(USE_CACHE, env, "fleetloop-first") == [theirs, theirs]
