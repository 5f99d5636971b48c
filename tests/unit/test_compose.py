"""compose.yaml (no Docker engine here): the services exist, each Python service gets the settings it
reads, Kafka runs in KRaft mode, and the compose gateway routes exactly like the local one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ops import gateway

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def test_every_service_exists(services):
    expected = {"kafka", "postgres", "redis", "nats", "gateway", "migrate", "command-1", "command-2", "relay",
                "query-1", "query-2"}
    assert expected <= set(services)


PYTHON_SERVICES = {
    "migrate": ("db.migrate", {"EXCHANGE_PG_DSN"}),
    "command-1": ("command_service", {"EXCHANGE_PG_DSN", "EXCHANGE_KAFKA_BOOTSTRAP", "EXCHANGE_NATS_URL",
                                      "EXCHANGE_COMMAND_PORT", "EXCHANGE_HOST", "EXCHANGE_INSTRUMENTS_FILE",
                                      "EXCHANGE_NODE_ID"}),
    "command-2": ("command_service", {"EXCHANGE_PG_DSN", "EXCHANGE_KAFKA_BOOTSTRAP", "EXCHANGE_NATS_URL",
                                      "EXCHANGE_COMMAND_PORT", "EXCHANGE_HOST", "EXCHANGE_INSTRUMENTS_FILE",
                                      "EXCHANGE_NODE_ID"}),
    "relay": ("relay", {"EXCHANGE_PG_DSN", "EXCHANGE_KAFKA_BOOTSTRAP", "EXCHANGE_KAFKA_TOPIC",
                                        "EXCHANGE_RELAY_METRICS_PORT"}),
    "query-1": ("query_service", {"EXCHANGE_REDIS_URL", "EXCHANGE_NATS_URL", "EXCHANGE_KAFKA_BOOTSTRAP",
                                  "EXCHANGE_PG_DSN", "EXCHANGE_QUERY_PORT", "EXCHANGE_COMMAND_URL", "EXCHANGE_HOST"}),
    "query-2": ("query_service", {"EXCHANGE_REDIS_URL", "EXCHANGE_NATS_URL", "EXCHANGE_KAFKA_BOOTSTRAP",
                                  "EXCHANGE_PG_DSN", "EXCHANGE_QUERY_PORT", "EXCHANGE_COMMAND_URL", "EXCHANGE_HOST"}),
}


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_python_services_run_their_module_with_their_settings(services, name):
    module, needed = PYTHON_SERVICES[name]
    svc = services[name]
    assert svc["command"] == ["python", "-m", module]
    assert "build" in svc
    env = svc["environment"]
    assert needed <= set(env), needed - set(env)
    # Addresses point at compose service names, never at the local stack.
    assert "@postgres:5432/exchange" in env["EXCHANGE_PG_DSN"]
    assert env["EXCHANGE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    if "EXCHANGE_REDIS_URL" in needed:
        assert env["EXCHANGE_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
        assert env["EXCHANGE_REDIS_URL"].endswith("@redis:6379/0")
    if "EXCHANGE_NATS_URL" in needed:
        assert env["EXCHANGE_NATS_URL"] == "nats://nats:4222"
    if name != "migrate":
        assert svc["restart"] == "unless-stopped"
        assert env["EXCHANGE_HOST"] == "0.0.0.0"
        assert "healthcheck" in svc


# Issue 20: every internal server asks for a password; compose refuses to start without one
# (${VAR:?...}: no default password anyone could guess), and each service gets only its own NATS login.
REQUIRED = re.compile(r"^\$\{(\w+):\?[^}]+\}$")


def _required_var(value: str) -> str:
    m = REQUIRED.match(value)
    assert m, f"{value!r} is not a required ${{VAR:?message}} placeholder"
    return m.group(1)


def test_services_log_in_to_postgres_redis_and_nats_with_their_own_credentials(services):
    for name in PYTHON_SERVICES:
        env = services[name]["environment"]
        user_password = env["EXCHANGE_PG_DSN"].split("://", 1)[1].split("@", 1)[0]
        assert _required_var(user_password.split(":", 1)[1]) == "POSTGRES_PASSWORD", name
        nats_vars = {k for k in env if k.startswith("EXCHANGE_NATS_") and k != "EXCHANGE_NATS_URL"}
        if name.startswith("command-"):
            assert nats_vars == {"EXCHANGE_NATS_COMMAND_USER", "EXCHANGE_NATS_COMMAND_PASSWORD"}, name
            assert env["EXCHANGE_NATS_COMMAND_USER"] == "command"
            assert _required_var(env["EXCHANGE_NATS_COMMAND_PASSWORD"]) == "NATS_COMMAND_PASSWORD"
        elif name.startswith("query-"):
            assert nats_vars == {"EXCHANGE_NATS_QUERY_USER", "EXCHANGE_NATS_QUERY_PASSWORD"}, name
            assert env["EXCHANGE_NATS_QUERY_USER"] == "query"
            assert _required_var(env["EXCHANGE_NATS_QUERY_PASSWORD"]) == "NATS_QUERY_PASSWORD"
            assert _required_var(env["EXCHANGE_REDIS_URL"].split("://:", 1)[1].split("@", 1)[0]) == "REDIS_PASSWORD"
        elif name == "relay":  # its notices to the projectors
            assert nats_vars == {"EXCHANGE_NATS_RELAY_USER", "EXCHANGE_NATS_RELAY_PASSWORD"}, name
            assert env["EXCHANGE_NATS_RELAY_USER"] == "relay"
            assert _required_var(env["EXCHANGE_NATS_RELAY_PASSWORD"]) == "NATS_RELAY_PASSWORD"
        else:
            assert not nats_vars, name  # the migration does not use NATS
        assert ("EXCHANGE_REDIS_URL" in env) == name.startswith("query-"), name  # only the views' users


def test_postgres_redis_and_nats_require_their_passwords(services):
    from ops.stack.servers import COMPOSE_NATS_CONF, render_compose_nats_conf

    pg = services["postgres"]["environment"]
    assert _required_var(pg["POSTGRES_PASSWORD"]) == "POSTGRES_PASSWORD"
    assert pg["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    redis = services["redis"]
    assert _required_var(redis["environment"]["REDIS_PASSWORD"]) == "REDIS_PASSWORD"
    assert redis["command"][0] == "redis-server"  # the image's entrypoint drops to its redis user
    assert _required_var(redis["command"][redis["command"].index("--requirepass") + 1]) == "REDIS_PASSWORD"
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])  # the health check logs in too
    nats = services["nats"]
    assert nats["command"][:2] == ["-c", "/etc/nats/nats.conf"]
    assert "./ops/nats.compose.conf:/etc/nats/nats.conf:ro" in nats["volumes"]
    assert {_required_var(v) for v in nats["environment"].values()} == {
        "NATS_COMMAND_PASSWORD", "NATS_QUERY_PASSWORD", "NATS_RELAY_PASSWORD"}
    conf = COMPOSE_NATS_CONF.read_text()
    assert conf == render_compose_nats_conf(), "ops/nats.compose.conf is stale: python -m ops.stack nats-compose-conf"
    # only the query user publishes the feed; only the command user answers requests
    query_block = conf.split('user: "query"', 1)[1].split('user: "relay"', 1)[0]
    relay_block = conf.split('user: "relay"', 1)[1]
    assert '"exchange.relayed"' in relay_block.split("subscribe", 1)[0] and "exchange.feed" not in relay_block
    assert '"exchange.relayed"' in query_block.split("subscribe", 1)[1]
    assert '"exchange.relayed"' not in query_block.split("subscribe", 1)[0]
    command_block = conf.split('user: "command"', 1)[1].split('user: "query"', 1)[0]
    assert '"exchange.feed.>"' in query_block.split("subscribe", 1)[0]
    assert "exchange.feed" not in command_block and "allow_responses: true" in command_block
    assert "$NATS_QUERY_PASSWORD" in query_block and "$NATS_COMMAND_PASSWORD" in command_block


def test_query_replicas_listen_on_the_ports_the_gateway_uses(services):
    conf = (REPO / "ops" / "nginx.compose.conf").read_text()
    for name in ("query-1", "query-2"):
        port = services[name]["environment"]["EXCHANGE_QUERY_PORT"]
        assert f"server {name}:{port} " in conf
    for name in ("command-1", "command-2"):  # the gateway spreads the command routes over both nodes
        assert f"server {name}:{services[name]['environment']['EXCHANGE_COMMAND_PORT']} " in conf
    assert services["command-1"]["environment"]["EXCHANGE_NODE_ID"] == "command-1"
    assert services["command-2"]["environment"]["EXCHANGE_NODE_ID"] == "command-2"
    urls = services["query-1"]["environment"]["EXCHANGE_COMMAND_URLS"].split(",")
    assert urls == ["http://command-1:8001", "http://command-2:8001"]


def test_services_start_after_what_they_need(services):
    def needs(name: str) -> dict:
        return services[name].get("depends_on", {})

    assert needs("migrate")["postgres"]["condition"] == "service_healthy"
    for name in ("command-1", "command-2", "relay", "query-1", "query-2"):
        assert needs(name)["migrate"]["condition"] == "service_completed_successfully"
    for name in ("query-1", "query-2"):
        assert needs(name)["redis"]["condition"] == "service_healthy"
    assert {"command-1", "command-2", "query-1", "query-2"} <= set(needs("gateway"))
    for name in ("kafka", "postgres", "redis", "nats", "gateway"):
        assert "healthcheck" in services[name], name
        assert services[name]["restart"] == "unless-stopped"


def test_kafka_is_apache_kafka_in_kraft_mode(services):
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env and "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert "ZOOKEEPER" not in " ".join(env)
    assert len(str(env["CLUSTER_ID"])) == 22  # a base64 UUID, as kafka-storage format requires
    # The events topic is created explicitly with the partitions the code expects.
    from contracts.topics import EVENTS_TOPIC, EVENTS_TOPIC_PARTITIONS

    init = services["kafka-init"]["command"]
    assert f"--topic {EVENTS_TOPIC}" in init and f"--partitions {EVENTS_TOPIC_PARTITIONS}" in init


def _routes(conf: str) -> dict[str, str]:
    """location -> what answers it (the proxy_pass target's upstream and path, or `return CODE`)."""
    routes = {}
    for m in re.finditer(r"location\s+(=\s+)?(\S+)\s*\{(.*?)\}", conf, re.S):
        exact, path, body = m.group(1), m.group(2), m.group(3)
        proxied = re.search(r"proxy_pass\s+http://([^;\s]+);", body)
        returned = re.search(r"return\s+(\d+)", body)
        static = re.search(r"^\s*root\s", body, re.M)
        routes[("= " if exact else "") + path] = (
            proxied.group(1) if proxied else "static" if static else f"return {returned.group(1)}"
        )
    return routes


def test_compose_gateway_routes_the_same_paths_as_the_local_one(tmp_path):
    compose_conf = (REPO / "ops" / "nginx.compose.conf").read_text()
    local_conf = gateway.write_local_conf(tmp_path, listen_port=3000, command_ports=[8001], query_ports=[8002, 8003]).read_text()
    assert compose_conf == gateway.render_compose_conf(), "ops/nginx.compose.conf is stale: python -m ops.gateway compose"
    routes = _routes(compose_conf)
    assert routes == _routes(local_conf)
    assert routes["= /orders"] == routes["/orders/"] == routes["/admin/"] == routes["= /ws"] == "command"
    assert routes["= /metrics"] == "command/admin/metrics"  # not public: the admin route
    assert routes["/market/"] == routes["= /stream"] == "query"
    assert routes["= /healthz"] == "query/healthz/system"
    assert routes["= /"] == routes["/assets/"] == "static"  # the trading page (web/dist)


def test_gateway_service_uses_the_rendered_config(services):
    gw = services["gateway"]
    assert gw["image"].startswith("nginx")
    assert "3000:3000" in [str(p) for p in gw["ports"]]
    assert any(v.startswith("./ops/nginx.compose.conf:/etc/nginx/nginx.conf") for v in gw["volumes"])
    # The trading page: built by the one-shot `web` service into the volume nginx serves at /.
    assert f"web-dist:{gateway.COMPOSE_WEB_ROOT}:ro" in gw["volumes"]
    assert gw["depends_on"]["web"]["condition"] == "service_completed_successfully"
    web = services["web"]
    assert "web-dist:/dist" in web["volumes"] and "npm ci" in " ".join(web["command"])


def test_dockerfile_builds_the_python_services():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "pip install" in text
