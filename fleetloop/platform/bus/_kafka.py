"""Shared glue for the modules that talk to Kafka: where the broker is, and how its errors map to ours."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fleetloop.platform.errors import ServiceUnavailable
from fleetloop.platform.settings import Settings

__all__ = ["BrokerTarget", "bootstrap_of", "kafka_errors_as_ours"]

BrokerTarget = Settings | str  # validated settings, or a "host:port[,host:port]" bootstrap string


def bootstrap_of(target: BrokerTarget) -> str:
    """The bootstrap servers of ``target``."""
    return target.bootstrap_servers if isinstance(target, Settings) else target


@contextlib.contextmanager
def kafka_errors_as_ours(what: str, bootstrap: str) -> Iterator[None]:
    """Turn kafka-python's unreachable-broker errors into ``ServiceUnavailable`` with a hint."""
    # kafka-python 3.0 reports an unreachable bootstrap as KafkaTimeoutError (NoBrokersAvailable is gone).
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    try:
        yield
    except (KafkaConnectionError, KafkaTimeoutError) as e:
        raise ServiceUnavailable(
            f"{what}: Kafka at {bootstrap} did not answer ({type(e).__name__}: {e}); "
            "start it with `fleetloop up` or point FLEETLOOP_KAFKA_BOOTSTRAP at a running broker"
        ) from e
