"""Run records: every command leaves ``<state_dir>/runs/<id>.json`` saying what ran and how it ended.

A record holds the command, start and end (UTC), status, seed, the versions of fleetloop, Python and the
libraries that shape results, the parameters and a JSON summary, so a number printed weeks ago can be
traced to what produced it::

    with run_record(settings, command="sim run", params={"vehicles": 500}, seed=7) as rec:
        result = simulate(...)
        rec.summary = {"collisions": result.collisions}

The record is written when the run starts (status ``running``) and rewritten when it ends: ``ok``,
``failed`` (an exception, recorded with its type and message) or ``interrupted`` (Ctrl-C); the exception
is always re-raised. A record left ``running`` by a process that no longer exists (killed, machine
rebooted) reads back as ``lost``. Files are written to a temp name and renamed (``os.replace``), so a
reader never sees half a record.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import importlib.metadata
import json
import logging
import math
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import fleetloop
from fleetloop.platform.atomic import write_text_atomic
from fleetloop.platform.errors import NotFoundError, SetupError
from fleetloop.platform.logs import log_context
from fleetloop.platform.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "RUN_STATUSES",
    "RunListing",
    "RunRecord",
    "RunStatus",
    "collect_versions",
    "find_run",
    "list_runs",
    "run_record",
    "runs_dir",
    "to_jsonable",
]

RunStatus = Literal["running", "ok", "failed", "interrupted", "lost"]
RUN_STATUSES: tuple[str, ...] = ("running", "ok", "failed", "interrupted", "lost")
SCHEMA_VERSION = 1

# Distributions whose versions change what a run computes; looked up without importing them.
_VERSIONED_DISTRIBUTIONS = ("torch", "numpy", "kafka-python", "mlflow", "flwr", "ray", "pyarrow", "prometheus-client")
# Time-sortable ids: the start second in UTC, then random hex against collisions within that second.
_ID_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_ID_TIME_LEN = len("20260101T000000Z")


def runs_dir(state_dir: Path) -> Path:
    """Directory of the run records: ``<state_dir>/runs``."""
    return Path(state_dir) / "runs"


def _utc_iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def to_jsonable(value: Any, where: str = "value") -> Any:
    """Convert ``value`` to plain JSON types, or raise ``TypeError`` naming the offending entry.

    Paths become strings, enums their value, datetimes ISO 8601, dataclasses dicts, numpy / torch
    scalars numbers and arrays lists, sets sorted lists. Non-finite floats become the strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"``: visible, and still valid JSON for ``jq``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str | int | float | bool):
                raise TypeError(f"{where} has a key {k!r} of type {type(k).__name__}; use string keys")
            out[str(k)] = to_jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, list | tuple):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, set | frozenset):
        items = [to_jsonable(v, f"{where} item") for v in value]
        return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, where)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), where)
    # numpy / torch scalars and arrays, without importing either.
    if hasattr(value, "tolist") and callable(value.tolist):
        return to_jsonable(value.tolist(), where)
    if hasattr(value, "item") and callable(value.item):
        return to_jsonable(value.item(), where)
    raise TypeError(
        f"{where} is of type {type(value).__name__}, which a run record cannot store; "
        f"convert it to a number, string, list or dict"
    )


def _git_commit() -> str | None:
    """The commit of the fleetloop checkout, when it runs from one (an editable install)."""
    source = Path(fleetloop.__file__).resolve().parent.parent
    if not (source / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=2.0, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def collect_versions() -> dict[str, str]:
    """Versions of fleetloop, Python, the platform and the libraries that shape results (those installed)."""
    versions = {
        "fleetloop": fleetloop.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    commit = _git_commit()
    if commit:
        versions["fleetloop_git"] = commit
    for dist in _VERSIONED_DISTRIBUTIONS:
        with suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return versions


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunRecord:
    """One run: what ran, with which seed, versions and parameters, how it ended, and its summary.

    ``summary`` is converted to JSON on assignment, so a value that cannot be stored fails at the
    line that set it, inside the run (and is recorded as the run's failure).
    """

    def __init__(
        self,
        *,
        id: str,
        command: str,
        started_utc: str,
        status: RunStatus = "running",
        ended_utc: str | None = None,
        duration_s: float | None = None,
        seed: int | None = None,
        params: Mapping[str, Any] | None = None,
        versions: Mapping[str, str] | None = None,
        summary: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
        pid: int | None = None,
        host: str | None = None,
        argv: list[str] | None = None,
    ) -> None:
        self.id = id
        self.command = command
        self.started_utc = started_utc
        self.status: RunStatus = status
        self.ended_utc = ended_utc
        self.duration_s = duration_s
        self.seed = seed
        self.params: dict[str, Any] = to_jsonable(dict(params or {}), "params")
        self.versions: dict[str, str] = dict(versions or {})
        self._summary: dict[str, Any] = to_jsonable(dict(summary or {}), "summary")
        self.error: dict[str, Any] | None = dict(error) if error is not None else None
        self.pid = pid
        self.host = host
        self.argv = list(argv or [])

    @property
    def summary(self) -> dict[str, Any]:
        """The run's result as JSON data (numbers the command printed, artifact paths, ...)."""
        return self._summary

    @summary.setter
    def summary(self, value: Mapping[str, Any]) -> None:
        if not isinstance(value, Mapping):
            raise TypeError(f"a run summary is a dict, got {type(value).__name__}")
        self._summary = to_jsonable(dict(value), "summary")

    @property
    def effective_status(self) -> RunStatus:
        """The status, except that a ``running`` record of a process gone from this host is ``lost``."""
        running = self.status == "running" and self.pid is not None and self.host == socket.gethostname()
        if running and self.pid is not None and not _pid_alive(self.pid):
            return "lost"
        return self.status

    def as_dict(self) -> dict[str, Any]:
        """The record as stored, with ``status`` replaced by the effective status (``lost``)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "command": self.command,
            "status": self.effective_status,
            "started_utc": self.started_utc,
            "ended_utc": self.ended_utc,
            "duration_s": self.duration_s,
            "seed": self.seed,
            "params": self.params,
            "versions": self.versions,
            "summary": self._summary,
            "error": self.error,
            "pid": self.pid,
            "host": self.host,
            "argv": self.argv,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """Read a stored record; raise ``ValueError`` saying what is wrong with it."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {version!r} is not {SCHEMA_VERSION}; a newer fleetloop wrote it")
        try:
            status = data["status"]
            if status not in RUN_STATUSES:
                raise ValueError(f"unknown status {status!r}")
            return cls(
                id=str(data["id"]),
                command=str(data["command"]),
                started_utc=str(data["started_utc"]),
                status=status,
                ended_utc=data.get("ended_utc"),
                duration_s=data.get("duration_s"),
                seed=data.get("seed"),
                params=data.get("params") or {},
                versions=data.get("versions") or {},
                summary=data.get("summary") or {},
                error=data.get("error"),
                pid=data.get("pid"),
                host=data.get("host"),
                argv=data.get("argv") or [],
            )
        except KeyError as e:
            raise ValueError(f"missing field {e.args[0]!r}") from e
        except TypeError as e:
            raise ValueError(str(e)) from e

    def save(self, state_dir: Path) -> Path:
        """Write the record atomically to ``<state_dir>/runs/<id>.json``; a long run may call it to checkpoint."""
        directory = runs_dir(state_dir)
        path = directory / f"{self.id}.json"
        data = self.as_dict()
        data["status"] = self.status  # store what happened, not what a reader infers
        try:
            directory.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
        except OSError as e:
            raise SetupError(
                f"cannot write the run record {path}: {e.strerror or e}; "
                f"make the state directory writable or point FLEETLOOP_STATE_DIR elsewhere"
            ) from e
        return path

    def __repr__(self) -> str:
        return f"RunRecord({self.id!r}, {self.command!r}, {self.effective_status})"


def _new_id(now: dt.datetime) -> str:
    return f"{now.astimezone(dt.UTC).strftime(_ID_TIME_FORMAT)}-{secrets.token_hex(3)}"


def _outcome(exc: BaseException | None) -> RunStatus:
    if exc is None:
        return "ok"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    # `sys.exit(0)` and a CLI framework's `Exit(0)` end a run early but successfully.
    if isinstance(exc, SystemExit):
        return "ok" if exc.code in (None, 0) else "failed"
    if getattr(exc, "exit_code", None) == 0:
        return "ok"
    return "failed"


@contextmanager
def run_record(
    settings: Settings,
    *,
    command: str,
    params: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> Iterator[RunRecord]:
    """Record a run of ``command`` under ``settings.state_dir``; set ``rec.summary`` inside the block.

    The record is saved at the start (``running``) and at the end with status ``ok``, ``failed`` or
    ``interrupted`` (Ctrl-C). An exception from the block is recorded and re-raised unchanged. ``params``
    must be JSON-able (see :func:`to_jsonable`); a bad value raises ``TypeError`` before the run starts.
    """
    if not command or not command.strip():
        raise ValueError("a run record needs the command it records, e.g. 'sim run'")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    rec = RunRecord(
        id=_new_id(started),
        command=command.strip(),
        started_utc=_utc_iso(started),
        seed=seed,
        params=params,
        versions=collect_versions(),
        pid=os.getpid(),
        host=socket.gethostname(),
        argv=list(sys.argv),
    )
    rec.save(settings.state_dir)
    error: BaseException | None = None
    with log_context(run_id=rec.id, command=rec.command):
        log.info("%s started", rec.command)
        try:
            yield rec
        except BaseException as e:
            error = e
            raise
        finally:
            rec.status = _outcome(error)
            rec.ended_utc = _utc_iso(dt.datetime.now(dt.UTC))
            rec.duration_s = round(time.monotonic() - t0, 6)
            if error is not None and rec.status != "ok":
                rec.error = {
                    "type": type(error).__name__,
                    "message": str(error),
                    "exit_code": getattr(error, "exit_code", None),
                }
            try:
                rec.save(settings.state_dir)
            except SetupError:
                # Never mask the run's own exception with a failure to record it.
                if error is None:
                    raise
            log.info("%s finished: %s in %.1f s", rec.command, rec.status, rec.duration_s)


@dataclass(frozen=True)
class RunListing:
    """Records found (newest first) and files that could not be read, with the reason, so none is hidden."""

    records: list[RunRecord] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def _load(path: Path) -> RunRecord:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not readable JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return RunRecord.from_dict(data)


def _record_paths(state_dir: Path) -> list[Path]:
    directory = runs_dir(state_dir)
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.json"), key=lambda p: p.name, reverse=True)


def list_runs(state_dir: Path, limit: int | None = None) -> RunListing:
    """The newest ``limit`` records (all when ``None``), newest first, and the unreadable files met on the way."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    listing = RunListing()
    last_second: str | None = None
    for path in _record_paths(state_dir):
        # Ids sort by their start second; keep reading past the limit while the second is the same,
        # so runs started within one second are ordered by their full start time below.
        if limit is not None and len(listing.records) >= limit and path.name[:_ID_TIME_LEN] != last_second:
            break
        try:
            rec = _load(path)
        except ValueError as e:
            listing.unreadable.append((path, str(e)))
            continue
        listing.records.append(rec)
        last_second = path.name[:_ID_TIME_LEN]
    listing.records.sort(key=lambda r: (r.started_utc, r.id), reverse=True)
    if limit is not None:
        del listing.records[limit:]
    return listing


def find_run(state_dir: Path, id_or_prefix: str) -> RunRecord:
    """The record whose id is ``id_or_prefix`` or uniquely starts with it; ``NotFoundError`` otherwise."""
    query = id_or_prefix.strip()
    if not query or "/" in query or query.startswith("."):
        raise NotFoundError(f"{id_or_prefix!r} is not a run id; `fleetloop runs list` shows the ids")
    ids = [p.stem for p in _record_paths(state_dir)]
    matches = [query] if query in ids else [i for i in ids if i.startswith(query)]
    if not matches:
        raise NotFoundError(
            f"no run id starts with {query!r} in {runs_dir(state_dir)}; `fleetloop runs list` shows the ids"
        )
    if len(matches) > 1:
        shown = ", ".join(sorted(matches)[:5]) + (", ..." if len(matches) > 5 else "")
        raise NotFoundError(f"{query!r} matches {len(matches)} runs ({shown}); give more characters of the id")
    path = runs_dir(state_dir) / f"{matches[0]}.json"
    try:
        return _load(path)
    except ValueError as e:
        raise NotFoundError(f"run record {path} cannot be read: {e}") from e
