"""Redis key names of the views (one place; prefix from settings, default "q:").

Per instrument I:
  {p}{I}:seq             string   last journal seq applied to every view of I
  {p}{I}:ready           string   "1": the views of I are complete (built from the journal's start and
                                  caught up once); absent in an empty or restarted Redis and during a
                                  rebuild, when reads answer 503 (issue 20: an empty Redis was served
                                  as the truth). Written in the transaction that completes a rebuild.
  {p}{I}:ts              string   ts (ns) of that event: the "as of" time of the views
  {p}{I}:bids / :asks    zset     L2 levels: score = price ticks, member "ticks:lots" (level total)
  {p}{I}:taking          string   JSON list of order ids still matching (see projection.py)
  {p}{I}:trades          list     recent trades, API JSON, newest first, capped
  {p}{I}:last            string   last trade (JSON array LastTrade): the mark price
  {p}{I}:c:{res}         zset     trade buckets of res seconds (60, 300, 900, 3600):
                                  score = bucket start, member "start:count:qty:notional:sum_price:low:high:open:close"
  {p}{I}:clients         set      clients with orders in I (to purge I's part of per-client views)
Orders and clients:
  {p}orders              hash     order_id -> JSON array OrderRec (ticks/lots, remaining, book state)
  {p}pos:{C}             hash     instrument -> JSON array Position (avg-cost, ticks*lots)
  {p}co:{C}:{W}          zset     C's orders, W in all|open|closed, score 0, member "created_ts(19)|order_id"
  {p}co:{C}:{I}:{W}      zset     the same per instrument
  {p}cf:{C}              zset     C's fills, score 0, member "ts(19)|trade_id|role|<fill JSON>", capped
  {p}cf:{C}:{I}          zset     the same per instrument
  {p}closed              zset     orders by closing time (s), member "C\nI\n<co member>" (retention.py)
Members sort lexicographically by time, so ZRANGE ... BYLEX REV gives newest first and an
exclusive lex bound is a stable pagination cursor.
"""

from __future__ import annotations


class Keys:
    __slots__ = ("p", "orders", "closed")

    def __init__(self, prefix: str = "q:"):
        self.p = prefix
        self.orders = f"{prefix}orders"
        self.closed = f"{prefix}closed"

    def seq(self, i: str) -> str:
        return f"{self.p}{i}:seq"

    def ready(self, i: str) -> str:
        return f"{self.p}{i}:ready"

    def ts(self, i: str) -> str:
        return f"{self.p}{i}:ts"

    def bids(self, i: str) -> str:
        return f"{self.p}{i}:bids"

    def asks(self, i: str) -> str:
        return f"{self.p}{i}:asks"

    def side(self, i: str, side: str) -> str:
        return self.bids(i) if side == "buy" else self.asks(i)

    def taking(self, i: str) -> str:
        return f"{self.p}{i}:taking"

    def trades(self, i: str) -> str:
        return f"{self.p}{i}:trades"

    def last(self, i: str) -> str:
        return f"{self.p}{i}:last"

    def candles(self, i: str, res: int) -> str:
        return f"{self.p}{i}:c:{res}"

    def clients(self, i: str) -> str:
        return f"{self.p}{i}:clients"

    def pos(self, c: str) -> str:
        return f"{self.p}pos:{c}"

    def client_orders(self, c: str, which: str, i: str | None = None) -> str:
        return f"{self.p}co:{c}:{which}" if i is None else f"{self.p}co:{c}:{i}:{which}"

    def client_fills(self, c: str, i: str | None = None) -> str:
        return f"{self.p}cf:{c}" if i is None else f"{self.p}cf:{c}:{i}"

    def instrument_keys(self, i: str) -> list[str]:
        from query_service.records import RESOLUTIONS

        return [
            self.seq(i),
            self.ready(i),
            self.ts(i),
            self.bids(i),
            self.asks(i),
            self.taking(i),
            self.trades(i),
            self.last(i),
            self.clients(i),
            *(self.candles(i, r) for r in RESOLUTIONS),
        ]
