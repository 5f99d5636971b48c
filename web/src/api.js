// The public REST API through the gateway (same origin). Every answer is parsed with exact numbers.
import { parseExact } from './num.js';

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || 'error';
    this.field = e.field || null;
  }
}

const KEY_STORE = 'exchange.apiKey'; // sessionStorage only: never a URL, cookie or localStorage

export const apiKey = {
  get: () => sessionStorage.getItem(KEY_STORE) || '',
  set: (k) => sessionStorage.setItem(KEY_STORE, k),
  clear: () => sessionStorage.removeItem(KEY_STORE),
};

export async function request(method, path, { body, auth = false, query } = {}) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (auth) headers.Authorization = `Bearer ${apiKey.get()}`;
  let url = path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) q.set(k, v);
    url += '?' + q.toString();
  }
  let resp;
  try {
    resp = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch (exc) {
    throw new ApiError(0, { error: { code: 'network', message: `the exchange is not reachable (${exc.message})` } });
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? parseExact(text) : null;
  } catch {
    data = { error: { code: 'bad_response', message: `unreadable answer (HTTP ${resp.status})` } };
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

export const market = {
  instruments: () => request('GET', '/market/instruments'),
  orderbook: (instrument, levels = 100) => request('GET', '/market/orderbook', { query: { instrument, levels } }),
  trades: (instrument, limit = 50) => request('GET', '/market/trades', { query: { instrument, limit } }),
  candles: (instrument, interval, limit = 300) => request('GET', '/market/candles', { query: { instrument, interval, limit } }),
  ticker: (instrument) => request('GET', '/market/ticker', { query: { instrument } }),
  orders: (client_id, instrument) =>
    request('GET', '/market/orders', { auth: true, query: { client_id, instrument, status: 'open', limit: 200 } }),
  fills: (client_id, instrument) => request('GET', '/market/fills', { auth: true, query: { client_id, instrument, limit: 50 } }),
  positions: (client_id) => request('GET', `/market/positions/${encodeURIComponent(client_id)}`, { auth: true }),
};

export const orders = {
  place: (body) => request('POST', '/orders', { auth: true, body }),
  get: (orderId) => request('GET', `/orders/${encodeURIComponent(orderId)}`, { auth: true }),
  cancel: (orderId) => request('POST', `/orders/${encodeURIComponent(orderId)}/cancel`, { auth: true }),
  // every instrument only when said so: {all: true} (an empty body cancels nothing)
  cancelAll: (instrument) =>
    request('POST', '/orders/cancel-all', { auth: true, body: instrument ? { instrument } : { all: true } }),
};
