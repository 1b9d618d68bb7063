"""Scrape targets in the state directory, in Prometheus ``file_sd`` format.

Every process that serves metrics (a fleetloop command, a pipeline stage, a service the launcher
started) has one file ``<state_dir>/metrics/targets/<name>-<pid>.json`` holding one target group::

    [{"targets": ["127.0.0.1:40123"], "labels": {"process": "sim", "pid": "4242"}}]

A Prometheus server discovers them all with ``file_sd_configs: [{files: ["<state_dir>/metrics/targets/*.json"]}]``
and re-reads them when they change. Files are written to a temp name that does not match ``*.json``
and renamed into place (``os.replace``), so Prometheus never reads half a file. A process removes its
file when it exits cleanly; ``prune_stale_targets`` removes those of processes that died.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fleetloop.platform.atomic import write_text_atomic
from fleetloop.platform.errors import SetupError

__all__ = [
    "Target",
    "TargetListing",
    "format_address",
    "list_targets",
    "pid_alive",
    "prune_stale_targets",
    "register_target",
    "remove_target",
    "targets_dir",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_TMP_RE = re.compile(r"^\.(?P<stem>.+)\.(?P<pid>\d+)\.tmp$")


def targets_dir(state_dir: Path) -> Path:
    """Directory of the ``file_sd`` target files: ``<state_dir>/metrics/targets``."""
    return Path(state_dir) / "metrics" / "targets"


def format_address(host: str, port: int) -> str:
    """``host:port`` as a scrape target, with IPv6 hosts in brackets (``[::1]:9100``)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _check_address(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"scrape address {address!r} is not host:port with a port in 1-65535 (e.g. 127.0.0.1:9100)")
    return address


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie (exited, not yet reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS) or it just exited: trust kill(0)
        return True
    # Field 3, after the parenthesised command name (which may itself hold spaces or parentheses).
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X")


def register_target(
    state_dir: Path,
    name: str,
    address: str,
    labels: Mapping[str, str] | None = None,
    *,
    pid: int | None = None,
) -> Path:
    """Write (or replace) the target file of process ``name`` serving metrics at ``address``; return its path.

    ``pid`` is the serving process (this one for an exporter, the child's for a launched service); with a
    pid the file is ``<name>-<pid>.json`` and carries a ``pid`` label, so ``prune_stale_targets`` can tell
    when it is stale. Without one (a service the platform did not start) it is ``<name>.json`` and stays
    until ``remove_target``. ``labels`` are extra target labels; values are strings.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"target name {name!r} must be 1-64 letters, digits, '_', '.' or '-', starting alphanumeric")
    _check_address(address)
    all_labels: dict[str, str] = {"process": name}
    for key, value in (labels or {}).items():
        if not isinstance(key, str) or not _LABEL_RE.match(key):
            raise ValueError(f"target label name {key!r} is not an identifier (letters, digits, underscores)")
        if not isinstance(value, str):
            raise ValueError(f"target label {key!r} has value {value!r}; file_sd label values must be strings")
        all_labels[key] = value
    stem = name
    if pid is not None:
        if pid <= 0:
            raise ValueError(f"pid must be positive, got {pid}")
        all_labels["pid"] = str(pid)
        stem = f"{name}-{pid}"
    directory = targets_dir(state_dir)
    path = directory / f"{stem}.json"
    payload = json.dumps([{"targets": [address], "labels": all_labels}], indent=2, sort_keys=True) + "\n"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # The temp name ends in .<pid>.tmp, never *.json, so Prometheus' glob never picks it up.
        write_text_atomic(path, payload)
    except OSError as e:
        raise SetupError(
            f"cannot write the metrics target file {path}: {e.strerror or e}; "
            f"make the state directory writable or point FLEETLOOP_STATE_DIR elsewhere"
        ) from e
    return path


def remove_target(path: Path) -> bool:
    """Remove a target file; return whether it was there."""
    try:
        Path(path).unlink()
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class Target:
    """One registered scrape target, as read back from its file."""

    name: str
    address: str
    labels: dict[str, str]
    path: Path
    pid: int | None
    alive: bool | None  # None when the file names no pid (a service the platform did not start)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view for ``fleetloop status --json``."""
        return {
            "name": self.name,
            "address": self.address,
            "labels": dict(self.labels),
            "path": str(self.path),
            "pid": self.pid,
            "alive": self.alive,
        }


@dataclass(frozen=True)
class TargetListing:
    """The targets found, and the files that could not be read (with the reason) so none is hidden."""

    targets: list[Target] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def _read_target(path: Path) -> Target:
    try:
        groups = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not readable JSON: {e}") from e
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict):
        raise ValueError("expected a list holding one target group")
    group = groups[0]
    addresses, labels = group.get("targets"), group.get("labels", {})
    if not isinstance(addresses, list) or len(addresses) != 1 or not isinstance(addresses[0], str):
        raise ValueError("expected 'targets' to hold one host:port")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError("expected 'labels' to map names to strings")
    pid_text = labels.get("pid")
    pid = int(pid_text) if pid_text is not None and pid_text.isdigit() else None
    return Target(
        name=labels.get("process", path.stem),
        address=addresses[0],
        labels=labels,
        path=path,
        pid=pid,
        alive=pid_alive(pid) if pid is not None else None,
    )


def list_targets(state_dir: Path) -> TargetListing:
    """Every target file in the state directory, sorted by name and pid, with liveness of its process."""
    directory = targets_dir(state_dir)
    listing = TargetListing()
    if not directory.is_dir():
        return listing
    for path in sorted(directory.glob("*.json")):
        try:
            listing.targets.append(_read_target(path))
        except ValueError as e:
            listing.unreadable.append((path, str(e)))
    listing.targets.sort(key=lambda t: (t.name, t.pid or 0))
    return listing


def prune_stale_targets(state_dir: Path) -> list[Path]:
    """Remove target files (and leftover temp files) whose process is dead; return the removed paths.

    Files without a pid label are left alone: only whoever registered them knows when they end.
    """
    directory = targets_dir(state_dir)
    removed: list[Path] = []
    for target in list_targets(state_dir).targets:
        if target.alive is False and remove_target(target.path):
            removed.append(target.path)
    if directory.is_dir():
        for tmp in directory.glob(".*.tmp"):
            m = _TMP_RE.match(tmp.name)
            if m and not pid_alive(int(m.group("pid"))) and remove_target(tmp):
                removed.append(tmp)
    return removed
