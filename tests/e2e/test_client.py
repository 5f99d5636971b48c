"""exchange_client against the whole exchange through the gateway (the e2e `system`):
every route from both clients, exact decimals, safe retries by idempotency key, typed
errors; the live book equals GET /market/orderbook at the same seq after 1,000 random
orders and heals after its socket is dropped; the examples run without error."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from exchange_client import (
    AsyncExchangeClient,
    Conflict,
    ExchangeClient,
    InvalidRequest,
    LiveOrderBook,
    NotFound,
    OrderSocket,
    Unauthorized,
    results,
)
from tests.e2e.conftest import GATEWAY
from tests.support.services import create_key

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
        with pytest.raises(NotFound):  # another client's order answers like an unknown one
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


async def _move_the_market(system, maker_key: str) -> int:
    """Once the maker quotes, take the three best ask levels of the others (not the maker's
    quotes): their mid rises by at least 1.5 ticks, so the maker must requote (by amending)."""
    mover_key = await create_key("client-mover")  # its own client: no self-trade prevention with C's asks
    async with AsyncExchangeClient(GATEWAY, maker_key) as maker, AsyncExchangeClient(GATEWAY, mover_key) as mover:
        deadline = time.monotonic() + 3
        quotes: set = set()
        while len(quotes) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            quotes = {o["price"] for o in (await maker.orders(status="open", instrument=SYM))["orders"]}
        taken = 0
        for _ in range(3):
            asks = [lv for lv in (await mover.orderbook(SYM, levels=100))["asks"] if lv["price"] not in quotes]
            if not asks:
                break
            await mover.place_order("buy", asks[0]["quantity"], price=asks[0]["price"], instrument=SYM,
                                    time_in_force="IOC")
            taken += 1
        # C's random orders can refill those levels between two of the maker's checks (it once saw
        # the same reference all run): a bid two ticks above the others' best, held for a while,
        # moves their mid by a tick until it is cancelled.
        book = await mover.orderbook(SYM, levels=100)
        bids = [Decimal(str(lv["price"])) for lv in book["bids"] if lv["price"] not in quotes]
        asks = [Decimal(str(lv["price"])) for lv in book["asks"] if lv["price"] not in quotes]
        if bids and asks:
            price = max(bids) + 2 * Decimal("0.001")
            while price in {Decimal(str(q)) for q in quotes}:
                price += Decimal("0.001")
            if price < min(asks):
                bid = (await mover.place_order("buy", Decimal("0.01"), price=price, instrument=SYM,
                                               post_only=True))["order"]
                await asyncio.sleep(1.5)
                if bid["status"] == "open":
                    with contextlib.suppress(Conflict, NotFound):  # traded meanwhile: nothing to cancel
                        await mover.cancel_order(bid["order_id"])
        return taken


async def test_examples_run_without_error(system):
    async def trade_a_little():
        async with AsyncExchangeClient(GATEWAY, system.keys["client-C"]) as c:
            for i in range(10):
                await _random_orders(c, "", 5, random.Random(100 + i))
                await asyncio.sleep(0.3)

    async with AsyncExchangeClient(GATEWAY, system.keys["client-B"]) as b:
        await b.cancel_all(instrument=SYM)  # B's open orders on SYM are then the maker's quotes only
    watcher = asyncio.to_thread(_run_example, ["examples/watch_book.py", "--instrument", SYM, "--every", "0.5"], 4,
                                system.keys["client-A"])
    # 7 s: the mover needs the maker's first quotes before it moves the market, and on a loaded
    # machine (CI) the maker's start took long enough that 4 s left it no check after the move.
    maker = asyncio.to_thread(_run_example, ["examples/market_maker.py", "--instrument", SYM, "--interval", "0.3",
                                             "--spread-ticks", "60", "--price", "100"], 7, system.keys["client-B"])
    async def move_twice():
        # Twice: C's random orders can refill the taken levels before the maker's next check (one
        # full-suite run in four saw the same reference all run with a single move).
        await _move_the_market(system, system.keys["client-B"])
        await _move_the_market(system, system.keys["client-B"])

    watched, made, _, _ = await asyncio.gather(watcher, maker, trade_a_little(), move_twice())
    assert watched.returncode == 0, watched.stderr[-2000:]
    assert f"--- {SYM} seq" in watched.stdout and "done: seq" in watched.stdout, watched.stdout[-1000:]
    assert made.returncode == 0, made.stderr[-2000:]
    assert "bid " in made.stdout and "stopped: cancelled" in made.stdout, made.stdout[-1000:]
    # the market moved under the maker (_move_the_market): it requoted by amending its quotes
    amends = int(re.search(r"stopped: .* amends (\d+)", made.stdout).group(1))
    assert amends > 0, made.stdout[-2000:]
    assert "Traceback" not in watched.stderr + made.stderr


def _wait_order(client: ExchangeClient, order_id: str, status: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        order = client.get_order(order_id)["order"]
        if order["status"] == status:
            return order
        assert time.monotonic() < deadline, f"{order_id} still {order['status']} after {timeout} s"
        time.sleep(0.1)


def _closed_reason(client: ExchangeClient, order_id: str, timeout: float = 10.0) -> str:
    """The cancel_reason of a closed order, from the read view (the committed order has none)."""
    deadline = time.monotonic() + timeout
    while True:
        for o in client.orders(status="closed", instrument=SYM, limit=100)["orders"]:
            if o["order_id"] == order_id and o.get("cancel_reason"):
                return o["cancel_reason"]
        assert time.monotonic() < deadline, f"{order_id} not closed in the read view after {timeout} s"
        time.sleep(0.1)


def test_amend_iceberg_gtd_and_server_time(system):
    with ExchangeClient(GATEWAY, system.keys["client-A"]) as a, \
            ExchangeClient(GATEWAY, system.keys["client-B"]) as b:
        # far below the other tests' prices (100 +- 40 ticks), so nothing else trades with these
        placed = a.place_order("buy", Decimal("0.50"), price=Decimal("2.000"), instrument=SYM)["order"]
        oid = placed["order_id"]
        # a pure decrease keeps the order; quantity is the new total
        r = a.amend_order(oid, quantity=Decimal("0.3"))
        assert r["order"]["order_id"] == oid and r["order"]["quantity"] == Decimal("0.3")
        assert isinstance(r["order"]["quantity"], Decimal) and r["trades"] == []
        r = a.amend_order(oid, price=Decimal("2.005"), quantity=Decimal("0.40"))
        assert (r["order"]["price"], r["order"]["quantity"]) == (Decimal("2.005"), Decimal("0.4"))
        assert a.get_order(oid)["order"]["price"] == Decimal("2.005")
        with pytest.raises(InvalidRequest) as e:
            a.amend_order(oid, price=Decimal("2.005"), quantity=Decimal("0.4"))  # changes nothing
        assert e.value.code == "invalid_amend"
        with pytest.raises(NotFound):
            b.amend_order(oid, price=Decimal("2.001"))  # another client's order: as if unknown
        with pytest.raises(InvalidRequest) as e:
            a.amend_order(oid, price="2.0001")
        assert (e.value.code, e.value.field) == ("off_tick", "price")
        a.cancel_order(oid)
        with pytest.raises(Conflict) as e:
            a.amend_order(oid, quantity=Decimal("0.1"))
        assert e.value.code == "order_closed"

        # the server's clock, and a GTD order that expires by it
        now = a.server_time()
        assert isinstance(now["epoch_ms"], int) and now["time"].endswith("Z")
        assert abs(now["epoch_ms"] / 1000 - time.time()) < 5, now
        expire = datetime.fromtimestamp(now["epoch_ms"] / 1000 + 1.5, tz=timezone.utc)
        gtd = a.place_order("buy", Decimal("0.1"), price=Decimal("2.000"), instrument=SYM, time_in_force="GTD",
                            expire_time=expire)["order"]
        assert gtd["time_in_force"] == "GTD" and gtd["status"] == "open" and gtd["expire_time"].endswith("Z")
        _wait_order(a, gtd["order_id"], "cancelled")
        assert _closed_reason(a, gtd["order_id"]) == "expired"

        # an iceberg: the owner sees display_quantity, the book only the shown part
        ice = a.place_order("buy", Decimal("1.00"), price=Decimal("2.100"), instrument=SYM,
                            display_quantity=Decimal("0.20"))
        order = ice["order"]
        assert order["display_quantity"] == Decimal("0.2") and isinstance(order["display_quantity"], Decimal)
        deadline = time.monotonic() + 10
        while True:
            level = [lv for lv in a.orderbook(SYM, levels=100)["bids"] if lv["price"] == Decimal("2.1")]
            if level:
                break
            assert time.monotonic() < deadline, "iceberg not in the read view in 10 s"
            time.sleep(0.1)
        assert level[0]["quantity"] == Decimal("0.2"), level  # not 1.00
        a.cancel_order(order["order_id"])


async def test_cancel_after_cancels_the_clients_orders(system):
    key = await create_key("client-dms")  # its own client: the switch cancels every order of the client
    with ExchangeClient(GATEWAY, key) as c:
        oid = c.place_order("buy", Decimal("0.1"), price=Decimal("2.000"), instrument=SYM)["order"]["order_id"]
        armed = c.cancel_after(60_000)
        assert armed["timeout_ms"] == 60_000 and armed["trigger_time"] > armed["current_time"]
        off = c.cancel_after(0)
        assert off["trigger_time"] is None
        await asyncio.sleep(0.5)
        assert c.get_order(oid)["order"]["status"] == "open"  # switched off: nothing cancelled
        c.cancel_after(300)
        await asyncio.to_thread(_wait_order, c, oid, "cancelled")
        assert await asyncio.to_thread(_closed_reason, c, oid) == "cancel_after"
        with pytest.raises(InvalidRequest) as e:
            c.cancel_after(86_400_001)
        assert e.value.field == "timeout_ms"


async def test_order_socket_amend_cancel_all_and_cancel_on_disconnect(system):
    key = await create_key("client-ws-session")
    with ExchangeClient(GATEWAY, key) as rest:
        async with OrderSocket(GATEWAY, key) as ws:
            placed = [await ws.place_order("sell", Decimal("0.10"), price=Decimal("900.000") + i * TICK,
                                           instrument=SYM) for i in range(3)]
            oid = placed[0]["order"]["order_id"]
            r = await ws.amend_order(oid, quantity=Decimal("0.05"))
            assert r["type"] == "amend_accepted" and r["order"]["quantity"] == Decimal("0.05")
            assert isinstance(r["order"]["quantity"], Decimal)
            r = await ws.amend_order(oid, price=Decimal("900.010"))
            assert r["order"]["price"] == Decimal("900.01")
            with pytest.raises(InvalidRequest) as e:
                await ws.amend_order(oid, price=Decimal("900.010"))
            assert e.value.code == "invalid_amend"
            done = await ws.cancel_all(instrument=SYM)
            assert done["type"] == "cancel_all_accepted"
            assert set(done["cancelled"]) == {p["order"]["order_id"] for p in placed}
            with pytest.raises(Conflict) as e:
                await ws.amend_order(oid, price=Decimal("900.020"))
            assert e.value.code == "order_closed"
        # cancel_on_disconnect: the socket's resting orders are cancelled when it closes
        async with OrderSocket(GATEWAY, key, cancel_on_disconnect=True) as ws:
            assert ws.cancel_on_disconnect is True
            kept = (await ws.place_order("sell", Decimal("0.10"), price=Decimal("901.000"), instrument=SYM))["order"]
        await asyncio.to_thread(_wait_order, rest, kept["order_id"], "cancelled")
        assert await asyncio.to_thread(_closed_reason, rest, kept["order_id"]) == "cancel_on_disconnect"
        # without it, they stay
        async with OrderSocket(GATEWAY, key) as ws:
            stays = (await ws.place_order("sell", Decimal("0.10"), price=Decimal("901.000"), instrument=SYM))["order"]
            off = await ws.session(cancel_on_disconnect=False)
            assert off["cancel_on_disconnect"] is False
        await asyncio.sleep(0.5)
        assert rest.get_order(stays["order_id"])["order"]["status"] == "open"
        rest.cancel_order(stays["order_id"])


async def test_typed_client_on_the_stack(system):
    key = await create_key("client-typed")
    async with AsyncExchangeClient(GATEWAY, key, typed=True) as c:
        placed = await c.place_order("buy", Decimal("0.10"), price=Decimal("3.000"), instrument=SYM)
        assert isinstance(placed, results.PlaceResult) and placed.order.price == Decimal(3)
        assert isinstance(placed.order.price, Decimal) and placed.orderbook is not None
        amended = await c.amend_order(placed.order.order_id, quantity=Decimal("0.05"))
        assert isinstance(amended, results.PlaceResult) and amended.order.quantity == Decimal("0.05")
        assert (await c.get_order(placed.order.order_id)).order.quantity == Decimal("0.05")
        now = await c.server_time()
        assert isinstance(now, results.ServerTime) and now.epoch_ms > 0
        switch = await c.cancel_after(0)
        assert isinstance(switch, results.CancelAfterResult) and switch.trigger_time is None
        specs = {i.symbol: i for i in (await c.instruments()).instruments}
        assert specs[SYM].tick_size == TICK
        for view in (await c.orderbook(SYM), await c.trades(SYM), await c.ticker(SYM), await c.orders(),
                     await c.fills(), await c.positions("client-typed")):
            assert isinstance(view, msgspec.Struct), view
        done = await c.cancel_all(instrument=SYM)
        assert isinstance(done, results.CancelAllResult) and done.cancelled == [placed.order.order_id]
