"""Idempotent creation of the events topic with the partition count we want.

Why explicit creation matters here: the embedded broker (Tansu) auto-creates any topic a
client merely *names* in a metadata request (a producer's first send, even the admin's
describe_topics) with 4 partitions. So this module only ever asks for the metadata of ALL
topics (which names none and creates nothing) and creates the topic itself. It must run
before any producer or consumer touches the topic - at start-up, and again after the
broker restarted empty (memory storage).

`python -m relay.topic` does the same from the shell (the stack script).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from contracts.topics import EVENTS_TOPIC, EVENTS_TOPIC_PARTITIONS

log = logging.getLogger("exchange.relay.topic")

TOPIC_ALREADY_EXISTS = 36  # Kafka error code; create_topics returns it instead of raising


class TopicError(RuntimeError):
    pass


async def topic_partitions(admin: AIOKafkaAdminClient, topic: str) -> int | None:
    """Partition count of `topic`, or None if it does not exist, WITHOUT creating it."""
    metadata = await admin._client.fetch_all_metadata()  # all topics: names none, creates none
    partitions = metadata.partitions_for_topic(topic)
    return None if partitions is None else len(partitions)


async def ensure_topic(
    bootstrap: str,
    topic: str = EVENTS_TOPIC,
    partitions: int = EVENTS_TOPIC_PARTITIONS,
    replication_factor: int = 1,
    timeout_s: float = 10.0,
    retention_ms: int = 0,
) -> int:
    """Create `topic` with `partitions` unless it exists. Returns its partition count.

    An existing topic with records is left alone even if its partition count differs (we only
    log it): adding partitions would move keys to other partitions while older events of the
    same instrument still sit in the old one, and consumers would then see them out of order.
    An EMPTY one with another count was auto-created by a client (see above): it is recreated.
    Raises KafkaError (or TopicError) if the broker cannot be reached or refuses.
    """

    async def run() -> int:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
        )
        await admin.start()
        try:
            for _attempt in range(RECREATE_ATTEMPTS):
                existing = await topic_partitions(admin, topic)
                if existing is None:
                    await _create(admin, topic, partitions, replication_factor, timeout_s, retention_ms)
                    existing = await topic_partitions(admin, topic)
                    if existing is None:
                        raise TopicError(f"topic {topic} still missing after create")
                if existing == partitions:
                    return existing
                if not await _is_empty(bootstrap, topic, existing):
                    log.warning(
                        "topic %s has %d partitions, wanted %d (left as is)", topic, existing, partitions
                    )
                    return existing
                # Issue 20: after a broker restart a projector's consumer named the topic first,
                # and the broker auto-created it with its default (4); nothing was written to it
                # yet, so nothing can be reordered: recreate it with the configured count.
                log.warning("topic %s was auto-created with %d partitions and is empty: recreating it with %d",
                            topic, existing, partitions)
                await admin.delete_topics([topic], timeout_ms=int(timeout_s * 1000))
                await asyncio.sleep(0.1)
            existing = await topic_partitions(admin, topic)
            if existing is None:
                raise TopicError(f"topic {topic} missing after {RECREATE_ATTEMPTS} attempts")
            log.warning("topic %s has %d partitions, wanted %d (clients recreate it faster than we do)",
                        topic, existing, partitions)
            return existing
        finally:
            await admin.close()

    return await asyncio.wait_for(run(), timeout_s * 2)


RECREATE_ATTEMPTS = 5


async def _create(admin: AIOKafkaAdminClient, topic: str, partitions: int, replication_factor: int,
                  timeout_s: float, retention_ms: int) -> None:
    # Apache Kafka (compose) bounds the topic by retention; Tansu has none, the relay rolls
    # generations there instead (relay/generations.py).
    configs = {"retention.ms": str(retention_ms)} if retention_ms > 0 else {}
    response = await admin.create_topics(
        [NewTopic(topic, partitions, replication_factor, topic_configs=configs)],
        timeout_ms=int(timeout_s * 1000),
    )
    for name, code, message, *_ in response.topic_errors:
        if code not in (0, TOPIC_ALREADY_EXISTS):  # a racing creator is fine
            raise TopicError(f"create topic {name}: error {code} {message}")
        if code == 0:
            log.info("created topic %s with %d partitions", name, partitions)


async def _is_empty(bootstrap: str, topic: str, partitions: int) -> bool:
    """No record was ever written to any partition of `topic` (it exists: naming it is safe)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return all(v == 0 for v in ends.values())
    finally:
        await consumer.stop()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    bootstrap = os.environ.get("EXCHANGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    topic = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EXCHANGE_KAFKA_TOPIC", EVENTS_TOPIC)
    try:
        count = asyncio.run(ensure_topic(bootstrap, topic))
    except (KafkaError, TopicError, OSError, asyncio.TimeoutError) as exc:
        print(f"relay.topic: {topic} on {bootstrap}: {exc!r}", file=sys.stderr)
        sys.exit(1)
    print(f"relay.topic: {topic} on {bootstrap}: {count} partitions")


if __name__ == "__main__":
    main()
