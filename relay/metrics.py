"""The relay's Prometheus metrics (own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RelayMetrics:
    """Own registry: importing the relay registers nothing globally."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.published = Counter(
            "relay_published_total", "Events acknowledged by the broker", registry=r
        )
        self.errors = Counter(
            "relay_errors_total", "Relay errors by stage", ["stage"], registry=r
        )
        self.lag_events = Gauge(
            "relay_lag_events", "Journal seq minus relay cursor", ["instrument"], registry=r
        )
        self.lag_seconds = Gauge(
            "relay_lag_seconds", "Age of the oldest unpublished journal event (max)", registry=r
        )
        self.is_leader = Gauge("relay_is_leader", "1 while this relay holds the lock", registry=r)
        self.kafka_up = Gauge("relay_kafka_up", "1 while the broker answers", registry=r)
        self.listening = Gauge(
            "relay_listening", "1 while the leader LISTENs for commits (0: rounds follow each other, busy)",
            registry=r)
        self.topic_partitions = Gauge(
            "relay_topic_partitions", "Partition count of the events topic", registry=r
        )
        self.journal_gap = Gauge(
            "relay_journal_gap",
            "1 while the relay holds at a hole in an instrument's seq",
            ["instrument"],
            registry=r,
        )
        self.batch_size = Histogram(
            "relay_batch_size",
            "Events per relay round",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000),
            registry=r,
        )
        self.publish_seconds = Histogram(
            "relay_publish_seconds",
            "Time from sending a round to all its acknowledgements",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.topic_generation = Gauge(
            "relay_topic_generation", "Topic generation being written (0 = fixed topic)", registry=r
        )
        self.topic_rolls = Counter("relay_topic_rolls_total", "Moves to a new topic generation", registry=r)
        self.topic_deletes = Counter(
            "relay_topic_generations_deleted_total", "Old topic generations deleted", registry=r
        )
