"""KeyPool (asyncio): a free key without a thread; no free key: a helper
thread asleep in km_acquire_wait, woken by the release that frees one (in
another process too), never a polling loop, or on a loop where nothing
else can run the loop's own thread asleep there; cancellation never
leaks."""
import asyncio
import os
import struct
import threading
import time

import pytest

from keymesh import KeyPool, NoAvailableKeyError, SyncKeyPool
from keymesh import _lib as L

from conftest import cfg


def run(coro):
    return asyncio.run(coro)


def waiters():
    return [t for t in threading.enumerate() if t.name == "keymesh-wait"]


def test_free_key_needs_no_thread(secrets):
    async def main():
        pool = KeyPool(keys=secrets[:2])
        n = threading.active_count()
        k = await pool.acquire()
        assert k in secrets and threading.active_count() == n
        await pool.release(k)
        async with pool.lease() as lease:
            assert lease.key in secrets
        assert pool.status()["inflight"] == 0
        await pool.close()
    run(main())


def test_woken_by_a_release_in_another_process(seg, secrets):
    name = seg("wake")
    pool = KeyPool.create(name, cfg(secrets[:1], max_inflight=1), acquire_timeout=10)
    pid, r = _held_by_child(name, 0.5)

    async def main():
        ticks = 0
        stop = False

        async def ticker():
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0.01)

        tt = asyncio.create_task(ticker())
        t0 = time.monotonic()
        k = await pool.acquire()
        got = L.lib.km_now_ns()
        waited = time.monotonic() - t0
        stop = True
        await tt
        return k, got, waited, ticks

    k, got, waited, ticks = run(main())
    released = struct.unpack("Q", os.read(r, 8))[0]
    os.waitpid(pid, 0)
    assert k == secrets[0] and 0.3 <= waited < 5
    assert ticks >= 20                     # the loop ran while we waited
    assert got >= released and got - released < 200_000_000, (got - released) / 1e6
    pool._release_key(k)
    pool._close()


def test_waiting_thread_sleeps_not_polls(seg, secrets):
    name = seg("poll")
    pool = KeyPool.create(name, cfg(secrets[:1], max_inflight=1), acquire_timeout=10)
    holder = SyncKeyPool.open(name)
    held = holder.acquire()

    async def main():
        task = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0.3)
        assert len(waiters()) == 1
        assert pool.status()["waiters"] == 1   # asleep on the segment's futex
        holder.release(held)
        return await asyncio.wait_for(task, 5)

    k = run(main())
    assert k == secrets[0]
    pool._release_key(k)
    time.sleep(0.05)
    assert not waiters()
    holder.close()
    pool._close()


@pytest.mark.parametrize("when", ["while asleep", "as the key comes back"])
def test_cancel_never_leaks_a_lease(seg, secrets, kmctl, when):
    import subprocess
    name = seg("cancel")
    pool = KeyPool.create(name, cfg(secrets[:1], max_inflight=1), acquire_timeout=10)
    holder = SyncKeyPool.open(name)
    held = holder.acquire()

    async def main():
        task = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0.2)
        if when == "as the key comes back":
            holder.release(held)   # the helper thread may take it ...
            task.cancel()          # ... for a task that gave up
        else:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if when == "while asleep":
            holder.release(held)

    run(main())
    deadline = time.monotonic() + 3
    while (waiters() or pool.status()["inflight"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    st = pool.status()
    assert not waiters() and st["inflight"] == 0 and st["held_here"] == 0
    assert st["keys"][0]["success"] == 1 and st["keys"][0]["cancelled"] <= 1
    out = subprocess.run([kmctl, "check", name], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert holder.acquire(timeout=0) == secrets[0]   # the key is free again
    holder.close()
    pool._close()


def test_timeout_and_lease_wait(seg, secrets):
    name = seg("tmo")
    pool = KeyPool.create(name, cfg(secrets[:1], max_inflight=1), acquire_timeout=10)

    async def main():
        k = await pool.acquire()
        t = time.monotonic()
        with pytest.raises(NoAvailableKeyError):
            await pool.acquire(timeout=0.2)
        assert 0.15 <= time.monotonic() - t < 1.5
        with pytest.raises(NoAvailableKeyError):
            await pool.acquire(timeout=0)

        async def later():
            await asyncio.sleep(0.2)
            await pool.release(k)
        rel = asyncio.create_task(later())
        async with pool.lease(timeout=5) as lease:
            assert lease.key == secrets[0]
        await rel
        assert pool.status()["inflight"] == 0
        await pool.close()
    run(main())


def test_many_tasks_share_few_keys(seg, secrets):
    name = seg("many")
    pool = KeyPool.create(name, cfg(secrets[:2], max_inflight=1), acquire_timeout=10)

    async def main():
        peak = cur = 0

        async def job():
            nonlocal peak, cur
            async with pool.lease() as lease:
                cur += 1
                peak = max(peak, cur)
                await asyncio.sleep(0.005)
                cur -= 1
                return lease.key_id
        ids = await asyncio.gather(*(job() for _ in range(30)))
        assert peak == 2 and sorted(set(ids)) == ["k1", "k2"]
        st = pool.status()
        assert st["inflight"] == 0 and sum(k["success"] for k in st["keys"]) == 30
        await pool.close()
    run(main())


def test_waited_lease_carries_wake_stamps(seg, secrets):
    # keymesh._ext stamps a lease a blocking wait got: when km_acquire_wait
    # returned and when the thread held the GIL again (bench/py splits the
    # wake-up latency with them); a lease got at once has none.  The ctypes
    # leases have no stamps.
    from keymesh import implementation
    from keymesh._pool import _aacquire
    ext = implementation() == "c-extension"

    async def main():
        pool = KeyPool.create(seg("stamps"), cfg(secrets[:1], max_inflight=1),
                              acquire_timeout=5)
        first = await _aacquire(pool, None, None, 0, None, None, False)
        assert getattr(first, "_wait_stamps", None) == ((0, 0) if ext else None)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, first.release)
        before = L.lib.km_now_ns()
        second = await _aacquire(pool, None, None, 0, None, None, False)
        after = L.lib.km_now_ns()
        if ext:
            woke, gil = second._wait_stamps
            assert before < woke <= gil <= after
        else:
            assert not hasattr(second, "_wait_stamps")
        second.release()
        await pool.close()
    run(main())


def _held_by_child(name, hold_s):
    """A child process that takes the pool's one key, says so, and releases
    it after hold_s: its pid and a pipe giving b"H", then the release's
    km_now_ns."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            p = SyncKeyPool.open(name)
            k = p.acquire()
            os.write(w, b"H")
            time.sleep(hold_s)
            os.write(w, struct.pack("Q", L.lib.km_now_ns()))
            p.release(k)
            p.close()
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"H"
    return pid, r


def _alone():
    """Wait for threads of earlier tests (helpers ending, a provider) to
    end: the idle-loop path needs this thread alone."""
    deadline = time.monotonic() + 5
    while threading.active_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == 1, threading.enumerate()


def _idle_rig(name, secrets, monkeypatch, hold_s):
    """A pool of one key that a child process holds for hold_s, this
    thread alone, and the list that each helper thread started appends to:
    (pool, child pid, the child's pipe, that list)."""
    from keymesh import _pool
    helpers = []
    real = _pool._wait_thread
    monkeypatch.setattr(_pool, "_wait_thread", lambda *a: (helpers.append(1), real(*a)))
    pool = KeyPool.create(name, cfg(secrets[:1], max_inflight=1), acquire_timeout=10)
    pid, r = _held_by_child(name, hold_s)
    _alone()
    return pool, pid, r, helpers


def test_idle_loop_waits_in_its_own_thread(seg, secrets, monkeypatch):
    # Nothing else on the loop (no timer, no socket, no other thread): the
    # loop's thread itself sleeps in km_acquire_wait, no helper thread (one
    # thread switch less between the release and the task).
    pool, pid, r, helpers = _idle_rig(seg("idle"), secrets, monkeypatch, 0.3)

    async def main():
        t0 = time.monotonic()
        k = await pool.acquire()
        return k, L.lib.km_now_ns(), time.monotonic() - t0

    k, got, waited = run(main())
    released = struct.unpack("Q", os.read(r, 8))[0]
    os.waitpid(pid, 0)
    assert k == secrets[0] and 0.2 <= waited < 5 and helpers == []
    assert got >= released and got - released < 200_000_000, (got - released) / 1e6
    pool._release_key(k)
    pool._close()


def test_idle_loop_wait_gives_way_to_a_signal(seg, secrets, monkeypatch):
    # A signal handler (loop.add_signal_handler) that runs during the idle
    # wait makes the loop busy: the wait gives the loop back within
    # IDLE_CHUNK_MS and goes on in the helper thread; the handler runs long
    # before the key comes back.
    import signal
    pool, pid, r, helpers = _idle_rig(seg("idlesig"), secrets, monkeypatch, 1.5)

    async def main():
        loop = asyncio.get_running_loop()
        ran = []
        loop.add_signal_handler(signal.SIGALRM, lambda: ran.append(time.monotonic()))
        t0 = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        try:
            k = await pool.acquire()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            loop.remove_signal_handler(signal.SIGALRM)
        return k, [t - t0 for t in ran], time.monotonic() - t0

    k, ran, waited = run(main())
    os.read(r, 8)
    os.waitpid(pid, 0)
    assert (k, helpers) == (secrets[0], [1]) and waited >= 1.2, waited
    assert len(ran) == 1 and ran[0] < 0.1 + 0.5, ran   # a chunk is 20 ms
    pool._release_key(k)
    pool._close()


def test_idle_wait_lets_the_rest_of_the_batch_run(seg, secrets):
    # Tasks made ready together run one after the other: one that finds no
    # key must not sleep in the loop's thread while another of the batch,
    # still to run, would release one (it is in loop._ready until then).
    name = seg("batch")
    pool = KeyPool.create(name, cfg(secrets[:1], max_inflight=1), acquire_timeout=5)
    _alone()

    async def main():
        k = await pool.acquire()

        async def give_back():
            await pool.release(k)
        t0 = time.monotonic()
        got, _ = await asyncio.gather(pool.acquire(), give_back())
        return got, time.monotonic() - t0

    got, took = run(main())
    assert got == secrets[0] and took < 1, took
    pool._release_key(got)
    pool._close()
