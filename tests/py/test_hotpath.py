"""The hot path (acquire, release, lease enter/exit, outcome mapping) on
whichever implementation this run uses (C extension or ctypes)."""
import asyncio
import ctypes
import os
import threading
import time

import pytest

import keymesh
from keymesh import KeyMeshError, NoAvailableKeyError, SchedulerStrategy, SyncKeyPool
from keymesh import _lib as L

from conftest import cfg, no_secret


def test_implementation_is_the_one_asked_for():
    want = os.environ.get("KEYMESH_EXPECT_IMPL")
    assert want, "run through tests/t_py.sh (KEYMESH_EXPECT_IMPL unset)"
    assert keymesh.implementation() == want, keymesh.implementation_detail()
    if want == "c-extension":
        from keymesh import _ext
        # bound to the very copy of libkeymesh that ctypes loaded
        assert _ext.acquire_fn_address() == ctypes.cast(L.lib.km_acquire, ctypes.c_void_p).value
        assert isinstance(SyncKeyPool(keys=["sk-x-1"]).lease(), _ext.Lease)


def test_acquire_release_round_robin(secrets):
    pool = SyncKeyPool(keys=secrets[:4], strategy=SchedulerStrategy.ROUND_ROBIN)
    counts = {}
    for _ in range(400):
        k = pool.acquire()
        counts[k] = counts.get(k, 0) + 1
        pool.release(k)
    assert sorted(counts) == sorted(secrets[:4]) and set(counts.values()) == {100}
    st = pool.status()
    assert st["inflight"] == 0 and st["held_here"] == 0
    assert sum(k["success"] for k in st["keys"]) == 400
    pool.close()


def test_release_latency_and_tokens(secrets):
    pool = SyncKeyPool(keys=secrets[:1])
    k = pool.acquire(estimated_tokens=100)
    pool.release(k, latency=0.05, tokens=42)
    st = pool.status()["keys"][0]
    assert st["latency_ema_us"] == 50000 and st["tokens_used"] == 42
    pool.close()


def test_same_key_held_twice_released_in_order(secrets):
    pool = SyncKeyPool(keys=secrets[:1])
    a, b = pool.acquire(), pool.acquire()
    assert a == b == secrets[0] and pool.status()["held_here"] == 2
    pool.release(a)
    pool.release(b)
    with pytest.raises(KeyMeshError) as e:
        pool.release(a)
    assert no_secret(str(e.value))
    assert pool.status()["inflight"] == 0
    pool.close()


def test_lease_context_manager(secrets):
    pool = SyncKeyPool(keys=secrets[:2])
    lease = pool.lease(estimated_tokens=10)
    assert "not acquired" in repr(lease)
    with lease as got:
        assert got is lease and got.key in secrets and got.key_id in ("key-1", "key-2")
        assert no_secret(repr(got)) and got.key_id in repr(got)
        assert got.elapsed >= 0 and got.meta == {} and not got.done
        got.usage(input_tokens=3, output_tokens=4)
    assert lease.done
    st = pool.status()
    assert st["inflight"] == 0 and sum(k["tokens_used"] for k in st["keys"]) == 7
    with pytest.raises(KeyMeshError):
        lease.release()  # already finished
    pool.close()


def test_lease_outcomes_from_exceptions(secrets):
    pool = SyncKeyPool(keys=secrets[:3], strategy="round_robin", max_failures=5)

    class RateLimitError(Exception):
        status_code = 429

        class response:
            status_code = 429
            headers = {"retry-after": "20"}
            content = b'{"error": {"code": "rate_limit_exceeded"}}'

    with pytest.raises(RateLimitError):
        with pool.lease() as lease:
            kid = lease.key_id
            raise RateLimitError()
    k = {x["id"]: x for x in pool.status()["keys"]}[kid]
    assert k["rate_limited"] == 1 and k["state"] == "cooling" and 18000 <= k["cooldown_remaining_ms"] <= 20000
    with pytest.raises(ConnectionError):
        with pool.lease() as lease:
            kid = lease.key_id
            raise ConnectionError("reset")
    assert {x["id"]: x for x in pool.status()["keys"]}[kid]["failure"] == 1
    with pytest.raises(KeyboardInterrupt):
        with pool.lease() as lease:
            kid = lease.key_id
            raise KeyboardInterrupt()
    assert {x["id"]: x for x in pool.status()["keys"]}[kid]["cancelled"] == 1
    pool.close()


def test_report_and_fail(secrets):
    pool = SyncKeyPool(keys=secrets[:3], strategy="round_robin")
    with pool.lease() as lease:
        lease.report(401)
        kid = lease.key_id
    assert {x["id"]: x for x in pool.status()["keys"]}[kid]["state"] == "invalid"
    lease = pool.lease().__enter__()
    lease.fail(ConnectionError("x"))
    assert lease.done
    lease = pool.lease().__enter__()
    lease.cancel()
    st = pool.status()
    assert st["inflight"] == 0 and sum(k["cancelled"] for k in st["keys"]) == 1
    pool.close()


@pytest.mark.parametrize("bad", [-1, -100, 2 ** 32])
def test_bad_token_estimates_are_value_errors(secrets, bad):
    pool = SyncKeyPool(keys=secrets[:1])
    with pytest.raises(ValueError):
        pool.acquire(estimated_tokens=bad)
    with pytest.raises(ValueError):
        pool.lease(estimated_tokens=bad)
    assert pool.status()["inflight"] == 0
    pool.close()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5])
def test_bad_latencies_are_value_errors(secrets, bad):
    pool = SyncKeyPool(keys=secrets[:1])
    k = pool.acquire()
    with pytest.raises(ValueError):
        pool.release(k, latency=bad)
    pool.release(k, latency=0.01)  # still held: the bad call changed nothing
    with pool.lease() as lease:
        with pytest.raises(ValueError):
            lease.release(latency=bad)
    with pool.lease() as lease:
        with pytest.raises(ValueError):
            lease.report(200, tokens=-5)
    st = pool.status()
    assert st["inflight"] == 0 and st["keys"][0]["success"] == 3
    pool.close()


def test_timeouts(seg, secrets):
    pool = SyncKeyPool.create(seg("lim"), cfg(secrets[:2], {"rpm": {"limit": 2, "burst": 2}}))
    for _ in range(4):
        pool.release(pool.acquire())
    t = time.monotonic()
    with pytest.raises(NoAvailableKeyError) as e:
        pool.acquire(timeout=0.3)
    dt = time.monotonic() - t
    assert 0.25 <= dt < 2.0 and e.value.retry_after and e.value.retry_after > 1
    t = time.monotonic()
    with pytest.raises(NoAvailableKeyError):
        pool.acquire(timeout=0)
    assert time.monotonic() - t < 0.1
    pool.close()


def test_blocking_acquire_releases_the_gil(seg, secrets):
    pool = SyncKeyPool.create(seg("gil"), cfg(secrets[:1], max_inflight=1))
    held = pool.acquire()
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.005)

    th = threading.Thread(target=ticker)
    th.start()
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(timeout=5)))
    t0 = time.monotonic()
    waiter.start()
    time.sleep(0.4)
    n = len([t for t in ticks if t > t0])
    pool.release(held)
    waiter.join(5)
    stop.set()
    th.join()
    # The ticker ran ~80 times in 0.4 s while the waiter slept in the
    # futex: the GIL was not held.  The waiter got the key after release.
    assert n >= 20 and got == [secrets[0]]
    pool.release(got[0])
    pool.close()


def test_fork_child_attaches_again(seg, secrets, kmctl):
    import subprocess
    name = seg("fork")
    pool = SyncKeyPool.create(name, cfg(secrets[:2]))
    held = pool.acquire()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            for _ in range(10):
                pool.release(pool.acquire())
            with pool.lease():
                pass
            try:
                pool.release(held)
                msg = b"parent's lease released in child"
            except KeyMeshError:
                msg = b"ok"
            pool.close()
            os.write(w, msg)
        finally:
            os._exit(0)
    os.close(w)
    msg = os.read(r, 200)
    os.waitpid(pid, 0)
    assert msg == b"ok"
    st = pool.status()
    assert sum(k["acquired"] for k in st["keys"]) == 12 and st["inflight"] == 1
    pool.release(held)
    out = subprocess.run([kmctl, "check", name], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    pool.close()


def test_closed_pool(secrets):
    pool = SyncKeyPool(keys=secrets[:1])
    name = pool.segment
    pool.close()
    assert not os.path.exists("/dev/shm/" + name)
    with pytest.raises(KeyMeshError):
        pool.acquire()
    with pytest.raises(KeyMeshError):
        with pool.lease():
            pass


def test_strategies_and_pinning(secrets):
    for s in SchedulerStrategy:
        p = SyncKeyPool(keys=secrets[:2], strategy=s)
        assert p.status()["strategy"] == s.value and p.acquire() in secrets
        p.close()
    p = SyncKeyPool(keys=secrets[:3])
    assert p.acquire(key_id="key-2") == secrets[1]
    with p.lease(key_id="key-3") as lease:
        assert lease.key == secrets[2]
    with pytest.raises(KeyMeshError) as e:
        p.acquire(key_id="nope")
    assert e.value.errname == "ENOKEY"
    p.close()


def test_pinning_by_secret(seg, secrets):
    """key_id= takes the id or the secret (km_key_find_secret), in every
    way of acquiring, also in a process that never saw the secrets."""
    name = seg("pin")
    creator = SyncKeyPool.create(name, cfg(secrets[:3], max_inflight=1))
    p = SyncKeyPool.open(name)
    p._known.clear()
    assert p.acquire(key_id="k2") == secrets[1]            # by id, as before
    p.release(secrets[1])
    k = p.acquire(key_id=secrets[2])                       # by secret
    assert k == secrets[2]
    # The key is busy (max_inflight 1): a pinned blocking acquire by its
    # secret waits for it, and gets it when it comes back.
    threading.Timer(0.05, p.release, (k,)).start()
    t0 = time.monotonic()
    assert p.acquire(key_id=secrets[2], timeout=5) == secrets[2]
    assert time.monotonic() - t0 < 4
    p.release(secrets[2])
    with p.lease(key_id=secrets[0]) as lease:
        assert lease.key == secrets[0] and lease.key_id == "k1"

    async def pinned_async():
        ap = keymesh.KeyPool.open(name)
        got = await ap.acquire(key_id=secrets[1])
        await ap.release(got)
        await ap.close()
        return got
    assert asyncio.run(pinned_async()) == secrets[1]
    for bad in (secrets[3], secrets[1][:-1], secrets[1] + "0", "sk-test-pyt-bbbb\x002222"):
        with pytest.raises(KeyMeshError) as e:
            p.acquire(key_id=bad)
        assert e.value.errname == "ENOKEY" and no_secret(str(e.value))
        assert "bbbb" not in str(e.value) and "dddd" not in str(e.value)
    assert p.status()["inflight"] == 0
    p.close()
    creator.close()


def test_no_secret_in_errors_and_reprs(secrets, seg):
    pool = SyncKeyPool(keys=secrets[:2])
    text = repr(pool) + str(pool.status())
    with pool.lease() as lease:
        text += repr(lease) + str(lease)
    for fn in (lambda: pool.release("sk-test-pyt-nothere9999"),
               lambda: pool.mark_failed("sk-test-pyt-nothere9999")):
        with pytest.raises(KeyMeshError) as e:
            fn()
        text += str(e.value)
    assert no_secret(text) and "nothere9999" not in text
    pool.close()


class _Items:
    """A mapping-like object with items() only (requests' headers, ...)."""

    def __init__(self, d):
        self.d = d

    def items(self):
        return list(self.d.items())


RL_HEADERS = {"Retry-After": "20", "x-ratelimit-remaining-requests": "0",
              "x-note": "caf\u00e9 \u2603", "x-count": 3}


@pytest.mark.parametrize("shape", ["dict", "pairs", "bytes", "items", "repeated"])
def test_report_headers_in_every_shape(secrets, shape):
    # report()'s headers: a dict, (name, value) pairs of str or of bytes
    # (httpx.Headers.raw), an object with items(); values that are not
    # latin-1 or not str are fine.  Retry-After: 20 cools the key 20 s.
    h = {"dict": RL_HEADERS,
         "pairs": list(RL_HEADERS.items()),
         "bytes": [(k.encode(), str(v).encode("utf-8")) for k, v in RL_HEADERS.items()],
         "items": _Items(RL_HEADERS),
         "repeated": [("x-a", "1"), ("x-a", "2")] + list(RL_HEADERS.items())}[shape]
    pool = SyncKeyPool(keys=secrets[:2], strategy="round_robin")
    with pool.lease() as lease:
        lease.report(429, headers=h, body='{"error": {"code": "rate_limit_exceeded"}}')
        kid = lease.key_id
    k = {x["id"]: x for x in pool.status()["keys"]}[kid]
    assert k["rate_limited"] == 1 and k["state"] == "cooling"
    assert 18000 <= k["cooldown_remaining_ms"] <= 20000
    pool.close()


def test_report_bad_headers_and_body(secrets):
    pool = SyncKeyPool(keys=secrets[:1])
    with pool.lease() as lease:
        with pytest.raises(ValueError):
            lease.report(429, headers=[("retry-after",)])
        with pytest.raises(TypeError):
            lease.report(429, headers=5)
        with pytest.raises(ValueError):
            lease.report(200, tokens=-1)
    assert pool.status()["keys"][0]["success"] == 1  # nothing recorded: success
    pool.close()


def test_http_outcomes_are_mapped_in_the_extension(secrets, monkeypatch):
    # With keymesh._ext, report(), fail(exc), an exception leaving a lease
    # and _release_http() (keymesh.httpx) map the answer in C; the ctypes
    # fallback goes through keymesh.outcome_from_http.  Same outcomes.
    from keymesh import _pool
    calls = []
    real = _pool.outcome_from_http

    def spy(*a, **kw):
        calls.append(a[0])
        return real(*a, **kw)
    monkeypatch.setattr(_pool, "outcome_from_http", spy)

    class Limited(Exception):
        status_code = 429
        headers = {"retry-after": "20"}

    pool = SyncKeyPool(keys=secrets[:4], strategy="round_robin")
    ids = []
    with pool.lease() as lease:
        lease.report(429, headers={"retry-after": "20"})
        ids.append(lease.key_id)
    lease = pool.lease().__enter__()
    ids.append(lease.key_id)
    lease.fail(Limited())
    with pytest.raises(Limited):
        with pool.lease() as lease:
            ids.append(lease.key_id)
            raise Limited()
    lease = pool.lease().__enter__()
    ids.append(lease.key_id)
    lease.usage(input_tokens=3, output_tokens=4)
    assert lease._release_http(429, [(b"retry-after", b"20")], b"") == L.OUT_RATE_LIMITED
    keys = {x["id"]: x for x in pool.status()["keys"]}
    for kid in ids:
        assert keys[kid]["rate_limited"] == 1 and keys[kid]["state"] == "cooling"
        assert 18000 <= keys[kid]["cooldown_remaining_ms"] <= 20000
    if keymesh.implementation() == "c-extension":
        assert calls == []
    else:
        assert calls == [429, 429, 429, 200, 429]  # usage() maps a 200
    pool.close()
