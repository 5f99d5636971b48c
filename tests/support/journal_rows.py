"""Journal rows for the write side's adapter tests: events and order states of a batch."""

from command_service.journal import Batch
from contracts.enums import OrderStatus, OrderType, Side, StpMode, TimeInForce
from contracts.messages import OrderAccepted, OrderState


def accepted(instrument, seq, order_id, client="c1", price=100, qty=5, side=Side.BUY):
    return OrderAccepted(instrument=instrument, seq=seq, ts=1_700_000_000_000_000_000 + seq, order_id=order_id,
                         client_id=client, side=side, order_type=OrderType.LIMIT, price=price, quantity=qty,
                         tif=TimeInForce.GTC, post_only=False, stp=StpMode.CANCEL_NEWEST)


def state(order_id, filled=0, status=OrderStatus.OPEN, instrument="BTC-USD", cost=0):
    return OrderState(order_id=order_id, client_id="c1", instrument=instrument, side=Side.BUY,
                      order_type=OrderType.LIMIT, price=100, quantity=5, filled_quantity=filled, status=status,
                      tif=TimeInForce.GTC, post_only=False, created_ts=1, updated_ts=2, cost=cost)


def batch(instrument, seqs, ids=None):
    b = Batch(instrument)
    for i, s in enumerate(seqs):
        oid = (ids or [f"{instrument}-o{s}" for s in seqs])[i]
        b.events.append(accepted(instrument, s, oid))
        b.add_orders([state(oid, instrument=instrument)], s)
    return b
