// tests/node/cluster_app.mjs - the Node `cluster` server of the end-to-end
// tests (tests/t_node_cluster.sh, t_node_kill.sh), the counterpart of
// tests/e2e/app.py under gunicorn.
//
// The primary creates segment $KMT_SEG from $KMT_CONFIG, forks
// $KMT_WORKERS workers (and a new one whenever one dies), and on SIGTERM
// stops them, closes and removes the segment.  Each worker serves HTTP on
// one port shared by all (cluster's round-robin), attaches on its first
// request (one attachment per process: so that a worker replacing a killed
// one attaches only when it serves, as the gunicorn app does), and for each
// request takes a key, calls the mock upstream on 127.0.0.1:$KMT_UPSTREAM
// with it and answers with the upstream's status (503: no key within
// $KMT_ACQUIRE_TIMEOUT ms, default 300):
//   /call?pool=P             acquire(), fetch, release(lease, {status,
//                            headers, body, usage}) by hand
//   /call?pool=P&api=fetch   keymeshFetch(pool): the wrapper does all of it
//   /hold?pool=P             write the pid to $KMT_HOLD_FILE.wait, take a
//                            lease (waiting for one if need be), write the
//                            pid to $KMT_HOLD_FILE, hold it 60 s
// Headers X-Key-Id and X-Worker-Pid say which key and worker served it.
// The log (stderr) says "primary PID listening on PORT" and "worker PID
// ready"; it never contains a secret.
import cluster from 'node:cluster';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const km = require(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bindings', 'node'));

const SEG = process.env.KMT_SEG;
const WORKERS = Number(process.env.KMT_WORKERS || 4);
const TIMEOUT = Number(process.env.KMT_ACQUIRE_TIMEOUT || 300);
const UPSTREAM = `http://127.0.0.1:${process.env.KMT_UPSTREAM}/v1/chat/completions`;
const log = (s) => process.stderr.write(`${s}\n`);

if (cluster.isPrimary) {
  const seg = km.Segment.create(SEG, process.env.KMT_CONFIG);
  let stopping = false;
  let port = 0;
  const fork = () => cluster.fork();
  cluster.on('listening', (w, addr) => {
    if (!port) {
      port = addr.port;
      log(`primary ${process.pid} listening on ${port}`);
    }
  });
  cluster.on('exit', (w, code, sig) => {
    log(`worker ${w.process.pid} exited (${sig || code})`);
    if (!stopping) fork();
  });
  process.on('SIGTERM', () => {
    stopping = true;
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
    const done = () => {
      if (Object.keys(cluster.workers).length) { setTimeout(done, 20); return; }
      seg.close();
      km.unlink(SEG);
      log('primary stopped, segment removed');
      process.exit(0);
    };
    done();
  });
  for (let i = 0; i < WORKERS; i++) fork();
} else {
  const pools = new Map();
  const fetchers = new Map();
  const pool = (name) => {
    let p = pools.get(name);
    if (!p) { p = km.Pool.open(SEG, name, { timeout: TIMEOUT }); pools.set(name, p); }
    return p;
  };
  const call = (key) => fetch(UPSTREAM, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: '{"model":"gpt-test","messages":[]}',
  });

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const name = url.searchParams.get('pool') || 'llm';
    let status = 200;
    let body = 'ok\n';
    let kid = '-';
    try {
      const p = pool(name);
      if (url.pathname === '/call' && url.searchParams.get('api') === 'fetch') {
        let f = fetchers.get(name);
        if (!f) { f = km.keymeshFetch(p, { tokens: 15, retry429: false }); fetchers.set(name, f); }
        const r = await f(UPSTREAM, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
        status = r.status;
        body = await r.text();
        kid = 'fetch';
      } else if (url.pathname === '/call') {
        const lease = await p.acquire({ tokens: 15 });
        kid = lease.keyId;
        let r;
        try {
          r = await call(lease.secret);
        } catch (e) {
          p.release(lease, { error: e });
          throw e;
        }
        const text = await r.text();
        let usage;
        try { usage = r.ok ? JSON.parse(text).usage : undefined; } catch { usage = undefined; }
        p.release(lease, { status: r.status, headers: r.headers, body: r.ok ? undefined : text, usage });
        status = r.status;
        body = text;
      } else if (url.pathname === '/hold') {
        const f0 = `${process.env.KMT_HOLD_FILE}.wait`;
        fs.writeFileSync(`${f0}.tmp`, `${process.pid}\n`);
        fs.renameSync(`${f0}.tmp`, f0);
        const lease = await p.acquire();
        kid = lease.keyId;
        const f = process.env.KMT_HOLD_FILE;
        fs.writeFileSync(`${f}.tmp`, `${process.pid}\n`);
        fs.renameSync(`${f}.tmp`, f);
        await new Promise((r) => setTimeout(r, 60000));
        p.release(lease);
        body = 'held\n';
      } else {
        status = 404;
        body = 'not found\n';
      }
    } catch (e) {
      if (e instanceof km.NoKeyAvailableError) { status = 503; body = 'no key available\n'; }
      else if (e instanceof km.KeyMeshError) { status = 500; body = `keymesh: ${e.message}\n`; }
      else { status = 502; body = `upstream: ${e.message}\n`; }
    }
    res.writeHead(status, { 'content-type': 'text/plain', 'x-key-id': kid, 'x-worker-pid': String(process.pid) });
    res.end(body);
  });
  server.keepAliveTimeout = 2000;
  server.listen(0, '127.0.0.1', () => log(`worker ${process.pid} ready`));
  process.on('SIGTERM', () => {
    for (const p of pools.values()) p.close();
    process.exit(0);
  });
}
