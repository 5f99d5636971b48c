"""Redis key names of the views (one place; prefix from settings, default "q:").

Every key belongs to ONE instrument and carries the instrument as a Redis Cluster hash tag,
"{p}{I}:...": all keys of an instrument hash to one slot, so the projector's WATCH/MULTI batch
of that instrument (which touches its book, records, client indexes and fills together) is a
single-slot transaction on a Redis Cluster as on a single Redis (issue 14). Nothing is shared
between instruments: a client's views across instruments are merged at read time
(query_service/views.py), from at most one key per instrument.

Per instrument I (T = "{p}{I}", e.g. "q:{BTC-USD}"):
  T:seq                  string   last journal seq applied to every view of I (the projector's WATCH key)
  T:ready                string   "1": the views of I are complete (built from the journal's start and
                                  caught up once); absent in an empty or restarted Redis and during a
                                  rebuild, when reads answer 503 (issue 20: an empty Redis was served
                                  as the truth). Written in the transaction that completes a rebuild.
  T:ts                   string   ts (ns) of that event: the "as of" time of the views
  T:bids / T:asks        zset     L2 levels: score = price ticks, member "ticks:lots" (level total)
  T:taking               string   JSON list of order ids still matching (see projection.py)
  T:trades               list     recent trades, API JSON, newest first, capped
  T:last                 string   last trade (JSON array LastTrade): the mark price
  T:c:{res}              zset     trade buckets of res seconds (60, 300, 900, 3600):
                                  score = bucket start, member "start:count:qty:notional:sum_price:low:high:open:close"
  T:clients              set      clients with orders in I (to purge I's part of per-client views)
  T:orders               hash     order_id -> JSON array OrderRec (ticks/lots, remaining, book state)
  T:pos                  hash     client -> JSON array Position (avg-cost, ticks*lots)
  T:co:{C}:{W}           zset     C's orders in I, W in open|closed, score 0, member "created_ts(19)|order_id"
                                  (a listing of all of C's orders merges the two on read)
  T:cf:{C}               zset     C's fills in I, score 0, member "ts(19)|trade_id|role|<fill JSON>", capped
  T:closed               zset     I's orders by closing time (s), member "C\\n<co member>" (retention.py)
Members sort lexicographically by time, so ZRANGE ... BYLEX REV gives newest first and an
exclusive lex bound is a stable pagination cursor.

Layout history: before issue 14 records, positions and the cross-instrument client indexes
were global keys ("{p}orders", "{p}co:{C}:all", ...). Views of that layout are not read: the
new seq keys do not exist, so the projector rebuilds every instrument from the journal, and
drops the old keys once (`LEGACY_MARKER`, see projector.py). Until issue 19 a third client index
T:co:{C}:all held open and closed orders together; it is no longer written, and a replica drops
what is left of it at start (projector.py `_drop_all_indexes`).
"""

from __future__ import annotations

LEGACY_MARKER = "orders"  # "{p}orders": the global record hash of the old layout


class Keys:
    __slots__ = ("p",)

    def __init__(self, prefix: str = "q:"):
        self.p = prefix

    def base(self, i: str) -> str:
        """The prefix every key of instrument i starts with (hash tag included)."""
        return f"{self.p}{{{i}}}:"

    def seq(self, i: str) -> str:
        return f"{self.p}{{{i}}}:seq"

    def ready(self, i: str) -> str:
        return f"{self.p}{{{i}}}:ready"

    def ts(self, i: str) -> str:
        return f"{self.p}{{{i}}}:ts"

    def bids(self, i: str) -> str:
        return f"{self.p}{{{i}}}:bids"

    def asks(self, i: str) -> str:
        return f"{self.p}{{{i}}}:asks"

    def side(self, i: str, side: str) -> str:
        return self.bids(i) if side == "buy" else self.asks(i)

    def taking(self, i: str) -> str:
        return f"{self.p}{{{i}}}:taking"

    def trades(self, i: str) -> str:
        return f"{self.p}{{{i}}}:trades"

    def last(self, i: str) -> str:
        return f"{self.p}{{{i}}}:last"

    def candles(self, i: str, res: int) -> str:
        return f"{self.p}{{{i}}}:c:{res}"

    def clients(self, i: str) -> str:
        return f"{self.p}{{{i}}}:clients"

    def orders(self, i: str) -> str:
        return f"{self.p}{{{i}}}:orders"

    def closed(self, i: str) -> str:
        return f"{self.p}{{{i}}}:closed"

    def pos(self, i: str) -> str:
        return f"{self.p}{{{i}}}:pos"

    def client_orders(self, c: str, which: str, i: str) -> str:
        return f"{self.p}{{{i}}}:co:{c}:{which}"

    def client_fills(self, c: str, i: str) -> str:
        return f"{self.p}{{{i}}}:cf:{c}"

    def legacy(self) -> str:
        return f"{self.p}{LEGACY_MARKER}"

    def instrument_keys(self, i: str) -> list[str]:
        """Every key of i that is not per client."""
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
            self.orders(i),
            self.closed(i),
            self.pos(i),
            *(self.candles(i, r) for r in RESOLUTIONS),
        ]
