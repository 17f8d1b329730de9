#!/usr/bin/python3
"""bench/py/bench_py.py - the Python binding's hot path, side by side.

    make && KEYMESH_LIBRARY=build/libkeymesh.so.0 PYTHONPATH=bindings/python \\
        /usr/bin/python3 bench/py/bench_py.py [--reps 7] [--seconds 0.5] [--short] \\
        [--only pair,http,procs,wake,wakebusy] [--load N]

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

  procs     1, 2, 4, 8 forked processes started together, each looping
            for --procs-seconds, alternated rep by rep (--procs-reps):
            cpu (a pure-Python loop sharing nothing: the machine's ceiling
            for Python in this run), inproc (each process its own
            inproc_model pool), ext with 4 and with 64 keys (SyncKeyPool on
            one shared segment): operations per second, x over 1 process,
            and eff, operations per CPU-second over 1 process (1.00: no
            contention, whatever else runs on the machine)
  wake      a waiter while another process holds the only key; that
            process releases it; latency from just before its km_release
            to the waiter having the key (km_now_ns, one clock for both),
            --wakes samples per variant in --wake-reps alternated blocks:
            c (km_acquire_wait itself, stamped in C: the floor), ext (a
            KeyPool task, idle loop: it waits in the loop's thread), and
            ext_helper (the same through the helper thread, as on a loop
            with sockets or timers); wakebusy: ext_busyloop (the loop never
            idle).  p50, p90, p99, max and the load average; with the
            extension, split by the lease's stamps: futex (to
            km_acquire_wait returning), gil (to that thread holding the GIL
            again), handover (to the task running).  --load N: N processes
            spinning meanwhile

Output: one SUMMARY line per figure (every parameter and result, units).
The machine is shared: run it several times and compare medians.
"""
import argparse
import asyncio
import os
import signal
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


def _spin(seconds):
    """A pure-Python CPU loop (no memory shared with anyone): the machine's
    ceiling for Python code in this run."""
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        x = 0
        for i in range(BATCH):
            x += i
        n += BATCH
    return n


def _scale_step(variant, name):
    """The timed loop body of one forked process: None (the CPU loop) or a
    function running BATCH acquire()+release() pairs."""
    if variant == "cpu":
        return None
    if variant == "inproc":
        p = inproc_model.InProcPool(KEYS)
    else:
        p = keymesh.SyncKeyPool.open(name)
    acq, rel = p.acquire, p.release

    def step():
        for _ in range(BATCH):
            rel(acq())
    return step


def procs_throughput(variant, nprocs, nkeys, seconds):
    """nprocs forked processes started together, each looping for
    `seconds`: (operations per second over all of them, CPU seconds per
    wall second over all of them).  variant: "ext" (SyncKeyPool.open on one
    shared segment of nkeys keys, round robin, no limits), "inproc" (each
    process its own inproc_model pool: nothing shared) or "cpu" (_spin)."""
    name = "kmb-py-%d" % os.getpid()
    owner = None
    if variant == "ext":
        lib.km_unlink(name.encode())
        cfg = {"capacity": {"keys": max(8, nkeys), "processes": 64},
               "pools": [{"name": "p", "strategy": "round_robin",
                          "keys": [{"id": "k%d" % i, "secret": "sk-bench-py-%04d" % i}
                                   for i in range(nkeys)]}]}
        owner = keymesh.SyncKeyPool.create(name, cfg)
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pids = []
    for _ in range(nprocs):
        pid = os.fork()
        if pid == 0:
            try:
                step = _scale_step(variant, name)
                os.read(go_r, 1)
                t0, c0 = time.perf_counter(), time.process_time()
                if step is None:
                    n = _spin(seconds)
                else:
                    n, end = 0, t0 + seconds
                    while time.perf_counter() < end:
                        step()
                        n += BATCH
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                os.write(res_w, struct.pack("Qdd", n, wall, cpu))
            finally:
                os._exit(0)
        pids.append(pid)
    time.sleep(0.2)
    os.write(go_w, b"g" * nprocs)
    ops = cpu = 0.0
    for _ in pids:
        n, wall, c = struct.unpack("Qdd", os.read(res_r, 24))
        ops += n / wall
        cpu += c / wall
    for pid in pids:
        os.waitpid(pid, 0)
    for fd in (go_r, go_w, res_r, res_w):
        os.close(fd)
    if owner is not None:
        owner.close()
        keymesh.unlink(name)
    return ops, cpu


# The scaling figure's variants: (name, variant, keys).
SCALE = (("cpu", "cpu", 0), ("inproc", "inproc", 0), ("ext", "ext", 4), ("ext", "ext", 64))


def procs_scale(a):
    """Every variant at 1, 2, 4, 8 processes, alternated: each rep runs
    every (processes, variant) once, so the ceiling and the pool are
    measured within seconds of each other.  Two figures per point: x, the
    operations per second over the 1-process figure of the same rep (what
    the wall clock gives; less than the cores whenever anything else runs),
    and eff, the operations per CPU-second over the 1-process figure: what
    a core does once it has one (1.00: no contention; a cache line that
    processes fight over costs CPU time and lowers it)."""
    ns = (1, 2, 4, 8)
    r = {(v, k, n): [] for v, _, k in SCALE for n in ns}
    for _ in range(a.procs_reps):
        for n in ns:
            for v, var, k in SCALE:
                r[(v, k, n)].append(procs_throughput(var, n, k, a.procs_seconds))
    cpus = os.cpu_count() or 0
    x, eff = {}, {}
    for v, _, k in SCALE:
        base = r[(v, k, 1)]
        for n in ns:
            xs = r[(v, k, n)]
            xr = [o[0] / b[0] for o, b in zip(xs, base)]
            er = [(o[0] / o[1]) / (b[0] / b[1]) for o, b in zip(xs, base)]
            x[(v, k, n)], eff[(v, k, n)] = statistics.median(xr), statistics.median(er)
            print("SUMMARY bench=py_procs variant=%s procs=%d keys=%d strategy=round_robin "
                  "limits=none seconds=%.2f reps=%d ops_per_s=%.0f cpu_busy=%.2f "
                  "ops_per_cpu_s=%.0f x=%.2f x_min=%.2f x_max=%.2f eff=%.2f eff_min=%.2f "
                  "eff_max=%.2f cpus=%d" % (
                      v, n, k, a.procs_seconds, a.procs_reps,
                      statistics.median(o[0] for o in xs), statistics.median(o[1] for o in xs),
                      statistics.median(o[0] / o[1] for o in xs), x[(v, k, n)], min(xr),
                      max(xr), eff[(v, k, n)], min(er), max(er), cpus))
    # The ceiling beside the pool: the CPU loop's figures at the same n.
    for n in ns[1:]:
        print("SUMMARY bench=py_procs_ceiling procs=%d reps=%d cpus=%d %s %s" % (
            n, a.procs_reps, cpus,
            " ".join("%s_x=%.2f" % (v + (str(k) if k else ""), x[(v, k, n)])
                     for v, _, k in SCALE),
            " ".join("%s_eff=%.2f" % (v + (str(k) if k else ""), eff[(v, k, n)])
                     for v, _, k in SCALE)))


def wake_latency(samples, variant):
    """A release in another process waking a waiter: (latencies in us,
    split).  variant: "c" (the waiter in km_acquire_wait itself, the
    extension's _wait_lease in this process's main thread, no event loop:
    the wake-up's floor, stamped in C as km_acquire_wait returns), "ext"
    (a KeyPool task awaiting acquire() on an idle loop, which waits in the
    loop's thread: keymesh._pool._loop_idle), "ext_helper" (the same
    through the helper thread, as on a loop with sockets or timers) or
    "ext_busyloop" (the loop never idle: the helper thread)."""
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

    def sample(lz, got):
        rel = struct.unpack("Q", os.read(t_r, 8))[0]
        woke, gil = getattr(lz, "_wait_stamps", (0, 0))
        split = ((woke - rel) / 1000.0, (gil - woke) / 1000.0, (got - gil) / 1000.0) \
            if woke else None
        return (got - rel) / 1000.0, split

    def run_c():
        out = []
        for _ in range(samples):
            os.read(held_r, 1)  # the other process holds the key now
            lz = 0
            while isinstance(lz, int):  # EAGAIN at the end of a chunk
                lz = pool._wait_lease(None, 0, None, None, False, 1000)
            out.append(sample(lz, lib.km_now_ns()))
            lz.release()
            os.write(got_w, b"g")
        return out

    async def spin(stop):
        # A loop never idle: short Python callbacks back to back (a busy
        # server), so the loop thread holds the GIL but for its epoll calls.
        while not stop:
            sum(range(300))
            await asyncio.sleep(0)

    async def run():
        out, stop = [], []
        spinner = asyncio.ensure_future(spin(stop)) if variant == "ext_busyloop" else None
        for _ in range(samples):
            os.read(held_r, 1)  # the other process holds the key now
            # pool.acquire() is this, returning lz.key: the lease is kept
            # for the helper thread's stamps
            lz = await _pool._aacquire(pool, None, None, 0, None, None, True)
            out.append(sample(lz, lib.km_now_ns()))
            await pool.release(lz.key)
            os.write(got_w, b"g")
        if spinner is not None:
            stop.append(1)
            await spinner
        return out
    _pool._IDLE_WAIT = variant != "ext_helper"
    try:
        res = run_c() if variant == "c" else asyncio.run(run())
    finally:
        _pool._IDLE_WAIT = True
    os.waitpid(pid, 0)
    for fd in (held_r, held_w, t_r, t_w, got_r, got_w):
        os.close(fd)
    pool._close()
    keymesh.unlink(name)
    return [x[0] for x in res], [x[1] for x in res if x[1]]


def hogs(n):
    """n processes spinning in Python for the load: their pids."""
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                while True:
                    pass
            finally:
                os._exit(0)
        pids.append(pid)
    return pids


def wake_figures(a, variants):
    """The variants alternated, --wake-reps blocks of --wakes / --wake-reps
    samples each; percentiles over every sample of a variant."""
    hog = hogs(a.load)
    try:
        lat = {v: [] for v in variants}
        split = {v: [] for v in variants}
        l0 = os.getloadavg()[0]
        per = max(1, a.wakes // a.wake_reps)
        for _ in range(a.wake_reps):
            for v in variants:
                x, sp = wake_latency(per, v)
                lat[v] += x
                split[v] += sp
        l1 = os.getloadavg()[0]
    finally:
        for pid in hog:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    for v in variants:
        xs = lat[v]
        print("SUMMARY bench=py_wake variant=%s procs=2 keys=1 load_procs=%d samples=%d "
              "p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f loadavg1=%.2f-%.2f cpus=%d "
              "target: p99<=1000us %s" % (
                  v, a.load, len(xs), pct(xs, 50), pct(xs, 90), pct(xs, 99), max(xs), l0, l1,
                  os.cpu_count() or 0, "met" if pct(xs, 99) <= 1000 else "MISSED"))
        sp = split[v]
        if sp:
            parts = ("futex", "gil", "handover")
            print("SUMMARY bench=py_wake_split variant=%s load_procs=%d samples=%d %s" % (
                v, a.load, len(sp), " ".join(
                    "%s_p50_us=%.0f %s_p99_us=%.0f" % (n, pct([x[i] for x in sp], 50), n,
                                                      pct([x[i] for x in sp], 99))
                    for i, n in enumerate(parts))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.5, help="per figure per rep")
    ap.add_argument("--procs-seconds", type=float, default=0.5)
    ap.add_argument("--procs-reps", type=int, default=5)
    ap.add_argument("--wakes", type=int, default=300, help="wake-up samples per variant")
    ap.add_argument("--wake-reps", type=int, default=3,
                    help="blocks the wake-up samples are taken in, variants alternated")
    ap.add_argument("--load", type=int, default=0,
                    help="processes spinning in Python during the wake-up figures")
    ap.add_argument("--short", action="store_true", help="smoke run")
    ap.add_argument("--only", default="pair,http,procs,wake",
                    help="comma-separated figures to run: pair,http,procs,wake,wakebusy")
    a = ap.parse_args()
    only = set(a.only.split(","))
    if a.short:
        a.reps, a.seconds, a.procs_seconds, a.procs_reps, a.wakes, a.wake_reps = \
            1, 0.05, 0.1, 1, 20, 1
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
        procs_scale(a)
    variants = [v for v, o in (("c", "wake"), ("ext", "wake"), ("ext_helper", "wake"),
                               ("ext_busyloop", "wakebusy")) if o in only]
    if variants:
        wake_figures(a, variants)


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
