"""Command service configuration: read from the environment once, into one object."""

from __future__ import annotations

import os
import socket

import msgspec

from contracts.env import Login, SettingError, env_bool, env_float, env_int, env_login, env_port
from contracts.instruments import instruments_file_setting


def _int(name: str, default: int) -> int:
    return env_int(name, default, minimum=0)


def _float(name: str, default: float) -> float:
    return env_float(name, default, minimum=0.0)


def _node_id(value: str) -> str:
    value = value.strip()
    # 36: the node id and its process's incarnation must fit PostgreSQL's application_name (63 bytes;
    # command_service/lock_session.session_name), which is how every node's sessions are told apart.
    if not value:
        return f"{socket.gethostname()[:28]}-{os.getpid()}"[:36]
    if len(value) > 36 or not all(c.isalnum() or c in "-_." for c in value):
        raise SettingError("EXCHANGE_NODE_ID", value, "up to 36 letters, digits, '-', '_' or '.'")
    return value


class CommandSettings(msgspec.Struct, frozen=True):
    pg_dsn: str
    kafka_bootstrap: str
    kafka_topic: str
    nats_url: str
    # The command nodes' NATS user (issue 20): it alone may answer forwarded orders and publish
    # the node-to-node command subjects (ops/stack/servers.py nats_conf, compose nats.conf).
    nats_login: Login
    instruments_file: str | None
    host: str
    port: int
    auth_enabled: bool
    # Per API key token bucket; 0 turns a limit off (benchmarks say which they used).
    rate_limit_per_second: float
    rate_limit_burst: int
    max_body_bytes: int
    # Group commit: a batch takes whatever is queued, up to this many commands.
    max_batch: int
    # Take an engine snapshot after this many journal events (0 = only on request).
    snapshot_every_events: int
    pg_pool_size: int
    book_levels_in_response: int
    nats_enabled: bool
    # Order and trade event lines (logger exchange.orders, INFO): 1 = every event, N = the events
    # of every Nth committed batch, 0 = none. Measured cost in README (operations).
    log_order_events: int = 10
    # Group commit linger (issue 19): before each commit the node's lock session waits this long
    # for more commands (of any instrument; the sequencers keep filling the queued batches), but
    # only while fewer than EXCHANGE_MAX_BATCH commands wait and at least half a command more is
    # expected in that time (0 = never wait). See LockSession._linger.
    commit_linger_us: int = 2000
    # Growth bounds (issue 18): idempotency keys answer replays this long; snapshots kept per
    # instrument; how often the housekeeping task deletes expired idempotency rows.
    idempotency_ttl_s: float = 86400.0
    snapshots_keep: int = 3
    housekeeping_s: float = 60.0
    # Closed orders per instrument kept in memory to answer a cancel/amend racing a fill without
    # a database read (between this and twice this many); older ones are read from PostgreSQL.
    recently_closed_keep: int = 8192
    # Before authentication (issue 20): requests whose API key fails to authenticate are limited
    # per client address (each unknown key costs a PostgreSQL lookup); the address is the peer's,
    # or X-Real-IP when the peer is one of the trusted proxies (the gateway).
    unauth_rate_limit_per_second: float = 5.0
    unauth_rate_limit_burst: int = 20
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    # Pre-trade risk (issue 20): most open orders (resting + pending stops) per client and
    # instrument (0 = no limit). The order notional and net position limits are per instrument
    # (config/instruments.json: max_order_notional, max_position).
    max_open_orders: int = 1000
    # API key -> client cache: a revoked key stops working within this; its open /ws sessions
    # within this + contracts.auth.SESSION_RECHECK_S.
    auth_cache_ttl_s: float = 30.0
    # Nodes (issue 14, command_service/nodes.py): this node's id (default: host and pid, unique
    # per process), how often it heartbeats, and after how long without a heartbeat a node counts
    # as gone (its instruments are taken over; a frozen holder's session is terminated).
    node_id: str = ""
    node_heartbeat_s: float = 1.0
    node_lease_s: float = 5.0
    # A forwarded command gets the owner's answer within this, or 503 with Retry-After.
    forward_timeout_s: float = 3.0

    @classmethod
    def from_env(cls) -> "CommandSettings":
        env = os.environ.get
        return cls(
            pg_dsn=env("EXCHANGE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/exchange"),
            kafka_bootstrap=env("EXCHANGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            kafka_topic=env("EXCHANGE_KAFKA_TOPIC", "exchange.events"),
            nats_url=env("EXCHANGE_NATS_URL", "nats://127.0.0.1:4222"),
            nats_login=env_login("EXCHANGE_NATS_COMMAND_USER", "EXCHANGE_NATS_COMMAND_PASSWORD", "command"),
            instruments_file=instruments_file_setting(),
            host=env("EXCHANGE_HOST", "127.0.0.1"),
            port=env_port("EXCHANGE_COMMAND_PORT", 8001),
            auth_enabled=env("EXCHANGE_AUTH", "enabled").lower() not in ("disabled", "off", "0", "false"),
            rate_limit_per_second=_float("EXCHANGE_RATE_LIMIT_PER_SECOND", 200.0),
            rate_limit_burst=_int("EXCHANGE_RATE_LIMIT_BURST", 400),
            max_body_bytes=_int("EXCHANGE_MAX_BODY_BYTES", 16 * 1024),
            max_batch=env_int("EXCHANGE_MAX_BATCH", 512, minimum=1),
            commit_linger_us=env_int("EXCHANGE_COMMIT_LINGER_US", 2000, minimum=0),
            snapshot_every_events=_int("EXCHANGE_SNAPSHOT_EVERY_EVENTS", 100_000),
            pg_pool_size=env_int("EXCHANGE_PG_POOL_SIZE", 8, minimum=1),
            book_levels_in_response=_int("EXCHANGE_BOOK_LEVELS_IN_RESPONSE", 10),
            nats_enabled=env_bool("EXCHANGE_NATS_ENABLED", True),
            log_order_events=env_int("EXCHANGE_LOG_ORDER_EVENTS", 10, minimum=0),
            idempotency_ttl_s=_float("EXCHANGE_IDEMPOTENCY_TTL_S", 86400.0),
            snapshots_keep=_int("EXCHANGE_SNAPSHOTS_KEEP", 3),
            housekeeping_s=_float("EXCHANGE_HOUSEKEEPING_S", 60.0),
            recently_closed_keep=env_int("EXCHANGE_RECENTLY_CLOSED_KEEP", 8192, minimum=1),
            unauth_rate_limit_per_second=_float("EXCHANGE_UNAUTH_RATE_LIMIT_PER_SECOND", 5.0),
            unauth_rate_limit_burst=env_int("EXCHANGE_UNAUTH_RATE_LIMIT_BURST", 20, minimum=1),
            trusted_proxies=tuple(a.strip() for a in env("EXCHANGE_TRUSTED_PROXIES", "127.0.0.1,::1").split(",")
                                  if a.strip()),
            max_open_orders=_int("EXCHANGE_MAX_OPEN_ORDERS", 1000),
            auth_cache_ttl_s=_float("EXCHANGE_COMMAND_AUTH_CACHE_S", 30.0),
            node_id=_node_id(env("EXCHANGE_NODE_ID", "")),
            node_heartbeat_s=env_float("EXCHANGE_NODE_HEARTBEAT_S", 1.0, minimum=0.05),
            node_lease_s=env_float("EXCHANGE_NODE_LEASE_S", 5.0, minimum=0.5),
            forward_timeout_s=env_float("EXCHANGE_FORWARD_TIMEOUT_S", 3.0, minimum=0.1),
        )
