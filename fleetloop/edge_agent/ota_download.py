"""Resumable download of one release file into a ``.part`` file: a broken transfer resumes with a byte range.

Never more than the signed length is accepted (an endless-data server cannot fill the disk). The caller
verifies the finished file against the signed hashes; this module only moves bytes.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from fleetloop.platform.releases.errors import BadHash, RepositoryUnavailable

__all__ = ["DownloadInterrupted", "download_once"]

_CHUNK_BYTES = 1 << 16


class DownloadInterrupted(Exception):
    """The transfer broke off; the ``.part`` file keeps what arrived, the next attempt resumes from there."""


def download_once(url: str, part: Path, length_bytes: int, timeout_s: float) -> None:
    """Fetch what ``part`` still lacks of the ``length_bytes``-byte file at ``url``; raise DownloadInterrupted.

    A server that ignores the range (200) restarts the file; one that answers 416 has a shorter file than
    ours, so the part is dropped and the next attempt starts over.
    """
    have = part.stat().st_size if part.exists() else 0
    if have > length_bytes:
        part.unlink()
        have = 0
    if have == length_bytes:
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if response.status == 200:
                have = 0  # the whole file follows
            with part.open("r+b" if have else "wb") as out:
                out.seek(have)
                out.truncate()
                missing_bytes = _copy(response, out, length_bytes - have)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            part.unlink(missing_ok=True)
            raise DownloadInterrupted(f"{url}: server has less than our {have} bytes; starting over") from exc
        raise RepositoryUnavailable(f"{url}: HTTP {exc.code}; the release server does not have this file") from exc
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out
        raise DownloadInterrupted(f"{url}: {exc!r} after {part.stat().st_size if part.exists() else 0} B") from exc
    if missing_bytes:
        # http.client ends a short body quietly (an empty read), so the count is the only sign of a lost link
        raise DownloadInterrupted(f"{url}: the connection closed {missing_bytes} B before the end")


def _copy(response: http.client.HTTPResponse, out: BinaryIO, left_bytes: int) -> int:
    """Copy the body to ``out``; return how many of ``left_bytes`` did not arrive."""
    while chunk := response.read(_CHUNK_BYTES):
        if len(chunk) > left_bytes:
            raise BadHash(f"{response.geturl()} sends more than the signed length; refusing the rest")
        out.write(chunk)
        left_bytes -= len(chunk)
    return left_bytes
