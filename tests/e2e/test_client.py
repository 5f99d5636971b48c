"""exchange_client against the whole exchange through the gateway (the e2e `system`):
every route from both clients, exact decimals, safe retries by idempotency key, typed
errors; the live book equals GET /market/orderbook at the same seq after 1,000 random
orders and heals after its socket is dropped; the examples run without error."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from exchange_client import (
    AsyncExchangeClient,
    Conflict,
    ExchangeClient,
    Forbidden,
    InvalidRequest,
    LiveOrderBook,
    NotFound,
    OrderSocket,
    Unauthorized,
)
from tests.e2e.conftest import GATEWAY

ROOT = Path(__file__).resolve().parents[2]
SYM = "SOL-USD"  # tick 0.001, lot 0.01
TICK = Decimal("0.001")


def test_sync_client_every_route(system):
    with ExchangeClient(GATEWAY, system.keys["client-A"]) as a, \
            ExchangeClient(GATEWAY, system.keys["client-B"]) as b, \
            ExchangeClient(GATEWAY, system.keys["admin"]) as admin:
        # a sell price inside the spread other tests left, so the market buy below trades with it
        top = a.orderbook(SYM, levels=1)
        ask = top["asks"][0]["price"] if top["asks"] else Decimal("150.124")
        bid = top["bids"][0]["price"] if top["bids"] else Decimal(0)
        price = ask - TICK
        assert price > bid and isinstance(price, Decimal), top
        placed = a.place_order("sell", Decimal("0.30"), price=price, instrument=SYM,
                               idempotency_key="client-test-1")
        order = placed["order"]
        assert order["price"] == price and order["quantity"] == Decimal("0.3")
        assert isinstance(order["quantity"], Decimal) and order["status"] == "open"
        # the same key again: the original answer, not a second order (what makes a retry safe)
        again = a.place_order("sell", Decimal("0.30"), price=price, instrument=SYM,
                              idempotency_key="client-test-1")
        assert again["order"]["order_id"] == order["order_id"]
        with pytest.raises(Conflict) as e:
            a.place_order("sell", Decimal("0.31"), price=price, instrument=SYM,
                          idempotency_key="client-test-1")
        assert e.value.code == "idempotency_key_reused"
        fill = b.place_order("buy", Decimal("0.1"), type="market", instrument=SYM)
        assert fill["trades"][0]["price"] == price and fill["trades"][0]["quantity"] == Decimal("0.1")
        assert a.get_order(order["order_id"])["order"]["filled_quantity"] == Decimal("0.1")
        with pytest.raises(Forbidden):
            b.cancel_order(order["order_id"])
        assert a.cancel_order(order["order_id"])["order"]["status"] == "cancelled"
        with pytest.raises(Conflict) as e:
            a.cancel_order(order["order_id"])
        assert e.value.code == "order_closed"
        with pytest.raises(NotFound):
            a.get_order("no-such-order")
        with pytest.raises(InvalidRequest) as e:
            a.place_order("buy", "1", price="100.0001", instrument=SYM)
        assert (e.value.code, e.value.field) == ("off_tick", "price")
        with pytest.raises(Unauthorized):
            ExchangeClient(GATEWAY, "exk_wrong").get_order(order["order_id"])
        a.place_order("buy", "0.5", price="1.001", instrument=SYM)
        assert a.cancel_all(instrument=SYM)["cancelled"]
        assert admin.admin_snapshot(SYM)["snapshots"][0]["instrument"] == SYM
        assert "runs" in admin.admin_settlement(instrument=SYM)
        # the read side (eventually consistent: the trade is there once projected)
        deadline = time.monotonic() + 10
        while not any(t["trade_id"] == fill["trades"][0]["trade_id"] for t in a.trades(SYM, limit=50)["trades"]):
            assert time.monotonic() < deadline, "trade not projected in 10 s"
            time.sleep(0.1)
        assert a.orderbook(SYM, levels=5)["instrument"] == SYM
        assert "aggregates" in a.analytics(SYM, interval=60)
        assert isinstance(a.candles(SYM, interval="1m", limit=5), dict)
        assert a.ticker(SYM)["instrument"] == SYM
        assert {i["symbol"] for i in a.instruments()["instruments"]} >= {"BTC-USD", "ETH-USD", SYM}
        assert a.positions("client-A")["client_id"] == "client-A"
        assert a.orders(instrument=SYM, limit=5)["orders"]
        assert "fills" in a.fills(instrument=SYM)
        assert "settlements" in a.settlements(instrument=SYM)
        assert a.health()["status"] == "healthy"
        assert "orders_received_total" in admin.metrics()  # the gateway's /metrics needs an admin key


async def test_order_socket_places_cancels_and_raises_typed_errors(system):
    async with OrderSocket(GATEWAY, system.keys["client-A"]) as ws:
        placed = await asyncio.gather(*(ws.place_order("buy", Decimal("0.01"), price=Decimal("1.001") + i * TICK,
                                                       instrument=SYM) for i in range(20)))
        assert all(p["type"] == "order_accepted" and p["order"]["status"] == "open" for p in placed)
        assert placed[3]["order"]["price"] == Decimal("1.004")
        again = await ws.place_order("buy", Decimal("0.01"), price=Decimal("1.001"), instrument=SYM,
                                     idempotency_key="ws-key-1")
        replay = await ws.place_order("buy", Decimal("0.01"), price=Decimal("1.001"), instrument=SYM,
                                      idempotency_key="ws-key-1")
        assert replay["order"]["order_id"] == again["order"]["order_id"] and replay.get("replayed") is True
        cancelled = await ws.cancel_order(placed[0]["order"]["order_id"])
        assert cancelled["order"]["status"] == "cancelled"
        with pytest.raises(Conflict) as e:
            await ws.cancel_order(placed[0]["order"]["order_id"])
        assert e.value.code == "order_closed"
        with pytest.raises(InvalidRequest) as e:
            await ws.place_order("buy", "1", price="1.0001", instrument=SYM)
        assert (e.value.code, e.value.field) == ("off_tick", "price")
        assert (await ws.ping())["type"] == "pong"
        for p in placed[1:] + [again]:
            await ws.cancel_order(p["order"]["order_id"])


async def _random_orders(client: AsyncExchangeClient, who: str, n: int, rng: random.Random) -> int:
    placed = 0
    for _ in range(n):
        side = rng.choice(("buy", "sell"))
        if rng.random() < 0.1:
            await client.place_order(side, Decimal(rng.randint(1, 30)) / 100, type="market", instrument=SYM)
        else:
            # 100 +- 40 ticks, so the whole book fits in the 100 levels the REST view returns
            price = Decimal(100) + rng.randint(-40, 40) * TICK
            await client.place_order(side, Decimal(rng.randint(1, 50)) / 100, price=price, instrument=SYM)
        placed += 1
    return placed


async def _rest_book_at_rest(client: AsyncExchangeClient, timeout: float = 15.0) -> dict:
    """GET /market/orderbook once its seq stops moving (all orders projected)."""
    deadline = time.monotonic() + timeout
    prev = None
    while True:
        book = await client.orderbook(SYM, levels=100)
        if prev is not None and book["seq"] == prev["seq"]:
            return book
        assert time.monotonic() < deadline, "the read view kept moving"
        prev = book
        await asyncio.sleep(0.5)


def _rest_levels(book: dict) -> dict:
    return {side: [{k: r[k] for k in ("price", "quantity", "cumulative")} for r in book[side]]
            for side in ("bids", "asks")}


async def test_live_book_equals_rest_after_1000_random_orders(system):
    rng = random.Random(16)
    clients = [AsyncExchangeClient(GATEWAY, system.keys[w]) for w in ("client-A", "client-B", "client-C")]
    try:
        async with LiveOrderBook(GATEWAY, SYM) as book:
            counts = await asyncio.gather(*(_random_orders(clients[i % 3], "", 50, random.Random(rng.random()))
                                            for i in range(20)))
            assert sum(counts) == 1000
            rest = await _rest_book_at_rest(clients[0])
            await book.wait_for_seq(rest["seq"])
            assert book.as_of_seq == rest["seq"]
            assert book.as_rest(100) == _rest_levels(rest)
            assert book.gaps == 0 and book.reconnects == 0
    finally:
        for c in clients:
            await c.aclose()


async def test_dropped_socket_is_healed(system):
    async with AsyncExchangeClient(GATEWAY, system.keys["client-A"]) as a, \
            AsyncExchangeClient(GATEWAY, system.keys["client-B"]) as b:
        async with LiveOrderBook(GATEWAY, SYM) as book:
            for i in range(3):
                await book.drop_connection()
                # orders while the socket is down or reconnecting: the book must catch up on them
                await _random_orders(a if i % 2 else b, "", 30, random.Random(i))
                rest = await _rest_book_at_rest(a)
                await book.wait_for_seq(rest["seq"])
                assert book.as_rest(100) == _rest_levels(rest)
            assert book.reconnects >= 3 and book.snapshots >= 4


def _run_example(args: list[str], seconds: float, key: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EXCHANGE_URL": GATEWAY, "EXCHANGE_API_KEY": key, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args, "--seconds", str(seconds)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=seconds + 30)


async def test_examples_run_without_error(system):
    async def trade_a_little():
        async with AsyncExchangeClient(GATEWAY, system.keys["client-C"]) as c:
            for i in range(10):
                await _random_orders(c, "", 5, random.Random(100 + i))
                await asyncio.sleep(0.3)

    watcher = asyncio.to_thread(_run_example, ["examples/watch_book.py", "--instrument", SYM, "--every", "0.5"], 4,
                                system.keys["client-A"])
    maker = asyncio.to_thread(_run_example, ["examples/market_maker.py", "--instrument", SYM, "--interval", "0.3",
                                             "--spread-ticks", "60", "--price", "100"], 4, system.keys["client-B"])
    watched, made, _ = await asyncio.gather(watcher, maker, trade_a_little())
    assert watched.returncode == 0, watched.stderr[-2000:]
    assert f"--- {SYM} seq" in watched.stdout and "done: seq" in watched.stdout, watched.stdout[-1000:]
    assert made.returncode == 0, made.stderr[-2000:]
    assert "bid " in made.stdout and "stopped: cancelled" in made.stdout, made.stdout[-1000:]
    assert "Traceback" not in watched.stderr + made.stderr
