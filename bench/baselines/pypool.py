#!/usr/bin/python3
"""bench/baselines/pypool.py - the pure-Python baselines (standard library only).

Two pools with the semantics of KeyMesh and of the other baselines (round
robin, rpm + tpm token-bucket GCRA with KeyMesh's parameters, tokens reserved
at acquire and settled at release at the lease's start, cooldown after a 429,
in-flight count capped by max_inflight, counters per key, a copy of the key's
id and secret in the lease):

  thread  a pool object per process behind a threading.Lock: what the Python
          libraries do.  Under a prefork server each worker has its own pool,
          so the limits are NOT shared between processes (each worker allows
          the whole limit): it is cheaper than a shared pool and wrong.
  mp      one pool in shared memory (an anonymous shared mmap, read and
          written through a memoryview of int64) behind one
          multiprocessing.Lock (a POSIX semaphore), created before fork: the
          limits are shared.

Run by bench/cmp_latency.c, which compares it with KeyMesh's C acquire +
release in the same run (there is no Python binding of KeyMesh in this
comparison).  It forks --procs workers (os.fork, as a prefork server does),
starts them together, and each loops acquire + release until the deadline,
timing every pair with time.monotonic_ns() (CLOCK_MONOTONIC) chained from
the previous pair's end.  Worker w writes its samples (uint32 ns, native
order) to OUT.w; the parent prints one line:

  PYRESULT variant=V procs=N keys=K pairs=P ops_per_s=X min_cpu_share=F
"""

import argparse
import array
import mmap
import multiprocessing
import os
import resource
import struct
import sys
import threading
import time

MINUTE_NS = 60 * 1000 * 1000 * 1000
OUT_SUCCESS, OUT_RATE_LIMITED, OUT_CANCELLED = 0, 1, 5


def gcra(limit, burst):
    """KeyMesh's token_bucket parameters: T = ceil(period/limit), tau = burst*T."""
    if not limit:
        return 0, 0
    t = (MINUTE_NS + limit - 1) // limit
    return t, (burst or limit) * t


class ThreadPool:
    """Per-process pool behind a threading.Lock (limits not shared)."""

    class Key:
        __slots__ = ("id", "secret", "cool", "inf", "maxinf", "rT", "rtau", "rtat",
                     "tT", "ttau", "ttat", "tres", "acq", "ok", "rl", "cn", "tok",
                     "c429", "lat")

    def __init__(self, cfg):
        self.lock = threading.Lock()
        self.cur = 0
        self.cooldown_s, self.max_cooldown_s = cfg.cooldown_s, cfg.max_cooldown_s
        rT, rtau = gcra(cfg.rpm, cfg.rpm_burst)
        tT, ttau = gcra(cfg.tpm, cfg.tpm_burst)
        self.keys = []
        for i in range(cfg.keys):
            k = ThreadPool.Key()
            k.id, k.secret = "k%03d" % i, "sk-bench-%08d" % i
            k.cool = k.inf = k.rtat = k.ttat = k.tres = 0
            k.acq = k.ok = k.rl = k.cn = k.tok = k.c429 = k.lat = 0
            k.maxinf = cfg.max_inflight or (1 << 62)
            k.rT, k.rtau, k.tT, k.ttau = rT, rtau, tT, ttau
            self.keys.append(k)

    def acquire(self, tokens):
        """(key, tokens, start_ns, id, secret), or (None, retry_at_ns)."""
        now = time.monotonic_ns()
        with self.lock:
            keys = self.keys
            n = len(keys)
            retry = -1
            for j in range(n):
                i = (self.cur + j) % n
                k = keys[i]
                if k.cool > now:
                    at = k.cool
                elif k.inf >= k.maxinf:
                    at = 0
                else:
                    nr = k.rtat
                    if k.rT:
                        nr = max(k.rtat, now) + k.rT
                        if nr - now > k.rtau:
                            at = nr - k.rtau
                            retry = at if retry < 0 or at < retry else retry
                            continue
                    if k.tT:
                        nt = max(k.ttat, now) + (k.tres + tokens) * k.tT
                        if nt - now > k.ttau:
                            at = nt - k.ttau
                            retry = at if retry < 0 or at < retry else retry
                            continue
                    k.rtat = nr
                    k.tres += tokens
                    k.inf += 1
                    k.acq += 1
                    self.cur = (i + 1) % n
                    return (i, tokens, now, k.id, k.secret)
                retry = at if retry < 0 or at < retry else retry
            return (None, max(retry, 0))

    def release(self, lease, kind, tokens, latency_us, retry_after_s):
        i, est, start = lease[0], lease[1], lease[2]
        actual = est if tokens < 0 else tokens
        if kind == OUT_CANCELLED:
            actual = 0
        with self.lock:
            k = self.keys[i]
            if k.tT:
                if actual:
                    k.ttat = max(k.ttat, start) + actual * k.tT
                k.tres -= est
            k.inf -= 1
            k.tok += actual
            if kind == OUT_SUCCESS:
                k.ok += 1
                k.c429 = 0
                if latency_us >= 0:
                    k.lat = latency_us if not k.lat else k.lat + (latency_us - k.lat) // 8
            elif kind == OUT_RATE_LIMITED:
                if retry_after_s > 0:
                    cool = int(retry_after_s * 1e9)
                else:
                    cool = min(self.cooldown_s << min(k.c429, 20), self.max_cooldown_s) * 10**9
                k.c429 += 1
                k.rl += 1
                k.cool = time.monotonic_ns() + cool
            else:
                k.cn += 1

    def counts(self):
        return sum(k.acq for k in self.keys), sum(k.ok for k in self.keys)


# Field offsets of one key in the shared int64 array (mp variant).
(F_COOL, F_INF, F_MAXINF, F_RT, F_RTAU, F_RTAT, F_TT, F_TTAU, F_TTAT, F_TRES,
 F_ACQ, F_OK, F_RL, F_CN, F_TOK, F_C429, F_LAT) = range(17)
KEY_WORDS = 32  # 256 bytes per key, like the C baselines; word 0 of the array: cursor
HDR_WORDS = 8


class SharedPool:
    """One pool in a shared anonymous mmap behind a multiprocessing.Lock."""

    def __init__(self, cfg):
        self.n = cfg.keys
        self.cooldown_s, self.max_cooldown_s = cfg.cooldown_s, cfg.max_cooldown_s
        self.mm = mmap.mmap(-1, 8 * (HDR_WORDS + KEY_WORDS * cfg.keys))
        self.a = memoryview(self.mm).cast("q")
        self.lock = multiprocessing.Lock()
        # Ids and secrets are configuration: every process has the same copy.
        self.ids = ["k%03d" % i for i in range(cfg.keys)]
        self.secrets = ["sk-bench-%08d" % i for i in range(cfg.keys)]
        rT, rtau = gcra(cfg.rpm, cfg.rpm_burst)
        tT, ttau = gcra(cfg.tpm, cfg.tpm_burst)
        a = self.a
        for i in range(cfg.keys):
            b = HDR_WORDS + i * KEY_WORDS
            a[b + F_MAXINF] = cfg.max_inflight or (1 << 62)
            a[b + F_RT], a[b + F_RTAU], a[b + F_TT], a[b + F_TTAU] = rT, rtau, tT, ttau

    def acquire(self, tokens):
        now = time.monotonic_ns()
        a = self.a
        n = self.n
        with self.lock:
            cur = a[0]
            retry = -1
            for j in range(n):
                i = (cur + j) % n
                b = HDR_WORDS + i * KEY_WORDS
                cool = a[b + F_COOL]
                if cool > now:
                    at = cool
                elif a[b + F_INF] >= a[b + F_MAXINF]:
                    at = 0
                else:
                    rT, tT = a[b + F_RT], a[b + F_TT]
                    nr = a[b + F_RTAT]
                    if rT:
                        nr = max(nr, now) + rT
                        if nr - now > a[b + F_RTAU]:
                            at = nr - a[b + F_RTAU]
                            retry = at if retry < 0 or at < retry else retry
                            continue
                    tres = a[b + F_TRES]
                    if tT:
                        nt = max(a[b + F_TTAT], now) + (tres + tokens) * tT
                        if nt - now > a[b + F_TTAU]:
                            at = nt - a[b + F_TTAU]
                            retry = at if retry < 0 or at < retry else retry
                            continue
                    a[b + F_RTAT] = nr
                    a[b + F_TRES] = tres + tokens
                    a[b + F_INF] += 1
                    a[b + F_ACQ] += 1
                    a[0] = (i + 1) % n
                    return (i, tokens, now, self.ids[i], self.secrets[i])
                retry = at if retry < 0 or at < retry else retry
            return (None, max(retry, 0))

    def release(self, lease, kind, tokens, latency_us, retry_after_s):
        i, est, start = lease[0], lease[1], lease[2]
        actual = est if tokens < 0 else tokens
        if kind == OUT_CANCELLED:
            actual = 0
        a = self.a
        b = HDR_WORDS + i * KEY_WORDS
        with self.lock:
            if a[b + F_TT]:
                if actual:
                    a[b + F_TTAT] = max(a[b + F_TTAT], start) + actual * a[b + F_TT]
                a[b + F_TRES] -= est
            a[b + F_INF] -= 1
            a[b + F_TOK] += actual
            if kind == OUT_SUCCESS:
                a[b + F_OK] += 1
                a[b + F_C429] = 0
                if latency_us >= 0:
                    lat = a[b + F_LAT]
                    a[b + F_LAT] = latency_us if not lat else lat + (latency_us - lat) // 8
            elif kind == OUT_RATE_LIMITED:
                c429 = a[b + F_C429]
                if retry_after_s > 0:
                    cool = int(retry_after_s * 1e9)
                else:
                    cool = min(self.cooldown_s << min(c429, 20), self.max_cooldown_s) * 10**9
                a[b + F_C429] = c429 + 1
                a[b + F_RL] += 1
                a[b + F_COOL] = time.monotonic_ns() + cool
            else:
                a[b + F_CN] += 1

    def counts(self):
        a = self.a
        acq = sum(a[HDR_WORDS + i * KEY_WORDS + F_ACQ] for i in range(self.n))
        ok = sum(a[HDR_WORDS + i * KEY_WORDS + F_OK] for i in range(self.n))
        return acq, ok


def worker(w, pool_or_cfg, args, ctl, ready_w, go_r):
    pool = ThreadPool(pool_or_cfg) if args.variant == "thread" else pool_or_cfg
    tokens = args.tokens
    samples = array.array("I")
    append = samples.append
    acquire, release = pool.acquire, pool.release
    mono = time.monotonic_ns
    os.write(ready_w, b"r")
    os.read(go_r, 1)
    deadline = struct.unpack_from("q", ctl, 0)[0]
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    pairs = 0
    first = prev = mono()
    t = prev
    while True:
        lease = acquire(tokens)
        if lease[0] is None:
            os._exit(3)  # never happens: the limits never bind here
        release(lease, OUT_SUCCESS, tokens, 1000, 0.0)
        t = mono()
        d = t - prev
        append(d if d < 4294967295 else 4294967295)
        prev = t
        pairs += 1
        if t >= deadline:
            break
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) * 1e9
    acq, ok = pool.counts()
    with open("%s.%d" % (args.out, w), "wb") as f:
        samples.tofile(f)
    # Per worker: pairs, elapsed ns, cpu ns, and (thread variant) its own counts.
    struct.pack_into("qqqqq", ctl, 64 + 64 * w, pairs, t - first, int(cpu), acq, ok)
    os._exit(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", choices=("thread", "mp"), required=True)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--keys", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--rpm", type=int, default=10**9)
    ap.add_argument("--rpm-burst", type=int, default=0)
    ap.add_argument("--tpm", type=int, default=10**12)
    ap.add_argument("--tpm-burst", type=int, default=0)
    ap.add_argument("--max-inflight", type=int, default=0)
    ap.add_argument("--cooldown-s", type=int, default=60)
    ap.add_argument("--max-cooldown-s", type=int, default=3600)
    ap.add_argument("--out", required=True, help="sample file prefix (OUT.w per worker)")
    args = ap.parse_args()

    ctl = mmap.mmap(-1, 64 + 64 * args.procs)
    shared = SharedPool(args) if args.variant == "mp" else args
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    for w in range(args.procs):
        pid = os.fork()
        if pid == 0:
            try:
                worker(w, shared, args, ctl, ready_w, go_r)
            finally:
                os._exit(1)
        pids.append(pid)
    got = 0
    while got < args.procs:
        got += len(os.read(ready_r, args.procs - got))
    struct.pack_into("q", ctl, 0, time.monotonic_ns() + int(args.seconds * 1e9))
    os.write(go_w, b"g" * args.procs)
    failed = 0
    for pid in pids:
        _, st = os.waitpid(pid, 0)
        failed |= st != 0
    if failed:
        print("pypool: a worker failed", file=sys.stderr)
        return 1
    pairs, rate, share, acq, ok = 0, 0.0, 1.0, 0, 0
    for w in range(args.procs):
        p, el, cpu, a, o = struct.unpack_from("qqqqq", ctl, 64 + 64 * w)
        pairs += p
        rate += p * 1e9 / el if el else 0
        share = min(share, cpu / el if el else 1.0)
        if args.variant == "thread":
            acq, ok = acq + a, ok + o
    if args.variant == "mp":
        acq, ok = shared.counts()
    if acq != pairs or ok != pairs:
        print("pypool: pools counted %d acquired, %d successes; workers timed %d pairs"
              % (acq, ok, pairs), file=sys.stderr)
        return 1
    print("PYRESULT variant=%s procs=%d keys=%d pairs=%d ops_per_s=%.0f min_cpu_share=%.2f"
          % (args.variant, args.procs, args.keys, pairs, rate, share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
