"""Topic names and creation.

Every topic is created up front with its intended partition count: a Metadata
request for an unknown topic may auto-create it with the broker's default count
(docs/design.md, "Brokers"), which would break Faust's changelog co-partitioning.
"""

from __future__ import annotations

import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pipeline.settings import Settings

__all__ = ["DEDUP_TABLE", "changelog_topic", "ensure_topics", "required_topics"]

log = logging.getLogger(__name__)

DEDUP_TABLE = "dedup"


def changelog_topic(settings: Settings) -> str:
    return f"{settings.app_id}-{DEDUP_TABLE}-changelog"


def required_topics(settings: Settings) -> dict[str, int]:
    """Every topic the project uses, with its partition count."""
    n = settings.events_partitions
    return {
        settings.events_topic: n,
        settings.dlq_topic: n,
        changelog_topic(settings): n,
        f"{settings.app_id}-__assignor-__leader": 1,
    }


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create the topics that do not exist yet; return what was created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        request_timeout_ms=15000,
        **settings.kafka_security.aiokafka_kwargs(),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = {t: n for t, n in required_topics(settings).items() if t not in existing}
        if wanted:
            new = [
                NewTopic(name=t, num_partitions=n, replication_factor=settings.topic_replication)
                for t, n in wanted.items()
            ]
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent creator won
                await admin.create_topics(new)
        return wanted
    finally:
        await admin.close()
