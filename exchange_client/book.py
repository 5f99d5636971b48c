"""A live order book kept from WS /stream: a snapshot, then updates whose `prev_seq` must be
the `seq` the book holds. On a gap (an update that does not continue the book) it
resubscribes, which makes the server send a fresh snapshot; on a dropped connection it
reconnects and resubscribes by itself. Prices and quantities are Decimals.

    async with LiveOrderBook("http://127.0.0.1:3000", "BTC-USD") as book:
        await book.wait_for_seq(1234)
        print(book.best_bid(), book.best_ask(), book.seq)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from decimal import Decimal
from typing import Callable

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from exchange_client import codec

log = logging.getLogger("exchange_client.book")


def stream_url(url: str) -> str:
    """http://host:port -> ws://host:port/stream (a ws:// URL is taken as it is)."""
    if url.startswith(("ws://", "wss://")):
        return url
    base = url.rstrip("/")
    return ("wss://" + base[8:] if base.startswith("https://") else "ws://" + base.removeprefix("http://")) + "/stream"


class BookState:
    """The book and its seq; `apply` takes one /stream message (pure: no I/O)."""

    def __init__(self, instrument: str):
        self.instrument = instrument
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        # seq of the last orderbook message applied: the next update's prev_seq must equal it.
        # None: waiting for a snapshot.
        self.seq: int | None = None
        # The journal seq the book is known to reflect: seq, or later when a heartbeat says the
        # instrument moved on without changing the book (trades that left no level changed,
        # rejections, ...). GET /market/orderbook's seq is comparable with this one.
        self.as_of_seq: int | None = None

    def apply(self, msg: dict) -> str:
        """'snapshot', 'update', 'heartbeat', 'ignored' or 'gap' (the caller must resubscribe)."""
        kind = msg.get("type")
        if kind == "heartbeat":
            # Sent after every update the replica had for seqs up to the one it names (one queue per
            # connection, in order), so a book in sync is the book at that seq.
            at = (msg.get("seqs") or {}).get(self.instrument)
            if self.seq is not None and isinstance(at, int) and at > (self.as_of_seq or 0):
                self.as_of_seq = at
                return "heartbeat"
            return "ignored"
        if kind != "orderbook" or msg.get("instrument") != self.instrument:
            return "ignored"
        if msg.get("action") == "snapshot":
            self.bids = {Decimal(r["price"]): Decimal(r["quantity"]) for r in msg["bids"]}
            self.asks = {Decimal(r["price"]): Decimal(r["quantity"]) for r in msg["asks"]}
            self.seq = self.as_of_seq = msg["seq"]
            return "snapshot"
        if self.seq is None:
            return "ignored"  # updates before the (re)snapshot: the snapshot will cover them
        if msg.get("prev_seq") != self.seq:
            self.seq = self.as_of_seq = None
            return "gap"
        for ch in msg.get("changes", ()):
            side = self.bids if ch["side"] == "buy" else self.asks
            price, qty = Decimal(ch["price"]), Decimal(ch["quantity"])
            if qty == 0:
                side.pop(price, None)
            else:
                side[price] = qty
        self.seq = msg["seq"]
        self.as_of_seq = max(self.seq, self.as_of_seq or 0)
        return "update"

    def levels(self, side: str, depth: int | None = None) -> list[tuple[Decimal, Decimal]]:
        """Best first: bids descending, asks ascending."""
        book = self.bids if side in ("buy", "bids") else self.asks
        rows = sorted(book.items(), reverse=book is self.bids)
        return rows if depth is None else rows[:depth]

    def as_rest(self, depth: int = 20) -> dict:
        """The book in GET /market/orderbook's shape (bids/asks with cumulative), for comparison."""
        out = {}
        for name in ("bids", "asks"):
            cum, rows = Decimal(0), []
            for price, qty in self.levels(name, depth):
                cum += qty
                rows.append({"price": price, "quantity": qty, "cumulative": cum})
            out[name] = rows
        return out

    def best_bid(self) -> Decimal | None:
        return max(self.bids) if self.bids else None

    def best_ask(self) -> Decimal | None:
        return min(self.asks) if self.asks else None


class LiveOrderBook(BookState):
    """BookState fed by a /stream connection that it keeps alive."""

    def __init__(self, url: str, instrument: str = "BTC-USD", *, api_key: str | None = None,
                 on_update: Callable[["LiveOrderBook", str], None] | None = None, reconnect_delay: float = 0.2):
        super().__init__(instrument)
        self.url = stream_url(url)
        self.api_key = api_key
        self.on_update = on_update
        self.reconnect_delay = reconnect_delay
        self.gaps = 0  # updates that did not continue the book (each one resubscribed)
        self.reconnects = 0
        self.snapshots = 0
        self._ws = None
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Condition()
        self._closing = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self, timeout: float = 10.0) -> "LiveOrderBook":
        self._task = asyncio.create_task(self._run())
        await self.wait_until(lambda: self.seq is not None, timeout)
        return self

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.close()

    async def drop_connection(self) -> None:
        """Close the socket under the book (as a network failure would): it reconnects by itself."""
        if self._ws is not None:
            self._ws.transport.abort()

    # ------------------------------------------------------------------ waiting
    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async def wait():
            async with self._changed:
                await self._changed.wait_for(predicate)
        await asyncio.wait_for(wait(), timeout)

    async def wait_for_seq(self, seq: int, timeout: float = 15.0) -> None:
        """Until the book reflects journal seq `seq` or later (e.g. the seq of a REST answer; a
        heartbeat, every few seconds, confirms a seq that changed nothing in the book)."""
        await self.wait_until(lambda: self.seq is not None and (self.as_of_seq or 0) >= seq, timeout)

    # ------------------------------------------------------------------ the connection
    async def _subscribe(self, ws) -> None:
        msg = {"type": "subscribe", "channels": ["orderbook"], "instrument": self.instrument}
        await ws.send(codec.dumps(msg))

    async def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        delay = self.reconnect_delay
        while not self._closing:
            try:
                async with connect(self.url, additional_headers=headers, max_size=2**24) as ws:
                    self._ws = ws
                    self.seq = self.as_of_seq = None
                    await self._subscribe(ws)
                    delay = self.reconnect_delay
                    async for raw in ws:
                        await self._on_message(ws, codec.loads(raw))
            except (ConnectionClosed, InvalidHandshake, OSError, asyncio.TimeoutError) as exc:
                if self._closing:
                    return
                self.reconnects += 1
                self.seq = self.as_of_seq = None
                log.info("stream connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _on_message(self, ws, msg: dict) -> None:
        what = self.apply(msg)
        if what == "ignored":
            if msg.get("type") == "error":
                log.warning("stream error: %s", msg.get("error"))
            return
        if what == "gap":
            # Unsubscribe + subscribe: the server drops this connection's book and sends a new snapshot.
            self.gaps += 1
            log.info("gap in %s (prev_seq %s); resubscribing", self.instrument, msg.get("prev_seq"))
            await ws.send(codec.dumps({"type": "unsubscribe", "channels": ["orderbook"],
                                       "instrument": self.instrument}))
            await self._subscribe(ws)
            return
        if what == "snapshot":
            self.snapshots += 1
        if self.on_update is not None and what != "heartbeat":
            self.on_update(self, what)
        async with self._changed:
            self._changed.notify_all()
