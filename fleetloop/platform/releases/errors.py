"""Errors of signed releases, grouped by who is at fault, on the platform's tree (CLI exit code in brackets).

    UserInputError [2]
    ├── BadReleaseInput            the publisher asked for something invalid (a float in a signed field, ...)
    └── ReleaseNotFound            no signed release for that model / version / file
    SetupError [3]
    └── KeysMissing                the signing keys (or the repository) were never initialised here
    ServiceUnavailable [4]
    └── RepositoryUnavailable      the release server did not answer, or the download broke off every retry
    DataError [5]
    └── ReleaseRejected            the vehicle refuses what it was offered; the subclass says why:
        ├── BadHash                a file's length or sha256 differs from the signed one
        ├── ExpiredMetadata        signed metadata is past its expiry (a freeze attack, or a repo not refreshed)
        ├── ReplayedMetadata       older metadata (or an older release) than the vehicle already trusts
        ├── SignatureRejected      not signed by a threshold of trusted keys (wrong or revoked key, tampered)
        ├── NotAssigned            no signed rollout wave lists this vehicle for this release
        └── UnsupportedSchema      the release needs an input schema this vehicle does not run

:func:`from_tuf_error` translates python-tuf's exceptions into this tree, so no caller sees a bare
``tuf.api.exceptions`` error.
"""

from __future__ import annotations

from tuf.api import exceptions as tuf_exc

from fleetloop.platform.errors import DataError, NotFoundError, ServiceUnavailable, SetupError, UserInputError

__all__ = [
    "BadHash",
    "BadReleaseInput",
    "ExpiredMetadata",
    "KeysMissing",
    "NotAssigned",
    "ReleaseNotFound",
    "ReleaseRejected",
    "ReplayedMetadata",
    "RepositoryUnavailable",
    "SignatureRejected",
    "UnsupportedSchema",
    "from_tuf_error",
]


class BadReleaseInput(UserInputError):
    """The publisher asked for something invalid (a float in a signed field, an unknown role, a missing file)."""


class ReleaseNotFound(NotFoundError):
    """No signed release matches the model / version / file asked for."""


class KeysMissing(SetupError):
    """The signing keys or the repository were never initialised in this state directory."""


class RepositoryUnavailable(ServiceUnavailable):
    """The release server did not answer, or a download broke off on every retry."""


class ReleaseRejected(DataError):
    """The vehicle refuses the release it was offered; the subclass says why."""


class BadHash(ReleaseRejected):
    """A file's length or sha256 differs from the signed one."""


class ExpiredMetadata(ReleaseRejected):
    """Signed metadata is past its expiry: a freeze attack, or a repository whose timestamp was not refreshed."""


class ReplayedMetadata(ReleaseRejected):
    """Metadata (or a release number) older than what the vehicle already trusts."""


class SignatureRejected(ReleaseRejected):
    """Metadata not signed by a threshold of trusted keys: a wrong or revoked key, or tampered content."""


class NotAssigned(ReleaseRejected):
    """No signed rollout wave of this release lists the vehicle."""


class UnsupportedSchema(ReleaseRejected):
    """The release needs a policy input schema that this vehicle does not run."""


def from_tuf_error(exc: Exception, what: str) -> ReleaseRejected | RepositoryUnavailable:
    """The fleetloop error for a python-tuf exception raised while fetching ``what`` (a role or target name)."""
    # The order matters: EqualVersionNumberError is a BadVersionNumberError, all are RepositoryErrors.
    if isinstance(exc, tuf_exc.LengthOrHashMismatchError | tuf_exc.DownloadLengthMismatchError):
        return BadHash(f"{what}: {exc}; the file was altered or truncated, do not install it")
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return ExpiredMetadata(f"{what}: {exc}; the repository must re-sign it (ota refresh) before vehicles accept it")
    if isinstance(exc, tuf_exc.BadVersionNumberError):
        return ReplayedMetadata(f"{what}: {exc}; the server offers metadata older than what this vehicle trusts")
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        return SignatureRejected(f"{what}: {exc}; signed by a wrong or revoked key, or altered after signing")
    if isinstance(exc, tuf_exc.RepositoryError):
        return ReleaseRejected(f"{what}: {exc}")
    if isinstance(exc, tuf_exc.DownloadError):
        return RepositoryUnavailable(f"{what}: download failed ({exc}); is the release server (ota-repo) running?")
    raise TypeError(f"not a python-tuf error: {exc!r}")
