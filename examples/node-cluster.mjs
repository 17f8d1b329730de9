// examples/node-cluster.mjs - one pool of API keys for every worker of a
// Node `cluster` (PM2 in cluster mode is the same: one process per core).
//
//   make                                   # libkeymesh and the Node addon
//   kmctl create llm --config pool.json    # or let this primary create it
//   KEYMESH_CONFIG=pool.json node examples/node-cluster.mjs
//   curl 'http://127.0.0.1:8080/chat?q=hello'
//
// The primary creates segment $KEYMESH_SEGMENT (default "llm") from
// $KEYMESH_CONFIG if given, else uses the one kmctl made, and forks
// $WORKERS workers (default: one per CPU).  Every worker attaches once, at
// start (Pool.open: a slot in the segment's process table), and passes
// keymeshFetch(pool) to its SDK as `fetch`: each request then leases a key
// of pool $KEYMESH_POOL (default "openai"), waiting without blocking the
// event loop when every key is at its limit, and gives it back with the
// provider's status and rate-limit headers.  Limits hold for all workers
// together: 4 workers never send 4 times a key's rpm.  A worker that dies
// mid-request leaves nothing behind: the next process to attach (or
// `kmctl reap`) releases its leases.
//
// With the OpenAI SDK (npm install openai):
//   const client = new OpenAI({ apiKey: 'unused', fetch: keymeshFetch(pool) });
//   const r = await client.chat.completions.create({ model, messages });
// Anthropic's: new Anthropic({ apiKey: 'unused', fetch: keymeshFetch(pool,
// { provider: 'anthropic' }) }).  This example calls the chat completions
// endpoint with fetch itself, so that it runs without any npm package:
// $UPSTREAM_URL (default https://api.openai.com/v1) is any OpenAI-compatible
// base URL.
import cluster from 'node:cluster';
import http from 'node:http';
import os from 'node:os';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// `import { Pool, Segment, keymeshFetch } from 'keymesh'` once the package
// is installed; here, from the repository.
const require = createRequire(import.meta.url);
const { Pool, Segment, keymeshFetch, unlink, NoKeyAvailableError } =
  require(path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'bindings', 'node'));

const SEGMENT = process.env.KEYMESH_SEGMENT || 'llm';
const POOL = process.env.KEYMESH_POOL || 'openai';
const UPSTREAM = (process.env.UPSTREAM_URL || 'https://api.openai.com/v1').replace(/\/$/, '');
const MODEL = process.env.MODEL || 'gpt-4o-mini';
const PORT = Number(process.env.PORT || 8080);
const WORKERS = Number(process.env.WORKERS || os.availableParallelism());

if (cluster.isPrimary) {
  // Created here, the segment lives as long as the primary; made by
  // `kmctl create`, it outlives it (and a restart keeps its counters).
  const seg = process.env.KEYMESH_CONFIG ? Segment.create(SEGMENT, process.env.KEYMESH_CONFIG) : null;
  let stopping = false;
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  cluster.on('exit', (w, code, signal) => {
    if (stopping) return;
    console.error(`worker ${w.process.pid} died (${signal || code}); starting another`);
    cluster.fork();
  });
  cluster.once('listening', (w, addr) => console.error(`listening on http://127.0.0.1:${addr.port}/chat?q=hello`));
  const stop = () => {
    stopping = true;
    for (const w of Object.values(cluster.workers)) w.kill();
    cluster.disconnect(() => {
      if (seg) {
        seg.close();
        unlink(SEGMENT);
      }
      process.exit(0);
    });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const pool = Pool.open(SEGMENT, POOL, { timeout: 10000 });
  const llmFetch = keymeshFetch(pool, {
    // The pool's per-model limits apply when it knows the model; the
    // estimate is charged to its token limits until the answer settles it.
    model: () => (pool.info().models ? MODEL : undefined),
    tokens: 500,
  });

  http.createServer(async (req, res) => {
    const q = new URL(req.url, 'http://x').searchParams.get('q') || 'hello';
    try {
      const r = await llmFetch(`${UPSTREAM}/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: q }] }),
      });
      const data = await r.json().catch(() => ({}));
      res.writeHead(r.status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(r.ok ? { answer: data.choices?.[0]?.message?.content ?? null, worker: process.pid } : data));
    } catch (e) {
      // No key within the timeout (every key at its limit or cooling down),
      // or the provider could not be reached.
      res.writeHead(e instanceof NoKeyAvailableError ? 503 : 502, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: e.code || e.name, message: e.message }));
    }
  }).listen(PORT, '127.0.0.1');
}
