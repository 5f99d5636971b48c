"""Operations on the running exchange: every metric the dashboards and alert rules read is served by
the real processes; a Prometheus started here scrapes every one of them and loads the rules; the
gateway's /metrics needs an admin key; every service logs JSON lines with context, order events
included; X-Request-Id is echoed (a client's own one if sane)."""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import httpx
import pytest

from ops import monitoring, stack
from tests.e2e.conftest import CFG, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROCESSES = {"command": CFG.command_url, "relay": f"http://{CFG.host}:{CFG.relay_metrics_port}",
             "query-1": CFG.query_urls[0], "query-2": CFG.query_urls[1]}


@pytest.fixture(scope="session")
async def gw(system):
    async with httpx.AsyncClient(base_url=system.gateway, timeout=10) as client:
        yield client


async def _resting_order(gw, system, who: str = "client-A") -> str:
    """A SOL-USD buy far below the market (other tests never trade there), cancelled afterwards.
    Returns the server's order id (the one the log lines carry; the client order id is in them too)."""
    client_order_id = f"obs-{uuid.uuid4().hex[:12]}"
    r = await gw.post("/orders", headers=system.auth(who), json={
        "client_order_id": client_order_id, "instrument": "SOL-USD", "side": "buy", "type": "limit",
        "price": "1.001", "quantity": "0.01"})
    assert r.status_code == 201, r.text
    assert r.json()["order"]["client_order_id"] == client_order_id
    return r.json()["order"]["order_id"]


async def test_every_metric_of_the_dashboards_and_rules_is_served(gw, system):
    order_id = await _resting_order(gw, system)
    await gw.post(f"/orders/{order_id}/cancel", headers=system.auth("client-A"))
    served: dict[str, set[str]] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        for name, url in PROCESSES.items():
            r = await client.get(url + "/metrics")
            assert r.status_code == 200, (name, r.status_code)
            served[name] = monitoring.exposed_metrics(r.text)
    everywhere = set().union(*served.values())
    used = monitoring.referenced_metrics()
    assert len(used) >= 15
    missing = {m: sorted(where) for m, where in used.items() if m not in everywhere}
    assert not missing, f"named in dashboards/rules but served by no process: {missing}"
    # the ones a job="..." matcher ties to one process are served by that process
    assert "relay_is_leader" in served["relay"] and "relay_lag_seconds" in served["command"]
    assert "ws_connections" in served["query-1"] and "ws_connections" in served["query-2"]


async def test_gateway_metrics_need_an_admin_key(gw, system):
    assert (await gw.get("/metrics")).status_code == 401
    r = await gw.get("/metrics", headers=system.auth("client-A"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = await gw.get("/metrics", headers=system.auth("admin"))
    assert r.status_code == 200 and "sequencer_ready" in r.text


async def test_local_prometheus_scrapes_every_process_and_loads_the_rules(system, tmp_path):
    port = stack.free_port()
    conf = monitoring.write_local_conf(tmp_path, profile="test", host=CFG.host, port=port,
                                       command_port=CFG.command_port, relay_port=CFG.relay_metrics_port,
                                       query_ports=list(CFG.query_ports), scrape_interval="1s")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(monitoring.prometheus_argv(conf, host=CFG.host, port=port), stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        base = f"http://{CFG.host}:{port}"

        async def api(path: str):
            # None until Prometheus answers (it says 503 "Service Unavailable" while starting)
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    return (await client.get(base + path)).json()["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                return None

        async def all_up():
            data = await api("/api/v1/targets")
            if data is None:
                return None
            targets = data["activeTargets"]
            health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
            return health if len(health) == 5 and set(health.values()) == {"up"} else None

        health = await eventually(all_up, timeout=45, interval=0.5)
        assert {job for job, _ in health} == {"command", "relay", "query", "prometheus"}

        async def rules_evaluated():
            data = await api("/api/v1/rules")
            rules = [r for g in (data or {}).get("groups", []) for r in g["rules"]]
            return rules if len(rules) == 9 and all(r.get("health") == "ok" for r in rules) else None

        await eventually(rules_evaluated, timeout=30, interval=0.5)

        # the system is healthy: exactly one relay leader, every instrument ready, every target up.
        # (Polled: an earlier test may just have restarted a process, which leaves a rule pending
        # for an evaluation or two.)
        async def healthy_rules_inactive():
            rules = await rules_evaluated() or []
            by_name = {r["name"]: r["state"] for r in rules}
            names = ("RelayNoLeader", "RelayTwoLeaders", "InstrumentNotReady", "ExchangeTargetDown")
            return by_name if all(by_name.get(n) == "inactive" for n in names) else None

        await eventually(healthy_rules_inactive, timeout=40, interval=1.0)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


async def test_request_id_is_echoed_or_generated(gw, system):
    r = await gw.get("/market/orderbook", params={"instrument": "BTC-USD"}, headers={"X-Request-Id": "trace-42.a"})
    assert r.headers["x-request-id"] == "trace-42.a"
    r = await gw.get("/market/trades", params={"instrument": "BTC-USD"})
    assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"])
    r = await gw.post("/orders", headers={**system.auth("client-A"), "X-Request-Id": "bad id <script>"},
                      json={"instrument": "SOL-USD", "side": "buy", "type": "limit", "price": "1.001",
                            "quantity": "0.01"})
    assert r.status_code == 201 and re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"])
    await gw.post(f"/orders/{r.json()['order']['order_id']}/cancel", headers=system.auth("client-A"))
    r = await gw.get("/orders/nope", headers={**system.auth("client-A"), "X-Request-Id": "err-1"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "err-1"


def _this_run(name: str) -> list[str]:
    """The lines the service wrote since its last start (the stack writes a === header per start)."""
    lines = CFG.log_path(name).read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("=== ")]
    return [line for line in lines[(starts[-1] + 1 if starts else 0):] if line.strip()]


async def test_every_service_logs_json_lines_with_context(gw, system):
    order_id = await _resting_order(gw, system, "client-B")
    r = await gw.post(f"/orders/{order_id}/cancel", headers=system.auth("client-B"))
    assert r.status_code == 200, r.text

    def order_lines():
        found = [json.loads(line) for line in _this_run("command") if order_id in line]
        return found if {f.get("event") for f in found} >= {"order_accepted", "order_cancelled"} else None

    found = await eventually(_async(order_lines), timeout=10)
    accepted = next(f for f in found if f["event"] == "order_accepted")
    assert (accepted["instrument"], accepted["client_id"], accepted["level"]) == ("SOL-USD", "client-B", "INFO")
    assert accepted["price"] == 1.001 and accepted["logger"] == "exchange.orders"

    for name, start_message in (("command", "command service started"), ("relay", "relay"),
                                ("query-1", "query service started"), ("query-2", "query service started")):
        parsed = []
        for line in _this_run(name):
            try:
                parsed.append(json.loads(line))
            except ValueError:
                pytest.fail(f"{name}: not a JSON line: {line!r}")
        assert parsed, name
        for entry in parsed:
            assert {"time", "level", "logger", "message", "service", "node"} <= set(entry), (name, entry)
        assert any(e["level"] == "INFO" and e["message"].startswith(start_message) for e in parsed), name


def _async(fn):
    async def run():
        return fn()
    return run
