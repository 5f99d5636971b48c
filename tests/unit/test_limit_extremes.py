"""The largest values the instrument limits allow, through every integer the system stores.

BTC-USD allows 1000 @ 10,000,000: 1e9 ticks x 1e11 lots = 1e20 ticks*lots in ONE fill, more
than a 64-bit integer holds. One such trade used to make the projector's msgpack records
overflow (the read side froze for good) and an engine snapshot of such a partly filled order
failed. Property: whatever orders at the limits' extremes do, the engine snapshot restores to
the same book and every projected record (orders, positions, buckets, last trade) survives its
storage encoding exactly - also summed over many maximal fills.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.instruments import load_instruments
from engine.book import OrderBook
from query_service.projection import ProjectionState, project
from query_service.records import Bucket, pack, unpack_last, unpack_order, unpack_position
from tests.support.order_flow import OrderFlow

SPECS = load_instruments()


def limits(symbol: str) -> tuple[int, int, int]:
    spec = SPECS.get(symbol)
    return (spec.price_to_ticks(spec.max_price), spec.quantity_to_lots(spec.max_quantity),
            spec.quantity_to_lots(spec.min_quantity))


def check_storage(flow: OrderFlow) -> ProjectionState:
    # Engine snapshot: the bytes restore to an identical book.
    data = flow.book.snapshot()
    assert OrderBook.restore(data, validate=True).snapshot() == data
    # Projection of the whole journal, then every record through its storage encoding.
    state, _ = project(ProjectionState(instrument=flow.instrument), flow.events)
    for o in state.orders.values():
        assert unpack_order(pack(o)) == o
    for p in state.positions.values():
        assert unpack_position(pack(p)) == p
    for b in state.buckets.values():
        assert Bucket.unpack(b.pack()) == b
    if state.last_trade is not None:
        assert unpack_last(pack(state.last_trade)) == state.last_trade
    return state


def test_one_maximal_trade_and_a_partly_filled_maximal_order():
    max_px, max_qty, _ = limits("BTC-USD")
    flow = OrderFlow(instrument="BTC-USD", clients=("a", "b"))
    flow.place("a", "sell", price=max_px, qty=max_qty)
    flow.place("b", "buy", price=max_px, qty=max_qty - 1)  # leaves the maker partly filled, resting
    state = check_storage(flow)
    assert state.positions["b"].cost == max_px * (max_qty - 1) > 2**64
    resting = list(flow.book.l3())
    assert len(resting) == 1 and resting[0].cost == max_px * (max_qty - 1)


def test_positions_and_volumes_summed_over_a_long_life():
    max_px, max_qty, _ = limits("BTC-USD")
    flow = OrderFlow(instrument="BTC-USD", clients=("a", "b"))
    for _ in range(200):  # the buyer accumulates 200 x the maximum: net lots 2e13, cost 2e22
        flow.place("a", "sell", price=max_px, qty=max_qty)
        flow.place("b", "buy", type_="market", qty=max_qty)
    state = check_storage(flow)
    assert state.positions["b"].net == 200 * max_qty
    assert state.positions["a"].cost == -200 * max_px * max_qty


@settings(max_examples=60, deadline=None)
@given(
    symbol=st.sampled_from(SPECS.symbols),
    script=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["buy", "sell"]),
                  st.sampled_from(["limit", "market", "cancel"]),
                  st.sampled_from(["max", "min", "one"]), st.sampled_from(["max", "min", "max-1"])),
        min_size=1, max_size=40),
)
def test_limit_extremes_through_engine_projection_and_snapshot(symbol, script):
    max_px, max_qty, min_qty = limits(symbol)
    flow = OrderFlow(instrument=symbol, clients=("a", "b", "c"))
    for client, side, kind, px, qty in script:
        if kind == "cancel":
            for oid in list(flow.orders)[:1]:
                flow.cancel(oid)
            continue
        price = {"max": max_px, "min": 1, "one": max_px - 1}[px]
        lots = {"max": max_qty, "min": min_qty, "max-1": max_qty - 1}[qty]
        flow.place(client, side, type_=kind, price=price if kind == "limit" else None, qty=lots)
    check_storage(flow)
