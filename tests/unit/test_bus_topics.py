"""The topic catalogue and the package's light import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fleetloop.platform.bus import DEAD_LETTER, PIPELINE_EVENTS, TELEMETRY, TOPICS, topic_named
from fleetloop.platform.errors import NotFoundError


def test_catalogue_names_every_topic_with_the_prefix() -> None:
    names = [t.name for t in TOPICS]
    assert len(set(names)) == len(names) == 8
    assert all(n.startswith("fleetloop.") for n in names)


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
