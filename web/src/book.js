// The L2 book the page holds: price level -> total quantity per side, kept sorted.
// Keys are exact BigInt prices (num.toUnits); the texts shown are the API's own.
import { toUnits, add } from './num.js';

export class Book {
  constructor() {
    this.clear();
  }

  clear() {
    this.seq = null; // null: no snapshot yet (or waiting for a new one)
    this.bids = []; // best first: descending price
    this.asks = []; // best first: ascending price
  }

  snapshot(msg) {
    const rows = (levels, desc) =>
      levels
        .map((l) => ({ key: toUnits(l.price), price: l.price, quantity: l.quantity }))
        .sort((a, b) => (a.key === b.key ? 0 : (a.key < b.key) === desc ? 1 : -1));
    this.bids = rows(msg.bids, true);
    this.asks = rows(msg.asks, false);
    this.seq = Number(msg.seq);
  }

  /** Apply an update; false when it does not continue our seq (a gap: resubscribe). */
  update(msg) {
    if (this.seq === null) return true; // waiting for a snapshot: nothing to continue
    if (Number(msg.prev_seq) !== this.seq) return false;
    for (const c of msg.changes) this.set(c.side === 'buy' ? this.bids : this.asks, c.side === 'buy', c.price, c.quantity);
    this.seq = Number(msg.seq);
    return true;
  }

  set(levels, desc, price, quantity) {
    const key = toUnits(price);
    // binary search for the level's position (levels are best first)
    let lo = 0;
    let hi = levels.length;
    while (lo < hi) {
      const m = (lo + hi) >> 1;
      const k = levels[m].key;
      if (desc ? k > key : k < key) lo = m + 1;
      else hi = m;
    }
    const remove = toUnits(quantity) === 0n;
    if (lo < levels.length && levels[lo].key === key) {
      if (remove) levels.splice(lo, 1);
      else levels[lo] = { key, price, quantity };
    } else if (!remove) {
      levels.splice(lo, 0, { key, price, quantity });
    }
  }

  /** Top n levels of a side with exact cumulative quantity. */
  top(side, n) {
    const levels = side === 'buy' ? this.bids : this.asks;
    const out = [];
    let cum = '0';
    for (let i = 0; i < Math.min(n, levels.length); i++) {
      cum = add(cum, levels[i].quantity);
      out.push({ price: levels[i].price, quantity: levels[i].quantity, cumulative: cum });
    }
    return out;
  }
}
