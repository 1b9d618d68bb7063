"""Check a downloaded artifact against the repository's signed metadata, offline, with python-tuf's own client.

The repository's files are read through :class:`LocalDirFetcher` instead of HTTP, so the check is the one a
vehicle makes (root chain, signatures, thresholds, versions, expiry, length and sha256), not a second
implementation of it.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from tuf.api import exceptions as tuf_exc
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from fleetloop.platform.releases.errors import (
    BadHash,
    BadReleaseInput,
    ReleaseNotFound,
    ReleaseRejected,
    from_tuf_error,
)
from fleetloop.platform.releases.fields import ReleaseFields
from fleetloop.platform.releases.repository import ReleaseRepository

__all__ = ["LocalDirFetcher", "file_sha256", "verify_file"]

_CHUNK_BYTES = 1 << 20


class LocalDirFetcher(FetcherInterface):
    """Serves ``file://`` URLs from disk; a missing file is an HTTP 404, as the client workflow expects."""

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = Path(unquote(urlparse(url).path))
        if not path.is_file():
            raise tuf_exc.DownloadHTTPError(f"{path} not found", 404)
        return _chunks(path)


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            yield chunk


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def verify_file(repo: ReleaseRepository, artifact_path: Path, trusted_root: bytes | None = None) -> ReleaseFields:
    """The signed release fields of ``artifact_path``, after the full client check against ``repo``'s metadata.

    ``trusted_root`` defaults to the repository's root version 1 (what vehicles are built with).
    """
    artifact_path = Path(artifact_path)
    if not artifact_path.is_file():
        raise BadReleaseInput(
            f"{artifact_path} does not exist or is not a file; give the path of a downloaded artifact"
        )
    sha = file_sha256(artifact_path)
    # the unverified local copy only picks the candidate path; the Updater below verifies it
    signed = repo.load("targets").signed.targets
    candidates = [p for p, tf in signed.items() if tf.hashes.get("sha256") == sha]
    if not candidates:
        size = artifact_path.stat().st_size
        raise _unsigned(artifact_path, sha, [p for p, tf in signed.items() if tf.length == size])
    with tempfile.TemporaryDirectory(prefix="ota-verify-") as tmp:
        try:
            updater = Updater(
                tmp,
                repo.metadata_dir.resolve().as_uri() + "/",
                fetcher=LocalDirFetcher(),
                bootstrap=trusted_root if trusted_root is not None else repo.trusted_root(),
            )
            info = updater.get_targetinfo(candidates[0])
            if info is None:
                raise ReleaseNotFound(f"{candidates[0]} is not in the signed targets metadata")
            with Path(artifact_path).open("rb") as f:
                info.verify_length_and_hashes(f)
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            raise from_tuf_error(exc, str(artifact_path)) from exc
    return ReleaseFields.from_custom(info.custom, info.path)


def _unsigned(artifact_path: Path, sha: str, same_length: list[str]) -> ReleaseRejected:
    """The refusal of a file whose sha256 no release carries: BadHash when a release has its length (altered bytes)."""
    if same_length:
        return BadHash(
            f"{artifact_path} has the length of {', '.join(same_length)} but not its signed sha256 (got {sha[:12]}…): "
            "its bytes were altered after signing; do not install it, download it again"
        )
    return ReleaseRejected(
        f"{artifact_path} (sha256 {sha[:12]}…) matches no signed release: altered after signing or never published; "
        "do not install it (`fleetloop ota releases` lists what is signed)"
    )
