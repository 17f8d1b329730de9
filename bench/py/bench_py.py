#!/usr/bin/python3
"""bench/py/bench_py.py - the Python binding's hot path, side by side.

    make && KEYMESH_LIBRARY=build/libkeymesh.so.0 PYTHONPATH=bindings/python \\
        /usr/bin/python3 bench/py/bench_py.py [--reps 7] [--seconds 0.5] [--short]

One process, 4 keys, round robin, no limits (the in-process pool has none),
in the same run and alternated rep by rep:

  ext       SyncKeyPool on keymesh._ext: k = pool.acquire(); pool.release(k)
  ctypes    the same pool class on keymesh._hot (the ctypes fallback)
  inproc    bench/py/inproc_model.py: the in-process pool the binding replaces
  pypool    bench/baselines/pypool.py "thread": KeyMesh's semantics (rpm +
            tpm GCRA, unlimited) in pure Python behind a threading.Lock
  lease     with pool.lease(): pass            (ext and ctypes)
  async     k = await pool.acquire() with a key free (KeyPool, ext and ctypes);
            the release is outside the timed span
  http      with pool.lease() as l: l.report(200, headers=HDRS), HDRS the 12
            headers of an OpenAI success (6 x-ratelimit-*): a release with
            the answer mapped by km_outcome_from_http.  ext: in C;
            before: the extension's lease, the mapping in Python and ctypes
            (keymesh._pool._report_tuple, what report() ran until the
            mapping moved into keymesh._ext); ctypes: the fallback
  httpx     KeyMeshAuth's release of an httpx.Response's headers: ext:
            l._release_http(200, headers.raw); before: _report_tuple on
            the httpx.Headers, l._set_outcome(), l.release() (if python3-httpx)

Each rep times batches of 64 operations with time.perf_counter_ns(); a
figure is the median over reps of each rep's median batch mean (ns per
operation).  Then:

  procs     8 (and 1, 2) forked processes on one shared segment of 4 keys,
            each looping acquire()+release() on the extension for --seconds:
            pairs per second over all of them
  wake      a KeyPool task awaiting acquire() while another process holds
            the only key; that process releases it; latency from just before
            its km_release to the task running again (km_now_ns, one clock
            for both), --wakes samples: p50, p99, max
            (with the extension, split by the lease's stamps: futex: to
            km_acquire_wait returning in the helper thread; gil: to that
            thread holding the GIL again; handover: to the task running
            (call_soon_threadsafe, the loop's wake-up); and the load
            average over the run)

Output: one SUMMARY line per figure (every parameter and result, units).
The machine is shared: run it several times and compare medians.
"""
import argparse
import asyncio
import os
import statistics
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "baselines"))

import keymesh  # noqa: E402
from keymesh import _hot, _pool  # noqa: E402
from keymesh._lib import lib  # noqa: E402

import inproc_model  # noqa: E402

KEYS = ["sk-bench-py-%04d" % i for i in range(4)]
BATCH = 64
# An OpenAI chat completion's response headers (a success).
HDRS = {"date": "Thu, 03 Dec 2026 07:00:00 GMT", "content-type": "application/json",
        "openai-organization": "org-bench", "openai-processing-ms": "412",
        "openai-version": "2020-10-01", "x-request-id": "req_0123456789abcdef",
        "x-ratelimit-limit-requests": "10000", "x-ratelimit-limit-tokens": "2000000",
        "x-ratelimit-remaining-requests": "9999", "x-ratelimit-remaining-tokens": "1999950",
        "x-ratelimit-reset-requests": "6ms", "x-ratelimit-reset-tokens": "1ms"}


class CtypesSyncKeyPool(_hot._PyCore, _pool._Core):
    """SyncKeyPool's hot path on ctypes, in the same process as the extension."""


class CtypesKeyPool(_hot._PyCore, _pool._Core):
    acquire = _pool.KeyPool.acquire
    release = _pool.KeyPool.release


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100.0 * len(xs) + 0.5)) - 1))]


def time_pairs(acquire, release, seconds):
    means = []
    end = time.perf_counter() + seconds
    clock = time.perf_counter_ns
    while time.perf_counter() < end:
        t0 = clock()
        for _ in range(BATCH):
            release(acquire())
        means.append((clock() - t0) / BATCH)
    return statistics.median(means)


def time_lease(pool, seconds):
    means = []
    end = time.perf_counter() + seconds
    clock = time.perf_counter_ns
    lease = pool.lease
    while time.perf_counter() < end:
        t0 = clock()
        for _ in range(BATCH):
            with lease():
                pass
        means.append((clock() - t0) / BATCH)
    return statistics.median(means)


def time_http(pool, seconds, settle):
    means = []
    end = time.perf_counter() + seconds
    clock = time.perf_counter_ns
    lease = pool.lease
    while time.perf_counter() < end:
        t0 = clock()
        for _ in range(BATCH):
            with lease() as lz:
                settle(lz)
        means.append((clock() - t0) / BATCH)
    return statistics.median(means)


def http_settles():
    """name -> (uses the ctypes pool, settle(lease)) for the http figures."""
    rt = _pool._report_tuple
    out = {
        "http_ext": (False, lambda lz: lz.report(200, headers=HDRS)),
        "http_before": (False, lambda lz: lz._set_outcome(rt(200, HDRS, None, None, None,
                                                              None, None))),
        "http_ctypes": (True, lambda lz: lz.report(200, headers=HDRS)),
    }
    try:
        import httpx
    except ImportError:
        return out
    hh = httpx.Headers(HDRS)

    def before(lz):
        lz._set_outcome(rt(200, hh, None, None, None, None, None))
        lz.release()
    out["httpx_ext"] = (False, lambda lz: lz._release_http(200, hh.raw, None))
    out["httpx_before"] = (False, before)
    return out


def time_async(pool, seconds):
    async def run():
        means = []
        keys = [None] * BATCH
        end = time.perf_counter() + seconds
        clock = time.perf_counter_ns
        rel = pool._release_key
        while time.perf_counter() < end:
            t0 = clock()
            for i in range(BATCH):
                keys[i] = await pool.acquire()
            means.append((clock() - t0) / BATCH)
            for k in keys:
                rel(k)
        return statistics.median(means)
    return asyncio.run(run())


def pypool_pair(seconds):
    import pypool

    class C:
        keys, rpm, rpm_burst, tpm, tpm_burst = 4, 10 ** 9, 0, 10 ** 12, 0
        max_inflight, cooldown_s, max_cooldown_s = 0, 60, 3600
    p = pypool.ThreadPool(C)

    def acq():
        return p.acquire(0)

    def rel(lease):
        p.release(lease, 0, -1, -1, 0.0)
    return time_pairs(acq, rel, seconds)


def procs_throughput(nprocs, seconds):
    name = "kmb-py-%d" % os.getpid()
    lib.km_unlink(name.encode())
    cfg = {"capacity": {"keys": 8, "processes": 64},
           "pools": [{"name": "p", "strategy": "round_robin",
                      "keys": [{"id": "k%d" % i, "secret": s} for i, s in enumerate(KEYS)]}]}
    owner = keymesh.SyncKeyPool.create(name, cfg)
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pids = []
    for _ in range(nprocs):
        pid = os.fork()
        if pid == 0:
            try:
                p = keymesh.SyncKeyPool.open(name)
                acq, rel = p.acquire, p.release
                os.read(go_r, 1)
                n = 0
                end = time.perf_counter() + seconds
                while time.perf_counter() < end:
                    for _ in range(BATCH):
                        rel(acq())
                    n += BATCH
                p.close()
                os.write(res_w, struct.pack("Q", n))
            finally:
                os._exit(0)
        pids.append(pid)
    time.sleep(0.2)
    os.write(go_w, b"g" * nprocs)
    total = sum(struct.unpack("Q", os.read(res_r, 8))[0] for _ in pids)
    for pid in pids:
        os.waitpid(pid, 0)
    owner.close()
    keymesh.unlink(name)
    return total / seconds


def wake_latency(samples, busy=False):
    name = "kmb-pyw-%d" % os.getpid()
    lib.km_unlink(name.encode())
    cfg = {"capacity": {"keys": 2, "processes": 8},
           "pools": [{"name": "p", "max_inflight": 1,
                      "keys": [{"id": "k0", "secret": KEYS[0]}]}]}
    pool = keymesh.KeyPool.create(name, cfg, acquire_timeout=10)
    held_r, held_w = os.pipe()
    t_r, t_w = os.pipe()
    got_r, got_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            p = keymesh.SyncKeyPool.open(name, acquire_timeout=10)
            for i in range(samples):
                k = p.acquire()
                os.write(held_w, b"h")
                time.sleep(0.002 + (i % 7) * 0.001)
                os.write(t_w, struct.pack("Q", lib.km_now_ns()))
                p.release(k)
                # Let the waiter have it (no FIFO: re-acquiring at once
                # would win the race and time its losses instead).
                os.read(got_r, 1)
            p.close()
        finally:
            os._exit(0)

    async def spin(stop):
        # A loop never idle: short Python callbacks back to back (a busy
        # server), so the loop thread holds the GIL but for its epoll calls.
        while not stop:
            sum(range(300))
            await asyncio.sleep(0)

    async def run():
        lat, split = [], []
        stop = []
        spinner = asyncio.ensure_future(spin(stop)) if busy else None
        for _ in range(samples):
            os.read(held_r, 1)  # the other process holds the key now
            # pool.acquire() is this, returning lz.key: the lease is kept
            # for the helper thread's stamps
            lz = await _pool._aacquire(pool, None, None, 0, None, None, True)
            got = lib.km_now_ns()
            rel = struct.unpack("Q", os.read(t_r, 8))[0]
            lat.append((got - rel) / 1000.0)
            woke, gil = getattr(lz, "_wait_stamps", (0, 0))
            if woke:
                split.append(((woke - rel) / 1000.0, (gil - woke) / 1000.0,
                              (got - gil) / 1000.0))
            await pool.release(lz.key)
            os.write(got_w, b"g")
        if spinner is not None:
            stop.append(1)
            await spinner
        return lat, split
    lat = asyncio.run(run())
    os.waitpid(pid, 0)
    pool._close()
    keymesh.unlink(name)
    return lat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.5, help="per figure per rep")
    ap.add_argument("--procs-seconds", type=float, default=2.0)
    ap.add_argument("--wakes", type=int, default=300)
    ap.add_argument("--short", action="store_true", help="smoke run")
    ap.add_argument("--only", default="pair,http,procs,wake",
                    help="comma-separated figures to run: pair,http,procs,wake,wakebusy")
    a = ap.parse_args()
    only = set(a.only.split(","))
    if a.short:
        a.reps, a.seconds, a.procs_seconds, a.wakes = 1, 0.05, 0.2, 20
    if keymesh.implementation() != "c-extension":
        sys.exit("bench_py: the extension is not in use: %s" % keymesh.implementation_detail())

    common = "procs=1 keys=4 strategy=round_robin limits=none reps=%d seconds=%.2f batch=%d" % (
        a.reps, a.seconds, BATCH)
    if "http" in only:
        ext = keymesh.SyncKeyPool(keys=KEYS, strategy="round_robin")
        cty = CtypesSyncKeyPool(KEYS, "round_robin")
        settles = http_settles()
        r = {k: [] for k in ["lease_ext"] + list(settles)}
        for _ in range(a.reps):  # alternated
            r["lease_ext"].append(time_lease(ext, a.seconds))
            for k, (on_ctypes, fn) in settles.items():
                r[k].append(time_http(cty if on_ctypes else ext, a.seconds, fn))
        med = {k: statistics.median(v) for k, v in r.items()}
        for k in r:
            what, var = k.split("_")
            print("SUMMARY bench=py_%s variant=%s %s headers=%d p50_ns=%.0f min_ns=%.0f "
                  "max_ns=%.0f" % (what, var, common, len(HDRS), med[k], min(r[k]), max(r[k])))
        print("SUMMARY bench=py_http_ratio %s before_over_ext=%.1f ctypes_over_ext=%.1f%s" % (
            common, med["http_before"] / med["http_ext"], med["http_ctypes"] / med["http_ext"],
            " httpx_before_over_ext=%.1f" % (med["httpx_before"] / med["httpx_ext"])
            if "httpx_ext" in med else ""))
        ext._close()
        cty._close()
    if "pair" in only:
        pairs(a, common)
    if "procs" in only:
        for n in (1, 2, 8):
            ops = procs_throughput(n, a.procs_seconds)
            print("SUMMARY bench=py_procs variant=ext procs=%d keys=4 strategy=round_robin "
                  "limits=none seconds=%.1f pairs_per_s=%.0f cpus=%d" % (
                      n, a.procs_seconds, ops, os.cpu_count() or 0))
    for busy in (False, True):
        if ("wakebusy" if busy else "wake") not in only:
            continue
        var = "ext_busyloop" if busy else "ext"
        l0 = os.getloadavg()[0]
        lat, split = wake_latency(a.wakes, busy)
        l1 = os.getloadavg()[0]
        print("SUMMARY bench=py_wake variant=%s procs=2 keys=1 samples=%d p50_us=%.0f "
              "p99_us=%.0f max_us=%.0f loadavg1=%.2f-%.2f cpus=%d target: p99<=1000us %s" % (
                  var, len(lat), pct(lat, 50), pct(lat, 99), max(lat), l0, l1,
                  os.cpu_count() or 0, "met" if pct(lat, 99) <= 1000 else "MISSED"))
        if split:
            parts = ("futex", "gil", "handover")
            print("SUMMARY bench=py_wake_split variant=%s samples=%d %s" % (
                var, len(split), " ".join(
                    "%s_p50_us=%.0f %s_p99_us=%.0f" % (n, pct([x[i] for x in split], 50), n,
                                                      pct([x[i] for x in split], 99))
                    for i, n in enumerate(parts))))


def pairs(a, common):
    ext = keymesh.SyncKeyPool(keys=KEYS, strategy="round_robin")
    cty = CtypesSyncKeyPool(KEYS, "round_robin")
    aext = keymesh.KeyPool(keys=KEYS, strategy="round_robin")
    acty = CtypesKeyPool(KEYS, "round_robin")
    inproc = inproc_model.InProcPool(KEYS)
    r = {k: [] for k in ("ext", "ctypes", "inproc", "pypool", "lease_ext", "lease_ctypes",
                         "async_ext", "async_ctypes")}
    for _ in range(a.reps):  # alternated: each rep runs every variant once
        r["ext"].append(time_pairs(ext.acquire, ext.release, a.seconds))
        r["ctypes"].append(time_pairs(cty.acquire, cty.release, a.seconds))
        r["inproc"].append(time_pairs(inproc.acquire, inproc.release, a.seconds))
        r["pypool"].append(pypool_pair(a.seconds))
        r["lease_ext"].append(time_lease(ext, a.seconds))
        r["lease_ctypes"].append(time_lease(cty, a.seconds))
        r["async_ext"].append(time_async(aext, a.seconds))
        r["async_ctypes"].append(time_async(acty, a.seconds))
    med = {k: statistics.median(v) for k, v in r.items()}
    for k in ("ext", "ctypes", "inproc", "pypool"):
        print("SUMMARY bench=py_pair variant=%s %s p50_ns=%.0f min_ns=%.0f max_ns=%.0f" % (
            k, common, med[k], min(r[k]), max(r[k])))
    for k in ("lease_ext", "lease_ctypes", "async_ext", "async_ctypes"):
        what, var = k.split("_")
        print("SUMMARY bench=py_%s variant=%s %s p50_ns=%.0f min_ns=%.0f max_ns=%.0f" % (
            what, var, common, med[k], min(r[k]), max(r[k])))
    print("SUMMARY bench=py_ratio %s inproc_over_ext=%.1f ctypes_over_ext=%.1f "
          "targets: pair_ns<=1000 %s, inproc/ext>=6 %s, lease_ns<=1500 %s, async_ns<=3000 %s" % (
              common, med["inproc"] / med["ext"], med["ctypes"] / med["ext"],
              "met" if med["ext"] <= 1000 else "MISSED",
              "met" if med["inproc"] / med["ext"] >= 6 else "MISSED",
              "met" if med["lease_ext"] <= 1500 else "MISSED",
              "met" if med["async_ext"] <= 3000 else "MISSED"))
    for p in (ext, cty, aext):
        p._close()
    acty._close()


if __name__ == "__main__":
    main()
