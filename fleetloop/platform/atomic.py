"""Durable atomic file writes: after a crash a path holds either its old content or all of the new.

The one recipe every writer of state files uses: write a temp file in the same folder (a rename is atomic
only within one file system), fsync it, ``os.replace`` it over the target, then fsync the folder so the
rename itself survives a power loss. The temp name starts with a dot and ends in ``.<pid>.tmp``, so globs
for the real files (``*.json``, ``*.parquet``) never pick it up and a cleaner can tell a dead writer's
leftover from a live one's.

Standard library only: the vehicle side (``edge_agent``) persists through it too.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["fsync_dir", "temp_path_for", "write_bytes_atomic", "write_text_atomic"]


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a new, renamed or removed file in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """A fresh temp name beside ``path``: ``.<name>.<random>.<pid>.tmp`` (unique across threads and processes)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{os.getpid()}.tmp")


def write_bytes_atomic(path: str | Path, data: bytes | bytearray | memoryview, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data`` durably and atomically; the folder must exist. Returns the path.

    The temp file is created with ``mode`` (``O_EXCL``): a private key is never readable by others, not even for
    an instant.

    On any failure the temp file is removed and ``path`` keeps its previous content (or stays absent).
    """
    target = Path(path)
    tmp = temp_path_for(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """:func:`write_bytes_atomic` of ``text`` encoded (UTF-8 by default)."""
    return write_bytes_atomic(path, text.encode(encoding))
