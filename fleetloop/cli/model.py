"""`fleetloop model ...`: see, register and promote fleet-policy versions; read the transition log."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fleetloop.cli.output import console, emit
from fleetloop.platform.errors import NotFoundError, UserInputError
from fleetloop.platform.registry import ModelVersionInfo, Registry, TransitionRecord, open_registry, parse_stage
from fleetloop.platform.registry.records import KNOWN_METADATA_KEYS
from fleetloop.platform.settings import load_settings

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True)

_STAGE_STYLE = {
    "candidate": "white",
    "staging": "cyan",
    "canary": "yellow",
    "production": "bold green",
    "archived": "dim",
    "rejected": "red",
}


def _registry() -> tuple[Registry, str]:
    settings = load_settings()
    return open_registry(settings), settings.model_name


def _stage_text(stage: str | None) -> str:
    if stage is None:
        return "[magenta]no stage[/]"
    return f"[{_STAGE_STYLE.get(stage, 'white')}]{stage}[/]"


def _short_time(iso: str) -> str:
    return iso[:19].replace("T", " ")


def _meta_summary(meta: dict[str, Any]) -> str:
    parts = []
    if "format" in meta:
        parts.append(str(meta["format"]))
    if "input_schema_version" in meta:
        parts.append(f"schema {meta['input_schema_version']}")
    if meta.get("parent_version"):
        parts.append(f"parent v{meta['parent_version']}")
    hashes = meta.get("training_data_hashes")
    if hashes:
        parts.append(f"{len(hashes)} data hash{'es' if len(hashes) != 1 else ''}")
    if meta.get("training_run_id"):
        parts.append(f"run {str(meta['training_run_id'])[:8]}")
    others = sorted(set(meta) - set(KNOWN_METADATA_KEYS))
    if others:
        parts.append("+" + ",".join(others))
    return ", ".join(parts) or "-"


def _transition_line(r: TransitionRecord) -> str:
    flags = [f for f, on in (("genesis", r.genesis), ("via rollout", r.via_rollout), ("FORCED", r.forced)) if on]
    flag_text = f" [bold]({', '.join(flags)})[/]" if flags else ""
    src = _stage_text(r.from_stage) if r.from_stage else "[dim]registered[/]"
    why = f" — {r.reason}" if r.reason else ""
    when = _short_time(r.at)
    return f"{r.model} v{r.version}: {src} → {_stage_text(r.to_stage)}{flag_text} by {r.actor} at {when} UTC{why}"


@app.command("list")
def list_cmd(
    name: str | None = typer.Option(None, "--name", help="Registered model (default: settings model_name)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """List the versions of the fleet policy with stage, aliases, creation time and metadata."""
    reg, default_name = _registry()
    model = name or default_name
    try:
        versions = reg.list_versions(model)
        registered = True
    except NotFoundError:
        versions, registered = [], False
    data = {"model": model, "registered": registered, "versions": [v.summary() for v in versions]}

    def render(d: dict[str, Any]) -> None:
        if not d["versions"]:
            console.print(
                f"{model} has no versions yet; register one with `fleetloop model register PATH`", highlight=False
            )
            return
        table = Table(title=f"{model} — {len(d['versions'])} version(s)")
        table.add_column("version", justify="right")
        table.add_column("stage")
        table.add_column("aliases")
        table.add_column("created (UTC)")
        table.add_column("metadata", overflow="fold")
        for v in d["versions"]:
            table.add_row(
                v["version"],
                _stage_text(v["stage"]),
                ", ".join(v["aliases"]) or "-",
                _short_time(v["created"]),
                _meta_summary(v["metadata"]),
            )
        console.print(table)

    emit(data, as_json, render)


@app.command("promote")
def promote_cmd(
    name: str = typer.Argument(..., help="Registered model, e.g. fleet-policy."),
    version: str = typer.Argument(..., help="Version number."),
    to: str = typer.Option(..., "--to", help="Target stage: staging, canary, production, archived, rejected."),
    reason: str = typer.Option("", "--reason", help="Why; recorded in the transition log (required with --force)."),
    force: bool = typer.Option(False, "--force", help="Override the stage policy (needs --reason)."),
    actor: str | None = typer.Option(None, "--actor", help="Who, for the log (default: user@host)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Move a version to another stage along the stage policy; prints the transitions recorded."""
    stage = parse_stage(to)
    reg, _ = _registry()
    records = reg.promote(name, version, stage, reason=reason, force=force, actor=actor)
    data = {
        "model": name,
        "version": str(int(version)),
        "to": stage.value,
        "changed": bool(records),
        "transitions": [asdict(r) for r in records],
    }

    def render(d: dict[str, Any]) -> None:
        if not records:
            console.print(f"{name} v{d['version']} is already in {stage.value}; nothing changed", highlight=False)
        for r in records:
            console.print(_transition_line(r), highlight=False)

    emit(data, as_json, render)


@app.command("history")
def history_cmd(
    name: str = typer.Argument(..., help="Registered model, e.g. fleet-policy."),
    version: str | None = typer.Option(None, "--version", help="Only this version."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print the transition log (who, when, why) of a model, oldest first."""
    reg, _ = _registry()
    records = reg.history(name, version)
    data = {"model": name, "transitions": [asdict(r) for r in records]}

    def render(d: dict[str, Any]) -> None:
        if not records:
            console.print(f"{name} has no transitions yet", highlight=False)
            return
        table = Table(title=f"{name} — transition log")
        table.add_column("when (UTC)")
        table.add_column("version", justify="right")
        table.add_column("from")
        table.add_column("to")
        table.add_column("flags")
        table.add_column("who")
        table.add_column("why", overflow="fold")
        for r in records:
            flags = [f for f, on in (("genesis", r.genesis), ("rollout", r.via_rollout), ("forced", r.forced)) if on]
            if r.caused_by:
                flags.append(f"by v{r.caused_by}")
            table.add_row(
                _short_time(r.at),
                r.version,
                _stage_text(r.from_stage) if r.from_stage else "[dim]registered[/]",
                _stage_text(r.to_stage),
                ", ".join(flags),
                r.actor,
                r.reason,
            )
        console.print(table)

    emit(data, as_json, render)


def _parse_meta(pairs: list[str], metadata_file: Path | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if metadata_file is not None:
        try:
            loaded = json.loads(metadata_file.read_text())
        except OSError as e:
            raise NotFoundError(f"cannot read metadata file {metadata_file}: {e}") from e
        except ValueError as e:
            raise UserInputError(f"metadata file {metadata_file} is not JSON ({e}); fix the file") from e
        if not isinstance(loaded, dict):
            raise UserInputError(f"metadata file {metadata_file} must hold a JSON object")
        meta.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"--meta {pair!r} is not KEY=VALUE (e.g. --meta format=safetensors)")
        try:  # JSON when it parses (numbers, lists), else the plain string
            meta[key.strip()] = json.loads(value)
        except ValueError:
            meta[key.strip()] = value
    return meta


@app.command("register")
def register_cmd(
    path: Path = typer.Argument(..., help="Model artifact: a file or a directory."),
    name: str | None = typer.Option(None, "--name", help="Registered model (default: settings model_name)."),
    meta: list[str] = typer.Option([], "--meta", help="Metadata KEY=VALUE (VALUE may be JSON); repeatable."),
    metadata_file: Path | None = typer.Option(None, "--metadata-file", help="Metadata as a JSON object file."),
    reason: str = typer.Option("registered", "--reason", help="Why; recorded in the transition log."),
    actor: str | None = typer.Option(None, "--actor", help="Who, for the log (default: user@host)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Register an artifact as a new candidate version of the fleet policy."""
    metadata = _parse_meta(meta, metadata_file)
    reg, default_name = _registry()
    info: ModelVersionInfo = reg.register(name or default_name, path, metadata, reason=reason, actor=actor)

    def render(d: dict[str, Any]) -> None:
        console.print(
            f"registered {d['model']} v{d['version']} as {_stage_text(d['stage'])} "
            f"from {path} ({_meta_summary(d['metadata'])})",
            highlight=False,
        )

    emit(info.summary(), as_json, render)
