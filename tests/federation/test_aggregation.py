"""Aggregation behind reply screening: FedAvg against a numpy oracle, and bad replies dropped and counted, never
fatal (a whole round of Flower's strategies would otherwise fail on one inconsistent reply)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian

from fleetloop.federation.config import RoundsConfig
from fleetloop.federation.server_app import RoundPlan, federated_round
from fleetloop.federation.strategies import build_strategy
from fleetloop.federation.validation import ReplyRejected, check_reply, screen_replies

RNG = np.random.default_rng(7)
GLOBAL = {"w": RNG.normal(size=(3, 4)).astype(np.float32), "b": RNG.normal(size=(4,)).astype(np.float32)}


def reply(arrays: dict[str, np.ndarray], metrics: dict[str, float], extra: RecordDict | None = None) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}), "metrics": MetricRecord(metrics)}
    )
    for k, v in (extra or {}).items():
        content[k] = v
    return Message(content=content, dst_node_id=1, message_type="train")


def update(seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    return {k: (v + r.normal(size=v.shape)).astype(np.float32) for k, v in GLOBAL.items()}


def test_fedavg_equals_the_numpy_weighted_average_by_num_examples() -> None:
    ups = [update(s) for s in range(4)]
    n = [10, 250, 3, 77]
    replies = [reply(u, {"num-examples": k, "vehicle-id": i}) for i, (u, k) in enumerate(zip(ups, n, strict=True))]
    screened = screen_replies(replies, GLOBAL)
    strategy = build_strategy(RoundsConfig(strategy="fedavg"), 4)
    arrays, metrics = strategy.aggregate_train(1, screened.valid)
    assert arrays is not None and metrics is not None
    for k in GLOBAL:
        oracle = np.average(np.stack([u[k] for u in ups]), axis=0, weights=n)
        np.testing.assert_allclose(arrays[k].numpy(), oracle, rtol=1e-5, atol=1e-6)
    assert metrics["num-examples"] == sum(n)
    assert "vehicle-id" not in metrics  # an identifier is never averaged
    assert screened.vehicles == [0, 1, 2, 3]


def test_fedmedian_equals_the_numpy_coordinatewise_median() -> None:
    ups = [update(s) for s in range(5)]
    replies = [reply(u, {"num-examples": 5}) for u in ups]
    arrays, _ = build_strategy(RoundsConfig(strategy="fedmedian"), 5).aggregate_train(1, replies)
    assert arrays is not None
    for k in GLOBAL:
        np.testing.assert_allclose(arrays[k].numpy(), np.median(np.stack([u[k] for u in ups]), axis=0), rtol=1e-6)


def bad_replies() -> dict[str, Message]:
    return {
        "missing num-examples": reply(update(1), {"vehicle-id": 3}),
        "non-finite array": reply({**update(2), "w": np.full((3, 4), np.nan, np.float32)}, {"num-examples": 5}),
        "array keys differ": reply({"w": update(3)["w"]}, {"num-examples": 5}),
        "array shape or dtype differs": reply({**update(4), "b": np.zeros(5, np.float32)}, {"num-examples": 5}),
        "not one ArrayRecord": reply(update(5), {"num-examples": 5}, RecordDict({"more": ArrayRecord()})),
        "not one MetricRecord": reply(update(6), {"num-examples": 5}, RecordDict({"m2": MetricRecord({"x": 1.0})})),
        "unexpected ConfigRecord": reply(update(7), {"num-examples": 5}, RecordDict({"c": ConfigRecord({"x": 1})})),
        "unknown metrics": reply(update(8), {"num-examples": 5, "position-m": 1234.5}),
        "non-finite metric": reply(update(9), {"num-examples": 5, "train-loss-last": float("nan")}),
        "non-positive num-examples": reply(update(10), {"num-examples": 0}),
    }


REASONS = (
    "missing num-examples",
    "non-finite array",
    "array keys differ",
    "array shape or dtype differs",
    "not one ArrayRecord",
    "not one MetricRecord",
    "unexpected ConfigRecord",
    "unknown metrics",
    "non-finite metric",
    "non-positive num-examples",
)


@pytest.mark.parametrize("reason", REASONS)
def test_a_malformed_reply_is_rejected_with_its_reason(reason: str) -> None:
    with pytest.raises(ReplyRejected, match=reason):
        check_reply(bad_replies()[reason].content, GLOBAL)


def test_bad_replies_are_dropped_and_counted_and_the_rest_aggregate_as_if_they_were_not_there() -> None:
    good = [update(s) for s in (20, 21, 22)]
    n = [4, 5, 6]
    bad = bad_replies()
    replies = [reply(u, {"num-examples": k}) for u, k in zip(good, n, strict=True)] + list(bad.values())
    screened = screen_replies(replies, GLOBAL)
    assert len(screened.valid) == 3
    assert screened.dropped == dict.fromkeys(bad, 1)
    arrays, _ = FedAvg(fraction_evaluate=0.0).aggregate_train(1, screened.valid)
    assert arrays is not None
    np.testing.assert_allclose(
        arrays["w"].numpy(), np.average(np.stack([u["w"] for u in good]), axis=0, weights=n), rtol=1e-5
    )


def test_unscreened_flower_fedmedian_gives_up_on_the_whole_round_for_one_bad_reply() -> None:
    # Why screening exists: Flower's own consistency check raises for the round.
    from flwr.serverapp.exception import InconsistentMessageReplies

    replies = [reply(update(1), {"num-examples": 5}), bad_replies()["missing num-examples"]]
    with pytest.raises(InconsistentMessageReplies):
        FedMedian(fraction_evaluate=0.0).aggregate_train(1, replies)


class ScriptedGrid:
    """Nodes answer with prepared replies (by node); ``late`` nodes never answer in time."""

    def __init__(self, answers: dict[int, Message | None]) -> None:
        self.answers = answers

    def get_node_ids(self) -> list[int]:
        return list(self.answers)

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        return [a for m in messages if (a := self.answers[m.metadata.dst_node_id]) is not None]


def plan(nodes: int, min_replies: int = 2) -> RoundPlan:
    return RoundPlan(nodes, nodes, min_replies, 1.0, 0.0, 0, lambda: ConfigRecord())


def test_a_round_drops_stragglers_and_bad_replies_and_aggregates_the_rest() -> None:
    ups = {1: update(31), 2: update(32), 3: update(33)}
    answers: dict[int, Message | None] = {i: reply(u, {"num-examples": 10, "vehicle-id": i}) for i, u in ups.items()}
    answers[4] = bad_replies()["non-finite array"]
    answers[5] = None  # a straggler
    strategy = build_strategy(RoundsConfig(strategy="fedavg"), 5)
    arrays, report = federated_round(ScriptedGrid(answers), strategy, plan(5), 1, GLOBAL, lambda a: {})
    assert report.aggregated and report.stragglers == 1 and report.dropped == {"non-finite array": 1}
    assert sorted(report.participants) == [1, 2, 3] and report.dropped_total == 2
    np.testing.assert_allclose(arrays["b"], np.mean([u["b"] for u in ups.values()], axis=0), rtol=1e-5)


def test_a_round_with_too_few_valid_replies_keeps_the_global_model() -> None:
    answers: dict[int, Message | None] = {1: reply(update(1), {"num-examples": 3}), 2: bad_replies()["unknown metrics"]}
    strategy = build_strategy(RoundsConfig(strategy="fedavg"), 2)
    arrays, report = federated_round(ScriptedGrid(answers), strategy, plan(2), 1, GLOBAL, lambda a: {})
    assert not report.aggregated and "need 2" in report.reason
    assert all(np.array_equal(arrays[k], GLOBAL[k]) for k in GLOBAL)
