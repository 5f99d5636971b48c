"""Shared test configuration.

Tests that need servers read their addresses from the same EXCHANGE_* environment
variables the services read; `make test` starts the servers (ops/stack.py, profile
"test") and exports them. Nothing here mocks a server.
"""

import os

os.environ.setdefault("EXCHANGE_PG_DSN", "postgresql://postgres@127.0.0.1:15432/exchange")
os.environ.setdefault("EXCHANGE_REDIS_URL", "redis://127.0.0.1:16379/0")
os.environ.setdefault("EXCHANGE_NATS_URL", "nats://127.0.0.1:14222")
os.environ.setdefault("EXCHANGE_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
