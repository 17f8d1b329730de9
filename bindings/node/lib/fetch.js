'use strict';
// lib/fetch.js - keymeshFetch(pool, options): a fetch() that leases a key
// per request.  The OpenAI and Anthropic SDKs (and most others) take a
// `fetch` option, so one wrapper serves them all:
//
//   const pool = Pool.open('llm', 'openai');
//   const client = new OpenAI({ apiKey: 'unused', fetch: keymeshFetch(pool) });
//   const claude = new Anthropic({ apiKey: 'unused',
//                                  fetch: keymeshFetch(apool, { provider: 'anthropic' }) });
//
// For each call it acquires a key (waiting without blocking the event loop,
// up to `timeout` ms; the request's AbortSignal cancels the wait), sets the
// key's header (Authorization: Bearer for OpenAI-style providers, x-api-key
// for Anthropic, x-goog-api-key for Gemini, api-key for Azure, or `header`),
// and when the response's headers arrive releases the lease with its
// status, rate-limit headers and (errors only, read from a clone so the
// caller still gets the body) error body, through km_outcome_from_http: a
// 429 cools the key for its Retry-After, 401/403 invalidate it, an
// insufficient-quota answer exhausts it, x-ratelimit-* / anthropic-
// ratelimit-* tighten its windows.  A streamed success stays streamed: the
// lease ends at the headers.  After a 429 the request goes once more on
// another key when one is free now and the body can be sent again (a
// string, bytes, URLSearchParams, FormData or Blob; not a stream).  A
// network error counts as a failure, an aborted request as cancelled.

const { Pool, outcomeArgs } = require('./pool');
const { argType, outOfRange } = require('./errors');

// provider -> [header, scheme]
const PROVIDER_HEADERS = Object.freeze({
  openai: ['authorization', 'Bearer'],
  azure: ['api-key', ''],
  anthropic: ['x-api-key', ''],
  gemini: ['x-goog-api-key', ''],
  google: ['x-goog-api-key', ''],
  groq: ['authorization', 'Bearer'],
  mistral: ['authorization', 'Bearer'],
  together: ['authorization', 'Bearer'],
  deepseek: ['authorization', 'Bearer'],
  openrouter: ['authorization', 'Bearer'],
  xai: ['authorization', 'Bearer'],
});

function replayable(body) {
  return typeof body === 'string' ||
    body instanceof ArrayBuffer || ArrayBuffer.isView(body) ||
    body instanceof URLSearchParams ||
    (typeof FormData !== 'undefined' && body instanceof FormData) ||
    (typeof Blob !== 'undefined' && body instanceof Blob);
}

function keymeshFetch(pool, options = {}) {
  if (!(pool instanceof Pool)) throw argType('pool', 'a Pool', pool);
  if (options === null || typeof options !== 'object') throw argType('options', 'an object', options);
  const provider = options.provider === undefined ? 'openai' : options.provider;
  let header;
  let scheme;
  if (options.header !== undefined) {
    if (typeof options.header !== 'string') throw argType('header', 'of type string', options.header);
    header = options.header.toLowerCase();
    scheme = header === 'authorization' ? 'Bearer' : '';
  } else {
    const p = PROVIDER_HEADERS[provider];
    if (!p) throw outOfRange('provider', 'one of ' + Object.keys(PROVIDER_HEADERS).join(', ') + ' (or give `header`)', provider);
    [header, scheme] = p;
  }
  if (options.scheme !== undefined) scheme = String(options.scheme);
  const base = options.fetch === undefined ? globalThis.fetch : options.fetch;
  if (typeof base !== 'function') throw argType('fetch', 'a function', base);
  const retry429 = options.retry429 !== false;
  const { model, tokens, timeout, keyId, strategy } = options;
  const value = (lease) => (scheme ? `${scheme} ${lease.secret}` : lease.secret);
  const pick = (v, input, init) => (typeof v === 'function' ? v(input, init) : v);

  return async function fetchWithKey(input, init) {
    const isReq = typeof Request !== 'undefined' && input instanceof Request;
    const signal = (init && init.signal) || (isReq ? input.signal : undefined);
    const canReplay = init && init.body !== undefined && init.body !== null
      ? replayable(init.body) : !(isReq && input.body);
    const req = {
      model: pick(model, input, init),
      tokens: pick(tokens, input, init),
      keyId,
      strategy,
      timeout,
      signal: signal || undefined,
    };
    let lease = await pool.acquire(req);
    let retried = false;
    for (;;) {
      // A Request's own headers count unless init gives headers (as fetch
      // itself does); the key's header replaces whatever the SDK set.
      const h = new Headers(init && init.headers !== undefined ? init.headers : (isReq ? input.headers : undefined));
      h.set(header, value(lease));
      let res;
      try {
        res = await base(input, { ...init, headers: h });
      } catch (e) {
        if (!lease.released) {
          const aborted = (signal && signal.aborted) || (e && (e.name === 'AbortError' || e.code === 'ABORT_ERR'));
          pool.release(lease, { outcome: aborted ? 'cancelled' : 'failure' });
        }
        throw e;
      }
      let text;
      if (res.status >= 400) {
        try {
          text = await res.clone().text();
        } catch {
          text = undefined;
        }
      }
      pool.release(lease, { status: res.status, headers: res.headers, body: text });
      if (res.status !== 429 || !retry429 || retried || !canReplay) return res;
      const next = pool.tryAcquire(req);
      if (next === null) return res; // no other key free now: the caller sees the 429
      retried = true;
      lease = next;
      if (res.body) {
        try { await res.body.cancel(); } catch { /* already consumed */ }
      }
    }
  };
}

module.exports = { keymeshFetch, PROVIDER_HEADERS, outcomeArgs };
