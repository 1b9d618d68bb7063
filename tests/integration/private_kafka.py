"""A broker of a test's own, which the test may stop and restart without disturbing the session's broker; and topics
of a test's own on any broker."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

from fleetloop.platform import launcher
from fleetloop.platform.bus.admin import ensure_topics
from fleetloop.platform.bus.topics import Topic
from fleetloop.platform.services.kafka import SPEC as KAFKA
from fleetloop.platform.settings import Settings
from tests.conftest import free_port


@contextlib.contextmanager
def private_kafka(stack_settings: Settings, state_dir: Path) -> Iterator[Settings]:
    """Start Kafka on free ports under ``state_dir``; yield its settings; stop it on the way out.

    Restart it inside with ``launcher.down(s, [KAFKA])`` then ``launcher.up(s, [KAFKA])``: topics, offsets and
    records survive (same state directory)."""
    private = stack_settings.model_copy(
        update={
            "state_dir": state_dir,
            "kafka_port": free_port(),
            "kafka_controller_port": free_port(),
            "kafka_bootstrap": None,
        }
    )
    launcher.up(private, [KAFKA])
    try:
        yield private
    finally:
        launcher.down(private, [KAFKA])


def private_topic(topic: Topic, role: str = "test", tag: str = "") -> Topic:
    """A private copy of a catalogue topic, ``<topic>.<role>-<tag>`` (a fresh tag unless given), so tests sharing
    a broker do not see each other's records."""
    return dataclasses.replace(topic, name=f"{topic.name}.{role}-{tag or uuid.uuid4().hex[:8]}")


def private_topics(settings: Settings, *roles: tuple[Topic, str]) -> list[Topic]:
    """Private copies (one tag for the set) of the catalogue topics in ``roles`` (topic, role), created on the
    broker of ``settings``."""
    tag = uuid.uuid4().hex[:8]
    topics = [private_topic(topic, role, tag) for topic, role in roles]
    ensure_topics(settings, topics)
    return topics
