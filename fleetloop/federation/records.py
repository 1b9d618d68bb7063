"""Model weights as Flower records and back: the one conversion every message of a round uses (global weights,
the starting weights, a vehicle's reply)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["array_record", "numpy_arrays"]


def array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """``arrays`` (name -> numpy array) as an ``ArrayRecord``."""
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def numpy_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ``ArrayRecord``'s arrays as numpy, by name."""
    return {k: v.numpy() for k, v in record.items()}
