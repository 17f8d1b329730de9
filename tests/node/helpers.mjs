// tests/node/helpers.mjs - what the Node binding's tests share: the
// binding itself (from the repository, with the build tree of $KM_BUILD),
// segments that are removed at exit, kmctl, and child processes.
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..');
export const BUILD = path.resolve(REPO, process.env.KM_BUILD || 'build');
export const KMCTL = path.join(BUILD, 'kmctl');
export const require = createRequire(import.meta.url);
export const km = require(path.join(REPO, 'bindings', 'node'));
export const { N } = require(path.join(REPO, 'bindings', 'node', 'lib', 'native.js')).load();

// The secrets every test uses start with this, so that no_secret() can
// look for any of them.
export const SECRET_PREFIX = 'sk-test-node-';
const made = new Set();
let seq = 0;

/** A fresh segment name, destroyed when the process exits. */
export function segName(tag) {
  const n = `kmt-node-${tag}-${process.pid}-${++seq}`;
  made.add(n);
  return n;
}
process.on('exit', () => {
  for (const n of made) {
    try { km.unlink(n); } catch { /* gone */ }
  }
});

/** Keys k1..kn with secrets SECRET_PREFIX + tag + i. */
export function keys(n, tag, extra = {}) {
  return Array.from({ length: n }, (_, i) => ({ id: `k${i + 1}`, secret: `${SECRET_PREFIX}${tag}-${i + 1}aaaa`, ...extra }));
}

/** Segment.create(unique name, {pools: [...]}) */
export function segment(tag, pools, capacity) {
  const name = segName(tag);
  const cfg = { pools };
  if (capacity) cfg.capacity = capacity;
  return km.Segment.create(name, cfg);
}

export function kmctl(...args) {
  const r = spawnSync(KMCTL, args, { encoding: 'utf8' });
  return { rc: r.status, out: r.stdout, err: r.stderr };
}

export function inspect(seg) {
  const r = kmctl('inspect', seg, '--json');
  if (r.rc !== 0) throw new Error(`kmctl inspect: ${r.err}`);
  return JSON.parse(r.out);
}

/** Run `node tests/node/child.mjs ACTION ARGS...`; lines it prints arrive
 * through next(), and send(line) writes one to its stdin. */
export function child(action, ...args) {
  const p = spawn(process.execPath, [path.join(HERE, 'child.mjs'), action, ...args], {
    stdio: ['pipe', 'pipe', 'inherit'], env: process.env,
  });
  const lines = [];
  const waiters = [];
  let buf = '';
  p.stdout.setEncoding('utf8');
  p.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (waiters.length) waiters.shift()(l); else lines.push(l);
    }
  });
  const exited = new Promise((r) => p.on('exit', (code, sig) => r({ code, sig })));
  return {
    proc: p,
    exited,
    next: (ms = 10000) => (lines.length ? Promise.resolve(lines.shift()) : new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error(`child ${action}: no line within ${ms} ms`)), ms);
      waiters.push((l) => { clearTimeout(t); res(l); });
    })),
    send: (l) => p.stdin.write(l + '\n'),
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Wait until cond() is true, checking every 10 ms, for at most ms. */
export async function until(cond, ms = 5000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await sleep(10);
  }
  return false;
}
