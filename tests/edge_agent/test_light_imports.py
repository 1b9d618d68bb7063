"""edge_agent's numeric core and the fleet runner import torch and numpy only: of fleetloop, the world and the
platform's error tree and atomic write (which import the standard library only), so they run on a bare GPU box."""

from __future__ import annotations

import builtins
import subprocess
import sys

import fleetloop.platform.errors as errors

HEAVY = {"yaml", "pyarrow", "kafka", "mlflow", "pydantic", "rich", "flwr", "ray", "pandas", "typer", "safetensors"}


def test_the_numeric_core_and_the_runner_import_no_service_library() -> None:
    code = (
        "import sys;"
        "import fleetloop.edge_agent.fleet, fleetloop.edge_agent.vehicle_step, fleetloop.edge_agent.labeller;"
        "print(sorted(m for m in sys.modules if m.startswith('fleetloop.platform')));"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(HEAVY)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    platform_modules, heavy = out.splitlines()
    # the error tree and the atomic write: standard library only (tests/unit/test_architecture.py checks them)
    assert platform_modules in (
        "['fleetloop.platform', 'fleetloop.platform.errors']",
        "['fleetloop.platform', 'fleetloop.platform.atomic', 'fleetloop.platform.errors']",
    )
    assert heavy == "[]"


def test_no_error_class_shadows_a_builtin() -> None:
    names = [n for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    assert names and not set(names) & set(dir(builtins))
