"""Replies checked one by one before any strategy sees them: a bad reply is dropped and counted, never fatal.

Flower's strategies check the replies of a round together and give up on the whole round when one is
inconsistent (``InconsistentMessageReplies``). Here each reply is held against the global model that was sent:
``check_reply`` raises ``ReplyRejected`` with the reason, ``screen_replies`` keeps the good ones and counts the
others by reason. A reply must hold exactly one ArrayRecord with the global model's keys, shapes and dtype, all
finite, and exactly one MetricRecord with a positive finite ``num-examples``, finite values and no key outside
``REPLY_METRICS`` (nothing else may leave a vehicle), and no other record.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fleetloop.federation.task import REPLY_METRICS, VEHICLE_ID_KEY, WEIGHT_KEY
from fleetloop.platform.errors import ReplyRejected

if TYPE_CHECKING:
    from flwr.app import Message, RecordDict

__all__ = ["OFFLINE", "TOO_FEW_FRAMES", "ReplyRejected", "Screened", "check_reply", "screen_replies"]


def check_reply(content: RecordDict, reference: Mapping[str, np.ndarray]) -> None:
    """Raise ``ReplyRejected`` unless ``content`` is a well-formed update of the model ``reference``
    (name -> array)."""
    if len(content.array_records) != 1:
        raise ReplyRejected(f"not one ArrayRecord: {len(content.array_records)}")
    if len(content.metric_records) != 1:
        raise ReplyRejected(f"not one MetricRecord: {len(content.metric_records)}")
    if len(content.config_records):
        raise ReplyRejected("unexpected ConfigRecord: a reply carries weights and metrics only")
    arrays = next(iter(content.array_records.values()))
    if set(arrays.keys()) != set(reference):
        missing = sorted(set(reference) - set(arrays.keys()))
        extra = sorted(set(arrays.keys()) - set(reference))
        raise ReplyRejected(f"array keys differ: missing {missing}, unknown {extra}")
    for key, ref in reference.items():
        arr = arrays[key]
        if tuple(arr.shape) != tuple(ref.shape) or arr.dtype != str(ref.dtype):
            raise ReplyRejected(
                f"array shape or dtype differs: {key} is {arr.dtype}{tuple(arr.shape)}, not {ref.dtype}{ref.shape}"
            )
        try:
            values = arr.numpy()
        except (TypeError, ValueError) as e:
            raise ReplyRejected(f"array unreadable: {key} ({e})") from e
        if not np.isfinite(values).all():
            raise ReplyRejected(f"non-finite array: {key} holds NaN or Inf")
    metrics = next(iter(content.metric_records.values()))
    unknown = sorted(set(metrics.keys()) - REPLY_METRICS)
    if unknown:
        raise ReplyRejected(f"unknown metrics: {unknown} (a vehicle may send only {sorted(REPLY_METRICS)})")
    if WEIGHT_KEY not in metrics:
        raise ReplyRejected(f"missing {WEIGHT_KEY}")
    for key, value in metrics.items():
        numbers = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers):
            raise ReplyRejected(f"non-finite metric: {key}")
    weight = metrics[WEIGHT_KEY]
    if isinstance(weight, list) or weight <= 0:
        raise ReplyRejected(f"non-positive {WEIGHT_KEY}: {weight}")


OFFLINE = "offline"
"""Counter key of a vehicle that went offline in the round (its ClientApp failed with ``VehicleOffline``)."""


def _reason_key(message: str) -> str:
    """A stable counter key of a rejection (its message up to the first detail)."""
    return message.split(":")[0].split("(")[0].strip()


TOO_FEW_FRAMES = "too few labelled frames"
"""Counter key of a vehicle that declined the round for lack of labelled frames (``TooFewFrames``)."""


def _error_key(reason: str) -> str:
    if "VehicleOffline" in reason:
        return OFFLINE
    return TOO_FEW_FRAMES if "TooFewFrames" in reason else "client failed"


@dataclass
class Screened:
    """A round's replies after screening."""

    valid: list[Message] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    """Rejected replies by reason (``offline`` / ``client failed`` for error replies, else the reply's problem)."""
    vehicles: list[int] = field(default_factory=list)
    """Vehicle ids of the valid replies, in reply order."""

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


def screen_replies(replies: Iterable[Message], reference: Mapping[str, np.ndarray]) -> Screened:
    """Keep the replies that pass ``check_reply`` against ``reference``; count the rest by reason."""
    out = Screened()
    for msg in replies:
        if msg.has_error():
            out.dropped[_error_key(msg.error.reason or "")] += 1
            continue
        try:
            check_reply(msg.content, reference)
        except ReplyRejected as e:
            out.dropped[_reason_key(str(e))] += 1
            continue
        out.valid.append(msg)
        metrics = next(iter(msg.content.metric_records.values()))
        vid = metrics.get(VEHICLE_ID_KEY)
        out.vehicles.append(int(vid) if isinstance(vid, int | float) else -1)
    return out
