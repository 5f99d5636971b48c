"""Query service settings: read once from the environment into one typed object.

Everything the service needs to know about its surroundings is here; nothing else in
query_service reads os.environ. Tests build their own QuerySettings with `replace(...)`.
"""

from __future__ import annotations

import os
from typing import Mapping

import msgspec

from contracts.env import Login, SettingError, env_bool, env_choice, env_float, env_int, env_login, env_port
from contracts.instruments import instruments_file_setting
from contracts.topics import EVENTS_TOPIC

REDIS_CLUSTER_SCHEME = "redis+cluster://"  # query_service/redis_cluster.py
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", REDIS_CLUSTER_SCHEME)


def _redis_url(value: str) -> str:
    """One Redis (redis://, rediss://, unix://) or a Redis Cluster through any of its nodes
    (redis+cluster://host:port): the views' keys fit both (query_service/redis_keys.py)."""
    if not value.startswith(_REDIS_SCHEMES):
        raise SettingError("EXCHANGE_REDIS_URL", value, "redis://host:port/db or redis+cluster://host:port")
    return value


class QuerySettings(msgspec.Struct, frozen=True, kw_only=True):
    pg_dsn: str = "postgresql://postgres@127.0.0.1:5432/exchange"
    redis_url: str = "redis://127.0.0.1:6379/0"
    nats_url: str = "nats://127.0.0.1:4222"
    # The query service's NATS user (issue 20): it alone may publish the feed subjects the
    # /stream clients receive and send orders to the command nodes (ops/stack/servers.py nats_conf).
    nats_login: Login = Login("", "")
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic: str = EVENTS_TOPIC
    instruments_file: str | None = None
    auth_enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8002
    command_url: str = "http://127.0.0.1:8001"
    # Every command node (issue 14): the system health asks each one; default: command_url.
    command_urls: tuple[str, ...] = ()

    # Projector. Every replica joins the same consumer group (see projector.py for why).
    projector_enabled: bool = True
    kafka_group: str = "exchange-query-projector"
    # "latest": a new group (or one whose offsets the memory-only broker forgot) starts at
    # the end of the topic and catches up from the journal instead of replaying the topic.
    kafka_offset_reset: str = "latest"
    # Tansu joins a group in about half the session timeout: keep these low.
    kafka_session_timeout_ms: int = 4000
    kafka_heartbeat_interval_ms: int = 500
    kafka_rebalance_timeout_ms: int = 4000
    kafka_max_poll_records: int = 2000
    # How long the broker may hold a fetch open waiting for data. Tansu answers a fetch
    # only when this expires (it does not wake on new data), so it is a floor of the lag.
    # It is also the broker's CPU: Tansu costs ~0.4 ms of CPU per fetch, data or not (idle, two
    # replicas at 10 ms: 8.4 % of a core). 20 ms with the relay's 15 ms linger (issue 19):
    # broker CPU per acked order 170/142 -> 108/100 us, replicas 333/291 -> 264/240 us, relay
    # 73/72 -> 57/49 us (two runs each, 1,500/s offered), projection lag p50 still <= 50 ms.
    kafka_fetch_max_wait_ms: int = 20
    # Fetch on the relay's notices (relay/notices.py, on NATS) instead of asking the broker every
    # fetch wait; off = fetch continuously as before.
    kafka_fetch_on_notice: bool = True
    journal_chunk: int = 1000  # events per MULTI/EXEC when catching up from the journal
    watchdog_interval_s: float = 1.0  # journal-vs-views check (lag gauge, stalled/empty views)

    # Redis key prefix (all views live under it).
    redis_prefix: str = "q:"
    recent_trades: int = 1000
    fills_per_client: int = 10000
    # Retention (query_service/retention.py): closed orders and fills leave Redis after this
    # many seconds (0 = never); older history comes from PostgreSQL.
    retention_s: float = 86400.0
    retention_sweep_s: float = 10.0

    # Read API
    book_cache_max_age_s: float = 0.25  # how long a NATS-validated cached book may be served unchecked
    auth_cache_ttl_s: float = 30.0  # api key -> client cache; a revoked key stops working within this

    # WebSocket /stream
    ws_send_queue: int = 2000  # messages queued per connection before it is dropped as slow
    ws_heartbeat_s: float = 5.0
    order_request_timeout_s: float = 5.0
    # Per connection (issue 20): largest frame (uvicorn closes with 1009 beyond it, before
    # decoding), messages per second (burst 2x; beyond: too_many_messages and close 1008),
    # subscribes per second (burst 2x) and open (instrument, channel) subscriptions.
    ws_max_frame_bytes: int = 64 * 1024
    ws_messages_per_second: float = 200.0
    ws_subscribes_per_second: float = 10.0
    ws_max_subscriptions: int = 32

    # Read limiter: per API key, else per client address, on the REST routes and /stream
    # subscriptions; 0 turns it off (`make bench` runs with it off).
    read_rate_limit_per_second: float = 0.0
    read_rate_limit_burst: int = 200

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "QuerySettings":
        env = os.environ if env is None else env
        d = cls()

        def s(name: str, default: str) -> str:
            v = env.get(name)
            return v if v not in (None, "") else default

        def i(name: str, default: int) -> int:
            return env_int(name, default, env, minimum=0)

        def f(name: str, default: float) -> float:
            return env_float(name, default, env, minimum=0.0)

        def b(name: str, default: bool) -> bool:
            return env_bool(name, default, env)

        port = env_port("EXCHANGE_QUERY_PORT", d.port, env)
        return cls(
            pg_dsn=s("EXCHANGE_PG_DSN", d.pg_dsn),
            redis_url=_redis_url(s("EXCHANGE_REDIS_URL", d.redis_url)),
            nats_url=s("EXCHANGE_NATS_URL", d.nats_url),
            nats_login=env_login("EXCHANGE_NATS_QUERY_USER", "EXCHANGE_NATS_QUERY_PASSWORD", "query", env),
            kafka_bootstrap=s("EXCHANGE_KAFKA_BOOTSTRAP", d.kafka_bootstrap),
            kafka_topic=s("EXCHANGE_KAFKA_TOPIC", d.kafka_topic),
            instruments_file=instruments_file_setting(env),
            auth_enabled=s("EXCHANGE_AUTH", "enabled").strip().lower() not in ("disabled", "off", "0", "false"),
            host=s("EXCHANGE_HOST", d.host),
            port=port,
            command_url=s("EXCHANGE_COMMAND_URL", d.command_url).rstrip("/"),
            command_urls=tuple(u.strip().rstrip("/") for u in s("EXCHANGE_COMMAND_URLS", "").split(",") if u.strip()),
            projector_enabled=b("EXCHANGE_QUERY_PROJECTOR", d.projector_enabled),
            kafka_group=s("EXCHANGE_QUERY_GROUP", d.kafka_group),
            kafka_offset_reset=env_choice("EXCHANGE_QUERY_OFFSET_RESET", d.kafka_offset_reset, ("earliest", "latest"), env),
            kafka_session_timeout_ms=i("EXCHANGE_KAFKA_SESSION_TIMEOUT_MS", d.kafka_session_timeout_ms),
            kafka_heartbeat_interval_ms=i("EXCHANGE_KAFKA_HEARTBEAT_MS", d.kafka_heartbeat_interval_ms),
            kafka_rebalance_timeout_ms=i("EXCHANGE_KAFKA_REBALANCE_TIMEOUT_MS", d.kafka_rebalance_timeout_ms),
            kafka_max_poll_records=i("EXCHANGE_QUERY_MAX_POLL_RECORDS", d.kafka_max_poll_records),
            kafka_fetch_max_wait_ms=i("EXCHANGE_QUERY_FETCH_MAX_WAIT_MS", d.kafka_fetch_max_wait_ms),
            kafka_fetch_on_notice=b("EXCHANGE_QUERY_FETCH_ON_NOTICE", d.kafka_fetch_on_notice),
            journal_chunk=i("EXCHANGE_QUERY_JOURNAL_CHUNK", d.journal_chunk),
            watchdog_interval_s=f("EXCHANGE_QUERY_WATCHDOG_S", d.watchdog_interval_s),
            redis_prefix=s("EXCHANGE_QUERY_REDIS_PREFIX", d.redis_prefix),
            recent_trades=i("EXCHANGE_QUERY_RECENT_TRADES", d.recent_trades),
            fills_per_client=i("EXCHANGE_QUERY_FILLS_PER_CLIENT", d.fills_per_client),
            retention_s=f("EXCHANGE_QUERY_RETENTION_S", d.retention_s),
            retention_sweep_s=f("EXCHANGE_QUERY_RETENTION_SWEEP_S", d.retention_sweep_s),
            book_cache_max_age_s=f("EXCHANGE_QUERY_BOOK_CACHE_S", d.book_cache_max_age_s),
            auth_cache_ttl_s=f("EXCHANGE_QUERY_AUTH_CACHE_S", d.auth_cache_ttl_s),
            ws_send_queue=i("EXCHANGE_WS_SEND_QUEUE", d.ws_send_queue),
            ws_heartbeat_s=f("EXCHANGE_WS_HEARTBEAT_S", d.ws_heartbeat_s),
            order_request_timeout_s=f("EXCHANGE_WS_ORDER_TIMEOUT_S", d.order_request_timeout_s),
            ws_max_frame_bytes=env_int("EXCHANGE_WS_MAX_FRAME_BYTES", d.ws_max_frame_bytes, env, minimum=1024),
            ws_messages_per_second=f("EXCHANGE_WS_MESSAGES_PER_SECOND", d.ws_messages_per_second),
            ws_subscribes_per_second=f("EXCHANGE_WS_SUBSCRIBES_PER_SECOND", d.ws_subscribes_per_second),
            ws_max_subscriptions=env_int("EXCHANGE_WS_MAX_SUBSCRIPTIONS", d.ws_max_subscriptions, env, minimum=1),
            read_rate_limit_per_second=f("EXCHANGE_READ_RATE_LIMIT_PER_SECOND", d.read_rate_limit_per_second),
            read_rate_limit_burst=i("EXCHANGE_READ_RATE_LIMIT_BURST", d.read_rate_limit_burst),
        )

    @property
    def redis_cluster(self) -> bool:
        return self.redis_url.startswith(REDIS_CLUSTER_SCHEME)

    def replace(self, **changes) -> "QuerySettings":
        return msgspec.structs.replace(self, **changes)
