"""Issue 20, "Internal services authenticate": NATS, Redis and PostgreSQL refuse clients without the
stack's credentials, the credentials live in one private file per state folder and survive restarts,
and only the projector's NATS identity (the query user) can put a message on the feed that /stream
clients receive. Before: NATS accepted anyone - a forged message reached every /stream client and a
forged seq silenced an instrument on all replicas."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import asyncpg
import httpx
import msgspec
import nats
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError
from websockets.asyncio.client import connect

from contracts.topics import ORDER_REQUEST_SUBJECT, RELAYED_SUBJECT, feed_subject, node_command_subject
from ops import stack
from query_service.feed import FeedMessage, encode_feed
from tests.support.order_flow import OrderFlow
from tests.support.query import (
    JournalSeeder,
    Publisher,
    Replica,
    create_topic,
    delete_topic,
    settings_for_test,
    unique,
    wait_for_seq,
    wipe,
)
from tests.support.services import nats_login

CFG = stack.config("test")
NATS_URL = os.environ["EXCHANGE_NATS_URL"]
REDIS_URL = os.environ["EXCHANGE_REDIS_URL"]
PG_DSN = os.environ["EXCHANGE_PG_DSN"]

ours = pytest.mark.skipif(os.environ.get("EXCHANGE_STATE_DIR") != str(CFG.state_dir),
                          reason="servers were not started by ops/stack from this checkout")


def _without_password(url: str) -> str:
    """scheme://[user][:password]@host... -> scheme://[user@]host... (the password dropped)."""
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user + '@' if user else ''}{host}"


def _with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.rsplit("@", 1)
    return f"{scheme}://{userinfo.split(':', 1)[0]}:{password}@{host}"


# --------------------------------------------------------------------------- refused without credentials


async def _nats_refused(**login) -> str:
    with pytest.raises(Exception) as info:
        nc = await nats.connect(NATS_URL, connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0, **login)
        await nc.close()
    return str(info.value).lower()


@ours
async def test_nats_refuses_clients_without_a_user_or_with_a_wrong_password():
    assert "authorization violation" in await _nats_refused()
    assert "authorization violation" in await _nats_refused(user="query", password="not-the-password")
    assert "authorization violation" in await _nats_refused(user="intruder", password="x")
    # the stack's users log in
    for identity in ("command", "query", "relay"):
        nc = await nats.connect(NATS_URL, connect_timeout=3, **nats_login(identity))
        assert nc.is_connected
        await nc.close()


@ours
async def test_only_the_relay_announces_what_it_put_in_the_topic():
    """A notice makes every projector fetch: only the relay's identity may publish one (others are
    refused by the server and nobody hears them), and the query identity may hear it."""
    heard: list[bytes] = []
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    async def on_notice(msg) -> None:
        heard.append(msg.data)

    query = await nats.connect(NATS_URL, connect_timeout=3, error_cb=on_error, **nats_login("query"))
    relay = await nats.connect(NATS_URL, connect_timeout=3, **nats_login("relay"))
    command = await nats.connect(NATS_URL, connect_timeout=3, error_cb=on_error, **nats_login("command"))
    try:
        await query.subscribe(RELAYED_SUBJECT, cb=on_notice)
        await query.flush()
        for forger in (command, query):
            await forger.publish(RELAYED_SUBJECT, b"exchange.events 0:999999")
            await forger.flush()
        await relay.publish(RELAYED_SUBJECT, b"exchange.events 0:1")
        await relay.flush()
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert heard == [b"exchange.events 0:1"]
        assert sum("permissions violation" in e and "publish" in e for e in errors) == 2, errors
    finally:
        for nc in (query, relay, command):
            await nc.close()


@ours
async def test_each_nats_identity_reads_only_what_is_meant_for_it():
    """Orders sent on /stream carry the client's API key: only the command user may read them; and
    request replies are readable only under the requester's own inbox prefix."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    query = await nats.connect(NATS_URL, connect_timeout=3, error_cb=on_error, **nats_login("query"))
    try:
        for subject in (ORDER_REQUEST_SUBJECT, "_INBOX.>", "_INBOX.command.>", node_command_subject("BTC-USD")):
            errors.clear()
            await query.subscribe(subject)
            await query.flush()
            for _ in range(50):
                if errors:
                    break
                await asyncio.sleep(0.02)
            assert any("permissions violation for subscription" in e for e in errors), (subject, errors)
    finally:
        await query.close()


@ours
async def test_redis_refuses_clients_without_the_password():
    for url in (_without_password(REDIS_URL), _with_password(REDIS_URL, "wrong")):
        r = aioredis.Redis.from_url(url)
        try:
            with pytest.raises(AuthenticationError):  # NOAUTH / WRONGPASS
                await r.get("anything")
        finally:
            await r.aclose()
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert await r.ping() is True
    finally:
        await r.aclose()


@ours
async def test_the_redis_cluster_refuses_clients_without_the_password(redis_cluster_url):
    from query_service.redis_cluster import connect as redis_connect

    assert f":{CFG.credentials.redis_password}@" in redis_cluster_url
    good = redis_connect(redis_cluster_url)
    try:
        await good.set(f"{unique('auth-')}", "1", ex=10)  # writes reach every master's slots
    finally:
        await good.aclose()
    port = stack.redis_cluster_ports(CFG)[1]
    anonymous = aioredis.Redis(host=CFG.host, port=port)
    try:
        with pytest.raises((AuthenticationError, ResponseError)) as info:
            await anonymous.get("anything")
        assert any(w in str(info.value).lower() for w in ("noauth", "authenticated")), info.value
    finally:
        await anonymous.aclose()


@ours
async def test_postgres_refuses_tcp_clients_without_the_password():
    no_password = _without_password(PG_DSN)
    assert no_password.startswith("postgresql://postgres@")
    with pytest.raises(Exception) as info:  # asyncpg: password authentication failed / no password supplied
        await asyncpg.connect(no_password, timeout=10)
    assert "password" in str(info.value).lower()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(_with_password(PG_DSN, "wrong"), timeout=10)
    conn = await asyncpg.connect(PG_DSN, timeout=10)
    try:
        # scram-sha-256 on every TCP line of pg_hba; "trust" only for the unix socket (the bootstrap)
        rules = await conn.fetch("SELECT type, auth_method FROM pg_hba_file_rules WHERE error IS NULL")
        assert {r["auth_method"] for r in rules if r["type"] != "local"} == {"scram-sha-256"}
        assert await conn.fetchval("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'postgres'")
    finally:
        await conn.close()


# --------------------------------------------------------------------------- the credentials file


@ours
def test_credentials_are_in_one_private_file_reused_across_restarts():
    path = stack.credentials_path(CFG.state_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_text()
    creds = json.loads(before)
    assert len(set(creds.values())) == 5 and all(len(v) >= 32 for v in creds.values())  # random, one per purpose
    # nowhere else in the state folder's readable files, and not on any server's command line
    config_json = (CFG.state_dir / "config.json").read_text()
    secrets_ = list(creds.values())
    assert not any(s in config_json for s in secrets_)
    for name in ("redis", "nats"):
        pid = stack.server_pid(CFG, name)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert not any(s in cmdline for s in secrets_), name
    for conf in (CFG.state_dir / "redis" / "redis.conf", CFG.state_dir / "nats" / "nats.conf"):
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600, conf
    # a restart (NATS: it keeps no state) reuses them: the services' login still works
    assert stack.stop_server(CFG, "nats", say=lambda _m: None)
    assert stack.start_server(CFG, "nats", say=lambda _m: None) == "started"
    assert path.read_text() == before
    assert stack.config("test").credentials == CFG.credentials

    async def login() -> bool:
        nc = await nats.connect(NATS_URL, connect_timeout=3, **nats_login("query"))
        ok = nc.is_connected
        await nc.close()
        return ok

    assert asyncio.run(login())


# --------------------------------------------------------------------------- the feed has one publisher


@pytest.fixture
async def feed_env():
    symbols = [unique("AU") + "-USD"]
    settings = settings_for_test(symbols)
    await create_topic(settings)
    await wipe(settings.redis_url, settings.redis_prefix)
    async with JournalSeeder(settings.pg_dsn) as journal:
        await journal.clear(symbols)
        yield settings, symbols[0], journal
        await journal.clear(symbols)
    await wipe(settings.redis_url, settings.redis_prefix)
    await delete_topic(settings)


_decode = msgspec.json.Decoder().decode


def _forged(sym: str, prev_seq: int, seq: int) -> bytes:
    """What the attacker sent in issue 20: a feed message far ahead in seq, with a book level and a trade."""
    trade = {"type": "trade", "instrument": sym, "seq": seq, "trade_id": "forged", "price": "1", "quantity": "1000",
             "side": "buy", "ts": 0}
    return encode_feed(FeedMessage(instrument=sym, prev_seq=prev_seq, seq=seq,
                                   bids=[(1, 1000)],
                                   trades=[msgspec.Raw(json.dumps(trade).encode())]))


async def _collect(ws, seconds: float) -> list[dict]:
    out = []
    try:
        while True:
            out.append(_decode(await asyncio.wait_for(ws.recv(), seconds)))
    except asyncio.TimeoutError:
        return out


@pytest.mark.ws_synthetic_feed  # the last step shows the projector identity's stand-in message delivered
async def test_only_the_projector_identity_can_publish_what_stream_clients_receive(feed_env):
    settings, sym, journal = feed_env
    events = OrderFlow(instrument=sym, seed=20).run(400)
    await journal.append(events)
    first, rest = events[:200], events[200:]
    replica = await Replica(settings.replace(watchdog_interval_s=600.0)).start()
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    forger = await nats.connect(settings.nats_url, error_cb=on_error, **nats_login("command"))
    try:
        async with Publisher(settings) as pub:
            await pub.publish(first)
            await wait_for_seq(settings.redis_url, settings.redis_prefix, {sym: first[-1].seq})
            ws = await connect(replica.ws_url, max_size=2**24)
            assert _decode(await ws.recv())["type"] == "connected"
            await ws.send(json.dumps({"type": "subscribe", "channels": ["orderbook", "trades"], "instrument": sym}))
            seen = await _collect(ws, 1.0)
            snapshot = next(m for m in seen if m["type"] == "orderbook")
            assert snapshot["action"] == "snapshot" and snapshot["seq"] == first[-1].seq

            # A command node's identity (logged in, but not the projector's) forges the feed: the
            # server refuses the publish, so no replica relays it.
            forged_seq = first[-1].seq + 1_000_000
            await forger.publish(feed_subject(sym), _forged(sym, first[-1].seq, forged_seq))
            await forger.flush()
            seen = await _collect(ws, 1.5)
            assert any("permissions violation" in e and "publish" in e for e in errors), errors
            assert seen == [], seen  # the /stream client saw nothing

            # The replica's seq did not move: the next real batch continues the chain from the
            # snapshot, and the client's book and the REST book agree on the last seq.
            await pub.publish(rest)
            seen = []
            while not any(m.get("seq") == rest[-1].seq and m["type"] == "orderbook" for m in seen):
                seen.append(_decode(await asyncio.wait_for(ws.recv(), 15)))
            books = [m for m in seen if m["type"] == "orderbook"]
            assert books[0]["prev_seq"] == first[-1].seq
            assert all(b["prev_seq"] == a["seq"] for a, b in zip(books, books[1:]))
            assert all(m.get("seq") != forged_seq for m in seen)
            async with httpx.AsyncClient(base_url=replica.url) as http:
                book = (await http.get("/market/orderbook", params={"instrument": sym})).json()
            assert book["seq"] == rest[-1].seq

            # Control: the same kind of message from the projector's identity is delivered - the
            # refusal above is the permission, not a malformed message.
            projector = await nats.connect(settings.nats_url, **nats_login("query"))
            try:
                await projector.publish(feed_subject(sym), _forged(sym, rest[-1].seq, rest[-1].seq + 1))
                await projector.flush()
                seen = await _collect(ws, 2.0)
            finally:
                await projector.close()
            assert any(m.get("seq") == rest[-1].seq + 1 for m in seen), seen
            await ws.close()
    finally:
        await forger.close()
        await replica.stop()
