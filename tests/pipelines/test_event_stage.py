"""The event stages' pure part, list in / list out: a bad event fails alone, repeats are dropped, and Kafka stays
behind the platform's bus."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import pytest

from fleetloop.pipelines.event_stage import EventSink, EventStageReport, handle_isolated
from fleetloop.platform.bus import PIPELINE_EVENTS, DatasetSealed, Event, LabelsReady
from fleetloop.platform.bus.consumer import Delivery
from fleetloop.platform.errors import DataError, ServiceUnavailable

PACKAGE = Path(__file__).resolve().parents[2] / "fleetloop"


def sealed(dataset_id: str) -> DatasetSealed:
    return DatasetSealed(dataset_id=dataset_id, uri=f"file:///lake/{dataset_id}.parquet", n_frames=1)


def deliver(event: Event, offset: int) -> Delivery:
    return Delivery(PIPELINE_EVENTS.name, 0, offset, b"k", 1_700_000_000_000, event)


class Labeller:
    """Labels a batch; ``bad-*`` datasets are unreadable and fail the whole call, as label_pending would."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, events: Sequence[Event]) -> list[Event]:
        ids = [e.dataset_id for e in events if isinstance(e, DatasetSealed)]
        self.calls.append(ids)
        if any(i.startswith("bad") for i in ids):
            raise DataError("an unreadable segment")
        return [LabelsReady(dataset_id=i, labels_uri=f"file:///l/{i}", n_labelled=1) for i in ids]


def ids_of(events: Sequence[Event]) -> list[str]:
    return [e.dataset_id for e in events if isinstance(e, LabelsReady)]


@pytest.mark.parametrize("batched", [True, False])
def test_a_data_error_fails_only_its_event_and_the_others_outputs_go_on(batched: bool) -> None:
    events = [sealed("a"), sealed("bad"), sealed("c")]
    outputs, failed = handle_isolated(Labeller(), events, batched=batched)
    assert ids_of(outputs) == ["a", "c"]
    assert [(i, type(e)) for i, e in failed] == [(1, DataError)]


def test_a_batched_handler_gets_the_poll_in_one_call_when_nothing_fails() -> None:
    stage = Labeller()
    outputs, failed = handle_isolated(stage, [sealed("a"), sealed("b")], batched=True)
    assert stage.calls == [["a", "b"]] and ids_of(outputs) == ["a", "b"] and failed == []


def test_an_error_that_is_not_the_events_fault_propagates() -> None:
    def broken(events: Sequence[Event]) -> list[Event]:
        raise ServiceUnavailable("MLflow did not answer")

    with pytest.raises(ServiceUnavailable):
        handle_isolated(broken, [sealed("a"), sealed("b")], batched=True)


def test_the_sink_rejects_the_bad_delivery_drops_repeats_and_ignores_other_schemas() -> None:
    report = EventStageReport(stage="label")
    sink = EventSink(Labeller(), report, wants=("dataset.sealed",), events_topic=PIPELINE_EVENTS, batched=True)
    first = sealed("a")
    other = LabelsReady(dataset_id="x", labels_uri="file:///l/x", n_labelled=1)
    rejects = sink.take([deliver(first, 0), deliver(sealed("bad"), 1), deliver(other, 2), deliver(first, 3)])
    assert [(r.delivery.offset, r.reason) for r in rejects] == [(1, "DataError")]
    assert ids_of(sink.outputs) == ["a"]
    assert (report.events_in, report.events_handled, report.duplicates_dropped) == (3, 1, 1)


def test_no_module_outside_the_platform_imports_kafka() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "platform" in path.relative_to(PACKAGE).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.relative_to(PACKAGE)}: {n}" for n in names if n.split(".")[0] == "kafka"]
    assert offenders == [], "Kafka types stay behind fleetloop.platform.bus"
