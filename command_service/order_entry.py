"""Use cases of the write side: place, cancel, cancel-all, read an order, snapshot.

Each reads like get -> decide -> save: look up what is needed (instrument, ownership,
idempotency), let the instrument's sequencer decide and commit, and answer from what was
committed. HTTP, the command WebSocket and the NATS bridge all call these.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import msgspec

from command_service.edge import (
    AmendRequest,
    CancelAfterRequest,
    CancelAllRequest,
    OrderRequest,
    OrderRow,
    book_view,
    client_order_id_of,
    decode_order_request,
    request_hash,
    spec_for,
    to_amend,
    to_place,
)
from command_service.journal import JournalWriter
from command_service.sequencer import Sequencer, Unavailable
from contracts.api import ApiError, error, iso_ms, json_encoder
from contracts.auth import OPEN, Principal
from contracts.enums import CLOSED_STATUSES, CancelReason, ResultCode, Side
from contracts.instruments import Instruments
from contracts.messages import CancelAll, CancelOrder, TradeExecuted
from contracts.views import order_view, trade_view

REPLAYED = {"Idempotent-Replayed": "true"}
OK = ResultCode.OK
REJECTED = ResultCode.REJECTED
RISK_CODES = frozenset({ResultCode.RISK_MAX_ORDER_NOTIONAL, ResultCode.RISK_MAX_OPEN_ORDERS,
                        ResultCode.RISK_MAX_POSITION})
log = logging.getLogger("command.entry")
# (client_id, client_order_id) -> order_id of orders placed through this node, newest kept:
# a reuse is refused and a cancel by client order id finds a resting order without a database
# read. Entries never go stale (a client order id names one order forever); a miss reads the
# database. 65,536 entries ~ 10 MB.
KNOWN_CLIENT_ORDER_IDS = 65_536


def _order_ids(clock_ms=lambda: time.time_ns() // 1_000_000):
    """UUID-v7 ids (RFC 9562): the creation millisecond, then 74 random bits. Random enough
    that nobody can guess another client's next id (the earlier per-process prefix + counter
    let a trader who saw one id claim the next ones and make another client's orders fail),
    and ordered by time so that every new order lands at the right edge of the orders table's
    primary key instead of on a random page of it (PostgreSQL keeps every order). With random
    (v4) ids, after each checkpoint nearly every upsert dirtied a page of its own: measured on a
    3,000,000-order table, 0.40 full page images and 2.7 KB of WAL per order against none and
    0.35-0.38 KB with these, statements 17 % slower, the index 31 % larger. The price: an id
    tells when its order was placed (public trades carry both orders' ids). One
    os.urandom call per 512 ids: 1.4 us per id, a fifteenth of uuid.uuid4() (21 us)."""
    variant = "89ab"
    while True:
        h = os.urandom(10 * 512).hex()
        for i in range(0, len(h), 20):
            t = f"{clock_ms() & 0xFFFFFFFFFFFF:012x}"
            yield (f"{t[:8]}-{t[8:]}-7{h[i:i + 3]}-{variant[int(h[i + 3], 16) & 3]}{h[i + 4:i + 7]}"
                   f"-{h[i + 7:i + 19]}")


Reply = tuple[int, bytes, dict]


class OrderEntry:
    def __init__(self, instruments: Instruments, journal: JournalWriter, sequencers: dict[str, Sequencer],
                 book_levels: int = 10):
        self.instruments = instruments
        self.journal = journal
        self.sequencers = sequencers
        self.book_levels = book_levels
        # Client order ids (per client) and idempotency keys in flight. One process is the
        # only writer of every instrument it holds, so these plus the committed rows in
        # PostgreSQL are the complete picture: two racing requests cannot both pass. (A
        # client order id is unique per client across instruments: two nodes owning two
        # instruments could each pass one of two simultaneous uses - that client's own
        # problem, see db/migrations/009_client_order_ids.sql.)
        self._reserved_coids: set[tuple[str, str]] = set()
        self._known_coids: dict[tuple[str, str], str] = {}
        self._inflight_keys: dict[tuple[str, str], tuple[bytes, asyncio.Future]] = {}
        self._new_id = _order_ids().__next__
        # Dead man's switches: client_id -> timer. In memory: a restart forgets them (the
        # client's next refresh arms it again); documented in the README.
        self._switches: dict[str, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task] = set()  # forwarded cancel-on-disconnect requests
        # Several nodes (issue 14): commands for an instrument this node does not own go to the
        # owner (command_service/forwarding.py); None = one node, nothing is forwarded.
        self.forwarder = None
        self.nodes = None  # command_service/nodes.py Membership (admin handover)

    def set_forwarder(self, forwarder) -> None:
        self.forwarder = forwarder
        forwarder.entry = self

    def owned_elsewhere(self, instrument: str) -> bool:
        """Another node serves this instrument now (several nodes): its orders rest in that node's book."""
        return self.forwarder is not None and not self.sequencers[instrument].ready

    # ------------------------------------------------------------------ place
    def place_nowait(self, principal: Principal, req: OrderRequest, *, with_book: bool = True, track=None):
        """The common case without an await before the sequencer: no idempotency key and no
        client order id to look up. Returns the sequencer's future of (status, body), or
        None when the request needs `place` (it raises ApiError for a bad request).
        `track`: a dict that gets {the new order's id: its instrument} (cancel-on-disconnect)."""
        if req.idempotency_key is not None or req.client_order_id is not None or req.order_id is not None:
            return None
        if principal.scope == "read":
            principal.require_trade()
        spec = spec_for(self.instruments, req.instrument)
        if self.owned_elsewhere(spec.symbol):
            return None  # `place` forwards it to the owner
        order_id = self._new_id()
        if track is not None:
            track[order_id] = spec.symbol
        cmd = to_place(req, self._client_for(principal, req.client_id), order_id, spec)
        return self.sequencers[spec.symbol].submit(cmd, self._render_place(spec, order_id, with_book))

    async def place(self, principal: Principal, req: OrderRequest, *, with_book: bool = True,
                    track=None, forwarded: bool = False, track_remote: dict | None = None) -> Reply:
        """`track_remote`: a dict that gets {order id: instrument} of an order placed on another node
        (forwarded; the owner chose its id): cancel-on-disconnect cancels it there (cancel_remote)."""
        if not forwarded:
            fut = self.place_nowait(principal, req, with_book=with_book, track=track)
            if fut is not None:
                status, body = await _await(fut)
                return status, body, {}
        principal.require_trade()
        spec = spec_for(self.instruments, req.instrument)
        if not forwarded and self.owned_elsewhere(spec.symbol):
            reply = await self.forwarder.forward(
                spec.symbol, "place", principal, {"body": msgspec.to_builtins(req), "with_book": with_book},
                local=lambda: self.place(principal, req, with_book=with_book, track=track, forwarded=True))
            if track_remote is not None and 200 <= reply[0] < 300:
                order_id = _placed_id(reply[1])
                if order_id is not None:
                    track_remote[order_id] = spec.symbol
            return reply
        client_id = self._client_for(principal, req.client_id)
        coid = client_order_id_of(req)
        order_id = self._new_id()  # always the server's: unguessable, never chosen by a client
        cmd = to_place(req, client_id, order_id, spec, coid)
        seq = self.sequencers[spec.symbol]

        # Reserve the idempotency key and the client's order id BEFORE the first await:
        # a second request arriving while we look them up must find them taken.
        key = req.idempotency_key
        idem = slot = None
        if key is not None:
            h = request_hash(cmd, coid)
            inflight = self._inflight_keys.get((client_id, key))
            if inflight is not None:
                if inflight[0] != h:
                    raise _key_reused()
                status, body = await asyncio.shield(inflight[1])
                return status, body, REPLAYED
            slot = asyncio.get_running_loop().create_future()
            slot.add_done_callback(_consume)  # waiters may be none; never "exception not retrieved"
            self._inflight_keys[(client_id, key)] = (h, slot)
            idem = (client_id, key, h)
        ckey = (client_id, coid) if coid is not None else None
        if ckey is not None:
            if ckey in self._reserved_coids:
                self._release(slot, client_id, key, _duplicate_coid(coid))
                raise _duplicate_coid(coid)
            self._reserved_coids.add(ckey)
        try:
            if idem is not None:
                row = await self.journal.find_idempotent(client_id, key)
                if row is not None:
                    if bytes(row["request_hash"]) != idem[2]:
                        raise _key_reused()
                    answer = (row["status_code"], bytes(row["response"]))
                    slot.set_result(answer)
                    return answer[0], answer[1], REPLAYED
            if ckey is not None and (ckey in self._known_coids
                                     or await self.journal.client_order_id_taken(client_id, coid)):
                raise _duplicate_coid(coid)
            if track is not None:
                track[order_id] = spec.symbol
            status, body = await _await(seq.submit(cmd, self._render_place(spec, order_id, with_book), idem))
            if ckey is not None and status == 201:  # committed (also a rejected order: the id is used)
                known = self._known_coids
                if len(known) >= KNOWN_CLIENT_ORDER_IDS:
                    del known[next(iter(known))]
                known[ckey] = order_id
            if slot is not None:
                slot.set_result((status, body))
            return status, body, {}
        except BaseException as exc:
            if slot is not None and not slot.done():
                slot.set_exception(exc if isinstance(exc, Exception) else ApiError(503, "unavailable", "cancelled"))
            raise
        finally:
            if key is not None:
                self._inflight_keys.pop((client_id, key), None)
            if ckey is not None:
                self._reserved_coids.discard(ckey)

    def _release(self, slot, client_id, key, exc) -> None:
        if slot is not None:
            self._inflight_keys.pop((client_id, key), None)
            slot.set_exception(exc)

    def _render_place(self, spec, order_id: str, with_book: bool):
        levels = self.book_levels

        def render(result, book):
            code = result.code
            if code is not OK and code is not REJECTED:  # REJECTED: 201 with the rejected order
                if code == ResultCode.DUPLICATE_ORDER_ID:
                    return 409, json_encoder.encode(error("duplicate_order_id",
                                                          f"order_id {order_id!r} already exists", "order_id"))
                # a pre-trade risk limit: nothing happened; the field names the limit
                return 409, json_encoder.encode(error("risk_limit", _risk_message(code, spec, book), code.value))
            own = result.orders[0]
            trades = [
                trade_view(spec, e) for e in result.events
                if type(e) is TradeExecuted and (e.taker_order_id == order_id or e.maker_order_id == order_id)
            ]
            body = {"order": order_view(spec, own), "trades": trades}
            if with_book:
                body["orderbook"] = book_view(book, spec, levels)
            return 201, json_encoder.encode(body)

        return render

    # ------------------------------------------------------------------ cancel
    def _resting_for(self, principal: Principal, ident: str):
        """The caller's order named by `ident` - its server order_id, or a client order id
        of the caller placed through this node - as (sequencer, resting state, order_id);
        state None when it is in no book (order_id then is what `ident` resolved to, or
        `ident`). Another client's order is never returned: the database then decides
        whether `ident` is one of the caller's own client order ids."""
        seq, state = self._find_resting(ident)
        if state is not None and principal.may_act_for(state.client_id):
            return seq, state, ident
        if principal.client_id is not None:
            oid = self._known_coids.get((principal.client_id, ident))
            if oid is not None:
                seq, state = self._find_resting(oid)
                return seq, state, oid
        return None, None, ident

    def _closed_here(self, principal: Principal, order_id: str) -> None:
        """409 when the caller's order closed in a batch possibly still committing (the engine
        runs ahead of the database); nothing for another client's (the database decides)."""
        for s in self.sequencers.values():
            hit = s.recently_closed.get(order_id)
            if hit is not None and principal.may_act_for(hit[0]):
                raise ApiError(409, "order_closed", f"order is already {hit[1]}", "order_id")

    def cancel_nowait(self, principal: Principal, order_id: str):
        """A cancel of an order resting in a book needs no database read. Returns the
        sequencer's future of (status, body) - status 0 when the order closed before the
        cancel ran, which `cancel` resolves from the database - or None when the order is
        not resting (then `cancel` looks it up, and answers another client's order exactly
        like an unknown one). `order_id`: the server's id or the caller's client order id."""
        principal.require_trade()
        seq, state, oid = self._resting_for(principal, order_id)
        if state is None:
            self._closed_here(principal, oid)
            return None
        return self._submit_cancel(seq, oid, state.client_id)

    def _submit_cancel(self, seq: Sequencer, order_id: str, owner: str):
        spec = self.instruments.get(seq.instrument)

        def render(result, book):
            if result.code == ResultCode.OK:
                return 200, json_encoder.encode({"order": order_view(spec, result.orders[0])})
            return 0, b""

        return seq.submit(CancelOrder(order_id, owner, seq.instrument, 0), render)

    async def cancel(self, principal: Principal, order_id: str, forwarded: bool = False) -> Reply:
        fut = self.cancel_nowait(principal, order_id)
        if fut is None:
            # Not resting and not recently closed: the cancel goes through the sequencer
            # anyway if the row says open - it then runs after any batch still committing,
            # so the row we re-read below is the truth.
            row = await self._order_row(principal, order_id)
            seq = self.sequencers.get(row["instrument"])
            if seq is None:
                raise _not_found(order_id)
            oid = row["order_id"]  # the server's id (order_id may have been a client order id)
            if not forwarded and self.owned_elsewhere(seq.instrument):
                # Owned by another node (its book holds the order): that node decides.
                return await self.forwarder.forward(
                    seq.instrument, "cancel", principal, {"order_id": oid},
                    local=lambda: self.cancel(principal, oid, forwarded=True))
            if row["status"] in CLOSED_STATUSES:
                raise ApiError(409, "order_closed", f"order is already {row['status']}", "order_id")
            fut = self._submit_cancel(seq, oid, row["client_id"])
        return await self.finish_cancel(principal, order_id, await _await(fut))

    async def finish_cancel(self, principal: Principal, order_id: str, answer: tuple[int, bytes]) -> Reply:
        status, body = answer
        if status:
            return status, body, {}
        row = await self._order_row(principal, order_id)
        if row["status"] in CLOSED_STATUSES:
            raise ApiError(409, "order_closed", f"order is already {row['status']}", "order_id")
        raise ApiError(503, "unavailable", "the order's instrument is recovering; retry", headers={"Retry-After": "1"})

    async def _order_row(self, principal: Principal, order_id: str):
        """The caller's order named by its server order_id or by the caller's own client order
        id (the server id first). Another client's order - by either id - is answered exactly
        like an unknown one."""
        for row in await self.journal.find_orders_named(order_id, principal.client_id):
            if principal.may_act_for(row["client_id"]):
                return row
        raise _not_found(order_id)

    def is_resting(self, order_id: str) -> bool:
        """Is this id a resting order or pending stop of any book (no database read)?"""
        return any(order_id in seq.book for seq in self.sequencers.values())

    def _find_resting(self, order_id: str):
        for seq in self.sequencers.values():
            state = seq.book.get(order_id)
            if state is not None:
                return seq, state
        return None, None

    # ------------------------------------------------------------------ cancel all
    async def cancel_all(self, principal: Principal, req: CancelAllRequest, forwarded: bool = False) -> Reply:
        principal.require_trade()
        client_id = self._client_for(principal, req.client_id)
        if req.instrument is not None:
            symbols = [spec_for(self.instruments, req.instrument).symbol]
        else:
            symbols = list(self.sequencers)

        def render(result, book):
            return 200, [s.order_id for s in result.orders]

        async def remote(sym: str) -> list[str]:
            # The owner's cancel-all of this one instrument, merged into this answer.
            status, body, _ = await self.forwarder.forward(
                sym, "cancel_all", principal, {"client_id": client_id, "instrument": sym,
                                               "side": req.side.value if req.side else None})
            if status != 200:
                raise Unavailable(sym)
            return msgspec.json.decode(body)["cancelled"]

        futures = [asyncio.ensure_future(remote(s)) if not forwarded and self.owned_elsewhere(s)
                   else self.sequencers[s].submit(CancelAll(client_id, s, 0, req.side), render) for s in symbols]
        cancelled, failed = [], []
        for sym, fut in zip(symbols, futures):
            try:
                got = await fut
                cancelled.extend(got if isinstance(got, list) else got[1])
            except (Unavailable, ApiError):
                failed.append(sym)
        body = {"cancelled": cancelled}
        if failed:
            body["unavailable_instruments"] = failed
        return (200 if not failed else 503), json_encoder.encode(body), {}

    # ------------------------------------------------------------------ amend
    def amend_nowait(self, principal: Principal, order_id: str, req: AmendRequest, *, with_book: bool = True):
        """Amend an order resting in a book: the sequencer's future of (status, body) -
        status 0 when the order closed before the amend ran - or None when the order is in
        no book (then `amend` answers from the database). Unknown and another client's
        order get the same 404, so ids leak nothing."""
        principal.require_trade()
        seq, state, order_id = self._resting_for(principal, order_id)
        if state is None:
            self._closed_here(principal, order_id)
            return None
        spec = self.instruments.get(seq.instrument)
        cmd = to_amend(req, order_id, state.client_id, spec)
        if cmd.quantity is not None and cmd.quantity <= state.filled_quantity:
            raise ApiError(400, "invalid_field", "quantity (the new total) must exceed the filled quantity",
                            "quantity")
        levels = self.book_levels

        def render(result, book):
            code = result.code
            if code == ResultCode.OK:
                trades = [trade_view(spec, e) for e in result.events if type(e) is TradeExecuted]
                body = {"order": order_view(spec, result.orders[0]), "trades": trades}
                if with_book:
                    body["orderbook"] = book_view(book, spec, levels)
                return 200, json_encoder.encode(body)
            if code == ResultCode.AMEND_WOULD_CROSS:
                msg = "a post-only order amended to this price would cross; it is unchanged"
                return 409, ApiError(409, "post_only_would_cross", msg, "price").body()
            if code == ResultCode.INVALID_AMEND:
                msg = "nothing to change, or a stop order still pending"
                return 400, ApiError(400, "invalid_amend", msg, "quantity").body()
            if code in RISK_CODES:
                return 409, ApiError(409, "risk_limit", _risk_message(code, spec, book), code.value).body()
            return 0, b""

        return seq.submit(cmd, render)

    async def amend(self, principal: Principal, order_id: str, req: AmendRequest, *, with_book: bool = True,
                    forwarded: bool = False) -> Reply:
        fut = self.amend_nowait(principal, order_id, req, with_book=with_book)
        answer = (0, b"") if fut is None else await _await(fut)
        if answer[0]:
            return answer[0], answer[1], {}
        row = await self._order_row(principal, order_id)
        oid = row["order_id"]  # the server's id (order_id may have been a client order id)
        if not forwarded and fut is None and row["instrument"] in self.sequencers and self.owned_elsewhere(row["instrument"]):
            return await self.forwarder.forward(
                row["instrument"], "amend", principal,
                {"order_id": oid, "body": msgspec.to_builtins(req), "with_book": with_book},
                local=lambda: self.amend(principal, oid, req, with_book=with_book, forwarded=True))
        if row["status"] in CLOSED_STATUSES:
            raise ApiError(409, "order_closed", f"order is already {row['status']}", "order_id")
        raise ApiError(503, "unavailable", "the order's instrument is recovering; retry", headers={"Retry-After": "1"})

    # ------------------------------------------------------------------ dead man's switch
    async def cancel_after(self, principal: Principal, req: CancelAfterRequest) -> Reply:
        """Arm (or with 0 disarm) the client's dead man's switch: unless called again within
        timeout_ms, every open order of the client on every instrument is cancelled
        (reason cancel_after)."""
        principal.require_trade()
        client_id = self._client_for(principal, req.client_id)
        old = self._switches.pop(client_id, None)
        if old is not None:
            old.cancel()
        now = time.time_ns()
        body = {"timeout_ms": req.timeout_ms, "current_time": iso_ms(now), "trigger_time": None}
        if req.timeout_ms:
            loop = asyncio.get_running_loop()
            self._switches[client_id] = loop.call_later(req.timeout_ms / 1000, self._fire_switch, client_id, 0)
            body["trigger_time"] = iso_ms(now + req.timeout_ms * 1_000_000)
        return 200, json_encoder.encode(body), {}

    def _fire_switch(self, client_id: str, attempt: int, symbols=None) -> None:
        self._switches.pop(client_id, None)
        symbols = symbols or list(self.sequencers)
        asyncio.ensure_future(self._cancel_everywhere(client_id, symbols, attempt))

    async def _cancel_everywhere(self, client_id: str, symbols: list[str], attempt: int) -> None:
        async def remote(sym: str) -> None:
            status, _, _ = await self.forwarder.forward(
                sym, "cancel_all", OPEN, {"client_id": client_id, "instrument": sym, "reason": "cancel_after"})
            if status != 200:
                raise Unavailable(sym)

        futures = [asyncio.ensure_future(remote(s)) if self.owned_elsewhere(s)
                   else self.sequencers[s].submit(CancelAll(client_id, s, 0, None, CancelReason.CANCEL_AFTER),
                                                  lambda result, book: (200, b"")) for s in symbols]
        failed = []
        for sym, fut in zip(symbols, futures):
            try:
                await fut
            except Exception:
                failed.append(sym)
        if failed:
            # An instrument that is recovering cancels once it is back (bounded: ~1 minute).
            if attempt < 60 and client_id not in self._switches:
                log.warning("cancel-after for %s: %s unavailable; retrying", client_id, failed)
                self._switches[client_id] = asyncio.get_running_loop().call_later(
                    1.0, self._fire_switch, client_id, attempt + 1, failed)
        else:
            log.info("cancel-after fired for %s", client_id)

    # ------------------------------------------------------------------ cancel on disconnect
    def cancel_orders(self, principal: Principal, order_ids, reason: CancelReason) -> None:
        """Cancel these orders if they still rest and are the principal's (fire and forget:
        cancel-on-disconnect)."""
        for order_id in order_ids:
            seq, state = self._find_resting(order_id)
            if state is not None and principal.may_act_for(state.client_id):
                fut = seq.submit(CancelOrder(order_id, state.client_id, seq.instrument, 0, reason),
                                 lambda result, book: (200, b""))
                fut.add_done_callback(_consume)

    def cancel_remote(self, principal: Principal, orders: dict[str, str], reason: CancelReason) -> None:
        """Cancel-on-disconnect of orders placed through this node on instruments another node owns
        (forwarded places, {order id: instrument}): the owner cancels those that still rest and are
        the principal's, one forwarded request per instrument and chunk (fire and forget). An
        instrument this node owns by now is cancelled here."""
        by: dict[str, list[str]] = {}
        for order_id, sym in orders.items():
            by.setdefault(sym, []).append(order_id)
        for sym, ids in by.items():
            for k in range(0, len(ids), CANCEL_CHUNK):
                chunk = ids[k:k + CANCEL_CHUNK]
                if self.forwarder is None or not self.owned_elsewhere(sym):
                    self.cancel_orders(principal, chunk, reason)
                    continue
                t = asyncio.create_task(self._forward_cancel_orders(sym, principal, chunk, reason))
                self._background.add(t)
                t.add_done_callback(self._background.discard)

    async def _forward_cancel_orders(self, sym: str, principal: Principal, ids: list[str],
                                     reason: CancelReason) -> None:
        async def here() -> Reply:
            self.cancel_orders(principal, ids, reason)
            return 200, b"{}", {}

        # The client is gone: nobody can retry for it, so a takeover in progress (503 after the
        # forward timeout) is retried here a few times before the orders are given up (logged).
        for attempt in range(3):
            try:
                status, _, _ = await self.forwarder.forward(
                    sym, "cancel_orders", principal, {"order_ids": ids, "reason": reason.value}, local=here)
                if status < 500:
                    return
            except ApiError as exc:
                if exc.status < 500:
                    return
            except Exception as exc:  # NATS trouble: as a 503
                log.warning("%s: forwarding cancel-on-disconnect failed: %r", sym, exc, extra={"instrument": sym})
            await asyncio.sleep(0.5 * (attempt + 1))
        log.warning("%s: %d orders of a closed session could not be cancelled (no owner answered)", sym, len(ids),
                    extra={"instrument": sym})

    async def still_open(self, order_ids) -> set[str]:
        """Which of these ids are open in the orders table (committed state)."""
        async with self.journal.pool.acquire() as conn:
            rows = await conn.fetch("SELECT order_id FROM orders WHERE order_id = ANY($1::text[]) "
                                    "AND NOT (status = ANY($2::text[]))", list(order_ids),
                                    [st.value for st in CLOSED_STATUSES])
        return {r["order_id"] for r in rows}

    # ------------------------------------------------------------------ forwarded (several nodes)
    async def serve_forwarded(self, op: str, principal: Principal, args: dict) -> Reply:
        """A command another node forwarded to this one, the instrument's owner (forwarding.py):
        the same use case as a local request, never forwarded again."""
        if op == "place":
            req = decode_order_request(args["body"])
            return await self.place(principal, req, with_book=bool(args.get("with_book", True)), forwarded=True)
        if op == "cancel":
            return await self.cancel(principal, args["order_id"], forwarded=True)
        if op == "amend":
            req = msgspec.convert(args["body"], AmendRequest)
            return await self.amend(principal, args["order_id"], req, with_book=bool(args.get("with_book", True)),
                                    forwarded=True)
        if op == "cancel_all":
            sym = args["instrument"]
            if args.get("reason") == "cancel_after":
                await _await(self.sequencers[sym].submit(
                    CancelAll(args["client_id"], sym, 0, None, CancelReason.CANCEL_AFTER),
                    lambda result, book: (200, b"")))
                return 200, b'{"cancelled":[]}', {}
            req = CancelAllRequest(instrument=sym, side=Side(args["side"]) if args.get("side") else None,
                                   client_id=args["client_id"])
            return await self.cancel_all(principal, req, forwarded=True)
        if op == "handover":
            return await self.handover(principal, args["instrument"], forwarded=True)
        if op == "cancel_orders":  # cancel-on-disconnect of a session on another node (cancel_remote)
            self.cancel_orders(principal, [str(i) for i in args["order_ids"]], CancelReason(args["reason"]))
            return 200, b"{}", {}
        raise ApiError(400, "invalid_request", f"unknown forwarded operation {op!r}")

    async def handover(self, principal: Principal, instrument: str, forwarded: bool = False) -> Reply:
        """Admin: move one instrument off the node that owns it (see nodes.Membership.hand_over)."""
        if not principal.is_admin:
            raise ApiError(403, "forbidden", "an admin key is required")
        sym = spec_for(self.instruments, instrument).symbol
        if not forwarded and self.owned_elsewhere(sym):
            return await self.forwarder.forward(sym, "handover", principal, {"instrument": sym})
        if self.nodes is None or not self.sequencers[sym].ready:
            raise ApiError(503, "unavailable", f"{sym} is not owned by a node right now; retry",
                           headers={"Retry-After": "1"})
        at, to = await self.nodes.hand_over(sym)
        if at < 0:
            raise ApiError(409, "no_other_node", f"no other live command node serves {sym}", "instrument")
        return 200, json_encoder.encode({"instrument": sym, "seq": at, "from": self.nodes.node_id, "to": to}), {}

    # ------------------------------------------------------------------ read
    async def get(self, principal: Principal, order_id: str) -> Reply:
        row = await self._order_row(principal, order_id)
        spec = self.instruments.get(row["instrument"])
        return 200, json_encoder.encode({"order": order_view(spec, OrderRow(row))}), {}

    # ------------------------------------------------------------------ admin
    async def snapshot(self, principal: Principal, instrument: str | None) -> Reply:
        if not principal.is_admin:
            raise ApiError(403, "forbidden", "an admin key is required")
        symbols = [spec_for(self.instruments, instrument).symbol] if instrument else list(self.sequencers)
        out = []
        for sym in symbols:
            seq, size = await _await(self.sequencers[sym].request_snapshot())
            out.append({"instrument": sym, "seq": seq, "bytes": size})
        return 201, json_encoder.encode({"snapshots": out}), {}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _client_for(principal: Principal, body_client_id: str | None) -> str:
        if principal.client_id is None:  # auth disabled, or an admin key acting for a client
            if body_client_id is None:
                raise ApiError(400, "missing_field", "client_id is required", "client_id")
            return body_client_id
        if body_client_id is None:
            return principal.client_id
        if body_client_id != principal.client_id and not principal.is_admin:
            raise ApiError(403, "forbidden", "client_id does not match the API key", "client_id")
        return body_client_id


async def _await(fut):
    try:
        return await fut
    except Unavailable as exc:
        raise ApiError(503, "unavailable", str(exc), headers={"Retry-After": "1"}) from None


CANCEL_CHUNK = 1000  # order ids per forwarded cancel_orders request (well inside NATS's 1 MB payload)


def _placed_id(body: bytes) -> str | None:
    try:
        return msgspec.json.decode(body)["order"]["order_id"]
    except Exception:  # not an order answer (cannot happen for a 2xx place): nothing to track
        return None


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def _risk_message(code: ResultCode, spec, book) -> str:
    notional, max_open, position = book.risk or (0, 0, 0)
    if code == ResultCode.RISK_MAX_ORDER_NOTIONAL:
        return f"price x quantity is above the instrument's max_order_notional {spec.notional(notional)}"
    if code == ResultCode.RISK_MAX_OPEN_ORDERS:
        return f"you already have max_open_orders {max_open} open orders on {spec.symbol}"
    return f"filled, this order would take your net position past max_position {spec.lots_to_quantity(position)}"


def _not_found(order_id: str) -> ApiError:
    return ApiError(404, "not_found", f"order {order_id!r} not found", "order_id")


def _duplicate_coid(coid: str) -> ApiError:
    return ApiError(409, "duplicate_client_order_id", f"you already used client_order_id {coid!r}",
                    "client_order_id")


def _key_reused() -> ApiError:
    return ApiError(409, "idempotency_key_reused", "this idempotency_key was used with a different request",
                     "idempotency_key")
