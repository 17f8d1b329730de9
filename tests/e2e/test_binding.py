#!/usr/bin/python3
"""The Python binding (bindings/python/keymesh), in one process and across
fork(): run by tests/t_py.sh, TAP on stdout (plan at the end).

argv[1]: the layout file printed by tests/e2e/layout.c (C sizes/offsets).
Segments are named kmt-py-<pid>-*, and removed at exit even on failure.
"""
import asyncio
import ctypes
import gc
import json
import os
import sys
import time
import traceback

import keymesh
from keymesh import (KeyExhaustedError, KeyMeshError, KeyPool, NoAvailableKeyError,
                     SchedulerStrategy, SyncKeyPool)
from keymesh import _lib as L

N = 0
FAILED = 0
SEGS = []
SECRETS = ["sk-test-py-aaaa1111", "sk-test-py-bbbb2222", "sk-test-py-cccc3333",
           "sk-test-py-dddd4444", "sk-test-py-new-eeee5555"]


def ok(cond, name, *diag):
    global N, FAILED
    N += 1
    print("%s %d - %s" % ("ok" if cond else "not ok", N, name))
    if not cond:
        FAILED += 1
        for d in diag:
            print("# %s" % (d,))
    sys.stdout.flush()


def skip(name, why):
    global N
    N += 1
    print("ok %d - %s # SKIP %s" % (N, name, why))


def no_secret(text):
    return not any(s in text for s in SECRETS)


def seg(tag):
    name = "kmt-py-%d-%s" % (os.getpid(), tag)
    SEGS.append(name)
    return name


def raises(fn, exc):
    try:
        fn()
    except exc as e:
        return e
    except Exception as e:  # the wrong exception
        return AssertionError("raised %r" % (e,))
    return None


def cfg(keys, limits=None, strategy="round_robin", capacity=8, **pool):
    p = {"name": "p", "strategy": strategy,
         "keys": [{"id": "k%d" % (i + 1), "secret": s} for i, s in enumerate(keys)]}
    if limits:
        p["limits"] = limits
    p.update(pool)
    return {"capacity": {"keys": capacity, "processes": 16}, "pools": [p]}


def kmctl_check(name):
    import subprocess
    r = subprocess.run([os.environ["KMCTL"], "check", name], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


# ------------------------------------------------------------------ layout
def t_layout(path):
    from keymesh import _stats as S
    structs = dict(L.STRUCTS)
    structs.update(S.STRUCTS)  # pool.stats()'s, declared in keymesh._stats
    c = {}
    for line in open(path):
        w = line.split()
        if not w:
            continue
        c[w[0]] = (int(w[1]), dict((w[i], int(w[i + 1])) for i in range(2, len(w), 2)))
    bad = []
    for name, (size, fields) in c.items():
        st = structs[name]
        if ctypes.sizeof(st) != size:
            bad.append("%s: sizeof %d, ctypes %d" % (name, size, ctypes.sizeof(st)))
        for f, off in fields.items():
            if getattr(st, f).offset != off:
                bad.append("%s.%s: offset %d, ctypes %d" % (name, f, off, getattr(st, f).offset))
    ok(set(c) == set(structs) and not bad,
       "ctypes structs match the C layout (%d structs)" % len(c), *bad)
    # The same sizes as the loaded library says, which is what the binding
    # checks when it loads one; and a struct of the wrong size is caught.
    dll = L.lib.load()
    ok(L.size_mismatches(dll) == [] and set(L.STRUCT_IDS) == set(L.STRUCTS),
       "km_struct_size agrees with every ctypes struct (%d)" % len(L.STRUCTS),
       *L.size_mismatches(dll))
    ok(S.size_mismatches(dll) == [] and set(S.STRUCT_IDS) == set(S.STRUCTS),
       "km_struct_size agrees with every ctypes struct of keymesh._stats (%d)" % len(S.STRUCTS),
       *S.size_mismatches(dll))
    wrong = L.size_mismatches(dll, {"km_lease": L.Request})
    ok(len(wrong) == 1 and wrong[0].startswith("km_lease: %d bytes in libkeymesh, %d in"
                                              % (ctypes.sizeof(L.Lease), ctypes.sizeof(L.Request))),
       "a struct of another size is reported: %s" % wrong)
    major, minor, patch = (int(x) for x in L.lib.km_version().decode().split("."))
    ok(L.lib.km_version_number() == major * 10000 + minor * 100 + patch,
       "km_version_number() %d is km_version() %s" % (L.lib.km_version_number(),
                                                      L.lib.km_version().decode()))


# ------------------------------------------------------------- private pool
def t_private():
    pool = SyncKeyPool(keys=SECRETS[:3], strategy=SchedulerStrategy.ROUND_ROBIN,
                       default_cooldown=30, max_failures=2, acquire_timeout=1.0)
    segname = pool.segment
    ok(segname.startswith("private:") and not os.path.exists("/dev/shm/" + segname),
       "SyncKeyPool(keys=...) makes a private segment, with no name in /dev/shm")
    got = [pool.acquire() for _ in range(3)]
    ok(sorted(got) == sorted(SECRETS[:3]), "round robin: three acquires give the three keys")
    st = pool.status()
    ok(st["inflight"] == 3 and st["held_here"] == 3, "status(): 3 in flight",
       json.dumps(st)[:300])
    for k in got:
        pool.release(k, latency=0.05)
    st = pool.status()
    ok(st["inflight"] == 0 and all(k["success"] == 1 for k in st["keys"]),
       "release(key, latency): in-flight 0, one success per key")
    ok(all(k["latency_ema_us"] == 50000 for k in st["keys"]),
       "release latency recorded (EMA 50 ms)", [k["latency_ema_us"] for k in st["keys"]])
    e = raises(lambda: pool.release(got[0]), KeyMeshError)
    ok(isinstance(e, KeyMeshError) and no_secret(str(e)),
       "release of a key not held raises KeyMeshError, without the secret", repr(e))

    counts = {}
    for _ in range(300):
        k = pool.acquire()
        counts[k] = counts.get(k, 0) + 1
        pool.release(k)
    ok(sorted(counts.values()) == [100, 100, 100], "round robin in one process: exactly even",
       counts)

    k = pool.acquire()
    pool.mark_rate_limited(k, cooldown=30)
    st = {x["key"]: x for x in pool.status()["keys"]}
    mk = L.mask(k)
    ok(st[mk]["state"] == "cooling" and 29000 <= st[mk]["cooldown_remaining_ms"] <= 30000,
       "mark_rate_limited(key, cooldown=30): the key cools for 30 s", st[mk])
    ok(pool.available_count() == 2, "available_count() drops to 2")
    seen = set()
    for _ in range(20):
        x = pool.acquire()
        seen.add(x)
        pool.release(x)
    ok(k not in seen and len(seen) == 2, "a cooling key is never handed out")

    others = [x for x in SECRETS[:3] if x != k]
    for _ in range(2):  # max_failures=2
        x = pool.acquire(key_id=[d["id"] for d in pool.status()["keys"]
                                 if d["key"] == L.mask(others[0])][0])
        pool.mark_failed(x)
    ok(pool.available_count() == 1, "mark_failed max_failures times: that key cools too")

    r = repr(pool) + str(pool.status()) + json.dumps(pool.status())
    ok(no_secret(r), "repr() and status() never show a secret")
    with pool.lease() as lease:
        ok(no_secret(repr(lease)) and lease.key_id in repr(lease) and lease.key in SECRETS,
           "lease: repr masks the secret; .key is the secret", repr(lease))

    pool.close()
    ok(not os.path.exists("/dev/shm/" + segname), "close() removes a private segment")
    e = raises(pool.acquire, KeyMeshError)
    ok(isinstance(e, KeyMeshError), "a closed pool raises KeyMeshError")

    p2 = SyncKeyPool(keys=SECRETS[:1])
    n2 = p2.segment
    del p2
    gc.collect()
    ok(not os.path.exists("/dev/shm/" + n2), "a private pool collected removes its segment")

    e = raises(lambda: SyncKeyPool(keys=[]), ValueError)
    ok(isinstance(e, ValueError), "SyncKeyPool(keys=[]) is a ValueError")


def t_strategies():
    ok([s.value for s in SchedulerStrategy] ==
       ["round_robin", "least_busy", "weighted", "latency", "cost", "reliability", "fill_first"]
       and SchedulerStrategy.LEAST_BUSY.code == 2,
       "SchedulerStrategy: every KeyMesh strategy, codes as in keymesh.h")
    pool = SyncKeyPool(keys=SECRETS[:3], strategy=SchedulerStrategy.LEAST_BUSY)
    held = [pool.acquire() for _ in range(3)]
    ok(len(set(held)) == 3, "least_busy: three leases go to three different keys")
    pool.release(held[1])
    ok(pool.acquire() == held[1], "least_busy: the key with no lease out is chosen")
    pool.close()
    for s in SchedulerStrategy:
        p = SyncKeyPool(keys=SECRETS[:2], strategy=s)
        ok(p.status()["strategy"] == s.value and p.acquire() in SECRETS,
           "strategy %s: the segment uses it" % s.value)
        p.close()


# -------------------------------------------------- shared: create / open
def t_shared():
    name = seg("shared")
    pool = SyncKeyPool.create(name, cfg(SECRETS[:2], {"rpm": {"limit": 2, "burst": 2}}),
                              acquire_timeout=5)
    same = SyncKeyPool.open(name, "p")
    ok(same.pool_name == "p" and pool.status()["total_keys"] == 2,
       "create(name, config) then open(name, pool)")
    e = raises(lambda: SyncKeyPool.create(name, cfg(SECRETS[:1])), KeyMeshError)
    ok(isinstance(e, KeyMeshError) and e.errname == "EEXIST", "create on an existing name: EEXIST",
       repr(e))
    e = raises(lambda: SyncKeyPool.open("kmt-py-none-%d" % os.getpid()), KeyMeshError)
    ok(isinstance(e, KeyMeshError) and e.errname == "ENOENT", "open of a missing segment: ENOENT")
    e = raises(lambda: SyncKeyPool.open(name, "nopool"), KeyMeshError)
    ok(isinstance(e, KeyMeshError) and e.errname == "ENOPOOL", "open of a missing pool: ENOPOOL")
    bad = cfg(SECRETS[:1])
    bad["pools"][0]["limits"] = {"rpm": 0}
    e = raises(lambda: SyncKeyPool.create(seg("bad"), bad), KeyMeshError)
    ok(isinstance(e, KeyMeshError) and "pools[0].limits.rpm" in str(e) and no_secret(str(e)),
       "a bad config: KeyMeshError naming the field, no secret", str(e))

    # limits: 2 per key per minute, 2 keys: the fifth acquire waits, times out
    ks = [pool.acquire() for _ in range(4)]
    for k in ks:
        pool.release(k)
    t = time.monotonic()
    e = raises(lambda: pool.acquire(timeout=0.3), NoAvailableKeyError)
    dt = time.monotonic() - t
    ok(isinstance(e, NoAvailableKeyError) and 0.25 <= dt < 2.0 and e.retry_after and
       e.retry_after > 1, "every key at its limit: NoAvailableKeyError after the timeout "
       "(%.2f s, retry_after %.1f s)" % (dt, getattr(e, "retry_after", 0) or 0))
    ok(isinstance(e, KeyMeshError), "NoAvailableKeyError is a KeyMeshError")
    t = time.monotonic()
    e = raises(lambda: pool.acquire(timeout=0), NoAvailableKeyError)
    ok(isinstance(e, NoAvailableKeyError) and time.monotonic() - t < 0.1,
       "acquire(timeout=0): one try")

    # fork: the same object works in a child (it attaches again), once
    name2 = seg("fork")
    fp = SyncKeyPool.create(name2, cfg(SECRETS[:2]))
    k = fp.acquire()  # held by the parent across the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            for _ in range(10):
                x = fp.acquire()
                fp.release(x)
            with fp.lease() as lease:
                pass
            e2 = raises(lambda: fp.release(k), KeyMeshError)
            fp.close()  # what atexit does on a normal exit (os._exit skips it)
            os.write(w, b"ok" if isinstance(e2, KeyMeshError) else b"no")
        except BaseException:
            os.write(w, traceback.format_exc().encode()[:2000])
        finally:
            os._exit(0)
    os.close(w)
    msg = os.read(r, 4096).decode()
    os.waitpid(pid, 0)
    ok(msg == "ok", "after fork the child attaches again and uses the pool; the parent's "
       "leases are not the child's", msg)
    st = fp.status()
    ok(sum(x["acquired"] for x in st["keys"]) == 12 and st["inflight"] == 1,
       "the parent sees the child's 11 leases; its own is still out",
       [(x["acquired"], x["inflight"]) for x in st["keys"]])
    fp.release(k)
    rc, out = kmctl_check(name2)
    ok(rc == 0, "kmctl check clean: the child detached at exit, nobody attached twice", out)

    # lease(): outcomes from exceptions and reports
    class RateLimitError(Exception):  # what the OpenAI SDK raises, in shape
        status_code = 429

        class response:
            status_code = 429
            headers = {"retry-after": "20", "x-request-id": "req_1"}
            content = b'{"error": {"code": "rate_limit_exceeded"}}'

    name3 = seg("lease")
    lp = SyncKeyPool.create(name3, cfg(SECRETS[:2], max_failures=5))
    try:
        with lp.lease(model="gpt-4o-mini", estimated_tokens=100) as lease:
            bad_key = lease.key_id
            raise RateLimitError("429")
    except RateLimitError:
        pass
    st = {x["id"]: x for x in lp.status()["keys"]}
    ok(st[bad_key]["rate_limited"] == 1 and st[bad_key]["state"] == "cooling" and
       18000 <= st[bad_key]["cooldown_remaining_ms"] <= 20000,
       "lease(): an SDK error with status 429 and Retry-After 20 cools the key 20 s",
       st[bad_key])
    try:
        with lp.lease() as lease:
            kid = lease.key_id
            raise ConnectionError("reset")
    except ConnectionError:
        pass
    st = {x["id"]: x for x in lp.status()["keys"]}
    ok(st[kid]["failure"] == 1, "lease(): any other exception is a failure")
    with lp.lease(estimated_tokens=100) as lease:
        lease.usage(input_tokens=30, output_tokens=12)
        kid = lease.key_id
    st = {x["id"]: x for x in lp.status()["keys"]}
    ok(st[kid]["success"] == 1 and st[kid]["tokens_used"] == 42,
       "lease(): success with usage settles 42 tokens", st[kid])
    with lp.lease() as lease:
        lease.report(401)
        kid = lease.key_id
    st = {x["id"]: x for x in lp.status()["keys"]}
    ok(st[kid]["state"] == "invalid", "lease.report(401): the key is invalid")
    e = raises(lambda: lp.acquire(timeout=0.2), NoAvailableKeyError)
    ok(isinstance(e, NoAvailableKeyError),
       "one key invalid, one cooling: NoAvailableKeyError (the cooldown ends)", repr(e))
    lp.enable(bad_key)
    lp.disable(bad_key)
    e = raises(lambda: lp.acquire(timeout=0.2), KeyExhaustedError)
    ok(isinstance(e, KeyExhaustedError), "every key disabled or invalid: KeyExhaustedError",
       repr(e))
    lp.enable(bad_key)
    with lp.lease() as lease:
        lease.cancel()
    ok(lp.status()["keys"][0]["cancelled"] + lp.status()["keys"][1]["cancelled"] == 1,
       "lease.cancel(): counted as cancelled")
    for p in (pool, same, fp, lp):
        p.close()


# -------------------------------------------------------------- add_key
def t_add_key():
    have = L.lib.optional("km_key_add") is not None
    name = seg("add")
    pool = SyncKeyPool.create(name, cfg(SECRETS[:2], capacity=3))
    if not have:
        e = raises(lambda: pool.add_key(SECRETS[4]), KeyMeshError)
        ok(isinstance(e, KeyMeshError) and "km_key_add" in str(e),
           "add_key without km_key_add in the library: a clear KeyMeshError")
        skip("add_key for real", "this libkeymesh has no km_key_add")
        pool.close()
        return
    kid = pool.add_key(SECRETS[4], weight=3, meta={"org": "org-9"})
    st = {x["id"]: x for x in pool.status()["keys"]}
    ok(kid in st and st[kid]["weight"] == 3 and st[kid]["meta"] == {"org": "org-9"} and
       st[kid]["key"] == L.mask(SECRETS[4]), "add_key(secret, weight=3, meta=...) -> %r" % kid,
       list(st))
    k = pool.acquire(key_id=kid)
    ok(k == SECRETS[4], "the added key is handed out")
    pool.release(k)
    other = SyncKeyPool.open(name)  # the same attachment, another object
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            seen = set()
            for _ in range(9):
                x = other.acquire()
                seen.add(x)
                other.release(x)
            other.close()
            os.write(w, b"ok" if SECRETS[4] in seen else b"no")
        finally:
            os._exit(0)
    os.close(w)
    msg = os.read(r, 100)
    os.waitpid(pid, 0)
    ok(msg == b"ok", "another process gets the added key too")
    e = raises(lambda: pool.add_key("sk-test-py-dup-ffff6666", id=kid), KeyMeshError)
    ok(isinstance(e, KeyMeshError) and "EXIST" in e.errname and "ffff6666" not in str(e),
       "add_key with an id in use: %s, no secret in the message" % getattr(e, "errname", "?"))
    e = raises(lambda: pool.add_key("sk-test-py-full-gggg7777"), KeyMeshError)
    ok(isinstance(e, KeyMeshError) and e.errname == "EFULL",
       "add_key past capacity.keys: EFULL (%s)" % getattr(e, "errname", "?"))
    e = raises(lambda: pool.add_key("bad secret with spaces"), KeyMeshError)
    ok(isinstance(e, KeyMeshError) and "spaces" not in str(e).replace("without spaces", ""),
       "add_key with an invalid secret: KeyMeshError that does not echo it", str(e))
    pool.remove_key(kid)
    ok(all(x["id"] != kid or x["state"] != "active" for x in pool.status()["keys"]),
       "remove_key: the key is no longer handed out")
    private = SyncKeyPool(keys=SECRETS[:1])
    nid = private.add_key(SECRETS[1])
    ok(private.status()["total_keys"] == 2 and nid == "key-2",
       "add_key on a private pool (spare capacity): %s" % nid)
    private.close()
    other.close()
    pool.close()


# ---------------------------------------------------------------- asyncio
async def a_main():
    name = seg("async")
    pool = KeyPool.create(name, cfg(SECRETS[:1], {"rpm": {"limit": 60, "burst": 1}}),
                          acquire_timeout=5)
    k = await pool.acquire()
    await pool.release(k)
    ticks = 0
    stop = False

    async def ticker():
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0.01)

    tt = asyncio.create_task(ticker())
    t = time.monotonic()
    k2 = await pool.acquire()  # rpm 60, burst 1: about 1 s from now
    dt = time.monotonic() - t
    stop = True
    await tt
    ok(k2 == SECRETS[0] and 0.8 <= dt <= 2.0, "KeyPool.acquire awaited the limit (%.2f s)" % dt)
    ok(ticks >= 40, "the event loop ran meanwhile (%d ticks of 10 ms)" % ticks)
    await pool.mark_rate_limited(k2, cooldown=1)
    ok(pool.available_count() == 0, "async mark_rate_limited: no key available")
    t = time.monotonic()
    try:
        await pool.acquire(timeout=0.2)
        ok(False, "async acquire with every key cooling times out")
    except NoAvailableKeyError:
        ok(0.15 <= time.monotonic() - t < 1.0, "async acquire times out: NoAvailableKeyError")
    async with pool.lease(timeout=3) as lease:
        kid = lease.key_id
    st = pool.status()
    ok(st["keys"][0]["success"] >= 2 and st["inflight"] == 0,
       "async with pool.lease(): released as a success")

    # many tasks, one key at a time (max_inflight 1): all get it in turn
    name2 = seg("async2")
    p2 = KeyPool.create(name2, cfg(SECRETS[:2], max_inflight=1), acquire_timeout=5)
    peak = 0
    cur = 0

    async def job():
        nonlocal peak, cur
        async with p2.lease() as lease:
            cur += 1
            peak = max(peak, cur)
            await asyncio.sleep(0.01)
            cur -= 1
    await asyncio.gather(*(job() for _ in range(20)))
    st = p2.status()
    ok(peak == 2 and st["inflight"] == 0 and sum(x["success"] for x in st["keys"]) == 20,
       "20 tasks on 2 keys of max_inflight 1: 2 at once, all served (peak %d)" % peak)
    await pool.close()
    await p2.close()


def main():
    try:
        t_layout(sys.argv[1])
        ok(keymesh.library_path() == os.environ["KEYMESH_LIBRARY"],
           "the library comes from KEYMESH_LIBRARY (%s)" % keymesh.library_path())
        t_private()
        t_strategies()
        t_shared()
        t_add_key()
        asyncio.run(a_main())
    except Exception:
        ok(False, "no unexpected exception", *traceback.format_exc().splitlines())
    finally:
        for s in SEGS:
            L.lib.km_unlink(s.encode())
    print("1..%d" % N)
    sys.stdout.flush()
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
