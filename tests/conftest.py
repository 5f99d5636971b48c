"""Shared test configuration.

Tests that need servers read their addresses from the same EXCHANGE_* environment
variables the services read; `make test` starts the servers (ops/stack, profile
"test") and exports them. Nothing here mocks a server.
"""

import os


def _stack_defaults() -> None:
    """Without `make test` (pytest run by hand against servers `python -m ops.stack up --profile test
    --servers-only` started): the test profile's addresses and internal credentials (issue 20: the
    servers refuse clients without them), from the same place `make test` takes them."""
    from ops import stack

    env = stack.exchange_env(stack.config("test"))
    for key in ("EXCHANGE_PG_DSN", "EXCHANGE_REDIS_URL", "EXCHANGE_NATS_URL", "EXCHANGE_KAFKA_BOOTSTRAP",
                "EXCHANGE_NATS_COMMAND_USER", "EXCHANGE_NATS_COMMAND_PASSWORD",
                "EXCHANGE_NATS_QUERY_USER", "EXCHANGE_NATS_QUERY_PASSWORD",
                "EXCHANGE_NATS_RELAY_USER", "EXCHANGE_NATS_RELAY_PASSWORD"):
        os.environ.setdefault(key, env[key])


_stack_defaults()


_ORDER = ("tests/unit/", "tests/integration/", "tests/e2e/", "tests/fuzz/", "tests/chaos/")


def pytest_collection_modifyitems(session, config, items):
    """Unit, then integration, then the whole-system tests. The e2e system fixture is
    session-scoped and holds the sequencer locks and relay cursors of the test database,
    so it must only start once the integration tests (which run their own services) are done."""

    def rank(item):
        path = str(item.path.relative_to(config.rootpath)) if item.path.is_relative_to(config.rootpath) else ""
        return next((i for i, prefix in enumerate(_ORDER) if path.startswith(prefix)), len(_ORDER))

    items.sort(key=rank)  # stable: keeps the file and definition order within each group


# --------------------------------------------------------------- WebSocket message conformance
# Every frame sent to or received from /ws and /stream must be a message of the AsyncAPI
# document (tests/ws_conformance.py); a test that saw one that is not fails at teardown.
import pytest  # noqa: E402

from tests import ws_conformance  # noqa: E402

ws_conformance.install()


def pytest_configure(config):
    config.addinivalue_line("markers", "ws_invalid_frames: the test sends invalid WebSocket frames on purpose "
                                       "(only the exchange's answers are checked against the AsyncAPI document)")
    config.addinivalue_line("markers", "ws_synthetic_feed: the test feeds /stream stand-in data (its own NATS "
                                       "messages or replies), so the frames it receives are not checked")


@pytest.fixture(autouse=True)
def _ws_conformance(request):
    rec = ws_conformance.RECORDER
    rec.test = request.node.nodeid
    rec.allow_invalid_sent = request.node.get_closest_marker("ws_invalid_frames") is not None
    rec.allow_invalid_received = request.node.get_closest_marker("ws_synthetic_feed") is not None
    start = len(rec.failures)
    yield
    rec.test = None
    bad = rec.failures[start:]
    if bad:
        pytest.fail(f"{len(bad)} WebSocket frame(s) not in the AsyncAPI document:\n" + "\n".join(bad[:10]),
                    pytrace=False)


# --------------------------------------------------------------- Redis Cluster (issue 14)
@pytest.fixture(scope="session")
def redis_cluster_url():
    """A local 3-master Redis Cluster (ops/stack), started the first time a test asks for one and
    stopped with the other test servers (`down`)."""
    from ops import stack

    return stack.start_redis_cluster(stack.config("test"), say=lambda _m: None)


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def views_redis_url(request):
    """The projector and read-API integration tests run on a single Redis and on a Redis Cluster."""
    if request.param == "redis":
        return os.environ["EXCHANGE_REDIS_URL"]
    return request.getfixturevalue("redis_cluster_url")
