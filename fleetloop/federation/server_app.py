"""The server's side of a federation: a Flower ServerApp whose main runs the rounds.

A round (``federated_round``):

    vehicles online (wait at most ``node_wait_s``)  ->  seeded sample of ``sample_size``
    strategy.configure_train on a view of the grid holding only the sample  ->  send, wait ``round_timeout_s``
    late replies are stragglers: dropped, counted  ->  every reply screened (``validation``): bad ones dropped,
    counted  ->  fewer than ``min_replies`` valid: the global model stays  ->  strategy.aggregate_train
    ->  held-out evaluation on the server's own data  ->  ``RoundReport`` to the caller

Flower's ``Strategy.start`` is not used: it samples without a time limit, aggregates whatever arrives and ends
the run on one inconsistent reply, and it evaluates on the clients' own data. The strategies themselves (their
``configure_train`` / ``aggregate_train``) are Flower's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fleetloop.federation.records import array_record, numpy_arrays
from fleetloop.federation.sampling import SampledGrid, online_nodes, sample_round
from fleetloop.federation.task import PARENT_RECORD
from fleetloop.federation.validation import screen_replies

__all__ = ["RoundPlan", "RoundReport", "federated_round", "make_server_app"]

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class RoundPlan:
    """What every round of a run does (server side)."""

    expected_nodes: int
    """Vehicles the run started (the round waits for these to be online, at most ``node_wait_s``)."""
    sample_size: int
    min_replies: int
    round_timeout_s: float
    node_wait_s: float
    seed: int
    train_config: Callable[[], ConfigRecord]
    """A fresh ConfigRecord for a round's training messages (strategies add their keys to it)."""
    parent: Mapping[str, np.ndarray] | None = None
    """The weights the federation started from, sent beside the global ones as record ``parent`` (the vehicles'
    ``parent_anchor_weight``); None: not sent."""


@dataclass
class RoundReport:
    """What one round did."""

    server_round: int
    online: int
    sampled: int
    replies: int
    stragglers: int
    participants: list[int]
    """Vehicle ids whose replies were valid (all of them went to the strategy)."""
    dropped: dict[str, int]
    """Replies dropped by reason (``stragglers`` are counted apart)."""
    aggregated: bool
    reason: str = ""
    train_metrics: dict[str, float] = field(default_factory=dict)
    heldout: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values()) + self.stragglers


def federated_round(
    grid: Grid,
    strategy: Strategy,
    plan: RoundPlan,
    server_round: int,
    arrays: Mapping[str, np.ndarray],
    evaluate: Callable[[Mapping[str, np.ndarray]], dict[str, float]],
) -> tuple[Arrays, RoundReport]:
    """One round (see the module doc): the new global arrays (unchanged when the round could not aggregate) and
    its report."""
    t0 = time.perf_counter()
    current = dict(arrays)
    nodes = online_nodes(grid, plan.expected_nodes, plan.node_wait_s)
    report = RoundReport(server_round, len(nodes), 0, 0, 0, [], {}, aggregated=False)
    if len(nodes) < plan.min_replies:
        report.reason = f"only {len(nodes)} vehicle(s) online after {plan.node_wait_s:.0f} s, need {plan.min_replies}"
        report.heldout = evaluate(current)
        report.seconds = time.perf_counter() - t0
        return current, report
    sample = sample_round(nodes, plan.sample_size, plan.seed, server_round)
    record = array_record(current)
    messages = list(strategy.configure_train(server_round, record, plan.train_config(), SampledGrid.wrap(grid, sample)))
    if plan.parent is not None:
        parent = array_record(plan.parent)
        for m in messages:
            m.content[PARENT_RECORD] = parent
    replies = list(grid.send_and_receive(messages, timeout=plan.round_timeout_s))
    screened = screen_replies(replies, current)
    report.sampled = len(messages)
    report.replies = len(replies)
    report.stragglers = len(messages) - len(replies)
    report.participants = screened.vehicles
    report.dropped = dict(screened.dropped)
    if len(screened.valid) < plan.min_replies:
        report.reason = f"{len(screened.valid)} valid repl(ies), need {plan.min_replies}: the global model stays"
    else:
        new, metrics = strategy.aggregate_train(server_round, screened.valid)
        if new is None:
            report.reason = "the strategy declined to aggregate these replies (see its log): the global model stays"
        else:
            candidate = numpy_arrays(new)
            if all(np.isfinite(v).all() for v in candidate.values()):
                current = {k: np.asarray(v, dtype=current[k].dtype) for k, v in candidate.items()}
                report.aggregated = True
            else:
                report.reason = "the aggregate holds NaN or Inf: the global model stays"
        if metrics is not None:
            report.train_metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    report.heldout = evaluate(current)
    report.seconds = time.perf_counter() - t0
    return current, report


def make_server_app(main: Callable[[Grid, Context], Any]) -> ServerApp:
    """A ServerApp whose main is ``main(grid, context)`` (the round runner's loop over ``federated_round``)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        main(grid, context)

    return app


def finite_or_none(x: float) -> float | None:
    """``x``, or None where it is NaN / Inf (JSON and MLflow take no NaN)."""
    return x if math.isfinite(x) else None
