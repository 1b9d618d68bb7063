"""Which metrics the platform's source declares, and which of them some code sets, read from the source itself.

A metric is *declared* by a call to ``counter`` / ``gauge`` / ``histogram`` (the registry's helpers or methods)
whose first argument is a ``fleetloop_*`` string, given literally or as a string constant of the module (or one it
imports). It is *set* when a call of a setter (``inc``, ``set``, ``observe``, ...) reaches it:

- on the declaration itself: ``counter("fleetloop_x_total", ...).labels(...).inc()``;
- on what the declaration is bound to, in the same module (``X = gauge(...)`` then ``X.labels(...).set(v)``;
  ``self._m = {NAME: counter(...)}`` then ``self._m[name].inc()``), or, for a module-level name, in a module
  that imports that name (``from fleetloop.platform.metrics import CONSUMER_LAG``);
- on a call of the function that returns it (``def c(): return counter(...)`` then ``c().labels(...).inc()``).

Static and deliberately simple: a metric set only through a path this does not follow (``getattr``, a metric
passed around as an argument) counts as not set, which a test then reports; follow the shapes above instead.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Declaration",
    "MetricSources",
    "dashboard_names",
    "names_in",
    "rule_names",
    "scan_package",
]

DECLARERS = frozenset({"counter", "gauge", "histogram"})
SETTERS = frozenset({"inc", "dec", "set", "observe", "set_to_current_time", "set_function", "time"})
PREFIX = "fleetloop_"
_NAME_RE = re.compile(rf"\b{PREFIX}[a-zA-Z0-9_]+")
_SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_created")


@dataclass(frozen=True)
class Declaration:
    """A metric declared in ``module`` (a path relative to the package's parent), bound to ``binding``: a name,
    ``self.attr``, ``call:function`` (returned by it) or ``""`` (used where declared); ``set_inline``: a setter is
    called on the declaration itself."""

    metric: str
    module: str
    line: int
    binding: str
    set_inline: bool


@dataclass(frozen=True)
class MetricSources:
    """Every declaration, and every setter call as (module, the root it is called on)."""

    declarations: list[Declaration]
    setter_roots: set[tuple[str, str]]
    imports: dict[str, set[str]]  # module -> the names it imports from fleetloop modules

    def declared(self) -> set[str]:
        return {d.metric for d in self.declarations}

    def is_set(self, d: Declaration) -> bool:
        if d.set_inline:
            return True
        if not d.binding:
            return False
        if (d.module, d.binding) in self.setter_roots:
            return True
        plain_name = d.binding.isidentifier()
        return plain_name and any(
            d.binding in names and (module, d.binding) in self.setter_roots for module, names in self.imports.items()
        )

    def set_metrics(self) -> set[str]:
        return {d.metric for d in self.declarations if self.is_set(d)}


def _func_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _root(expr: ast.expr) -> str:
    """What a setter is called on, with ``.labels(...)`` and subscripts stripped: ``X``, ``self.m``, ``call:f``."""
    while True:
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "labels":
            expr = expr.func.value
        elif isinstance(expr, ast.Subscript):
            expr = expr.value
        else:
            break
    if isinstance(expr, ast.Call):
        return f"call:{_func_name(expr.func)}"
    return ast.unparse(expr)


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _constants(tree: ast.Module) -> dict[str, str]:
    out = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            out[node.targets[0].id] = node.value.value
    return out


def _imported(tree: ast.Module) -> dict[str, str]:
    """Names imported from fleetloop modules: local name -> the name in its module."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fleetloop"):
            for alias in node.names:
                out[alias.asname or alias.name] = alias.name
    return out


def _binding(call: ast.Call, parents: dict[ast.AST, ast.AST]) -> tuple[str, bool]:
    """(what the declaration is bound to, whether a setter is called on it where it stands)."""
    node: ast.AST = call
    while True:  # climb a chain of calls on the declaration: counter(...).labels(...).inc()
        attr = parents.get(node)
        outer = parents.get(attr) if attr is not None else None
        if isinstance(attr, ast.Attribute) and isinstance(outer, ast.Call) and outer.func is attr:
            if attr.attr in SETTERS:
                return "", True
            if attr.attr == "labels":
                node = outer
                continue
        break
    parent = parents.get(node)
    while isinstance(parent, ast.Dict | ast.Tuple | ast.List):  # a container of metrics, indexed where set
        node, parent = parent, parents.get(parent)
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1:
        return _root(parent.targets[0]), False
    if isinstance(parent, ast.AnnAssign):
        return _root(parent.target), False
    if isinstance(parent, ast.Return):
        scope = parents.get(parent)
        while scope is not None and not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            scope = parents.get(scope)
        return (f"call:{scope.name}" if scope is not None else ""), False
    return "", False


def _modules(package_dir: Path) -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(package_dir.rglob("*.py")):
        yield str(path.relative_to(package_dir.parent)), ast.parse(path.read_text(), filename=str(path))


def scan_package(package_dir: Path) -> MetricSources:
    """Read every module under ``package_dir`` (the ``fleetloop`` folder) for declarations and setters."""
    trees = dict(_modules(package_dir))
    constants = {name: value for tree in trees.values() for name, value in _constants(tree).items()}
    declarations: list[Declaration] = []
    setter_roots: set[tuple[str, str]] = set()
    imports: dict[str, set[str]] = {}
    for module, tree in trees.items():
        parents = _parents(tree)
        local = {**{k: constants[v] for k, v in _imported(tree).items() if v in constants}, **_constants(tree)}
        imports[module] = set(_imported(tree))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _func_name(node.func)
            if name in SETTERS and isinstance(node.func, ast.Attribute):
                setter_roots.add((module, _root(node.func.value)))
            if name in DECLARERS and node.args:
                first = node.args[0]
                metric = (
                    first.value
                    if isinstance(first, ast.Constant) and isinstance(first.value, str)
                    else local.get(first.id)
                    if isinstance(first, ast.Name)
                    else None
                )
                if metric and metric.startswith(PREFIX):
                    binding, inline = _binding(node, parents)
                    declarations.append(Declaration(metric, module, node.lineno, binding, inline))
    return MetricSources(declarations, setter_roots, imports)


def names_in(texts: Iterable[str]) -> set[str]:
    """The ``fleetloop_*`` metric names in PromQL texts, series suffixes (``_bucket``, ...) taken off. Recording
    rules (``fleetloop:...``) do not match."""
    out = set()
    for text in texts:
        for name in _NAME_RE.findall(text):
            for suffix in _SERIES_SUFFIXES:
                name = name.removesuffix(suffix)
            out.add(name)
    return out


def rule_names(rules_dir: Path) -> set[str]:
    """Metric names the alert and recording rules query, their annotations' queries included."""
    texts = []
    for f in sorted(rules_dir.glob("*.yml")):
        for group in yaml.safe_load(f.read_text())["groups"]:
            for rule in group["rules"]:
                texts.append(str(rule["expr"]) + " " + " ".join(map(str, rule.get("annotations", {}).values())))
    return names_in(texts)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def dashboard_names(dashboard: Path) -> set[str]:
    """Metric names every panel query of a Grafana dashboard JSON names."""
    doc = json.loads(dashboard.read_text())
    return names_in(t["expr"] for p in _panels(doc["panels"]) for t in p.get("targets", []))
