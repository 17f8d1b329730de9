#!/usr/bin/env node
// bench/node/bench_node.mjs - acquire + release from Node.js, side by side.
//
//   make && make node-bench-deps     # koffi into build/node/deps/bench (npm)
//   node bench/node/bench_node.mjs [--reps 7] [--seconds 0.5] [--limits off|on]
//                                  [--wakes 200] [--short] [--only a,b]
//
// One process, one segment of 4 keys, round robin, tokens 100, limits off by
// default (the in-process pool has none; --limits on gives every key rpm
// 1e9 and tpm 1e12, never binding, as bench_acquire's default), measured in
// the same run and alternated rep by rep:
//
//   c              build/bench/bench_acquire --procs 1 --keys 4 --strategy
//                  round_robin (the same limits), run as a child for each rep:
//                  its p50 (C, no binding: the floor)
//   sync           l = pool.tryAcquire({tokens: 100}); pool.release(l)
//   promise        l = await pool.acquire({tokens: 100}); pool.release(l)
//                  (a key is free: the Promise resolves at once)
//   native         the addon's functions without the JavaScript layer
//                  (N.acquire + N.release): what the Lease object and the
//                  argument checks cost on top
//   koffi          the same pair through koffi (npm), the FFI alternative
//                  to an addon, used as well as it can be: km_request and
//                  km_lease as preallocated Buffers passed as void *, key
//                  index and generation read from the lease buffer, key id
//                  and secret decoded once per key (as the addon does)
//   koffi_struct   koffi's struct marshalling: km_acquire(env, &req, _Out_
//                  km_lease *) decoded into an object (key_id, secret and
//                  meta as strings), passed back to km_release
//   inproc         bench/node/inproc_pool.mjs: the array-and-a-loop pool a
//                  Node application writes without KeyMesh (nothing shared
//                  between cluster workers, no limits)
//
// Each rep times batches of 64 pairs with process.hrtime.bigint(); a
// figure is the median over reps of each rep's median batch mean (ns per
// pair), with the range over reps.  Then:
//
//   wake           a Promise from pool.acquire() while another process
//                  (a child node process on the same segment) holds the only
//                  key of a max_inflight 1 pool; the child releases it;
//                  latency from just before its km_release to the Promise's
//                  continuation running (km_now_ns on both sides: one
//                  CLOCK_MONOTONIC), --wakes samples: p50, p99, max.
//
// Output: one SUMMARY line per figure with every parameter and result
// (units in the names).  The machine is shared: run it several times,
// compare medians, and compare figures of one run only.

import { spawnSync, fork } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { InProcPool } from './inproc_pool.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const require = createRequire(import.meta.url);
const km = require(path.join(REPO, 'bindings', 'node'));
const { N } = require(path.join(REPO, 'bindings', 'node', 'lib', 'native.js')).load();
const BUILD = path.resolve(REPO, process.env.KM_BUILD || 'build');
const BATCH = 64;
const KEYS = 4;
const TOKENS = 100;

// ------------------------------------------------------------ arguments

const argv = process.argv.slice(2);
function opt(name, def) {
  const i = argv.indexOf('--' + name);
  if (i < 0) return def;
  return argv[i + 1];
}
const short = argv.includes('--short');
const reps = Number(opt('reps', short ? 3 : 7));
const seconds = Number(opt('seconds', short ? 0.2 : 0.5));
const limits = opt('limits', 'off');
const wakes = Number(opt('wakes', short ? 30 : 200));
const only = opt('only', '') ? opt('only', '').split(',') : null;

if (argv[0] === '--child-hold') {
  await childHold(argv[1]);
  process.exit(0);
}

// ------------------------------------------------------------ helpers

function median(a) {
  const s = [...a].sort((x, y) => x - y);
  return s.length ? s[(s.length - 1) >> 1] : NaN;
}
function pct(a, p) {
  const s = [...a].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}
function config(seg) {
  const keys = [];
  for (let i = 0; i < KEYS; i++) keys.push({ id: `k${i}`, secret: `sk-bench-node-${String(i).padStart(4, '0')}` });
  const pool = { name: 'bench', strategy: 'round_robin', keys };
  if (limits === 'on') pool.limits = { rpm: 1000000000, tpm: 1000000000000 };
  return {
    capacity: { keys: 8, processes: 8, inflight_per_key: 16 },
    pools: [pool, { name: 'one', max_inflight: 1, keys: [{ id: 'w1', secret: 'sk-bench-node-wake' }] }],
  };
}

function timeSync(fn) {
  const out = [];
  const end = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9));
  for (;;) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < BATCH; i++) fn();
    const t1 = process.hrtime.bigint();
    out.push(Number(t1 - t0) / BATCH);
    if (t1 >= end) return out;
  }
}

async function timeAsync(fn) {
  const out = [];
  const end = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9));
  for (;;) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < BATCH; i++) await fn();
    const t1 = process.hrtime.bigint();
    out.push(Number(t1 - t0) / BATCH);
    if (t1 >= end) return out;
  }
}

// ------------------------------------------------------------ koffi

function loadKoffi(libPath) {
  let koffi;
  try {
    const r = createRequire(path.join(BUILD, 'node', 'deps', 'bench', 'package.json'));
    koffi = r('koffi');
  } catch (e) {
    return { why: `koffi not installed in ${path.join(BUILD, 'node', 'deps', 'bench')} (make node-bench-deps): ${e.message.split('\n')[0]}` };
  }
  const lib = koffi.load(libPath);
  koffi.opaque('km_env');
  const req = koffi.struct('km_request', {
    pool: 'int', strategy: 'int', tokens: 'uint32_t', model: 'const char *', key_id: 'const char *',
    reserved: koffi.array('uint64_t', 4),
  });
  const lease = koffi.struct('km_lease', {
    key: 'int', key_gen: 'uint32_t', slot: 'int', seq: 'uint32_t', pool: 'int', tokens: 'uint32_t',
    start_ns: 'uint64_t', retry_at_ns: 'uint64_t', secret_len: 'uint32_t', model: 'int', meta_len: 'uint32_t',
    key_id: koffi.array('char', 64, 'String'), secret: koffi.array('char', 256, 'String'),
    meta: koffi.array('char', 256, 'String'), reserved: koffi.array('uint64_t', 4),
  });
  const F = {
    km_open: lib.func('int km_open(const char *name, _Out_ km_env **out)'),
    km_close: lib.func('int km_close(km_env *env)'),
    km_pool_find: lib.func('int km_pool_find(km_env *env, const char *name)'),
    km_struct_size: lib.func('size_t km_struct_size(int which)'),
    acquire_buf: lib.func('km_acquire', 'int', ['km_env *', 'void *', 'void *']),
    release_buf: lib.func('km_release', 'int', ['km_env *', 'void *', 'void *']),
    acquire_struct: lib.func('int km_acquire(km_env *env, const km_request *req, _Out_ km_lease *lease)'),
    release_struct: lib.func('int km_release(km_env *env, const km_lease *lease, void *outcome)'),
  };
  // The declarations against the library (km_struct_size) and the C
  // compiler (tests/e2e/layout.c's offsets, which the addon prints too).
  const bad = [];
  if (koffi.sizeof(req) !== Number(F.km_struct_size(1))) bad.push('km_request size');
  if (koffi.sizeof(lease) !== Number(F.km_struct_size(2))) bad.push('km_lease size');
  const lay = N.layout().split('\n').filter(Boolean).map((l) => l.split(' '));
  for (const [name, type] of [['km_request', req], ['km_lease', lease]]) {
    const f = lay.find((l) => l[0] === name);
    for (let i = 2; i + 1 < f.length; i += 2) {
      if (koffi.offsetof(type, f[i]) !== Number(f[i + 1])) bad.push(`${name}.${f[i]} offset`);
    }
  }
  if (bad.length) return { why: 'koffi declarations differ from the C layout: ' + bad.join(', ') };
  return { koffi, F, reqSize: koffi.sizeof(req), leaseSize: koffi.sizeof(lease), offKeyId: koffi.offsetof(lease, 'key_id'), offSecret: koffi.offsetof(lease, 'secret') };
}

// ------------------------------------------------------------ child

async function childHold(seg) {
  const pool = km.Pool.open(seg, 'one');
  process.on('message', (m) => {
    if (m.cmd === 'hold') {
      const l = pool.tryAcquire();
      process.send({ held: l !== null });
      process.once('message', (m2) => {
        const t = N.nowMs();
        pool.release(l);
        process.send({ releasedAt: t, cmd2: m2.cmd });
      });
    } else if (m.cmd === 'exit') {
      pool.close();
      process.exit(0);
    }
  });
  process.send({ ready: true });
  await new Promise(() => {});
}

function ipc(child) {
  const q = [];
  const w = [];
  child.on('message', (m) => (w.length ? w.shift()(m) : q.push(m)));
  return () => (q.length ? Promise.resolve(q.shift()) : new Promise((r) => w.push(r)));
}

async function wakeBench(segName, pool) {
  const child = fork(fileURLToPath(import.meta.url), ['--child-hold', segName], { stdio: 'inherit' });
  const next = ipc(child);
  await next(); // ready
  const lat = [];
  for (let i = 0; i < wakes; i++) {
    child.send({ cmd: 'hold' });
    const h = await next();
    if (!h.held) throw new Error('child could not take the key');
    const p = pool.acquire({ timeout: 5000 });
    // The waiter thread is asleep in km_acquire_wait once the pool counts it.
    while (pool.info().waiters < 1) await new Promise((r) => setImmediate(r));
    child.send({ cmd: 'release' });
    const l = await p;
    const got = N.nowMs();
    const r = await next();
    lat.push((got - r.releasedAt) * 1000);
    pool.release(l);
  }
  child.send({ cmd: 'exit' });
  await new Promise((r) => child.on('exit', r));
  return lat;
}

// ------------------------------------------------------------ main

const seg = `kmbench-node-${process.pid}`;
const segment = km.Segment.create(seg, config(seg));
const pool = segment.pool('bench');
// The "native" variant drives the addon directly: its own attachment and
// Core on the same segment, as Pool makes them.
const s = new Float64Array(8);
const rawSeg = N.segOpen(seg);
const rawCore = N.coreNew(rawSeg, N.poolFind(rawSeg, 'bench'), s, () => {}, 1);

const variants = {};
const why = {};
const inproc = new InProcPool(config(seg).pools[0].keys.map((k) => k.secret));
const reqOpts = { tokens: TOKENS };

variants.sync = () => timeSync(() => { const l = pool.tryAcquire(reqOpts); pool.release(l); });
variants.promise = () => timeAsync(async () => { const l = await pool.acquire(reqOpts); pool.release(l); });
variants.native = () => timeSync(() => { const i = N.acquire(rawCore, TOKENS); N.release(rawCore, i, s[0]); });
variants.inproc = () => timeSync(() => { const l = inproc.acquire(); inproc.release(l, 1); });

const K = loadKoffi(km.library.path);
if (K.why) {
  why.koffi = K.why;
} else {
  const out = [null];
  if (K.F.km_open(seg, out) !== 0) throw new Error('koffi: km_open failed');
  const env = out[0];
  const pidx = K.F.km_pool_find(env, 'bench');
  const reqBuf = Buffer.alloc(K.reqSize);
  reqBuf.writeInt32LE(pidx, 0);
  reqBuf.writeUInt32LE(TOKENS, 8);
  const free = [];
  const cache = [];
  const acquire = () => {
    const buf = free.pop() || Buffer.alloc(K.leaseSize);
    const rc = K.F.acquire_buf(env, reqBuf, buf);
    if (rc !== 0) { free.push(buf); throw new Error('koffi acquire: ' + rc); }
    const ki = buf.readInt32LE(0);
    const kg = buf.readUInt32LE(4);
    let k = cache[ki];
    if (k === undefined || k.gen !== kg) {
      const z = (o, n) => { const e = buf.indexOf(0, o); return buf.toString('utf8', o, e < 0 || e > o + n ? o + n : e); };
      k = cache[ki] = { gen: kg, id: z(K.offKeyId, 64), secret: z(K.offSecret, 256) };
    }
    return { buf, k };
  };
  const release = (l) => { const rc = K.F.release_buf(env, l.buf, null); free.push(l.buf); return rc; };
  variants.koffi = () => timeSync(() => { const l = acquire(); release(l); });
  const sreq = { pool: pidx, strategy: 0, tokens: TOKENS, model: null, key_id: null, reserved: [0n, 0n, 0n, 0n] };
  variants.koffi_struct = () => timeSync(() => {
    const l = {};
    if (K.F.acquire_struct(env, sreq, l) !== 0) throw new Error('koffi acquire');
    K.F.release_struct(env, l, null);
  });
  process.once('exit', () => K.F.km_close(env));
}

const cBench = path.join(BUILD, 'bench', 'bench_acquire');
if (fs.existsSync(cBench)) {
  variants.c = () => {
    const r = spawnSync(cBench, ['--procs', '1', '--keys', String(KEYS), '--strategy', 'round_robin',
      '--limits', limits, '--tokens', String(TOKENS), '--seconds', String(Math.max(seconds, 0.2)), '--reps', '1'],
    { encoding: 'utf8' });
    const m = /SUMMARY acquire_release .* p50_ns=(\d+)/.exec(r.stdout || '');
    if (!m) throw new Error('bench_acquire: no SUMMARY: ' + (r.stderr || r.stdout));
    return [Number(m[1])];
  };
} else {
  why.c = `${cBench} not built (make ${path.relative(REPO, cBench)})`;
}

const names = ['c', 'sync', 'promise', 'native', 'koffi', 'koffi_struct', 'inproc']
  .filter((n) => variants[n] && (!only || only.includes(n)));
for (const n of Object.keys(why)) console.log(`# ${n}: skipped: ${why[n]}`);

// Warm up (JIT) every variant once, not timed.
for (const n of names) if (n !== 'c') await variants[n]();

const per = Object.fromEntries(names.map((n) => [n, []]));
for (let r = 0; r < reps; r++) {
  // Alternate the order every rep, so no variant always runs first.
  const order = r % 2 ? [...names].reverse() : names;
  for (const n of order) per[n].push(median(await variants[n]()));
}

const fmt = (x) => (x < 100 ? x.toFixed(1) : x.toFixed(0));
for (const n of names) {
  const v = per[n];
  console.log(`SUMMARY node_pair impl=${n} keys=${KEYS} strategy=round_robin limits=${limits} tokens=${TOKENS} ` +
    `seconds=${seconds} reps=${reps} p50_ns=${fmt(median(v))} min_ns=${fmt(Math.min(...v))} max_ns=${fmt(Math.max(...v))} ` +
    `node=${process.version}`);
}
if (per.sync && per.inproc) {
  console.log(`SUMMARY node_ratio sync_over_inproc=${(median(per.sync) / median(per.inproc)).toFixed(2)} ` +
    `promise_over_inproc=${(median(per.promise) / median(per.inproc)).toFixed(2)}` +
    (per.koffi ? ` koffi_over_sync=${(median(per.koffi) / median(per.sync)).toFixed(2)}` : '') +
    (per.c ? ` sync_over_c=${(median(per.sync) / median(per.c)).toFixed(2)}` : ''));
}

if (wakes > 0 && (!only || only.includes('wake'))) {
  const one = segment.pool('one');
  const lat = await wakeBench(seg, one);
  console.log(`SUMMARY node_wake samples=${lat.length} p50_us=${fmt(pct(lat, 50))} p99_us=${fmt(pct(lat, 99))} ` +
    `max_us=${fmt(Math.max(...lat))} node=${process.version}`);
}

N.coreClose(rawCore);
N.segClose(rawSeg);
segment.close();
km.unlink(seg);
