"""A small market maker: quotes one bid and one ask around a reference price and requotes
when the market moves.

Reference price: the mid of the best bid and ask of the OTHER participants (own quotes are
taken out of the live book), else the last trade, else --price. When the reference moves by
at least one tick, both quotes are moved with an amend (POST /orders/{id}/amend): one request,
the order keeps its id and that side is never without a quote (a cancel/replace leaves a gap
between the two). A quote that was filled meanwhile (409 order_closed) is replaced by a new
order; an amend refused as post_only_would_cross leaves the quote where it was until the next
check. Every new order carries an idempotency key (the client adds one), so a retried request
never places a second quote. On exit it cancels its quotes.

    set -a; . ./.state/run/demo-keys.env; set +a
    .venv/bin/python examples/market_maker.py --api-key "$EXCHANGE_KEY_CLIENT_A" --seconds 30

--url (default $EXCHANGE_URL or http://127.0.0.1:3000), --api-key (default $EXCHANGE_API_KEY).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from decimal import Decimal

from exchange_client import AsyncExchangeClient, Conflict, LiveOrderBook, NotFound


class MarketMaker:
    def __init__(self, client: AsyncExchangeClient, book: LiveOrderBook, tick: Decimal, lot: Decimal,
                 spread_ticks: int, size: Decimal, fallback: Decimal):
        self.client, self.book = client, book
        self.tick, self.lot = tick, lot
        self.half_spread = tick * spread_ticks
        self.size = size
        self.fallback = fallback
        self.quotes: dict[str, dict | None] = {"buy": None, "sell": None}  # side -> {order_id, price}
        self.last_trade: Decimal | None = None
        self.requotes = 0
        self.amends = 0  # requotes done by amending the resting quote
        self.fills = 0

    def reference(self) -> Decimal:
        own = {q["price"] for q in self.quotes.values() if q}
        bids = [p for p in self.book.bids if p not in own]
        asks = [p for p in self.book.asks if p not in own]
        if bids and asks:
            mid = (max(bids) + min(asks)) / 2
        else:
            mid = self.last_trade or self.fallback
        return (mid / self.tick).quantize(Decimal(1)) * self.tick

    async def quote(self, side: str, price: Decimal) -> None:
        old = self.quotes[side]
        if old is not None:
            try:
                r = await self.client.amend_order(old["order_id"], price=price)
            except Conflict as e:
                if e.code == "post_only_would_cross":
                    return  # the quote stays where it was; the next check tries again
                self.fills += 1  # order_closed: filled before we could move it
            except NotFound:
                self.fills += 1
            else:
                self.amends += 1
                if r["order"]["status"] in ("open", "partially_filled"):
                    self.quotes[side] = {"order_id": old["order_id"], "price": price}
                    return
            self.quotes[side] = None
        r = await self.client.place_order(side, self.size, type="limit", price=price,
                                          instrument=self.book.instrument, post_only=True)
        order = r["order"]
        if order["status"] in ("open", "partially_filled"):
            self.quotes[side] = {"order_id": order["order_id"], "price": price}

    async def withdraw(self) -> int:
        """Cancel our quotes (only those: the key's other orders are not ours to touch)."""
        n = 0
        for side, q in self.quotes.items():
            if q is not None:
                try:
                    await self.client.cancel_order(q["order_id"])
                    n += 1
                except (Conflict, NotFound):
                    pass
                self.quotes[side] = None
        return n

    async def step(self) -> None:
        ref = self.reference()
        want = {"buy": ref - self.half_spread, "sell": ref + self.half_spread}
        for side, price in want.items():
            q = self.quotes[side]
            if q is None or q["price"] != price:
                await self.quote(side, price)
                self.requotes += 1


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("EXCHANGE_URL", "http://127.0.0.1:3000"))
    ap.add_argument("--api-key", default=os.environ.get("EXCHANGE_API_KEY"))
    ap.add_argument("--instrument", default="BTC-USD")
    ap.add_argument("--spread-ticks", type=int, default=50)
    ap.add_argument("--size", default="0.01")
    ap.add_argument("--price", default="70000", help="reference when the book and the tape are empty")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between requote checks")
    args = ap.parse_args()
    if not args.api_key:
        ap.error("an API key is needed: --api-key or EXCHANGE_API_KEY")

    async with AsyncExchangeClient(args.url, args.api_key) as client:
        specs = {i["symbol"]: i for i in (await client.instruments())["instruments"]}
        spec = specs[args.instrument]
        trades = (await client.trades(args.instrument, limit=1))["trades"]
        async with LiveOrderBook(args.url, args.instrument) as book:
            mm = MarketMaker(client, book, spec["tick_size"], spec["lot_size"], args.spread_ticks,
                             Decimal(args.size), Decimal(args.price))
            mm.last_trade = trades[0]["price"] if trades else None
            deadline = time.monotonic() + args.seconds if args.seconds else None
            try:
                while deadline is None or time.monotonic() < deadline:
                    await mm.step()
                    q = mm.quotes
                    print(f"seq {book.seq}: ref {mm.reference()} bid {q['buy'] and q['buy']['price']} "
                          f"ask {q['sell'] and q['sell']['price']} (requotes {mm.requotes}, amends {mm.amends}, "
                          f"fills {mm.fills})", flush=True)
                    await asyncio.sleep(args.interval)
            finally:
                cancelled = await mm.withdraw()
                print(f"stopped: cancelled {cancelled} quote(s); requotes {mm.requotes}, amends {mm.amends}, "
                      f"fills {mm.fills}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
