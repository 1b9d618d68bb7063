"""A broker of a test's own, which the test may stop and restart without disturbing the session's broker."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from fleetloop.platform import launcher
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
