// tests/node/test_fetch.mjs - keymeshFetch (bindings/node/lib/fetch.js)
// against a mock provider on 127.0.0.1 (mock_provider.mjs), and the OpenAI
// and Anthropic SDKs (npm, installed into the build tree by make
// node-test-deps) using it through their `fetch` option.  Run by
// tests/t_node.sh.
import test from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import { km, BUILD, segment, keys, SECRET_PREFIX } from './helpers.mjs';
import { startMock } from './mock_provider.mjs';

const { keymeshFetch } = km;
const deps = createRequire(path.join(BUILD, 'node', 'deps', 'tests', 'package.json'));

const mock = await startMock();
test.after(() => mock.close());

function pool(tag, n = 2, extra = {}) {
  const seg = segment(tag, [{ name: 'p', strategy: 'round_robin', keys: keys(n, tag), ...extra }]);
  return { seg, pool: seg.pool('p') };
}
const state = (p) => Object.fromEntries(p.keys().map((k) => [k.id, k]));
const chat = (f, headers = {}) => f(`${mock.base}/v1/chat/completions`, {
  method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer sk-unused', ...headers },
  body: JSON.stringify({ model: 'gpt-test', messages: [{ role: 'user', content: 'hi' }] }),
});

test('sets Authorization: Bearer <a pool key> in place of the caller\'s, releases success', async () => {
  const { seg, pool: p } = pool('bearer');
  mock.requests.length = 0;
  const f = keymeshFetch(p);
  const r1 = await chat(f);
  const r2 = await chat(f);
  assert.equal(r1.status, 200);
  assert.equal((await r1.json()).choices[0].message.content, 'ok');
  await r2.text();
  const seen = mock.keys();
  assert.deepEqual(seen.sort(), [`${SECRET_PREFIX}bearer-1aaaa`, `${SECRET_PREFIX}bearer-2aaaa`], 'round robin over the pool\'s keys');
  assert.ok(!mock.requests.some((r) => r.headers.authorization === 'Bearer sk-unused'));
  const st = state(p);
  assert.deepEqual([st.k1.outcomes.success, st.k2.outcomes.success, st.k1.inflight + st.k2.inflight], [1, 1, 0]);
  seg.close();
});

test('each provider\'s header: x-api-key (anthropic), x-goog-api-key (gemini), api-key (azure), a custom one', async () => {
  const { seg, pool: p } = pool('hdr', 1);
  const key = `${SECRET_PREFIX}hdr-1aaaa`;
  for (const [opts, name, want] of [
    [{ provider: 'anthropic' }, 'x-api-key', key],
    [{ provider: 'gemini' }, 'x-goog-api-key', key],
    [{ provider: 'azure' }, 'api-key', key],
    [{ provider: 'groq' }, 'authorization', `Bearer ${key}`],
    [{ header: 'X-Custom-Key' }, 'x-custom-key', key],
  ]) {
    mock.requests.length = 0;
    const r = await keymeshFetch(p, opts)(new Request(`${mock.base}/v1/x`, { method: 'POST', body: '{}', headers: { [name]: 'placeholder' } }));
    await r.text();
    assert.equal(mock.requests[0].headers[name], want, `${JSON.stringify(opts)}: ${name}`);
  }
  assert.throws(() => keymeshFetch(p, { provider: 'nobody' }), { code: 'ERR_OUT_OF_RANGE' });
  assert.throws(() => keymeshFetch({}, {}), { code: 'ERR_INVALID_ARG_TYPE' });
  seg.close();
});

test('a 429 cools its key (Retry-After) and the request goes once more on another key', async () => {
  const { seg, pool: p } = pool('retry');
  mock.requests.length = 0;
  mock.plan = (req, n) => (n === 0 ? { status: 429, headers: { 'retry-after': '30' }, body: { error: { code: 'rate_limit_exceeded', type: 'requests' } } } : undefined);
  const r = await chat(keymeshFetch(p));
  mock.plan = null;
  assert.equal(r.status, 200, 'the caller sees the second answer');
  await r.text();
  assert.equal(mock.requests.length, 2);
  assert.notEqual(mock.requests[0].key, mock.requests[1].key, 'sent again on the other key');
  const st = state(p);
  const limited = Object.values(st).find((k) => k.outcomes.rate_limited === 1);
  assert.ok(limited, 'one key counted the 429');
  assert.equal(limited.state, 'cooling');
  assert.ok(limited.cooldownMs > 25000, `cooling for Retry-After (${limited.cooldownMs} ms)`);
  assert.equal(Object.values(st).reduce((a, k) => a + k.outcomes.success, 0), 1);
  seg.close();
});

test('a 429 reaches the caller with retry429: false, with no other key free, or a stream body', async () => {
  const rl = { status: 429, headers: { 'retry-after': '30' }, body: { error: { code: 'rate_limit_exceeded' } } };
  for (const [what, opts, n, body] of [
    ['retry429: false', { retry429: false }, 2, undefined],
    ['one key', {}, 1, undefined],
    ['a stream body', {}, 2, 'stream'],
  ]) {
    const { seg, pool: p } = pool(`no429${n}${what.length}`, n);
    mock.requests.length = 0;
    mock.plan = () => rl;
    const init = { method: 'POST', body: '{"a":1}' };
    if (body === 'stream') {
      init.body = new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('{"a":1}')); c.close(); } });
      init.duplex = 'half';
    }
    const r = await keymeshFetch(p, opts)(`${mock.base}/v1/chat/completions`, init);
    mock.plan = null;
    assert.equal(r.status, 429, what);
    assert.deepEqual(await r.json(), rl.body, `${what}: the caller still reads the error body`);
    assert.equal(mock.requests.length, 1, `${what}: sent once`);
    seg.close();
  }
});

test('insufficient_quota exhausts a key, 401 invalidates one, x-ratelimit-* tighten a window', async () => {
  const { seg, pool: p } = pool('kinds', 3, { limits: { rpm: 1000 } });
  mock.plan = (req) => {
    if (req.key.endsWith('kinds-1aaaa')) return { status: 429, body: { error: { type: 'insufficient_quota', code: 'insufficient_quota' } } };
    if (req.key.endsWith('kinds-2aaaa')) return { status: 401, body: { error: { code: 'invalid_api_key' } } };
    return { status: 200, headers: { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '50s' }, body: {} };
  };
  const f = keymeshFetch(p, { retry429: false });
  for (let i = 0; i < 3; i++) await (await chat(f)).text();
  mock.plan = null;
  const st = state(p);
  assert.equal(st.k1.state, 'exhausted');
  assert.equal(st.k2.state, 'invalid');
  assert.equal(st.k3.outcomes.success, 1);
  assert.equal(st.k3.limits.rpm.available, 0, 'the provider said 0 requests remain: the window agrees');
  assert.equal(p.tryAcquire(), null, 'no key left to hand out');
  seg.close();
});

test('a network error counts as a failure, an aborted request as cancelled', async () => {
  const { seg, pool: p } = pool('neterr', 1);
  const dead = await startMock();
  const url = `${dead.base}/v1/chat/completions`;
  await dead.close();
  await assert.rejects(keymeshFetch(p)(url, { method: 'POST', body: '{}' }), TypeError);
  mock.plan = () => ({ status: 200, body: {}, delayMs: 2000 });
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  await assert.rejects(keymeshFetch(p)(`${mock.base}/v1/chat/completions`, { method: 'POST', body: '{}', signal: ac.signal }), { name: 'AbortError' });
  mock.plan = null;
  const k = state(p).k1;
  assert.deepEqual([k.outcomes.failure, k.outcomes.cancelled, k.inflight], [1, 1, 0]);
  seg.close();
});

test('requests wait for a key without blocking the event loop (max_inflight 1)', async () => {
  const { seg, pool: p } = pool('inflight', 1, { max_inflight: 1 });
  mock.requests.length = 0;
  mock.plan = () => ({ status: 200, body: {}, delayMs: 150 });
  let ticks = 0;
  const iv = setInterval(() => ticks++, 5);
  const f = keymeshFetch(p, { timeout: 10000 });
  const rs = await Promise.all([1, 2, 3].map(() => chat(f)));
  clearInterval(iv);
  mock.plan = null;
  assert.deepEqual(rs.map((r) => r.status), [200, 200, 200]);
  assert.ok(ticks > 0, 'timers ran meanwhile');
  const k = state(p).k1;
  assert.deepEqual([k.acquired, k.outcomes.success, k.inflight], [3, 3, 0]);
  seg.close();
});

test('no key in time: the fetch rejects with NoKeyAvailableError (KM_ETIMEDOUT), nothing sent', async () => {
  const { seg, pool: p } = pool('nokey', 1, { max_inflight: 1 });
  const held = p.tryAcquire();
  mock.requests.length = 0;
  await assert.rejects(chat(keymeshFetch(p, { timeout: 100 })), (e) => e instanceof km.NoKeyAvailableError && e.code === 'KM_ETIMEDOUT');
  assert.equal(mock.requests.length, 0);
  p.release(held);
  seg.close();
});

// ------------------------------------------------------------ the SDKs

test('the OpenAI SDK (fetch option): a completion on a pool key, a 429 retried on the other key', async () => {
  const { default: OpenAI } = await import(deps.resolve('openai'));
  const { seg, pool: p } = pool('openai');
  const client = new OpenAI({ apiKey: 'sk-unused', baseURL: `${mock.base}/v1`, fetch: keymeshFetch(p), maxRetries: 0 });
  mock.requests.length = 0;
  const r = await client.chat.completions.create({ model: 'gpt-test', messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(r.choices[0].message.content, 'ok');
  assert.equal(r.usage.total_tokens, 15);
  assert.ok(mock.requests[0].key.startsWith(`${SECRET_PREFIX}openai-`), 'the SDK\'s placeholder key was replaced');
  mock.plan = (req, n) => (n === 1 ? { status: 429, headers: { 'retry-after': '20' }, body: { error: { message: 'Rate limit', type: 'requests', code: 'rate_limit_exceeded' } } } : undefined);
  const r2 = await client.chat.completions.create({ model: 'gpt-test', messages: [{ role: 'user', content: 'again' }] });
  mock.plan = null;
  assert.equal(r2.choices[0].message.content, 'ok');
  assert.equal(mock.requests.length, 3);
  const st = Object.values(state(p));
  assert.equal(st.reduce((a, k) => a + k.outcomes.rate_limited, 0), 1);
  assert.equal(st.reduce((a, k) => a + k.outcomes.success, 0), 2);
  assert.equal(st.reduce((a, k) => a + k.inflight, 0), 0);
  // Every key cooling: the SDK sees its fetch fail, and reports a
  // connection error (a timeout: KeyMesh's message says "timed out");
  // nothing reaches the provider.
  for (const k of st) {
    const l = p.tryAcquire({ keyId: k.id });
    if (l) p.release(l, { status: 429, headers: { 'retry-after': '20' } });
  }
  assert.equal(p.tryAcquire(), null);
  const sent = mock.requests.length;
  const c2 = new OpenAI({ apiKey: 'sk-unused', baseURL: `${mock.base}/v1`, fetch: keymeshFetch(p, { timeout: 50 }), maxRetries: 0 });
  await assert.rejects(c2.chat.completions.create({ model: 'gpt-test', messages: [] }), OpenAI.APIConnectionError);
  assert.equal(mock.requests.length, sent);
  seg.close();
});

test('the Anthropic SDK (fetch option): x-api-key is a pool key, the answer parsed', async () => {
  const { default: Anthropic } = await import(deps.resolve('@anthropic-ai/sdk'));
  const { seg, pool: p } = pool('anthropic', 1);
  const client = new Anthropic({ apiKey: 'sk-ant-unused', baseURL: mock.base, fetch: keymeshFetch(p, { provider: 'anthropic' }), maxRetries: 0 });
  mock.requests.length = 0;
  const r = await client.messages.create({ model: 'claude-test', max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(r.content[0].text, 'ok');
  assert.equal(mock.requests[0].path, '/v1/messages');
  assert.equal(mock.requests[0].headers['x-api-key'], `${SECRET_PREFIX}anthropic-1aaaa`);
  const k = state(p).k1;
  assert.deepEqual([k.outcomes.success, k.inflight], [1, 0]);
  mock.plan = () => ({ status: 429, headers: { 'retry-after': '15' }, body: { type: 'error', error: { type: 'rate_limit_error', message: 'slow' } } });
  await assert.rejects(client.messages.create({ model: 'claude-test', max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] }), (e) => e.status === 429);
  mock.plan = null;
  assert.equal(state(p).k1.state, 'cooling');
  seg.close();
});
