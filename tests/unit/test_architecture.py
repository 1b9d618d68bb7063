"""The dependency rules of docs/architecture.md, checked on every module's imports.

Every ``import`` and ``from ... import`` counts, wherever it sits: at the top, inside a function, under
``if TYPE_CHECKING:``. A rule broken names the file, the line, the import and the rule.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "fleetloop"

# What each part may import of fleetloop (an arrow points to what may be imported; docs/architecture.md):
#   cli -> pipelines, federation -> edge_agent -> sim; all but sim may import platform.
ALLOWED_PARTS: dict[str, frozenset[str]] = {
    "cli": frozenset({"cli", "pipelines", "federation", "edge_agent", "sim", "platform"}),
    "pipelines": frozenset({"pipelines", "edge_agent", "sim", "platform"}),
    "federation": frozenset({"federation", "edge_agent", "sim", "platform"}),
    "edge_agent": frozenset({"edge_agent", "sim", "platform"}),
    "sim": frozenset({"sim"}),
    "platform": frozenset({"platform"}),
}

# The vehicle's numeric core: pure tensor code that runs on a bare GPU box (torch, numpy, the standard library,
# the world and each other). The rest of edge_agent is its shell: artifacts on disk, the bus, shard backends.
EDGE_NUMERIC_CORE = frozenset(
    {
        "__init__",
        "arbiter",
        "conditions",
        "fallback",
        "faults",
        "features",
        "heartbeat",
        "imitation",
        "inference",
        "labeller",
        "ncap_scoring",
        "ota_client",
        "ota_shadow",
        "policy",
        "summary",
        "triggers",
        "vehicle_step",
    }
)
EDGE_SHELL = frozenset(
    {
        "bootstrap",
        "calibration",
        "buffer",
        "buffer_store",
        "fleet",
        "model_artifact",
        "ncap_run",
        "ota_agent",
        "ota_bus",
        "ota_download",
        "ota_verify",
        "shards",
        "telemetry",
        "telemetry_spool",
    }
)
NUMERIC_LIBRARIES = frozenset({"torch", "numpy"})
# Platform leaves that import only the standard library: the one error tree and the atomic write, which the
# numeric core may use (its errors must map to exit codes like everyone else's).
STDLIB_PLATFORM_LEAVES = frozenset({"fleetloop.platform.errors", "fleetloop.platform.atomic"})

# Only the platform talks to these services' client libraries (its registry and bus wrap them).
SERVICE_CLIENTS = frozenset({"mlflow", "kafka", "confluent_kafka", "aiokafka"})

# The data loop's stages hand off through events on the bus, never through each other's code; the shells they
# run in are generic and import no stage.
STAGES = frozenset({"collect", "label", "train", "validate"})
STAGE_SHELLS = frozenset({"stage_shell", "event_stage"})


@dataclass(frozen=True)
class Import:
    """One imported module, as written in one file."""

    file: Path  # relative to the repository root
    line: int
    module: str  # absolute dotted name; for ``from a import b``, ``a.b`` when that is a module of the package

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    def where(self) -> str:
        return f"{self.file.as_posix()}:{self.line} imports {self.module}"


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_modules(root: Path = PACKAGE) -> set[str]:
    return {module_name(p, root.parent) for p in root.rglob("*.py")}


def imports_of(source: str, module: str, is_package: bool, known: set[str], file: Path) -> Iterator[Import]:
    """Every module ``source`` imports, resolved to absolute names (relative imports included)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(file, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield Import(file, node.lineno, sub if sub in known else target)


def all_imports(root: Path = PACKAGE) -> list[tuple[str, Import]]:
    """``(importing module, import)`` for every module of the package."""
    known = _package_modules(root)
    out: dict[tuple[str, Import], None] = {}  # one entry per (line, module), in file order
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root.parent)
        rel = path.relative_to(root.parent)
        for imp in imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known, rel):
            out[(name, imp)] = None
    return list(out)


def part_of(module: str) -> str | None:
    """``cli``, ``sim``, ... for a module of fleetloop; None for the root package and for other libraries."""
    bits = module.split(".")
    return bits[1] if bits[0] == "fleetloop" and len(bits) > 1 else None


def submodule_of(module: str) -> str:
    """The module's name inside its part: ``fleetloop.edge_agent.policy`` -> ``policy``; a part -> ``__init__``."""
    bits = module.split(".")
    return bits[2] if len(bits) > 2 else "__init__"


def is_stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


def pipeline_module(module: str) -> str | None:
    """``collect`` for ``fleetloop.pipelines.collect`` (and its ``collect.x``); None outside the pipelines."""
    return submodule_of(module) if part_of(module) == "pipelines" else None


IMPORTS = sorted(all_imports(), key=lambda m: (m[1].file, m[1].line, m[1].module))


def _violations(rule: str, bad: Callable[[str, Import], bool]) -> list[str]:
    return [f"{imp.where()}: {rule}" for mod, imp in IMPORTS if bad(mod, imp)]


def _check(violations: list[str]) -> None:
    if violations:
        pytest.fail("\n".join([f"{len(violations)} import(s) break the rule:", *violations]), pytrace=False)


# -- the scanner itself ------------------------------------------------------------------------------------


def test_the_scanner_sees_function_local_type_checking_and_relative_imports() -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from fleetloop.platform.settings import Settings\n"
        "def f():\n"
        "    import mlflow.artifacts\n"
        "    from . import collect\n"
        "    from ..sim import state\n"
    )
    known = {"fleetloop.pipelines.collect", "fleetloop.sim.state"}
    got = {i.module for i in imports_of(source, "fleetloop.pipelines.x", False, known, Path("x.py"))}
    want = {"fleetloop.platform.settings", "mlflow.artifacts", "fleetloop.pipelines.collect", "fleetloop.sim.state"}
    assert want <= got, got


def test_every_module_belongs_to_a_part_and_every_edge_agent_module_is_core_or_shell() -> None:
    modules = {mod for mod, _ in IMPORTS} | _package_modules()
    strays = sorted(m for m in modules if m != "fleetloop" and part_of(m) not in ALLOWED_PARTS)
    assert not strays, f"modules outside the parts of docs/architecture.md: {strays}"
    edge = {submodule_of(m) for m in modules if part_of(m) == "edge_agent"}
    unclassified = sorted(edge - EDGE_NUMERIC_CORE - EDGE_SHELL)
    assert not unclassified, (
        f"edge_agent modules neither in EDGE_NUMERIC_CORE nor EDGE_SHELL of this test: {unclassified}; "
        "put each where it belongs (numeric core: torch, numpy and the standard library only)"
    )


# -- the rules ------------------------------------------------------------------------------------------


def test_each_part_imports_only_the_parts_below_it() -> None:
    def bad(mod: str, imp: Import) -> bool:
        src, dst = part_of(mod), part_of(imp.module)
        return src is not None and dst is not None and dst not in ALLOWED_PARTS[src]

    rule = "the dependency direction (cli -> pipelines, federation -> edge_agent -> sim; all but sim -> platform)"
    _check(
        [
            f"{imp.where()}: {part_of(mod)} may not import {part_of(imp.module)}: {rule}"
            for mod, imp in IMPORTS
            if bad(mod, imp)
        ]
    )


def test_sim_imports_only_torch_numpy_and_the_standard_library() -> None:
    def bad(mod: str, imp: Import) -> bool:
        if part_of(mod) != "sim" or part_of(imp.module) == "sim":
            return False
        return not (imp.top in NUMERIC_LIBRARIES or is_stdlib(imp.module))

    _check(_violations("sim imports only torch, numpy, the standard library and itself", bad))


def test_the_edge_agent_numeric_core_imports_only_torch_numpy_the_standard_library_and_sim() -> None:
    def core(module: str) -> bool:
        return part_of(module) == "edge_agent" and submodule_of(module) in EDGE_NUMERIC_CORE

    def bad(mod: str, imp: Import) -> bool:
        if not core(mod) or part_of(imp.module) == "sim" or core(imp.module) or imp.module in STDLIB_PLATFORM_LEAVES:
            return False
        return not (imp.top in NUMERIC_LIBRARIES or is_stdlib(imp.module))

    rule = (
        "edge_agent's numeric core imports only torch, numpy, the standard library, sim, the core itself and the "
        "platform's standard-library leaves (errors, atomic)"
    )
    _check(_violations(rule, bad))


def test_the_platform_leaves_the_numeric_core_may_use_import_only_the_standard_library() -> None:
    def bad(mod: str, imp: Import) -> bool:
        return mod in STDLIB_PLATFORM_LEAVES and not is_stdlib(imp.module)

    _check(_violations("fleetloop.platform.errors and .atomic import only the standard library", bad))


def test_no_module_outside_the_platform_imports_mlflow_or_kafka() -> None:
    def bad(mod: str, imp: Import) -> bool:
        return part_of(mod) != "platform" and imp.top in SERVICE_CLIENTS

    _check(_violations("no module outside fleetloop/platform imports mlflow or kafka (use the registry, the bus)", bad))


def test_the_pipeline_stages_do_not_import_each_other() -> None:
    def bad(mod: str, imp: Import) -> bool:
        a, b = pipeline_module(mod), pipeline_module(imp.module)
        return a in STAGES and b in STAGES and a != b

    rule = "the stages collect, label, train, validate hand off through events, not each other's code"
    _check(_violations(rule, bad))


def test_the_stage_shells_import_no_stage() -> None:
    def bad(mod: str, imp: Import) -> bool:
        return pipeline_module(mod) in STAGE_SHELLS and pipeline_module(imp.module) in STAGES

    _check(_violations("a stage shell (stage_shell, event_stage) is generic and imports no stage", bad))
