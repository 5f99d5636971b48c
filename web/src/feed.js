// The live feed (/stream): one WebSocket, reconnected with backoff, resubscribed on every open.
// The order book is only trusted while every update continues the seq the page holds: an update
// whose prev_seq is not our seq means something was missed, so the page asks for a new snapshot
// (unsubscribe + subscribe) and ignores updates until it arrives.
import { parseExact } from './num.js';

export class Feed {
  constructor(handlers) {
    this.h = handlers; // {status(state, detail), message(msg), open()}
    this.ws = null;
    this.backoff = 250;
    this.timer = null;
    this.stopped = false;
    this.lastMessage = 0;
    // The server sends a heartbeat every 5 s: a socket silent for 20 s is dead (a half-open TCP
    // connection never fires onclose by itself), so it is closed and the page reconnects.
    setInterval(() => {
      if (this.ws && this.ws.readyState === WebSocket.OPEN && Date.now() - this.lastMessage > 20_000) this.drop('no heartbeat for 20 s');
    }, 5_000);
  }

  url() {
    return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/stream`;
  }

  connect() {
    clearTimeout(this.timer);
    this.h.status('connecting');
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.backoff = 250;
      this.lastMessage = Date.now();
      this.h.open();
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastMessage = Date.now();
      let msg;
      try {
        msg = parseExact(ev.data);
      } catch {
        return;
      }
      this.h.message(msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      this.h.status('reconnecting', ev.reason || `closed (${ev.code})`);
      this.timer = setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 5000);
    };
  }

  /** Give up on the current socket now (its close handshake may never finish) and reconnect. */
  drop(reason) {
    const ws = this.ws;
    this.ws = null; // its late events are ignored
    if (ws) ws.close();
    this.h.status('reconnecting', reason);
    this.timer = setTimeout(() => this.connect(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, 5000);
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }
}
