// Exact numbers in the page. The API sends exact decimals as JSON numbers (70150.5, 0.00000001);
// JSON.parse would turn them into floats (0.00000001 prints as 1e-8, big values lose digits), so
// every number is kept as the text the API sent, and the few sums the page makes (cumulative
// depth, spread, mid, candle volume) are done on BigInt-scaled integers.

const reviverHasSource = (() => {
  try {
    return JSON.parse('[1.10]', (k, v, ctx) => (typeof v === 'number' && ctx ? ctx.source : v))[0] === '1.10';
  } catch {
    return false;
  }
})();

/** JSON.parse, with every number returned as its source text. */
export function parseExact(text) {
  if (reviverHasSource) {
    return JSON.parse(text, (k, v, ctx) => (typeof v === 'number' ? ctx.source : v));
  }
  return parseFallback(text);
}

// A small JSON parser for browsers without JSON.parse source access (numbers stay text).
function parseFallback(text) {
  let i = 0;
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const value = () => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const o = {};
      ws();
      if (text[i] === '}') { i++; return o; }
      for (;;) {
        ws();
        const k = str();
        ws();
        if (text[i++] !== ':') throw new SyntaxError('bad JSON object');
        o[k] = value();
        ws();
        const d = text[i++];
        if (d === '}') return o;
        if (d !== ',') throw new SyntaxError('bad JSON object');
      }
    }
    if (c === '[') {
      i++;
      const a = [];
      ws();
      if (text[i] === ']') { i++; return a; }
      for (;;) {
        a.push(value());
        ws();
        const d = text[i++];
        if (d === ']') return a;
        if (d !== ',') throw new SyntaxError('bad JSON array');
      }
    }
    if (c === '"') return str();
    const m = /^-?\d+(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 64));
    if (m) { i += m[0].length; return m[0]; }
    for (const [word, v] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, i)) { i += word.length; return v; }
    }
    throw new SyntaxError('bad JSON value at ' + i);
  };
  const str = () => {
    const m = /^"(?:[^"\\]|\\.)*"/.exec(text.slice(i));
    if (!m) throw new SyntaxError('bad JSON string');
    i += m[0].length;
    return JSON.parse(m[0]);
  };
  const v = value();
  ws();
  if (i !== text.length) throw new SyntaxError('trailing JSON');
  return v;
}

// ---------------------------------------------------------------- decimals

const SCALE = 18; // enough for every instrument's tick and lot (and their products' needs here)
const TEN = 10n;
const ONE = TEN ** BigInt(SCALE);

/** Decimal text -> BigInt scaled by 10^18 (exact; throws on non-numbers). */
export function toUnits(text) {
  let s = String(text).trim();
  let exp = 0;
  const e = s.search(/[eE]/);
  if (e >= 0) {
    exp = parseInt(s.slice(e + 1), 10);
    s = s.slice(0, e);
  }
  const neg = s.startsWith('-');
  if (neg || s.startsWith('+')) s = s.slice(1);
  if (!/^\d*\.?\d*$/.test(s) || s === '' || s === '.') throw new Error('not a decimal: ' + text);
  let [ip, fp = ''] = s.split('.');
  let digits = ip + fp;
  let scale = fp.length - exp; // value = digits * 10^-scale
  let v = BigInt(digits || '0');
  const shift = SCALE - scale;
  if (shift >= 0) v *= TEN ** BigInt(shift);
  else v /= TEN ** BigInt(-shift); // finer than 1e-18: not produced by the API
  return neg ? -v : v;
}

/** BigInt scaled by 10^18 -> shortest exact decimal text ("0.3", "70000", "-0.00000001"). */
export function fromUnits(v) {
  const neg = v < 0n;
  if (neg) v = -v;
  const ip = v / ONE;
  let fp = (v % ONE).toString().padStart(SCALE, '0').replace(/0+$/, '');
  return (neg ? '-' : '') + ip.toString() + (fp ? '.' + fp : '');
}

export const add = (a, b) => fromUnits(toUnits(a) + toUnits(b));
export const sub = (a, b) => fromUnits(toUnits(a) - toUnits(b));
export const cmp = (a, b) => {
  const x = toUnits(a);
  const y = toUnits(b);
  return x < y ? -1 : x > y ? 1 : 0;
};
/** (a + b) / 2, exact: API values have far fewer than 18 decimals, so halving never truncates. */
export const mid = (a, b) => fromUnits((toUnits(a) + toUnits(b)) / 2n);
