
"""Health checks: own dependencies (/healthz) and the whole system (/healthz/system)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from contracts.api import iso_ms

TIMEOUT = 1.0


async def _guard(coro) -> str:
    try:
        ok = await asyncio.wait_for(coro, TIMEOUT)
        return "healthy" if ok else "unhealthy"
    except Exception:
        return "unhealthy"


async def _redis(redis) -> bool:
    return bool(await redis.ping())


async def _tcp(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    reader, writer = await asyncio.open_connection(host or "127.0.0.1", int(port))
    writer.close()
    with contextlib.suppress(Exception):  # the probe already connected; how the close ends does not matter
        await writer.wait_closed()
    return True


async def _kafka(services) -> bool:
    if not await _tcp(services.settings.kafka_bootstrap):
        return False
    p = services.projector
    # A projector whose consumer keeps failing (topic gone, broker refusing) is unhealthy.
    return p is None or not p.kafka_failed


async def _nats(services) -> bool:
    return services.bus.connected


async def own_checks(services) -> dict[str, str]:
    names = ("postgres", "redis", "kafka", "nats")
    results = await asyncio.gather(
        _guard(services.journal.check()),
        _guard(_redis(services.redis)),
        _guard(_kafka(services)),
        _guard(_nats(services)),
    )
    return dict(zip(names, results))


async def _command_node(services, url: str) -> dict | None:
    """A command node's /healthz body (with its node id and the owners it sees), or None."""
    with contextlib.suppress(Exception):  # unreachable or not JSON: that node is not healthy
        r = await services.http.get(f"{url}/healthz", timeout=TIMEOUT)
        body = r.json()
        body["healthy"] = r.status_code == 200
        return body
    return None


async def _command(services) -> tuple[str, dict]:
    """Several command nodes (issue 14): healthy while every instrument is owned by a node that
    answers; the answer lists each node and the owner of every instrument."""
    s = services.settings
    urls = list(s.command_urls) or [s.command_url]
    bodies = await asyncio.gather(*(_command_node(services, u) for u in urls))
    nodes: dict[str, dict] = {}
    owners: dict[str, str | None] = {}
    for url, b in zip(urls, bodies):
        name = (b or {}).get("node") or url
        nodes[name] = {"url": url, "status": "healthy" if b and b["healthy"] else "unhealthy"}
        if b and b["healthy"]:
            for sym, node in (b.get("owners") or {}).items():
                if node is not None:
                    owners[sym] = node
    ok = any(n["status"] == "healthy" for n in nodes.values())
    return ("healthy" if ok else "unhealthy"), {"nodes": nodes, "owners": owners}


async def health(services, system: bool = False) -> tuple[int, dict]:
    extra: dict = {}
    if system:
        checks, (command, extra) = await asyncio.gather(own_checks(services), _command(services))
        checks["command"] = command
        checks["query"] = "healthy"
    else:
        checks = await own_checks(services)
    ok = all(v == "healthy" for v in checks.values())
    body = {"status": "healthy" if ok else "unhealthy", "timestamp": iso_ms(time.time_ns()), "checks": checks,
            **extra}
    # Views this replica cannot bring up to date: degraded, naming each instrument and why.
    problems = views_problems(services)
    for inst in await _unready(services):
        problems.setdefault(inst, "views being rebuilt (not ready): reads answer 503")
    if problems:
        checks["views"] = "unhealthy"
        body["views"] = problems
        if ok:
            body["status"] = "degraded"
        ok = False
    return (200 if ok else 503), body


async def _unready(services) -> list[str]:
    """Instruments whose views lack the ready marker (empty or restarted Redis, rebuild)."""
    symbols = services.instruments.symbols
    try:
        flags = await asyncio.wait_for(services.redis.mget([services.keys.ready(s) for s in symbols]), TIMEOUT)
    except Exception:
        return []  # Redis itself is reported unhealthy
    return [s for s, f in zip(symbols, flags) if f is None]


def views_problems(services) -> dict[str, str]:
    p = services.projector
    return dict(p.failing) if p is not None else {}
