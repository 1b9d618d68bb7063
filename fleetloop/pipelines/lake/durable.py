"""Durable folders for the lake; durable files are ``fleetloop.platform.atomic``'s."""

from __future__ import annotations

from pathlib import Path

from fleetloop.platform.atomic import fsync_dir

__all__ = ["mkdirs_durably"]


def mkdirs_durably(path: Path) -> None:
    """Create ``path`` and fsync each new folder's parent, so the folder entry survives a crash too."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_dir(d.parent)
