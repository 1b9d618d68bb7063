"""Which vehicles a round asks, without waiting forever for those that never come.

Flower's ``sample_nodes`` polls until ``min_available_nodes`` are connected, with no limit, and samples with the
unseeded ``random`` module. Here the round waits for the vehicles it wants at most ``wait_s``, then goes ahead
with those online (or skips the round when fewer than the minimum came); the sample is drawn from a generator
keyed by the run's seed and the round, so a rerun asks the same vehicles. The strategy then sees a ``SampledGrid``:
the real grid with only the sampled nodes visible, so its own sampling takes exactly those, immediately.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.serverapp import Grid

__all__ = ["SampledGrid", "online_nodes", "sample_round"]


def online_nodes(
    grid: Grid,
    want: int,
    wait_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = 0.5,
) -> list[int]:
    """The nodes connected once ``want`` are, or after ``wait_s``, whichever comes first (sorted)."""
    deadline = clock() + wait_s
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= want or clock() >= deadline:
            return nodes
        sleep(min(poll_s, max(0.0, deadline - clock())))


def sample_round(nodes: Sequence[int], size: int, seed: int, server_round: int) -> list[int]:
    """``size`` of ``nodes`` (all when fewer), drawn from a generator keyed by ``seed`` and ``server_round``."""
    ordered = sorted(nodes)
    if len(ordered) <= size:
        return ordered
    rng = np.random.default_rng([seed, server_round])
    return sorted(ordered[i] for i in rng.choice(len(ordered), size=size, replace=False))


class SampledGrid:
    """A view of a grid where only the sampled nodes are connected; everything else goes to the grid."""

    def __init__(self, grid: Grid, node_ids: Sequence[int]) -> None:
        self._grid = grid
        self._nodes = list(node_ids)

    @staticmethod
    def wrap(grid: Grid, node_ids: Sequence[int]) -> Grid:
        """The view, typed as the grid it stands for (the strategies only call ``get_node_ids`` on it)."""
        return SampledGrid(grid, node_ids)  # type: ignore[return-value]

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)
