'use strict';
// lib/pool.js - Segment, Pool and Lease: the binding's API (index.d.ts
// documents it for users; this comment says how it works).
//
// A Segment is one attachment (km_open: a slot in the segment's process
// table); a Pool is one pool of it.  Pool.open(segment, pool) shares one
// attachment per segment name among the pools it opens in this process
// (one process, one slot: what kmctl check expects) and detaches with the
// last of them.  Attach in every process that uses the pool: under
// `cluster` or PM2, in each worker (a handle never crosses processes;
// Node workers are separate processes, so there is no fork to survive).
//
// acquire() first tries km_acquire() on the calling thread (lock-free, no
// system call), unless earlier acquire() calls of this pool still wait:
// then it queues behind them, so that within a process waiters are served
// first come, first served.  A wait runs on one of the addon's waiter
// threads, asleep in km_acquire_wait() on the segment's futex until a
// release (in any process), a cooldown's or a limit window's end can admit
// it; the event loop stays free.  tryAcquire() is the synchronous fast
// path alone (a Lease, or null when no key is admissible now).
//
// A Lease names an entry of the addon's lease table by (index,
// generation): release() of a lease already released is refused here, in
// JavaScript, before the segment is touched.  Key ids, secrets and
// metadata are copied out once per key (and key generation) and shared by
// the Lease objects of that key; a Lease never prints its secret
// (util.inspect and JSON.stringify show keyId, model and tokens).

const fs = require('node:fs');
const util = require('node:util');
const { load } = require('./native');
const { KeyMeshError, NoKeyAvailableError, argType, outOfRange, closedError } = require('./errors');

const { N } = load();

// Error codes, by name (EAGAIN: -15), read from the library (km_err_name).
const codes = {};
for (let rc = -1; rc > -200; rc--) {
  const n = N.errName(rc);
  if (n === 'UNKNOWN') break;
  codes[n] = rc;
}
Object.freeze(codes);
const STRATEGIES = N.names('strategy'); // index = km_strategy value
const OUTCOMES = N.names('outcome');    // index = km_outcome_kind value
const OUT = Object.fromEntries(OUTCOMES.map((n, i) => [n, i]));
const NO_KEY = new Set([codes.EAGAIN, codes.ETIMEDOUT, codes.EUNAVAIL]);

function kmError(rc, what, extra) {
  const name = N.errName(rc);
  const code = 'KM_' + name;
  const msg = `${code}: ${N.strerror(rc)}${what ? ': ' + what : ''}`;
  const props = { code, ...extra };
  return NO_KEY.has(rc) ? new NoKeyAvailableError(rc, msg, props) : new KeyMeshError(rc, msg, props);
}

// ------------------------------------------------------------ arguments

const U32 = 0xffffffff;

function intArg(v, name, def, max = U32) {
  if (v === undefined || v === null) return def;
  if (typeof v !== 'number') throw argType(name, 'of type number', v);
  if (!Number.isInteger(v) || v < 0 || v > max) throw outOfRange(name, `an integer >= 0 and <= ${max}`, v);
  return v;
}

function optNumber(v, name) {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || Number.isNaN(v)) throw argType(name, 'of type number', v);
  if (v < 0) throw outOfRange(name, '>= 0', v);
  return v;
}

function strArg(v, name) {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw argType(name, 'of type string', v);
  return v;
}

function strategyArg(v) {
  if (v === undefined || v === null) return 0;
  const i = typeof v === 'number' ? v : STRATEGIES.indexOf(v);
  if (!Number.isInteger(i) || i < 0 || i >= STRATEGIES.length) {
    throw outOfRange('strategy', 'one of ' + STRATEGIES.join(', '), v);
  }
  return i;
}

function timeoutArg(v, def) {
  if (v === undefined || v === null) return def;
  if (typeof v !== 'number' || Number.isNaN(v)) throw argType('timeout', 'of type number (milliseconds)', v);
  if (v < 0) throw outOfRange('timeout', '>= 0 (milliseconds; Infinity: no limit)', v);
  return v === Infinity ? 2 ** 40 : v;
}

// Headers of any shape -> [name, value, name, value, ...] strings: fetch's
// Headers (and anything with forEach(value, name)), a Map, an array of
// [name, value] pairs or a flat rawHeaders-style array, or a plain object
// (http.IncomingMessage.headers: arrays for repeated names).
function flatHeaders(h) {
  if (h === undefined || h === null) return undefined;
  const out = [];
  const add = (k, v) => {
    if (v === undefined || v === null) return;
    if (Array.isArray(v)) { for (const x of v) out.push(String(k), String(x)); } else out.push(String(k), String(v));
  };
  if (Array.isArray(h)) {
    if (h.length && Array.isArray(h[0])) { for (const [k, v] of h) add(k, v); } else {
      for (let i = 0; i + 1 < h.length; i += 2) add(h[i], h[i + 1]);
    }
  } else if (h instanceof Map) {
    for (const [k, v] of h) add(k, v);
  } else if (typeof h.forEach === 'function' && typeof h.get === 'function') {
    h.forEach((v, k) => add(k, v));
  } else if (typeof h === 'object') {
    for (const k of Object.keys(h)) add(k, h[k]);
  } else {
    throw argType('headers', 'a Headers, Map, array or object', h);
  }
  return out;
}

function bodyText(b) {
  if (b === undefined || b === null) return undefined;
  if (typeof b === 'string') return b;
  if (b instanceof Uint8Array) return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('utf8');
  if (b instanceof ArrayBuffer) return Buffer.from(b).toString('utf8');
  if (typeof b === 'object') return JSON.stringify(b);
  return String(b);
}

// An SDK's error (OpenAI's APIError, Anthropic's): status, headers and the
// parsed error body, when it has them.
function fromError(err) {
  if (err && typeof err === 'object') {
    if (err.name === 'AbortError' || err.name === 'APIUserAbortError' || err.code === 'ABORT_ERR') {
      return { kind: OUT.cancelled };
    }
    const status = typeof err.status === 'number' ? err.status
      : (typeof err.statusCode === 'number' ? err.statusCode
        : (err.response && typeof err.response.status === 'number' ? err.response.status : undefined));
    if (status) {
      const headers = err.headers || (err.response && err.response.headers);
      let body = err.error !== undefined ? err.error : undefined;
      if (body && typeof body === 'object' && !body.error) body = { error: body };
      return { status, headers, body };
    }
  }
  return { kind: OUT.failure };
}

// An outcome given to release() -> the native arguments after (core, i, gen).
function outcomeArgs(o) {
  if (typeof o !== 'object') throw argType('outcome', 'an object', o);
  let { status, headers, body } = o;
  let kind = OUT.success;
  if (o.error !== undefined) {
    const e = fromError(o.error);
    if (e.kind !== undefined) kind = e.kind;
    if (status === undefined) status = e.status;
    if (headers === undefined) headers = e.headers;
    if (body === undefined) body = e.body;
  }
  if (o.outcome !== undefined) {
    kind = OUT[o.outcome];
    if (kind === undefined) throw outOfRange('outcome', 'one of ' + OUTCOMES.join(', '), o.outcome);
    status = undefined;
  }
  if (status !== undefined) status = intArg(status, 'status', 0, 999);
  let tokens = intArg(o.tokens, 'tokens', undefined);
  let inTok = intArg(o.inputTokens, 'inputTokens', undefined);
  let outTok = intArg(o.outputTokens, 'outputTokens', undefined);
  const u = o.usage;
  if (u && typeof u === 'object') {
    // OpenAI: prompt_tokens / completion_tokens / total_tokens;
    // Anthropic: input_tokens / output_tokens; Gemini: promptTokenCount ...
    const i = u.prompt_tokens ?? u.input_tokens ?? u.promptTokenCount;
    const x = u.completion_tokens ?? u.output_tokens ?? u.candidatesTokenCount;
    if (inTok === undefined && Number.isInteger(i) && i >= 0) inTok = i;
    if (outTok === undefined && Number.isInteger(x) && x >= 0) outTok = x;
    const t = u.total_tokens ?? u.totalTokenCount;
    if (tokens === undefined) {
      if (Number.isInteger(t) && t >= 0) tokens = t;
      else if (inTok !== undefined && outTok !== undefined) tokens = inTok + outTok;
    }
  }
  const lat = optNumber(o.latencyMs, 'latencyMs');
  const retry = optNumber(o.retryAfter, 'retryAfter');
  return [kind, status, status ? flatHeaders(headers) : undefined, status ? bodyText(body) : undefined,
    tokens, inTok, outTok, lat === undefined ? undefined : Math.round(lat * 1000), retry];
}

// ------------------------------------------------------------ exit

const live = new Set();
let exitHooked = false;
function track(seg) {
  live.add(seg);
  if (!exitHooked) {
    exitHooked = true;
    // Detach at exit (process.exit() too): km_close() releases what is
    // still out, as abandoned.  A process killed outright is reaped.
    process.once('exit', () => {
      for (const s of [...live]) {
        try { s.close(); } catch { /* exiting: nothing more to do */ }
      }
    });
  }
}

// ------------------------------------------------------------ Lease

const kNew = Symbol('keymesh.new');

class Lease {
  #pool;
  #i;
  #gen;
  #k;
  #model;
  #tokens;
  #released = false;

  constructor(token, pool, i, gen, k, model, tokens) {
    if (token !== kNew) throw new TypeError('Lease objects come from Pool.acquire()');
    this.#pool = pool;
    this.#i = i;
    this.#gen = gen;
    this.#k = k;
    this.#model = model;
    this.#tokens = tokens;
  }

  /** The key's id in the pool ("k1"). */
  get keyId() { return this.#k.id; }
  /** The API key itself: put it in the request, nowhere else. */
  get secret() { return this.#k.secret; }
  /** The key's metadata (the config's "meta" object, e.g. {org: "org-1"}); {} if none. */
  get meta() {
    const k = this.#k;
    if (k.meta === undefined) k.meta = k.metaText ? Object.freeze(JSON.parse(k.metaText)) : Object.freeze({});
    return k.meta;
  }
  get metaText() { return this.#k.metaText; }
  get keyIndex() { return this.#k.index; }
  get model() { return this.#model; }
  /** Tokens reserved at acquire (the estimate). */
  get tokens() { return this.#tokens; }
  get released() { return this.#released; }
  get pool() { return this.#pool; }

  /** pool.release(this, outcome). */
  release(outcome) { return this.#pool.release(this, outcome); }

  toJSON() {
    return { keyId: this.keyId, model: this.#model, tokens: this.#tokens, released: this.#released };
  }

  [util.inspect.custom](depth, opts) {
    return `Lease ${util.inspect(this.toJSON(), opts)}`;
  }

  // For Pool.release: mark released and return [i, gen], or null if it
  // already was (or belongs to another pool).
  static take(lease, pool) {
    if (lease.#pool !== pool || lease.#released) return null;
    lease.#released = true;
    return [lease.#i, lease.#gen];
  }

  static untake(lease) { lease.#released = false; }
}

// ------------------------------------------------------------ Segment

class Segment {
  #h;
  #name;
  #pools = new Set();

  constructor(token, h, name) {
    if (token !== kNew) throw new TypeError('use Segment.open() or Segment.create()');
    this.#h = h;
    this.#name = name;
    track(this);
  }

  /** Attach to segment `name` (km_open). */
  static open(name) {
    if (typeof name !== 'string') throw argType('segment', 'of type string', name);
    const h = N.segOpen(name);
    if (typeof h === 'number') throw kmError(h, `segment '${name}'`, { segment: name });
    return new Segment(kNew, h, name);
  }

  /** Create segment `name` from a configuration (km_create) and attach:
   * config is an object, JSON text, or the path of a JSON file. */
  static create(name, config, options = {}) {
    if (typeof name !== 'string') throw argType('segment', 'of type string', name);
    let json;
    let origin = '<config>';
    if (typeof config === 'string') {
      if (config.trimStart().startsWith('{')) json = config;
      else { origin = config; json = fs.readFileSync(config, 'utf8'); }
    } else if (config && typeof config === 'object') {
      json = JSON.stringify(config);
    } else {
      throw argType('config', 'an object, JSON text or a file path', config);
    }
    const mode = intArg(options.mode, 'mode', 0o600, 0o7777);
    const h = N.segCreate(name, json, origin, mode);
    if (typeof h === 'string') {
      throw new KeyMeshError(codes.ECONFIG, `KM_ECONFIG: invalid configuration: ${h}`, { code: 'KM_ECONFIG', segment: name });
    }
    if (typeof h === 'number') throw kmError(h, `segment '${name}'`, { segment: name });
    return new Segment(kNew, h, name);
  }

  get name() { return this.#name; }
  get closed() { return this.#h === null; }

  #handle() {
    if (this.#h === null) throw closedError(`segment '${this.#name}'`);
    return this.#h;
  }

  /** Pool `name` of this segment; closing the segment closes it. */
  pool(name, options) {
    if (typeof name !== 'string') throw argType('pool', 'of type string', name);
    const h = this.#handle();
    const idx = N.poolFind(h, name);
    if (idx < 0) throw kmError(idx, `pool '${name}' in segment '${this.#name}'`, { segment: this.#name, pool: name });
    const p = new Pool(kNew, this, h, idx, name, options || {});
    this.#pools.add(p);
    return p;
  }

  _forget(p) { this.#pools.delete(p); }

  info() {
    const r = N.segInfo(this.#handle());
    if (typeof r === 'number') throw kmError(r, `segment '${this.#name}'`);
    return r;
  }

  /** Close every pool of it, then detach (km_close: leases still out are
   * released as abandoned). */
  close() {
    if (this.#h === null) return;
    const h = this.#h;
    this.#h = null; // first: a pool's close() closes its owning segment again
    live.delete(this);
    for (const p of [...this.#pools]) p.close();
    N.segClose(h);
  }

  [util.inspect.custom]() { return `Segment { name: '${this.#name}'${this.#h ? '' : ', closed'} }`; }
}

// ------------------------------------------------------------ Pool

// Pool.open()'s attachments, by segment name: {seg, pools}.
const shared = new Map();
const segKey = (name) => name.replace(/^\/+/, '');

class Pool {
  #seg;
  #share = null;
  #core;
  #name;
  #s = new Float64Array(8); // scratch shared with the addon
  #keys = [];               // key index -> {index, gen, id, secret, metaText, meta}
  #timeout;
  #pending = new Map();     // wait id -> {resolve, reject, model, tokens, signal, onAbort}
  #waiting = 0;
  #seq = 0;
  #closed = false;

  constructor(token, seg, h, idx, name, options) {
    if (token !== kNew) throw new TypeError('use Pool.open() or segment.pool()');
    if (options === null || typeof options !== 'object') throw argType('options', 'an object', options);
    this.#seg = seg;
    this.#name = name;
    this.#timeout = timeoutArg(options.timeout, 30000);
    const maxWaiters = intArg(options.maxWaiters, 'maxWaiters', 4, 64);
    this.#core = N.coreNew(h, idx, this.#s, (id, rc, i) => this.#dispatch(id, rc, i), Math.max(1, maxWaiters));
  }

  /** Open pool `pool` of segment `segment`, attaching to it unless a pool
   * of this process opened this way already did (one attachment per
   * process and segment); the last such pool's close() detaches.
   * options: {timeout: default acquire timeout in ms (30000), maxWaiters:
   * threads that may sleep in km_acquire_wait for this pool (4)}. */
  static open(segment, pool, options) {
    if (typeof segment !== 'string') throw argType('segment', 'of type string', segment);
    const key = segKey(segment);
    let e = shared.get(key);
    if (e === undefined || e.seg.closed) {
      e = { seg: Segment.open(segment), pools: 0 };
      shared.set(key, e);
    }
    let h;
    try {
      h = e.seg.pool(pool, options);
    } catch (err) {
      if (e.pools === 0) {
        shared.delete(key);
        e.seg.close();
      }
      throw err;
    }
    h.#share = e;
    e.pools++;
    return h;
  }

  get name() { return this.#name; }
  get segment() { return this.#seg; }
  get closed() { return this.#closed; }

  #lease(i, model, tokens) {
    const s = this.#s;
    const ki = s[1];
    let k = this.#keys[ki];
    if (k === undefined || k.gen !== s[2]) {
      const gen = s[2];
      const str = N.leaseStrings(this.#core, i, s[0]);
      k = this.#keys[ki] = { index: ki, gen, id: str[0], secret: str[1], metaText: str[2], meta: undefined };
    }
    return new Lease(kNew, this, i, s[0], k, model, tokens);
  }

  #check() {
    if (this.#closed) throw closedError(`pool '${this.#name}'`);
  }

  #args(o) {
    if (o === undefined || o === null) return [0, undefined, undefined, 0];
    if (typeof o !== 'object') throw argType('options', 'an object', o);
    return [intArg(o.tokens, 'tokens', 0), strArg(o.model, 'model'), strArg(o.keyId, 'keyId'), strategyArg(o.strategy)];
  }

  // km_acquire with only the arguments that are set: every argument the
  // addon reads costs (undefined ones too).
  #try(tokens, model, keyId, strategy) {
    if (model === undefined && keyId === undefined && strategy === 0) return N.acquire(this.#core, tokens);
    return N.acquire(this.#core, tokens, model, keyId, strategy);
  }

  #what(model, keyId) {
    let w = `pool '${this.#name}'`;
    if (model !== undefined) w += `, model '${model}'`;
    if (keyId !== undefined) w += `, key '${keyId}'`;
    return w;
  }

  #err(rc, model, keyId) {
    const extra = { pool: this.#name };
    if (rc === codes.EAGAIN || rc === codes.ETIMEDOUT) extra.retryAfterMs = Math.ceil(this.#s[5]);
    return kmError(rc, this.#what(model, keyId), extra);
  }

  /** A lease if a key is admissible now, else null; never waits.  Throws
   * KeyMeshError for anything but "not now" (KM_EUNAVAIL: none will be). */
  tryAcquire(options) {
    this.#check();
    let tokens = 0;
    let model;
    let keyId;
    let strategy = 0;
    if (options !== undefined && options !== null) {
      if (typeof options !== 'object') throw argType('options', 'an object', options);
      const t = options.tokens;
      tokens = typeof t === 'number' && t >= 0 && t <= U32 && Number.isInteger(t) ? t : intArg(t, 'tokens', 0);
      if (options.model !== undefined) model = strArg(options.model, 'model');
      if (options.keyId !== undefined) keyId = strArg(options.keyId, 'keyId');
      if (options.strategy !== undefined) strategy = strategyArg(options.strategy);
    }
    const i = this.#try(tokens, model, keyId, strategy);
    if (i >= 0) return this.#lease(i, model, tokens);
    if (i === codes.EAGAIN) return null;
    throw this.#err(i, model, keyId);
  }

  /** A Promise of a lease: at once when a key is admissible, else when one
   * is (any process's release wakes it), or rejected with
   * NoKeyAvailableError after `timeout` ms (0: do not wait).  `signal`: an
   * AbortSignal that cancels the wait. */
  acquire(options) {
    let a;
    let timeout;
    let signal;
    try {
      this.#check();
      a = this.#args(options);
      timeout = timeoutArg(options && options.timeout, this.#timeout);
      signal = options ? options.signal : undefined;
      if (signal !== undefined && signal !== null &&
          (typeof signal !== 'object' || typeof signal.aborted !== 'boolean')) {
        throw argType('signal', 'an AbortSignal', signal);
      }
    } catch (e) {
      return Promise.reject(e);
    }
    const [tokens, model, keyId, strategy] = a;
    if (signal && signal.aborted) return Promise.reject(abortReason(signal));
    if (this.#waiting === 0) {
      const i = this.#try(tokens, model, keyId, strategy);
      if (i >= 0) return Promise.resolve(this.#lease(i, model, tokens));
      if (i !== codes.EAGAIN || timeout === 0) return Promise.reject(this.#err(i, model, keyId));
    } else if (timeout === 0) {
      const i = this.#try(tokens, model, keyId, strategy);
      if (i >= 0) return Promise.resolve(this.#lease(i, model, tokens));
      return Promise.reject(this.#err(i, model, keyId));
    }
    return new Promise((resolve, reject) => {
      const id = ++this.#seq;
      const rc = N.wait(this.#core, id, timeout, tokens, model, keyId, strategy);
      if (rc < 0) { reject(this.#err(rc, model, keyId)); return; }
      const p = { resolve, reject, model, keyId, tokens, signal, onAbort: undefined };
      if (signal) {
        p.onAbort = () => {
          if (this.#pending.get(id) !== p) return;
          this.#pending.delete(id);
          this.#waiting--;
          // Queued: gone.  Taken by a thread: it stops within 200 ms, and
          // a lease it got meanwhile is given back (#dispatch).
          N.cancel(this.#core, id);
          reject(abortReason(signal));
        };
        signal.addEventListener('abort', p.onAbort, { once: true });
      }
      this.#pending.set(id, p);
      this.#waiting++;
    });
  }

  #dispatch(id, rc, i) {
    const p = this.#pending.get(id);
    if (p === undefined) {
      // Cancelled, or the pool closed, while a thread held it.
      if (rc === 0 && !this.#closed) N.releaseWith(this.#core, i, this.#s[0], OUT.cancelled);
      return;
    }
    this.#pending.delete(id);
    this.#waiting--;
    if (p.signal) p.signal.removeEventListener('abort', p.onAbort);
    if (rc === 0) p.resolve(this.#lease(i, p.model, p.tokens));
    else p.reject(this.#err(rc, p.model, p.keyId));
  }

  /** Give a lease back with what happened (none: success).  outcome:
   *   {status, headers, body}  the provider's answer, mapped by
   *                            km_outcome_from_http (429 + Retry-After
   *                            cools the key, 401/403 invalidate it, ...)
   *   {error}                  an exception: an SDK error's status and
   *                            headers, an abort (cancelled), else failure
   *   {outcome: 'failure'|'rate_limited'|'auth'|'quota'|'cancelled'|'success', retryAfter (s)}
   *   tokens, inputTokens, outputTokens, usage (an SDK's usage object),
   *   latencyMs (default: measured from the acquire).
   * Returns true, or false if the library ignored it as stale (the key
   * was removed and its row reused meanwhile; counted on the key).
   * Throws KM_ESTALE for a lease already released. */
  release(lease, outcome) {
    if (!(lease instanceof Lease)) throw argType('lease', 'a Lease', lease);
    const t = Lease.take(lease, this);
    if (t === null) {
      if (lease.pool !== this) {
        throw new KeyMeshError(codes.EINVAL, `KM_EINVAL: invalid argument: the lease is of pool '${lease.pool.name}', not '${this.#name}'`, { code: 'KM_EINVAL' });
      }
      throw kmError(codes.ESTALE, `key '${lease.keyId}' of pool '${this.#name}': released twice`, { pool: this.#name });
    }
    if (this.#closed) throw closedError(`pool '${this.#name}'`);
    let rc;
    if (outcome === undefined || outcome === null) {
      rc = N.release(this.#core, t[0], t[1]);
    } else {
      let a;
      try {
        a = outcomeArgs(outcome);
      } catch (e) {
        Lease.untake(lease);
        throw e;
      }
      rc = N.releaseWith(this.#core, t[0], t[1], ...a);
    }
    if (rc === 0) return true;
    if (rc === codes.ESTALE) return false;
    throw kmError(rc, `releasing key '${lease.keyId}' of pool '${this.#name}'`);
  }

  /** Acquire, run fn(lease), release: success when fn returns, {error}
   * when it throws (unless fn released the lease itself, with details). */
  async use(options, fn) {
    if (typeof options === 'function') { fn = options; options = undefined; }
    if (typeof fn !== 'function') throw argType('fn', 'a function', fn);
    const lease = await this.acquire(options);
    let r;
    try {
      r = await fn(lease);
    } catch (e) {
      if (!lease.released && !this.#closed) this.release(lease, { error: e });
      throw e;
    }
    if (!lease.released && !this.#closed) this.release(lease);
    return r;
  }

  /** The pool's keys now: id, masked secret, state, in-flight, counters,
   * limits.  Never a secret. */
  keys() {
    this.#check();
    const r = N.keys(this.#core);
    if (typeof r === 'number') throw kmError(r, `pool '${this.#name}'`);
    return r;
  }

  info() {
    this.#check();
    const r = N.poolInfo(this.#core);
    if (typeof r === 'number') throw kmError(r, `pool '${this.#name}'`);
    return r;
  }

  /** Waits pending, waiter threads, leases out (for tests and metrics). */
  stats() {
    this.#check();
    return N.coreStats(this.#core);
  }

  /** Reject the acquires still waiting (ERR_KEYMESH_CLOSED) and stop using
   * the pool; a pool from Pool.open() also detaches its segment. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    N.coreClose(this.#core);
    const err = closedError(`pool '${this.#name}'`);
    for (const p of this.#pending.values()) {
      if (p.signal) p.signal.removeEventListener('abort', p.onAbort);
      p.reject(err);
    }
    this.#pending.clear();
    this.#waiting = 0;
    this.#keys = [];
    this.#seg._forget(this);
    const e = this.#share;
    if (e !== null && --e.pools === 0) {
      if (shared.get(segKey(this.#seg.name)) === e) shared.delete(segKey(this.#seg.name));
      e.seg.close();
    }
  }

  [util.inspect.custom]() {
    return `Pool { name: '${this.#name}', segment: '${this.#seg.name}'${this.#closed ? ', closed' : ''} }`;
  }
}

function abortReason(signal) {
  if (signal.reason !== undefined) return signal.reason;
  const e = new Error('The operation was aborted');
  e.name = 'AbortError';
  e.code = 'ABORT_ERR';
  return e;
}

/** Remove segment `name` (km_unlink); attached processes keep working. */
function unlink(name) {
  if (typeof name !== 'string') throw argType('segment', 'of type string', name);
  const rc = N.unlink(name);
  if (rc !== 0) throw kmError(rc, `segment '${name}'`, { segment: name });
}

module.exports = { Segment, Pool, Lease, unlink, codes, STRATEGIES, OUTCOMES, flatHeaders, outcomeArgs, kmError };
