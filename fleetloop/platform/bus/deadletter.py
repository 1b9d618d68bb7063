"""Dead letters: a record no consumer could read, kept with why and where it came from.

The dead-letter record's value is the original value unchanged and its key the original key; the reason
and origin travel as Kafka headers (``fleetloop.dl.*``), so nothing has to be re-encoded to be kept.

A record too large to be sent again (the broker accepts up to 16 MiB, a producer request is capped near
1 MB) is kept as a *reference* instead (header ``fleetloop.dl.kept`` = ``reference``): a small JSON document
with the original topic, partition, offset, size, SHA-256 and the first bytes of the value. The original
stays on its topic until retention removes it; the reference says exactly where (docs/adr/0073).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "HEADER_PREFIX",
    "KEPT_FULL",
    "KEPT_REFERENCE",
    "MAX_LETTER_BYTES",
    "REFERENCE_PREFIX_BYTES",
    "DeadLetter",
]

HEADER_PREFIX = "fleetloop.dl."
KEPT_FULL = "full"
KEPT_REFERENCE = "reference"
# [B] a letter's key + value + headers stay below this, so any producer (request cap ~1 MB) and any broker
# (default message.max.bytes 1,048,588) take it; serde.MAX_MESSAGE_BYTES less room for the batch framing.
MAX_LETTER_BYTES = 1_000_000 - 16 * 1024
REFERENCE_PREFIX_BYTES = 4096  # [B] of the original value kept in a reference, enough to see what it was
MAX_KEY_BYTES = 1024  # [B] a longer original key is cut to this in a reference (its SHA-256 is kept)
MAX_ERROR_CHARS = 2000  # an error message longer than this is cut (it is ours; the record is what matters)


def _sha256(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


@dataclass(frozen=True)
class DeadLetter:
    """A rejected record: ``reason`` is a code (``malformed``, ``unknown_schema``, ...), ``error`` the message.

    ``kept`` says what ``value`` holds: the original bytes (``full``) or a JSON reference to them
    (``reference``; read it with :meth:`reference`)."""

    reason: str
    error: str
    topic: str
    partition: int
    offset: int
    group: str
    key: bytes | None
    value: bytes | None
    kept: str = KEPT_FULL

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers describing the rejection and the original record's position."""
        fields = {
            "reason": self.reason,
            "error": self.error[:MAX_ERROR_CHARS],
            "topic": self.topic,
            "partition": str(self.partition),
            "offset": str(self.offset),
            "group": self.group,
            "kept": self.kept,
        }
        return [(HEADER_PREFIX + k, v.encode()) for k, v in fields.items()]

    @property
    def size_bytes(self) -> int:
        """Bytes this letter takes on the wire (key, value and headers; record framing excluded)."""
        return len(self.key or b"") + len(self.value or b"") + sum(len(k) + len(v) for k, v in self.headers())

    def fitted(self, max_bytes: int = MAX_LETTER_BYTES, prefix_bytes: int = REFERENCE_PREFIX_BYTES) -> DeadLetter:
        """This letter if it fits in ``max_bytes``, else a reference to the original (see the module docstring)."""
        if self.kept == KEPT_FULL and self.size_bytes <= max_bytes:
            return self
        return self.as_reference(prefix_bytes)

    def as_reference(self, prefix_bytes: int = REFERENCE_PREFIX_BYTES) -> DeadLetter:
        """A letter whose value is a JSON reference to this one's original record (always small)."""
        if self.kept == KEPT_REFERENCE:
            return self
        value = self.value or b""
        key = self.key or b""
        doc = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "size_bytes": len(value),
            "sha256": _sha256(value),
            "key_size_bytes": len(key),
            "key_sha256": _sha256(key),
            "prefix_b64": base64.b64encode(value[:prefix_bytes]).decode(),
        }
        short_key = None if self.key is None else self.key[:MAX_KEY_BYTES]
        error = f"{self.error[: MAX_ERROR_CHARS - 200]} [value of {len(value):,} bytes kept as a reference]"
        return replace(
            self, key=short_key, value=json.dumps(doc, sort_keys=True).encode(), kept=KEPT_REFERENCE, error=error
        )

    def reference(self) -> dict[str, Any]:
        """The reference document of a ``reference`` letter: topic, partition, offset, size_bytes, sha256,
        key_size_bytes, key_sha256, prefix_b64 (the first bytes of the value, base64)."""
        if self.kept != KEPT_REFERENCE:
            raise ValueError("this dead letter keeps the original value, not a reference")
        doc: dict[str, Any] = json.loads(self.value or b"{}")
        return doc

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> DeadLetter:
        """Rebuild a dead letter from a record of the dead-letter topic; ``ValueError`` if its headers are not ours."""
        h = {k[len(HEADER_PREFIX) :]: v.decode() for k, v in headers if k.startswith(HEADER_PREFIX)}
        try:
            return cls(
                reason=h["reason"],
                error=h["error"],
                topic=h["topic"],
                partition=int(h["partition"]),
                offset=int(h["offset"]),
                group=h["group"],
                key=key,
                value=value,
                kept=h.get("kept", KEPT_FULL),
            )
        except (KeyError, ValueError) as e:
            raise ValueError(f"not a fleetloop dead letter (headers {sorted(h)}): {e}") from e
