"""bench/py/inproc_model.py - a model of the in-process Python key pool
that KeyMesh's binding replaces (the KeyMesh Python library's SyncKeyPool),
for bench_py.py.  Nothing of it is vendored: this is our own code doing the
same work per acquire()+release() as that library does, as read from its
source:

  acquire   take the pool's threading.Lock; build the list of available
            keys (each: not cooling down, checked against time.monotonic(),
            and below max_failures); ask the scheduler (round robin) for
            one; take that key's lock, count it active and stamp last_used;
            count the acquire in the pool's metrics; return the secret.
  release   look the key's state up by secret; take its lock, count a
            success, drop it from active, update the latency EMA (alpha
            0.2); count the release; save the key's snapshot (a dict of ten
            fields, with the health score) to the in-memory storage.

Each step is a method call, as there, and each operation makes the
logger.debug() call that library makes (at the default level, where it
logs nothing).

It keeps no rate limits, is not shared between processes and never waits:
it is the cheapest thing such code did, the baseline the binding must
beat."""
import logging
import threading
import time

logger = logging.getLogger("inproc_model")


class _KeyState:
    __slots__ = ("key", "active", "cooldown_until", "ok", "failed", "latency_avg",
                 "last_used", "max_failures", "lock")

    def __init__(self, key, max_failures):
        self.key = key
        self.active = 0
        self.cooldown_until = 0.0
        self.ok = 0
        self.failed = 0
        self.latency_avg = 0.0
        self.last_used = 0.0
        self.max_failures = max_failures
        self.lock = threading.Lock()

    def increment_active(self):
        with self.lock:
            self.active += 1
            self.last_used = time.monotonic()

    def record_success(self, latency):
        with self.lock:
            self.ok += 1
            self.active = max(0, self.active - 1)
            self.latency_avg = latency if self.latency_avg == 0.0 else \
                0.2 * latency + 0.8 * self.latency_avg

    @property
    def available(self):
        return time.monotonic() >= self.cooldown_until and self.failed < self.max_failures

    def health(self):
        n = self.ok + self.failed
        rate = self.ok / n if n else 1.0
        return rate / (1.0 + self.latency_avg) * (1.0 if self.available else 0.0)

    def snapshot(self):
        left = self.cooldown_until - time.monotonic()
        return {"key_suffix": "..." + self.key[-6:], "active_requests": self.active,
                "cooldown_until": self.cooldown_until,
                "cooldown_remaining": round(left if left > 0 else 0.0, 2),
                "success_count": self.ok, "failure_count": self.failed,
                "latency_avg": round(self.latency_avg, 4), "last_used": self.last_used,
                "is_available": self.available, "health_score": round(self.health(), 4)}


class InProcPool:
    def __init__(self, keys, max_failures=10):
        self.states = {k: _KeyState(k, max_failures) for k in keys}
        self.lock = threading.Lock()
        self.rr = 0
        self.metrics = {"acquires": 0, "releases": 0, "no_key": 0}
        self.storage = {}

    def _select(self, cands):
        if not cands:
            return None
        s = cands[self.rr % len(cands)]
        self.rr += 1
        return s

    def acquire(self):
        with self.lock:
            s = self._select([s for s in self.states.values() if s.available])
            if s is None:
                self.metrics["no_key"] += 1
                raise RuntimeError("no key")
            s.increment_active()
        self._count("acquires")
        logger.debug("Acquired key ...%s", s.key[-6:])
        return s.key

    def _count(self, what):
        self.metrics[what] += 1

    def _resolve(self, key):
        try:
            return self.states[key]
        except KeyError as exc:
            raise KeyError("unknown key") from exc

    def release(self, key, latency=0.0):
        s = self._resolve(key)
        s.record_success(latency)
        self._count("releases")
        self.storage[key] = s.snapshot()
        logger.debug("Released key ...%s (latency=%.3fs)", key[-6:], latency)
