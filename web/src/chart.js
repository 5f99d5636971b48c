// Candles from GET /market/candles, kept live from the trade feed; the REST view is re-read shortly
// after trades so the last candles are the API's own values (the live update only bridges the gap).
// lightweight-charts draws with floats; the legend shows the exact texts.
import { createChart, CandlestickSeries, HistogramSeries } from 'lightweight-charts';
import { market } from './api.js';
import { add, cmp } from './num.js';

const SECONDS = { '1m': 60, '5m': 300, '15m': 900, '1h': 3600 };
const MAX_CANDLES = 500;

export class CandleChart {
  constructor(container, onChange) {
    this.onChange = onChange;
    this.interval = '1m';
    this.inst = null;
    this.candles = []; // {time (s), open, high, low, close, volume} texts, oldest first
    this.reconcileTimer = null;
    this.chart = createChart(container, {
      autoSize: true,
      layout: { background: { color: 'transparent' }, textColor: '#9aa4b2', fontSize: 11, attributionLogo: false },
      grid: { vertLines: { color: '#1f2733' }, horzLines: { color: '#1f2733' } },
      rightPriceScale: { borderColor: '#2a3441' },
      timeScale: { borderColor: '#2a3441', timeVisible: true, secondsVisible: false, rightOffset: 4, barSpacing: 9 },
      crosshair: { mode: 0 },
    });
    this.series = this.chart.addSeries(CandlestickSeries, {
      upColor: '#26a69a', downColor: '#ef5350', borderVisible: false, wickUpColor: '#26a69a', wickDownColor: '#ef5350',
    });
    this.volume = this.chart.addSeries(HistogramSeries, { priceScaleId: 'vol', priceFormat: { type: 'volume' }, color: '#334155' });
    this.chart.priceScale('vol').applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  }

  setInterval(iv) {
    this.interval = iv;
    this.reset();
  }

  reset() {
    this.candles = [];
    this.series.setData([]);
    this.volume.setData([]);
  }

  last() {
    return this.candles.length ? this.candles[this.candles.length - 1] : null;
  }

  async load(inst, limit = 300) {
    this.inst = inst;
    const iv = this.interval;
    let r;
    try {
      r = await market.candles(inst, iv, limit);
    } catch (exc) {
      console.warn('candles load failed', exc);
      return;
    }
    if (inst !== this.inst || iv !== this.interval) return;
    const fresh = r.candles.map((c) => ({
      time: Math.floor(Date.parse(c.time) / 1000), open: c.open, high: c.high, low: c.low, close: c.close, volume: c.volume,
    }));
    if (limit >= 300 || !this.candles.length) {
      this.candles = fresh;
      this.draw();
    } else {
      let redraw = false;
      for (const c of fresh) redraw = this.put(c, false) || redraw;
      if (redraw) this.draw();
    }
    this.onChange();
  }

  /** Add or replace a candle. The chart can only update its newest bar: a candle older than that
   * is replaced in the model and, with draw=false, reported (true) so the caller redraws once. */
  put(c, draw = true) {
    const last = this.last();
    if (!last || c.time > last.time) this.candles.push(c);
    else {
      const i = this.candles.findIndex((x) => x.time === c.time);
      if (i < 0) return false;
      this.candles[i] = c;
      if (i !== this.candles.length - 1) {
        if (draw) this.draw();
        return !draw;
      }
    }
    while (this.candles.length > MAX_CANDLES) this.candles.shift();
    this.series.update(bar(c));
    this.volume.update(vol(c));
    return false;
  }

  draw() {
    this.series.setData(this.candles.map(bar));
    this.volume.setData(this.candles.map(vol));
  }

  trade(t) {
    if (t.instrument !== this.inst) return;
    const step = SECONDS[this.interval];
    const time = Math.floor(Date.parse(t.timestamp) / 1000 / step) * step;
    const last = this.last();
    if (last && time < last.time) return;
    if (last && time === last.time) {
      this.put({
        time,
        open: last.open,
        high: cmp(t.price, last.high) > 0 ? t.price : last.high,
        low: cmp(t.price, last.low) < 0 ? t.price : last.low,
        close: t.price,
        volume: add(last.volume, t.quantity),
      });
    } else {
      this.put({ time, open: t.price, high: t.price, low: t.price, close: t.price, volume: t.quantity });
    }
    // The API's candle view is the truth: re-read the newest candles once the burst settles.
    if (this.reconcileTimer === null) {
      this.reconcileTimer = setTimeout(() => {
        this.reconcileTimer = null;
        this.load(this.inst, 2);
      }, 1000);
    }
  }
}

const bar = (c) => ({ time: c.time, open: Number(c.open), high: Number(c.high), low: Number(c.low), close: Number(c.close) });
const vol = (c) => ({
  time: c.time, value: Number(c.volume), color: cmp(c.close, c.open) >= 0 ? 'rgba(38,166,154,0.45)' : 'rgba(239,83,80,0.45)',
});
