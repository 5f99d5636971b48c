// The trading page. Only the public API is used: REST through the gateway, the /stream feed.
// Every number shown is the API's own text (see num.js); nothing is rounded through a float.
import './style.css';
import { ApiError, apiKey, market, orders } from './api.js';
import { Feed } from './feed.js';
import { Book } from './book.js';
import { CandleChart } from './chart.js';
import { cmp, mid, sub } from './num.js';

const DEPTH = 15; // ladder rows per side
const TAPE_ROWS = 50;
const FILL_ROWS = 50;

const $ = (id) => document.getElementById(id);

const state = {
  instruments: [],
  inst: null,
  book: new Book(),
  trades: [], // newest first, at most TAPE_ROWS
  tradeIds: new Set(),
  ticker: null,
  clientId: null,
  openOrders: new Map(), // order_id -> order (this instrument's open orders)
  fills: [],
  positions: [],
  resyncs: 0,
  feedState: 'connecting',
  feedDetail: '',
};

// ------------------------------------------------------------------ rendering (batched)

const dirty = new Set();
let renderTimer = null;
// At most one render per 50 ms whatever the message rate: the models take every message at once,
// the DOM only the latest state (the page keeps up with a busy book without queueing frames).
function invalidate(...parts) {
  for (const p of parts) dirty.add(p);
  if (renderTimer === null) renderTimer = setTimeout(render, 50);
}

function render() {
  renderTimer = null;
  const parts = new Set(dirty);
  dirty.clear();
  if (parts.has('book')) renderBook();
  if (parts.has('tape')) renderTape();
  if (parts.has('ticker')) renderTicker();
  if (parts.has('status')) renderStatus();
  if (parts.has('orders')) renderOrders();
  if (parts.has('fills')) renderFills();
  if (parts.has('positions')) renderPositions();
  if (parts.has('legend')) renderLegend();
}

function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('data-') || k === 'title' || k === 'type' || k === 'style') e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

const td = (text, cls) => el('td', { class: cls, text: text ?? '–' });
const show = (v) => (v === null || v === undefined ? '–' : v);
const hhmmss = (iso) => (iso ? iso.slice(11, 19) : '');

function renderBook() {
  const b = state.book;
  const bids = b.top('buy', DEPTH);
  const asks = b.top('sell', DEPTH);
  const maxCum = Math.max(
    bids.length ? Number(bids[bids.length - 1].cumulative) : 0,
    asks.length ? Number(asks[asks.length - 1].cumulative) : 0,
  );
  const rows = (levels, side) =>
    levels.map((l) => {
      // the bar width is drawing only; the texts are exact
      const pct = maxCum > 0 ? Math.min(100, (Number(l.cumulative) / maxCum) * 100) : 0;
      return el('tr', { class: side, 'data-price': l.price, 'data-quantity': l.quantity, style: `--depth:${pct.toFixed(1)}%` }, [
        td(l.price, 'price'),
        td(l.quantity, 'qty'),
        td(l.cumulative, 'cum'),
      ]);
    });
  $('bids').replaceChildren(...rows(bids, 'bid'));
  $('asks').replaceChildren(...rows(asks, 'ask').reverse()); // best ask next to the spread
  $('bids').dataset.seq = $('asks').dataset.seq = b.seq === null ? '' : String(b.seq);
  const bestBid = b.bids[0];
  const bestAsk = b.asks[0];
  $('spread').textContent = bestBid && bestAsk ? sub(bestAsk.price, bestBid.price) : '–';
  $('mid').textContent = bestBid && bestAsk ? mid(bestBid.price, bestAsk.price) : '–';
}

function renderTape() {
  $('tape').replaceChildren(
    ...state.trades.map((t) =>
      el('tr', { class: t.taker_side === 'buy' ? 'bid' : 'ask', 'data-trade-id': t.trade_id }, [
        td(t.price, 'price'),
        td(t.quantity, 'qty'),
        td(hhmmss(t.timestamp), 'time'),
      ]),
    ),
  );
}

function renderTicker() {
  const t = state.ticker || {};
  $('t-last').textContent = show(t.last_price);
  const ch = $('t-change');
  ch.textContent = t.change_24h === undefined || t.change_24h === null ? '–' : `${t.change_24h} (${t.change_percent_24h}%)`;
  ch.className = t.change_24h && String(t.change_24h).startsWith('-') ? 'down' : t.change_24h && cmp(t.change_24h, '0') > 0 ? 'up' : '';
  $('t-high').textContent = show(t.high_24h);
  $('t-low').textContent = show(t.low_24h);
  $('t-volume').textContent = show(t.volume_24h);
}

function renderStatus() {
  const s = $('feed-status');
  const labels = { live: 'live', connecting: 'connecting…', reconnecting: 'reconnecting…', resyncing: 'resyncing…' };
  s.dataset.state = state.feedState;
  s.textContent = labels[state.feedState] || state.feedState;
  s.title = state.feedDetail || '';
  const r = $('feed-resyncs');
  r.dataset.count = String(state.resyncs);
  r.textContent = state.resyncs ? `resynced ${state.resyncs}× ${state.feedDetail ? '(' + state.feedDetail + ')' : ''}` : '';
}

function renderOrders() {
  const list = [...state.openOrders.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
  $('open-orders').replaceChildren(
    ...list.map((o) => {
      const btn = el('button', { type: 'button', class: 'small cancel', text: 'Cancel', 'data-order-id': o.order_id });
      btn.setAttribute('aria-label', `Cancel ${o.side} ${o.quantity} at ${o.price ?? 'market'}`);
      const err = el('div', { class: 'row-error', 'data-error-for-order': o.order_id, text: cancelErrors.get(o.order_id) || '' });
      return el('tr', { class: o.side === 'buy' ? 'bid' : 'ask', 'data-order-id': o.order_id }, [
        td(o.side),
        td(o.type),
        td(show(o.price), 'price'),
        td(show(o.stop_price), 'stop'),
        td(o.quantity, 'qty'),
        td(o.filled_quantity, 'filled'),
        td(o.status, 'status'),
        el('td', {}, [btn, err]),
      ]);
    }),
  );
}

function renderFills() {
  $('fills').replaceChildren(
    ...state.fills.map((f) =>
      el('tr', { class: f.side === 'buy' ? 'bid' : 'ask', 'data-trade-id': f.trade_id }, [
        td(f.side),
        td(f.price, 'price'),
        td(f.quantity, 'qty'),
        td(f.role),
        td(hhmmss(f.timestamp), 'time'),
      ]),
    ),
  );
}

function renderPositions() {
  const sign = (v) => (v && String(v).startsWith('-') ? 'down' : v && cmp(v, '0') > 0 ? 'up' : '');
  $('positions').replaceChildren(
    ...state.positions.map((p) =>
      el('tr', { 'data-instrument': p.instrument }, [
        td(p.instrument),
        td(p.net_quantity, 'net'),
        td(show(p.avg_price), 'avg'),
        td(show(p.mark_price), 'mark'),
        td(show(p.realized_pnl), `realized ${sign(p.realized_pnl)}`),
        td(show(p.unrealized_pnl), `unrealized ${sign(p.unrealized_pnl)}`),
      ]),
    ),
  );
}

function renderLegend() {
  const c = chart.last();
  $('candle-legend').textContent = c ? `O ${c.open}  H ${c.high}  L ${c.low}  C ${c.close}  V ${c.volume}` : 'no trades yet';
  if (c) {
    const lg = $('candle-legend');
    lg.dataset.time = String(c.time);
    lg.dataset.close = c.close;
    lg.dataset.volume = c.volume;
  }
}

// ------------------------------------------------------------------ feed

const feed = new Feed({
  status(s, detail) {
    state.feedState = s;
    state.feedDetail = detail || '';
    if (s !== 'live') state.book.seq = null; // a closed socket's book cannot be continued
    invalidate('status');
  },
  open() {
    subscribe(state.inst);
    loadMarket(state.inst); // trades and candles missed while disconnected
  },
  message: onMessage,
});

function subscribe(inst) {
  state.book.clear();
  state.feedState = 'resyncing';
  invalidate('status', 'book');
  feed.send({ type: 'subscribe', channels: ['orderbook', 'trades', 'ticker'], instrument: inst });
  if (apiKey.get()) feed.send({ type: 'subscribe', channels: ['orders'], instrument: inst, api_key: apiKey.get() });
}

function unsubscribe(inst) {
  feed.send({ type: 'unsubscribe', channels: ['orderbook', 'trades', 'ticker'], instrument: inst });
  if (state.clientId) feed.send({ type: 'unsubscribe', channels: ['orders'], instrument: inst });
}

function resubscribeBook(detail) {
  // A gap: what we hold can no longer be continued. Drop it and ask for a new snapshot.
  state.resyncs += 1;
  state.book.seq = null;
  state.feedState = 'resyncing';
  state.feedDetail = detail;
  invalidate('status');
  feed.send({ type: 'unsubscribe', channels: ['orderbook'], instrument: state.inst });
  feed.send({ type: 'subscribe', channels: ['orderbook'], instrument: state.inst });
}

function onMessage(m) {
  if (m.instrument !== undefined && m.instrument !== state.inst && m.type !== 'subscribed' && m.type !== 'unsubscribed') return;
  switch (m.type) {
    case 'orderbook':
      if (m.action === 'snapshot') {
        state.book.snapshot(m);
        state.feedState = 'live';
        invalidate('book', 'status');
      } else if (state.book.seq !== null) {
        if (!state.book.update(m)) resubscribeBook(`missed updates: held seq ${state.book.seq}, got prev_seq ${m.prev_seq}`);
        else invalidate('book');
      }
      break;
    case 'trade':
      addTrades([m]);
      chart.trade(m);
      invalidate('tape', 'legend');
      if (state.clientId && (state.openOrders.has(m.buy_order_id) || state.openOrders.has(m.sell_order_id))) refreshAccountSoon();
      break;
    case 'ticker':
      state.ticker = m;
      invalidate('ticker');
      break;
    case 'order_update':
      onOrderUpdate(m.order);
      break;
    case 'subscribed':
      if (m.channels.includes('orders') && m.client_id) {
        if (state.clientId !== m.client_id) {
          state.clientId = m.client_id;
          showAccount();
        } else {
          loadAccount(); // (re)subscribed after a reconnect: catch up on what changed meanwhile
        }
      }
      break;
    case 'error':
      if (m.error && (m.error.field === 'api_key' || m.error.code === 'unauthorized')) {
        setKeyError(m.error.message);
        apiKey.clear(); // a key the exchange refuses is not kept
        state.clientId = null;
        showAccount();
      }
      break;
    default:
      break;
  }
}

function addTrades(list) {
  let added = false;
  for (const t of list) {
    if (t.instrument !== state.inst || state.tradeIds.has(t.trade_id)) continue;
    state.trades.push(t);
    state.tradeIds.add(t.trade_id);
    added = true;
  }
  if (!added) return;
  state.trades.sort((a, b) => Number(b.seq) - Number(a.seq));
  while (state.trades.length > TAPE_ROWS) state.tradeIds.delete(state.trades.pop().trade_id);
}

async function loadMarket(inst) {
  try {
    const [trades, ticker] = await Promise.all([market.trades(inst, TAPE_ROWS), market.ticker(inst)]);
    if (inst !== state.inst) return;
    addTrades(trades.trades);
    if (!state.ticker || Number(ticker.seq) >= Number(state.ticker.seq || 0)) state.ticker = ticker;
    invalidate('tape', 'ticker');
  } catch (exc) {
    console.warn('market load failed', exc);
  }
  await chart.load(inst);
  invalidate('legend');
}

// ------------------------------------------------------------------ account (needs an API key)

function setKeyError(msg) {
  document.querySelector('[data-error-for="api_key"]').textContent = msg || '';
}

function showAccount() {
  const has = !!state.clientId;
  $('account').hidden = !has;
  $('account-locked').hidden = has;
  $('who').textContent = has ? `Trading as ${state.clientId}` : '';
  $('key-forget').hidden = !apiKey.get();
  if (has) {
    setKeyError('');
    loadAccount();
  } else {
    state.openOrders.clear();
    state.fills = [];
    state.positions = [];
    invalidate('orders', 'fills', 'positions');
  }
}

const OPEN = new Set(['open', 'partially_filled', 'pending']);
const orderSeq = new Map(); // order_id -> seq of the newest version seen (REST and feed race)

function onOrderUpdate(o) {
  if (!o || o.instrument !== state.inst) return;
  const seq = Number(o.seq || 0);
  const prev = orderSeq.get(o.order_id);
  if (prev !== undefined && prev > seq) return; // an older version than we have
  orderSeq.set(o.order_id, seq);
  const before = state.openOrders.get(o.order_id);
  if (OPEN.has(o.status)) state.openOrders.set(o.order_id, o);
  else {
    state.openOrders.delete(o.order_id);
    cancelErrors.delete(o.order_id);
  }
  if (orderSeq.size > 5000) orderSeq.clear(); // bounded memory; the seq check only matters for a few seconds
  if (!before || before.filled_quantity !== o.filled_quantity) refreshAccountSoon();
  invalidate('orders');
}

async function loadAccount() {
  const client = state.clientId;
  const inst = state.inst;
  if (!client) return;
  try {
    const [open, fills, pos] = await Promise.all([market.orders(client, inst), market.fills(client, inst), market.positions(client)]);
    if (client !== state.clientId || inst !== state.inst) return;
    for (const o of open.orders) onOrderUpdate(o);
    // An order we show as open that the read view no longer lists may have closed while the feed was
    // down, or may be too new for the view: the command service's own answer decides.
    const listed = new Set(open.orders.map((o) => o.order_id));
    for (const id of [...state.openOrders.keys()]) if (!listed.has(id)) confirmOpen(id);
    state.fills = fills.fills.slice(0, FILL_ROWS);
    state.positions = pos.positions;
    invalidate('orders', 'fills', 'positions');
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 401) setKeyError(exc.message);
  }
}

async function confirmOpen(id) {
  try {
    const { order } = await orders.get(id);
    if (!OPEN.has(order.status) && state.openOrders.delete(id)) invalidate('orders');
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 404 && state.openOrders.delete(id)) invalidate('orders');
  }
}

let accountTimer = null;
function refreshAccountSoon() {
  if (accountTimer !== null || !state.clientId) return;
  accountTimer = setTimeout(async () => {
    accountTimer = null;
    const client = state.clientId;
    if (!client) return;
    try {
      const [fills, pos] = await Promise.all([market.fills(client, state.inst), market.positions(client)]);
      if (client !== state.clientId) return;
      state.fills = fills.fills.slice(0, FILL_ROWS);
      state.positions = pos.positions;
      invalidate('fills', 'positions');
    } catch {
      /* the next fill or the periodic refresh tries again */
    }
  }, 200);
}
// Unrealized PnL moves with the mark even without own fills.
setInterval(() => {
  if (state.clientId && !document.hidden) refreshAccountSoon();
}, 5000);

const cancelErrors = new Map();
$('open-orders').addEventListener('click', async (ev) => {
  const btn = ev.target.closest('button.cancel');
  if (!btn) return;
  const id = btn.dataset.orderId;
  btn.disabled = true;
  cancelErrors.delete(id);
  try {
    const r = await orders.cancel(id);
    onOrderUpdate(r.order);
  } catch (exc) {
    cancelErrors.set(id, exc.message);
    if (exc instanceof ApiError && exc.status === 409) state.openOrders.delete(id);
    invalidate('orders');
  }
});

$('cancel-all').addEventListener('click', async () => {
  try {
    await orders.cancelAll(state.inst);
  } catch (exc) {
    setFormError(exc.message);
  }
});

// ------------------------------------------------------------------ API key

$('api-key').value = '';
$('key-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const k = $('api-key').value.trim();
  $('api-key').value = '';
  if (!k) {
    setKeyError('enter an API key');
    return;
  }
  apiKey.set(k);
  setKeyError('');
  $('key-forget').hidden = false;
  feed.send({ type: 'subscribe', channels: ['orders'], instrument: state.inst, api_key: k });
});
$('key-forget').addEventListener('click', () => {
  if (state.clientId) feed.send({ type: 'unsubscribe', channels: ['orders'], instrument: state.inst });
  apiKey.clear();
  state.clientId = null;
  showAccount();
});

// ------------------------------------------------------------------ order ticket

const ticket = $('ticket');

function ticketType() {
  return ticket.elements.type.value;
}

function syncTicket() {
  const type = ticketType();
  for (const node of ticket.querySelectorAll('[data-show]')) {
    const on = node.dataset.show.split(' ').includes(type);
    node.hidden = !on;
    for (const input of node.querySelectorAll('input')) input.disabled = !on;
  }
  const side = ticket.elements.side.value;
  const btn = $('submit');
  btn.className = `submit ${side}`;
  btn.textContent = `${side === 'buy' ? 'Buy' : 'Sell'} ${state.inst ? state.inst.split('-')[0] : ''}`.trim();
}
ticket.addEventListener('change', syncTicket);

function clearErrors() {
  for (const e of ticket.querySelectorAll('.field-error')) e.textContent = '';
  for (const i of ticket.querySelectorAll('[aria-invalid]')) i.removeAttribute('aria-invalid');
}

function setFormError(msg) {
  ticket.querySelector('[data-error-for="_form"]').textContent = msg;
}

function showFieldError(err) {
  const box = err.field && ticket.querySelector(`[data-error-for="${err.field}"]`);
  if (box && !box.closest('[hidden]')) {
    box.textContent = err.message;
    const input = ticket.elements[err.field];
    if (input && input.setAttribute) {
      input.setAttribute('aria-invalid', 'true');
      if (box.id) input.setAttribute('aria-describedby', box.id);
    }
  } else if (err.field === 'authorization') {
    setKeyError(err.message);
  } else {
    setFormError(err.field ? `${err.field}: ${err.message}` : err.message);
  }
}

ticket.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  clearErrors();
  $('ticket-result').textContent = '';
  if (!apiKey.get()) {
    setFormError('enter an API key above first');
    $('api-key').focus();
    return;
  }
  const f = ticket.elements;
  const type = ticketType();
  const body = {
    instrument: state.inst,
    side: f.side.value,
    type,
    time_in_force: f.time_in_force.value,
    self_trade_prevention: f.self_trade_prevention.value,
    // the same key is sent again only by a retry of this very submission
    idempotency_key: `web-${crypto.randomUUID()}`,
  };
  // An empty field is left out, so the API answers "... is required" for it (the page itself never
  // judges a number: the API's grid and limits are the only rules).
  const put = (name, input) => {
    if (!input.disabled && input.value.trim() !== '') body[name] = input.value.trim();
  };
  put('price', f.price);
  put('stop_price', f.stop_price);
  put('quantity', f.quantity);
  if (!f.post_only.disabled && f.post_only.checked) body.post_only = true;
  const btn = $('submit');
  btn.disabled = true;
  try {
    const r = await orders.place(body);
    const o = r.order;
    onOrderUpdate({ ...o, seq: o.seq ?? 0 });
    const filled = r.trades.length ? `, ${r.trades.length} trade(s)` : '';
    $('ticket-result').textContent =
      `${o.side} ${o.quantity} ${o.type}${o.price !== null && o.price !== undefined ? ' @ ' + o.price : ''}: ${o.status}` +
      `${o.reject_reason ? ' (' + o.reject_reason + ')' : ''}${filled}`;
    $('ticket-result').dataset.status = o.status;
    $('ticket-result').dataset.orderId = o.order_id;
  } catch (exc) {
    if (exc instanceof ApiError) showFieldError(exc);
    else setFormError(String(exc));
  } finally {
    btn.disabled = false;
  }
});

// ------------------------------------------------------------------ chart

const chart = new CandleChart($('chart'), () => invalidate('legend'));
for (const r of document.querySelectorAll('input[name="interval"]')) {
  r.addEventListener('change', () => {
    chart.setInterval(r.value);
    chart.load(state.inst).then(() => invalidate('legend'));
  });
}

// ------------------------------------------------------------------ instrument

function selectInstrument(inst, { push = true } = {}) {
  if (state.inst === inst) return;
  const prev = state.inst;
  if (prev) unsubscribe(prev);
  state.inst = inst;
  state.book.clear();
  state.trades = [];
  state.tradeIds.clear();
  state.ticker = null;
  state.openOrders.clear();
  state.fills = [];
  orderSeq.clear();
  $('instrument').value = inst;
  const spec = state.instruments.find((i) => i.symbol === inst);
  for (const u of document.querySelectorAll('[data-unit]')) u.textContent = spec ? `(${spec[u.dataset.unit]})` : '';
  if (push) {
    const url = new URL(location.href);
    url.searchParams.set('instrument', inst);
    history.replaceState(null, '', url);
  }
  document.title = `${inst} · Exchange`;
  syncTicket();
  invalidate('book', 'tape', 'ticker', 'orders', 'fills', 'legend');
  chart.reset();
  if (prev) {
    subscribe(inst);
    loadMarket(inst);
    if (state.clientId) loadAccount();
  }
}

$('instrument').addEventListener('change', (ev) => selectInstrument(ev.target.value));

async function start() {
  let list;
  for (let attempt = 0; ; attempt++) {
    try {
      list = (await market.instruments()).instruments;
      break;
    } catch (exc) {
      state.feedState = 'reconnecting';
      state.feedDetail = exc.message;
      invalidate('status');
      await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)));
    }
  }
  state.instruments = list;
  $('instrument').replaceChildren(...list.map((i) => el('option', { value: i.symbol, text: i.symbol })));
  const wanted = new URL(location.href).searchParams.get('instrument');
  const inst = list.some((i) => i.symbol === wanted) ? wanted : list[0].symbol;
  selectInstrument(inst, { push: wanted !== null && wanted !== inst });
  feed.connect(); // its open handler subscribes and loads the market
}

// What the tests (and a curious user in the console) can read: the page's own state, never a hook that changes it.
window.exchangePage = {
  get instrument() {
    return state.inst;
  },
  get bookSeq() {
    return state.book.seq;
  },
  get resyncs() {
    return state.resyncs;
  },
  bookLevels: (side, n = DEPTH) => state.book.top(side, n),
  depth: DEPTH,
};

start();
