"""Dead letters: a record no consumer could read, kept byte for byte with why and where it came from.

The dead-letter record's value is the original value unchanged and its key the original key; the reason
and origin travel as Kafka headers (``fleetloop.dl.*``), so nothing has to be re-encoded to be kept.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HEADER_PREFIX", "DeadLetter"]

HEADER_PREFIX = "fleetloop.dl."


@dataclass(frozen=True)
class DeadLetter:
    """A rejected record: ``reason`` is a code (``malformed``, ``unknown_schema``, ...), ``error`` the message."""

    reason: str
    error: str
    topic: str
    partition: int
    offset: int
    group: str
    key: bytes | None
    value: bytes | None

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers describing the rejection and the original record's position."""
        fields = {
            "reason": self.reason,
            "error": self.error,
            "topic": self.topic,
            "partition": str(self.partition),
            "offset": str(self.offset),
            "group": self.group,
        }
        return [(HEADER_PREFIX + k, v.encode()) for k, v in fields.items()]

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
            )
        except (KeyError, ValueError) as e:
            raise ValueError(f"not a fleetloop dead letter (headers {sorted(h)}): {e}") from e
