// bench/node/inproc_pool.mjs - the in-process key pool a Node application
// writes when it has no KeyMesh: an array of keys and a loop, for
// bench_node.mjs.  Our own code, modelled on what the key-rotation helpers
// of npm do per call:
//
//   acquire   one Date.now(); walk the array from a round-robin cursor to
//             the first key not cooling down and below its failure limit;
//             count it active and stamp lastUsed; count the acquire in the
//             pool's metrics; return {key, state}.
//   release   count a success, drop it from active, update the latency
//             EMA (alpha 0.2), count the release.
//
// It keeps no rate limits, is not shared between cluster workers (each
// worker has its own copy, so N workers may send N times a key's limit)
// and never waits: the cheapest thing such code does, the floor the binding
// is compared with.

export class InProcPool {
  constructor(keys, { maxFailures = 10 } = {}) {
    this.states = keys.map((key) => ({
      key, active: 0, cooldownUntil: 0, ok: 0, failed: 0, latencyAvg: 0, lastUsed: 0,
    }));
    this.maxFailures = maxFailures;
    this.rr = 0;
    this.metrics = { acquires: 0, releases: 0, noKey: 0 };
  }

  acquire() {
    const now = Date.now();
    const n = this.states.length;
    for (let i = 0; i < n; i++) {
      const s = this.states[(this.rr + i) % n];
      if (s.cooldownUntil <= now && s.failed < this.maxFailures) {
        this.rr = (this.rr + i + 1) % n;
        s.active++;
        s.lastUsed = now;
        this.metrics.acquires++;
        return { key: s.key, state: s };
      }
    }
    this.metrics.noKey++;
    throw new Error('no key available');
  }

  release(lease, latencyMs = 0) {
    const s = lease.state;
    s.ok++;
    s.active = Math.max(0, s.active - 1);
    s.latencyAvg = s.latencyAvg === 0 ? latencyMs : 0.2 * latencyMs + 0.8 * s.latencyAvg;
    this.metrics.releases++;
  }

  markRateLimited(lease, cooldownMs = 60000) {
    lease.state.cooldownUntil = Date.now() + cooldownMs;
    lease.state.active = Math.max(0, lease.state.active - 1);
  }
}
