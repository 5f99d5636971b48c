"""Watch an order book live: the client keeps it from WS /stream (snapshot + updates checked
by prev_seq, resubscribing by itself on a gap or a dropped connection) and prints the top.

    .venv/bin/python examples/watch_book.py --instrument BTC-USD --seconds 30

--url (default $EXCHANGE_URL or http://127.0.0.1:3000); --seconds 0 runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from exchange_client import LiveOrderBook


def show(book: LiveOrderBook, depth: int) -> None:
    asks = book.levels("asks", depth)[::-1]
    bids = book.levels("bids", depth)
    print(f"--- {book.instrument} seq {book.seq} ({len(book.bids)} bid / {len(book.asks)} ask levels)")
    for price, qty in asks:
        print(f"        {price:>14} | {qty}")
    for price, qty in bids:
        print(f"  {qty:>12} | {price:<14}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("EXCHANGE_URL", "http://127.0.0.1:3000"))
    ap.add_argument("--instrument", default="BTC-USD")
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    ap.add_argument("--every", type=float, default=1.0, help="print at most this often (s)")
    args = ap.parse_args()

    last = [0.0]

    def on_update(book: LiveOrderBook, what: str) -> None:
        now = time.monotonic()
        if what == "snapshot" or now - last[0] >= args.every:
            last[0] = now
            show(book, args.depth)

    async with LiveOrderBook(args.url, args.instrument, on_update=on_update) as book:
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while deadline is None or time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        print(f"done: seq {book.seq}, {book.snapshots} snapshot(s), {book.gaps} gap(s), "
              f"{book.reconnects} reconnect(s)")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
