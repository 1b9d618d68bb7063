"""Private folders for keys (atomic writes are ``fleetloop.platform.atomic``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["private_dir"]


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700; return it."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path
