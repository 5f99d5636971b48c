"""The relay's settings, read from the environment once (RelaySettings.from_env)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from contracts.env import Login, env_int, env_login, env_port
from contracts.topics import EVENTS_TOPIC, EVENTS_TOPIC_PARTITIONS
from relay.leader import RELAY_LOCK_KEY


def _env_int(name: str, default: int) -> int:
    return env_int(name, default, minimum=0)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)


@dataclass(frozen=True)
class RelaySettings:
    pg_dsn: str = "postgresql://postgres@127.0.0.1:5432/exchange"
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic: str = EVENTS_TOPIC
    topic_partitions: int = EVENTS_TOPIC_PARTITIONS
    host: str = "127.0.0.1"
    metrics_port: int = 8011  # 0 = no metrics/health server
    batch_size: int = 5000  # max rows per instrument per round
    max_batch_bytes: int = 1_000_000  # one record batch; below Kafka's default message.max.bytes
    # After a wake-up, wait this long so one round carries more commits. Every round is one
    # produce request, ~1 ms of the broker's CPU whatever its size (Tansu, memory storage), plus
    # a fetch and a cursor upsert in PostgreSQL: 5 -> 15 ms took the rounds at ~1,100 orders/s from
    # ~60/s to ~36/s (issue 19; figures with the projector's fetch wait in query_service/settings.py).
    linger_ms: int = 15
    poll_ms: int = 200  # fallback when no NOTIFY arrives
    topic_check_ms: int = 1000  # how often the leader checks the topic still exists
    send_timeout_ms: int = 10_000  # a round not acknowledged by then counts as failed
    backoff_min_ms: int = 100
    backoff_max_ms: int = 5_000
    lock_key: int = RELAY_LOCK_KEY
    # Rolling topic generations (relay/generations.py): 0 = one fixed topic (Apache Kafka,
    # which has retention); > 0 = move to <topic>.g<N+1> every this many seconds.
    topic_roll_s: float = 0.0
    topic_keep_s: float = 300.0  # a sealed generation is deleted after this even if a group lags
    topic_retention_ms: int = 0  # > 0: retention.ms of the topic the relay creates (Kafka)
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # Where the relay announces each acknowledged round (contracts.topics.RELAYED_SUBJECT); "" = no
    # notices (the projectors then fetch continuously).
    nats_url: str = "nats://127.0.0.1:4222"
    nats_login: Login = field(default_factory=lambda: Login("", ""))

    @classmethod
    def from_env(cls) -> "RelaySettings":
        d = cls()
        e = os.environ
        return cls(
            pg_dsn=e.get("EXCHANGE_PG_DSN") or d.pg_dsn,
            kafka_bootstrap=e.get("EXCHANGE_KAFKA_BOOTSTRAP") or d.kafka_bootstrap,
            topic=e.get("EXCHANGE_KAFKA_TOPIC") or d.topic,
            topic_partitions=_env_int("EXCHANGE_KAFKA_TOPIC_PARTITIONS", d.topic_partitions),
            host=e.get("EXCHANGE_HOST") or d.host,
            metrics_port=env_port("EXCHANGE_RELAY_METRICS_PORT", d.metrics_port),
            batch_size=_env_int("EXCHANGE_RELAY_BATCH_SIZE", d.batch_size),
            max_batch_bytes=_env_int("EXCHANGE_RELAY_MAX_BATCH_BYTES", d.max_batch_bytes),
            linger_ms=_env_int("EXCHANGE_RELAY_LINGER_MS", d.linger_ms),
            poll_ms=_env_int("EXCHANGE_RELAY_POLL_MS", d.poll_ms),
            topic_check_ms=_env_int("EXCHANGE_RELAY_TOPIC_CHECK_MS", d.topic_check_ms),
            send_timeout_ms=_env_int("EXCHANGE_RELAY_SEND_TIMEOUT_MS", d.send_timeout_ms),
            backoff_min_ms=_env_int("EXCHANGE_RELAY_BACKOFF_MIN_MS", d.backoff_min_ms),
            backoff_max_ms=_env_int("EXCHANGE_RELAY_BACKOFF_MAX_MS", d.backoff_max_ms),
            lock_key=env_int("EXCHANGE_RELAY_LOCK_KEY", d.lock_key),
            name=e.get("EXCHANGE_RELAY_NAME") or d.name,
            topic_roll_s=_env_float("EXCHANGE_TOPIC_ROLL_S", d.topic_roll_s),
            topic_keep_s=_env_float("EXCHANGE_TOPIC_KEEP_S", d.topic_keep_s),
            topic_retention_ms=_env_int("EXCHANGE_KAFKA_TOPIC_RETENTION_MS", d.topic_retention_ms),
            nats_url=e.get("EXCHANGE_NATS_URL", d.nats_url),
            nats_login=env_login("EXCHANGE_NATS_RELAY_USER", "EXCHANGE_NATS_RELAY_PASSWORD", "relay"),
        )

