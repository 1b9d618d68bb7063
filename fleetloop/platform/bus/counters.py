"""Plain counters of what the bus sent, received and dead-lettered, ready for a metrics exporter to read."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["BusCounters"]


@dataclass
class BusCounters:
    """Monotonic counts for one producer or consumer (thread-safe; delivery callbacks run on kafka's IO thread).

    Exported later as Prometheus ``*_total`` counters; ``dead_lettered`` and ``send_failures`` are keyed by
    reason so that every rejection says why.
    """

    messages_sent: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    commits: int = 0
    commit_retries: int = 0
    dead_letter_references: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    send_failures: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        """Add to the integer counters by name (``add(messages_sent=1, frames_sent=n)``)."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def add_reason(self, which: str, reason: str, n: int = 1) -> None:
        """Count ``n`` under ``reason`` in ``dead_lettered`` or ``send_failures``."""
        with self._lock:
            counter: Counter[str] = getattr(self, which)
            counter[reason] += n

    def snapshot(self) -> dict[str, object]:
        """A consistent copy of every counter, as plain data."""
        with self._lock:
            return {
                "messages_sent": self.messages_sent,
                "frames_sent": self.frames_sent,
                "bytes_sent": self.bytes_sent,
                "messages_received": self.messages_received,
                "frames_received": self.frames_received,
                "bytes_received": self.bytes_received,
                "commits": self.commits,
                "commit_retries": self.commit_retries,
                "dead_letter_references": self.dead_letter_references,
                "dead_lettered": dict(self.dead_lettered),
                "send_failures": dict(self.send_failures),
            }
