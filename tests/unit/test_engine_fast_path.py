"""execute() checks and rests a plain GTC limit order inline and sends a plain taking order
(market, IOC or FOK limit) straight to matching (the hot paths); place() takes the general path
for the same command. Both must give the same result and leave the same book, for valid,
crossing, post-only, risk-refused and malformed orders, with and without a client order id."""

from __future__ import annotations

from contracts.enums import OrderStatus, OrderType, ResultCode, Side, StpMode, TimeInForce
from contracts.messages import PlaceOrder
from engine import OrderBook

INSTRUMENT = "BTC-USD"
TS = 1_700_000_000_000_000_000


def order(oid: str, client: str, side: object, qty: object, price: object, **kw: object) -> PlaceOrder:
    return PlaceOrder(oid, client, INSTRUMENT, side, kw.pop("otype", OrderType.LIMIT), qty, TS, price, **kw)  # type: ignore[arg-type]


def seeded(risk: tuple[int, int, int] | None = None) -> OrderBook:
    book = OrderBook(INSTRUMENT)
    for cmd in (
        order("s1", "maker", Side.SELL, 5, 101),
        order("s2", "maker", Side.SELL, 3, 102),
        order("b1", "maker", Side.BUY, 4, 99),
    ):
        assert book.execute(cmd).code is ResultCode.OK
    book.risk = risk  # after the seed orders: the limits judge the orders under test
    return book


CASES = [
    order("n1", "alice", Side.BUY, 2, 100),  # rests
    order("n2", "alice", Side.SELL, 2, 100, client_order_id="mine-1"),  # rests, with its own id
    order("n3", "alice", Side.BUY, 2, 100, post_only=True),  # post-only, does not cross: rests
    order("n4", "alice", Side.BUY, 2, 101, post_only=True),  # post-only crossing: rejected
    order("n5", "alice", Side.BUY, 7, 102, client_order_id="mine-2"),  # crosses two levels
    order("n6", "maker", Side.BUY, 2, 101, stp=StpMode.CANCEL_OLDEST),  # self-trade
    order("n7", "alice", Side.BUY, 2, 0),  # price out of range
    order("n8", "alice", Side.BUY, 2, (1 << 62)),  # price out of range
    order("n9", "alice", Side.BUY, 0, 100),  # quantity out of range
    order("n10", "alice", Side.BUY, True, 100),  # a bool is not a quantity
    order("n11", "alice", "buy", 2, 100),  # a plain string is not a side
    order("n12", "alice", Side.BUY, 2, 100, tif="GTC"),  # nor a tif
    order("n13", "alice", Side.BUY, 2, 100, stp="cancel_newest"),  # nor an stp mode
    order("n14", "alice", Side.BUY, 2, 100, post_only=1),  # post_only must be a bool
    order("n15", "alice", Side.BUY, 2, 100, stop_price=90),  # stop price on a limit
    order("n16", "alice", Side.BUY, 2, 100, display_quantity=1),  # iceberg: general path
    order("n17", "alice", Side.BUY, 2, 100, tif=TimeInForce.GTD, expire_ts=TS + 1),  # GTD: general path
    order("b1", "alice", Side.BUY, 2, 100),  # duplicate id
    # taking orders: market (GTC/IOC/FOK), IOC and FOK limits go from execute() straight to matching
    order("m1", "alice", Side.BUY, 6, None, otype=OrderType.MARKET),  # two levels
    order("m2", "alice", Side.SELL, 9, None, otype=OrderType.MARKET, tif=TimeInForce.IOC),  # remainder cancelled
    order("m3", "alice", Side.BUY, 9, None, otype=OrderType.MARKET, tif=TimeInForce.FOK),  # not fillable
    order("m4", "alice", Side.BUY, 8, None, otype=OrderType.MARKET, tif=TimeInForce.FOK, client_order_id="m"),
    order("m5", "maker", Side.BUY, 2, None, otype=OrderType.MARKET),  # self-trade
    order("m6", "alice", Side.BUY, 2, None, otype=OrderType.MARKET, tif=TimeInForce.GTD, expire_ts=TS + 1),
    order("m7", "alice", Side.BUY, 2, 101, otype=OrderType.MARKET),  # a market order has no price
    order("m8", "alice", Side.BUY, 2, None, otype=OrderType.MARKET, post_only=True),
    order("m9", "alice", "sell", 2, None, otype=OrderType.MARKET),
    order("m10", "alice", Side.BUY, 2, None, otype=OrderType.MARKET, stop_price=90),
    order("i1", "alice", Side.BUY, 7, 101, tif=TimeInForce.IOC),  # fills 5, cancels 2
    order("i2", "alice", Side.BUY, 2, 100, tif=TimeInForce.IOC),  # does not cross: cancelled
    order("i3", "alice", Side.BUY, 6, 101, tif=TimeInForce.FOK),  # not fillable at 101
    order("i4", "alice", Side.BUY, 6, 102, tif=TimeInForce.FOK),
    order("i5", "alice", Side.BUY, 2, 101, tif=TimeInForce.IOC, post_only=True),
    order("i6", "alice", Side.BUY, 2, 0, tif=TimeInForce.IOC),
    order("i7", "alice", Side.BUY, 0, 101, tif=TimeInForce.IOC),
    order("i8", "alice", Side.BUY, 2, 101, tif=TimeInForce.IOC, display_quantity=1),
    order("i9", "alice", Side.BUY, 2, 101, tif="IOC"),
    PlaceOrder("n18", "alice", "ETH-USD", Side.BUY, OrderType.LIMIT, 2, TS, 100),  # another instrument
]


def test_execute_and_place_agree_on_every_order():
    for cmd in CASES:
        fast, general = seeded(), seeded()
        assert fast.execute(cmd) == general.place(cmd), cmd
        assert fast.snapshot() == general.snapshot(), cmd
        fast.validate()


def test_execute_and_place_agree_under_risk_limits():
    for risk in ((300, 0, 0), (0, 2, 0), (0, 0, 3)):
        for cmd in CASES:
            fast, general = seeded(risk), seeded(risk)
            assert fast.execute(cmd) == general.place(cmd), (risk, cmd)
            assert fast.snapshot() == general.snapshot(), (risk, cmd)


def test_a_resting_limit_order_keeps_its_client_order_id():
    book = seeded()
    result = book.execute(order("n1", "alice", Side.BUY, 2, 100, client_order_id="mine-1"))
    assert result.code is ResultCode.OK
    assert result.events[0].client_order_id == "mine-1"
    assert result.orders[0].client_order_id == "mine-1" and result.orders[0].status is OrderStatus.OPEN
    state = book.get("n1")
    assert state is not None and state.client_order_id == "mine-1"
    restored = OrderBook.restore(book.snapshot(), validate=True)
    state = restored.get("n1")
    assert state is not None and state.client_order_id == "mine-1"
