"""The admin step: create the catalogue's topics, idempotently (``fleetloop up`` runs it once Kafka is healthy)."""

from __future__ import annotations

from collections.abc import Sequence

from fleetloop.platform.bus._kafka import bootstrap_of, kafka_errors_as_ours
from fleetloop.platform.bus.topics import TOPICS, Topic
from fleetloop.platform.errors import ServiceUnavailable
from fleetloop.platform.settings import Settings

__all__ = ["describe_topics", "ensure_topics"]

_TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code


def ensure_topics(settings: Settings, topics: Sequence[Topic] = TOPICS, timeout_s: float = 30.0) -> list[str]:
    """Create each topic of ``topics`` that does not exist yet and wait until every one has a leader.

    Returns the names created (empty when all existed). Existing topics are left as they are, even with
    a different partition count: repartitioning would move vehicles' keys between partitions."""
    from kafka import KafkaAdminClient

    bootstrap = bootstrap_of(settings)
    timeout_ms = int(timeout_s * 1000)
    with kafka_errors_as_ours("creating topics", bootstrap):
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="fleetloop-admin", request_timeout_ms=timeout_ms
        )
        try:
            existing = set(admin.list_topics())
            wanted = {
                t.name: {
                    "num_partitions": t.partitions_for(settings.kafka_partitions),
                    "replication_factor": -1,  # the broker's default: 1 on the local node, more on a cluster
                    "configs": {"retention.ms": str(t.retention_ms)},
                }
                for t in topics
                if t.name not in existing
            }
            created: list[str] = []
            if wanted:
                result = admin.create_topics(wanted, timeout_ms=timeout_ms, raise_errors=False)
                for r in result["topics"]:
                    code = r.get("error_code", 0)
                    if code == 0:
                        created.append(r["name"])
                    elif code != _TOPIC_ALREADY_EXISTS:  # lost a race with another `up`: fine
                        raise ServiceUnavailable(
                            f"Kafka at {bootstrap} refused to create {r['name']}: error {code} "
                            f"{r.get('error_message') or ''}; check the broker log"
                        )
            admin.wait_for_topics([t.name for t in topics], timeout_ms=timeout_ms)
        finally:
            admin.close()
    return sorted(created)


def describe_topics(settings: Settings, topics: Sequence[Topic] = TOPICS) -> dict[str, int]:
    """Partition count of each catalogue topic that exists (for ``fleetloop status``)."""
    from kafka import KafkaAdminClient

    bootstrap = bootstrap_of(settings)
    with kafka_errors_as_ours("describing topics", bootstrap):
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fleetloop-admin")
        try:
            described = admin.describe_topics([t.name for t in topics])
        finally:
            admin.close()
    return {d["name"]: len(d.get("partitions") or []) for d in described if d.get("error_code", 0) == 0}
