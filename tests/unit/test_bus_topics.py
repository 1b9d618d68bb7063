"""The topic catalogue and the package's light import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fleetloop.platform.bus import DEAD_LETTER, PIPELINE_EVENTS, TELEMETRY, TOPICS, Topic, topic_named
from fleetloop.platform.bus.serde import DEFAULT_REGISTRY
from fleetloop.platform.errors import NotFoundError


def test_catalogue_names_every_topic_once_with_the_prefix() -> None:
    names = [t.name for t in TOPICS]
    assert len(set(names)) == len(names), f"a topic name appears twice: {names}"
    assert all(n.startswith("fleetloop.") for n in names), names


@pytest.mark.parametrize("topic", TOPICS, ids=lambda t: t.name)
def test_every_topic_has_a_schema_set_partitions_a_key_and_a_doc(topic: Topic) -> None:
    # Only the dead-letter topic accepts any bytes; every other topic names the schemas it carries.
    if topic is not DEAD_LETTER:
        assert topic.schemas, f"{topic.name} names no schema: a consumer could not tell a wrong record"
        assert all(isinstance(s, str) and s for s in topic.schemas), topic.schemas
    assert topic.partitions is None or topic.partitions >= 1, topic.partitions
    assert topic.partitions_for(3) >= 1
    assert topic.key, f"{topic.name} does not say what its message key is"
    assert topic.doc.strip(), f"{topic.name} has no doc line"
    assert topic.retention_ms > 0


def test_every_schema_the_bus_can_read_is_carried_by_a_topic() -> None:
    carried = set().union(*(t.schemas for t in TOPICS if t.schemas is not None))
    known = {name for name, _major in DEFAULT_REGISTRY.batches} | {name for name, _major in DEFAULT_REGISTRY.events}
    assert known <= carried, f"schemas no topic carries: {sorted(known - carried)}"


def test_ordered_topics_have_one_partition_and_vehicle_topics_follow_settings() -> None:
    assert PIPELINE_EVENTS.partitions_for(4) == 1 and DEAD_LETTER.partitions_for(4) == 1
    assert TELEMETRY.partitions_for(6) == 6


def test_unknown_topic_lists_the_known_ones() -> None:
    assert topic_named(TELEMETRY.name) is TELEMETRY
    with pytest.raises(NotFoundError, match=r"fleetloop\.telemetry"):
        topic_named("fleetloop.nope")


def test_importing_the_bus_does_not_import_kafka() -> None:
    code = "import sys, fleetloop.platform.bus as b; b.encode; assert 'kafka' not in sys.modules, 'kafka imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
