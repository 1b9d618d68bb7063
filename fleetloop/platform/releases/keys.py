"""The signing keys, one PEM file each under ``<state_dir>/ota/keys/`` (directory 0700, files 0600).

    root-1.pem root-2.pem root-3.pem    offline root keys; root metadata needs ROOT_THRESHOLD of them
    targets.pem                         signs the list of releases and the delegation to rollout waves
    snapshot.pem timestamp.pem          sign which metadata versions are current, and that they are fresh
    rollout.pem                         signs each rollout wave's delegated role (which vehicles may install)

All ed25519 (securesystemslib's ``CryptoSigner`` on ``cryptography``). Here the "offline" root keys sit beside
the online ones so one machine can run the loop; in production they live on separate hardware, and only
``rotate_key("root")`` and ``init_keys`` need them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey

from fleetloop.platform.atomic import write_bytes_atomic
from fleetloop.platform.releases.errors import BadReleaseInput, KeysMissing
from fleetloop.platform.releases.files import private_dir

__all__ = [
    "ONLINE_ROLES",
    "ROLES",
    "ROOT_KEY_COUNT",
    "ROOT_THRESHOLD",
    "KeyRing",
    "generate_role_keys",
    "init_keys",
    "keys_dir",
    "load_keys",
    "store_role_keys",
]

ROOT_KEY_COUNT = 3
ROOT_THRESHOLD = 2
ONLINE_ROLES = ("targets", "snapshot", "timestamp", "rollout")
ROLES = ("root", *ONLINE_ROLES)


@dataclass(frozen=True)
class KeyRing:
    """The private keys of every role (root: ROOT_KEY_COUNT of them, online roles: one each)."""

    signers: Mapping[str, tuple[CryptoSigner, ...]]

    def public_keys(self, role: str) -> list[SSlibKey]:
        """The public keys of ``role``, as listed in root (or, for rollout, in the targets delegations)."""
        return [s.public_key for s in self.signers[role]]

    def keyids(self, role: str) -> list[str]:
        """The key ids of ``role``."""
        return [s.public_key.keyid for s in self.signers[role]]


def keys_dir(state_dir: Path) -> Path:
    """Where the keys live."""
    return Path(state_dir) / "ota" / "keys"


def _files(role: str) -> list[str]:
    if role == "root":
        return [f"root-{i}.pem" for i in range(1, ROOT_KEY_COUNT + 1)]
    return [f"{role}.pem"]


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise BadReleaseInput(f"unknown role {role!r}; the roles are {', '.join(ROLES)}")


def generate_role_keys(role: str) -> tuple[CryptoSigner, ...]:
    """Fresh ed25519 keys for ``role`` (not stored)."""
    _check_role(role)
    return tuple(CryptoSigner.generate_ed25519() for _ in _files(role))


def store_role_keys(state_dir: Path, role: str, signers: tuple[CryptoSigner, ...]) -> None:
    """Write the role's keys, 0600 each, replacing the old files atomically."""
    d = private_dir(keys_dir(state_dir))
    for name, signer in zip(_files(role), signers, strict=True):
        write_bytes_atomic(d / name, signer.private_bytes, mode=0o600)


def init_keys(state_dir: Path) -> KeyRing:
    """Generate and store every role's keys; refuse if keys already exist (rotate them instead)."""
    d = keys_dir(state_dir)
    if d.exists() and any(d.glob("*.pem")):
        raise BadReleaseInput(f"signing keys already exist in {d}; rotate a role's keys instead of re-initialising")
    ring = KeyRing({role: generate_role_keys(role) for role in ROLES})
    for role in ROLES:
        store_role_keys(state_dir, role, ring.signers[role])
    return ring


def load_keys(state_dir: Path) -> KeyRing:
    """Read every role's keys; KeysMissing names the first absent file."""
    d = keys_dir(state_dir)
    signers: dict[str, tuple[CryptoSigner, ...]] = {}
    for role in ROLES:
        loaded = []
        for name in _files(role):
            path = d / name
            if not path.exists():
                raise KeysMissing(f"signing key {path} is missing; run `fleetloop ota keys init` first")
            loaded.append(CryptoSigner(load_pem_private_key(path.read_bytes(), None)))  # type: ignore[arg-type]
        signers[role] = tuple(loaded)
    return KeyRing(signers)
