"""Behaviours of the in-process Python key pool (the KeyMesh Python library
whose API SyncKeyPool/KeyPool mirror) that code switching over relies on,
tested on the binding with our own tests."""
import asyncio
import json
import os
import time

import pytest

import keymesh

from keymesh import (JSONStorage, KeyExhaustedError, KeyMeshError, KeyPool,
                     NoAvailableKeyError, SchedulerStrategy, SegmentRemovedError, SyncKeyPool,
                     unlink)

from conftest import cfg, no_secret

KEYS = ["sk-key-aaa111", "sk-key-bbb222", "sk-key-ccc333"]


def test_status_and_available_count_are_plain_methods_on_both():
    sp = SyncKeyPool(keys=KEYS)
    ap = KeyPool(keys=KEYS)
    for p in (sp, ap):
        st = p.status()
        assert isinstance(st, dict) and isinstance(p.available_count(), int)
        assert p.available_count() == 3
        assert {"pool_metrics", "keys", "scheduler"} <= set(st)
        assert len(st["keys"]) == 3
    sp.close()
    asyncio.run(ap.close())


def test_pool_metrics_count_every_outcome():
    pool = SyncKeyPool(keys=KEYS, strategy="round_robin", max_failures=5)
    pool.release(pool.acquire(), latency=0.3)
    pool.mark_failed(pool.acquire())
    pool.mark_rate_limited(pool.acquire(), cooldown=9999)
    m = pool.status()["pool_metrics"]
    assert m["total_acquires"] == 3 and m["total_releases"] == 1
    assert m["total_failures"] == 1 and m["total_rate_limited"] == 1
    assert m["in_flight"] == 0
    pool.close()


def test_per_key_health_and_last_used():
    pool = SyncKeyPool(keys=KEYS, strategy="round_robin", max_failures=5)
    before = time.monotonic()
    k = pool.acquire()
    pool.release(k, latency=1.0)
    after = time.monotonic()
    keys = pool.status()["keys"]
    used = [x for x in keys if x["success_count"] == 1]
    assert len(used) == 1
    u = used[0]
    assert before - 0.01 <= u["last_used"] <= after + 0.01
    assert u["health_score"] == pytest.approx(0.5, abs=0.01)   # 1 / (1 + 1 s)
    assert u["latency_avg"] == pytest.approx(1.0)
    fresh = [x for x in keys if x["success_count"] == 0]
    assert all(x["health_score"] == 1.0 and x["last_used"] == 0.0 for x in fresh)
    pool.mark_rate_limited(pool.acquire(key_id=u["id"]), cooldown=9999)
    u2 = [x for x in pool.status()["keys"] if x["id"] == u["id"]][0]
    assert u2["health_score"] == 0.0 and not u2["is_available"]   # cooling
    assert no_secret(json.dumps(pool.status()))
    pool.close()


def test_rate_limited_key_leaves_the_rotation():
    pool = SyncKeyPool(keys=KEYS, strategy=SchedulerStrategy.ROUND_ROBIN)
    k = pool.acquire()
    pool.mark_rate_limited(k, cooldown=9999.0)
    assert pool.available_count() == 2
    for _ in range(6):
        x = pool.acquire()
        assert x != k
        pool.release(x)
    pool.close()


def test_a_429_clears_the_failure_streak():
    pool = SyncKeyPool(keys=["sk-key-streak01"], max_failures=3, acquire_timeout=0.1)
    held = [pool.acquire() for _ in range(3)]   # one key, three leases out
    pool.mark_failed(held[0])
    pool.mark_failed(held[1])
    assert pool.status()["keys"][0]["consecutive_failures"] == 2
    pool.mark_rate_limited(held[2], cooldown=0.05)
    k = pool.status()["keys"][0]
    assert k["consecutive_failures"] == 0 and k["consecutive_429s"] == 1
    pool.close()


def test_all_keys_cooling_no_available_key():
    pool = SyncKeyPool(keys=KEYS, acquire_timeout=0.1)
    for _ in KEYS:
        pool.mark_rate_limited(pool.acquire(), cooldown=9999.0)
    with pytest.raises(NoAvailableKeyError):
        pool.acquire()
    pool.close()


def test_add_key_of_a_known_secret_resets_it_never_a_second_key():
    pool = SyncKeyPool(keys=KEYS, strategy="round_robin", acquire_timeout=0.1)
    k = pool.acquire()
    pool.mark_rate_limited(k, cooldown=9999)
    assert pool.available_count() == 2
    kid = pool.add_key(k)
    st = pool.status()
    assert st["total_keys"] == 3 and pool.available_count() == 3
    assert [x for x in st["keys"] if x["id"] == kid][0]["state"] == "active"
    nid = pool.add_key("sk-key-new444")
    assert pool.status()["total_keys"] == 4 and pool.add_key("sk-key-new444") == nid
    assert pool.status()["total_keys"] == 4
    with pytest.raises(KeyMeshError) as e:
        pool.add_key(KEYS[0], id="other-id")
    assert e.value.errname == "EKEYEXISTS" and no_secret(str(e.value))
    pool.close()


def test_add_key_on_a_shared_pool_confirms_the_secret_by_a_lease(seg, secrets):
    name = seg("addk")
    creator = SyncKeyPool.create(name, cfg(secrets[:2], capacity=4))
    other = SyncKeyPool.open(name)   # knows no secret of its own
    other._known.clear()
    assert other.add_key(secrets[1]) == "k2"
    assert other.status()["total_keys"] == 2
    assert other.add_key(secrets[2]) not in ("k1", "k2")
    assert creator.status()["total_keys"] == 3
    other.close()
    creator.close()


def test_add_key_of_a_cooling_key_from_another_process_resets_it(seg, secrets):
    """The key cannot be leased (cooling), and the other process never saw
    its secret: found by km_key_find_secret, reset, never added twice."""
    name = seg("addcool")
    pool = SyncKeyPool.create(name, cfg(secrets[:2], capacity=4))
    k = pool.acquire(key_id="k1")
    pool.mark_rate_limited(k, cooldown=9999)
    assert pool.status()["total_keys"] == 2 and pool.available_count() == 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            other = SyncKeyPool.open(name)
            kid = other.add_key(secrets[0])
            other.close()
            os.write(w, kid.encode())
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 100).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert got == "k1"
    st = pool.status()
    assert st["total_keys"] == 2 and pool.available_count() == 2
    k1 = [x for x in st["keys"] if x["id"] == "k1"][0]
    assert k1["state"] == "active" and k1["cooldown_remaining_ms"] == 0
    pool.close()


def test_add_key_of_a_secret_in_another_pool_is_refused(seg, secrets):
    name = seg("addpq")
    c = cfg(secrets[:1])
    c["pools"].append({"name": "q", "keys": [{"id": "x", "secret": secrets[1]}]})
    pool = SyncKeyPool.create(name, c)
    q = SyncKeyPool.open(name, "q")
    with pytest.raises(KeyMeshError) as e:
        q.add_key(secrets[0])            # pool p's key: its limits twice
    assert e.value.errname == "EDUPSECRET" and no_secret(str(e.value))
    assert '"k1"' in str(e.value)        # names the key that holds it
    assert q.status()["total_keys"] == 1 and pool.status()["total_keys"] == 1
    q.close()
    pool.close()


def test_exhaust_on_max_failures_opt_in():
    pool = SyncKeyPool(keys=["key1"], max_failures=1, acquire_timeout=0.1,
                       exhaust_on_max_failures=True)
    k = pool.acquire()
    with pytest.raises(KeyExhaustedError):
        pool.mark_failed(k)
    with pytest.raises(NoAvailableKeyError):
        pool.acquire()
    assert pool.status()["keys"][0]["state"] == "exhausted"
    pool.add_key("key1")                       # re-admits it
    k2 = pool.acquire()
    assert k2 == "key1"
    pool.release(k2)
    pool.add_key("new_key_at_runtime")
    assert pool.available_count() == 2
    pool.close()


def test_exhaust_two_failures_and_default_cools_down():
    pool = SyncKeyPool(keys=["sk-only-key-xyz"], max_failures=2, exhaust_on_max_failures=True)
    key = pool.acquire()
    pool.mark_failed(key)                      # failure 1: no raise
    with pytest.raises(KeyExhaustedError):
        pool.mark_failed(key)                  # failure 2: exhausted
    pool.close()
    # The default keeps KeyMesh's cool-down-and-probe: no exception.
    pool = SyncKeyPool(keys=["sk-only-key-xyz"], max_failures=2, acquire_timeout=0.1)
    key = pool.acquire()
    pool.mark_failed(key)
    pool.mark_failed(key)
    assert pool.status()["keys"][0]["state"] == "cooling"
    pool.close()


def test_exhaust_in_async_pool():
    async def main():
        pool = KeyPool(keys=["key1"], max_failures=1, acquire_timeout=0.1,
                       exhaust_on_max_failures=True)
        k = await pool.acquire()
        with pytest.raises(KeyExhaustedError):
            await pool.mark_failed(k)
        with pytest.raises(NoAvailableKeyError):
            await pool.acquire()
        await pool.add_key("key1")
        assert await pool.acquire() == "key1"
        await pool.close()
    asyncio.run(main())


@pytest.mark.parametrize("text", ["Error code: 429 - too many", "Rate limit reached for gpt-4",
                                  "rate_limit_exceeded", "RateLimitError", "Too Many Requests"])
def test_lease_sees_a_rate_limit_in_exception_text(text):
    pool = SyncKeyPool(keys=KEYS[:2], max_failures=5)
    with pytest.raises(RuntimeError):
        with pool.lease() as lease:
            kid = lease.key_id
            raise RuntimeError(text)
    k = [x for x in pool.status()["keys"] if x["id"] == kid][0]
    assert k["rate_limited"] == 1 and k["failure"] == 0 and k["state"] == "cooling"
    pool.close()


@pytest.mark.parametrize("text", ["connection reset", "error 4290", "timeout after 1429 ms"])
def test_other_exception_text_is_a_failure(text):
    pool = SyncKeyPool(keys=KEYS[:2], max_failures=5)
    with pytest.raises(RuntimeError):
        with pool.lease() as lease:
            kid = lease.key_id
            raise RuntimeError(text)
    k = [x for x in pool.status()["keys"] if x["id"] == kid][0]
    assert k["rate_limited"] == 0 and k["failure"] == 1
    pool.close()


def test_unknown_key_is_a_key_error():
    pool = SyncKeyPool(keys=KEYS)
    with pytest.raises(KeyError):
        pool.mark_failed("sk-key-zzz999")
    with pytest.raises(KeyMeshError):
        pool.mark_rate_limited("sk-key-zzz999")
    pool.close()


def test_duplicate_secrets_refused():
    with pytest.raises(ValueError):
        SyncKeyPool(keys=["sk-key-aaa111", "sk-key-aaa111"])


def test_storage_json_state_file(tmp_path):
    path = tmp_path / "state.json"
    pool = SyncKeyPool(keys=KEYS, strategy="round_robin", storage=JSONStorage(path))
    for _ in range(3):
        pool.release(pool.acquire(), latency=0.2)
    k = pool.acquire()
    pool.mark_rate_limited(k, cooldown=600)
    added = pool.add_key("sk-key-ddd444")
    pool.close()
    text = path.read_text()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    for s in KEYS + ["sk-key-ddd444"]:
        assert s not in text                  # never in clear
    doc = json.loads(text)
    assert doc["keymesh_state"] == 1 and len(doc["keys"]) == 4
    # A new pool with the same keys takes the state back.
    again = SyncKeyPool(keys=KEYS, strategy="round_robin", storage=str(path))
    st = {x["id"]: x for x in again.status()["keys"]}
    assert sum(x["success"] for x in st.values()) == 3 and added in st
    cooling = [x for x in st.values() if x["state"] == "cooling"]
    assert len(cooling) == 1 and 590000 <= cooling[0]["cooldown_remaining_ms"] <= 600000
    assert again.add_key(k) == cooling[0]["id"]   # the secret is known again
    again.close()
    # Other keys: the file cannot be opened (sealed with the keys); fresh.
    other = SyncKeyPool(keys=["sk-key-xxx999"], storage=str(path))
    assert other.status()["total_keys"] == 1 and other.status()["keys"][0]["acquired"] == 0
    other.close()


def test_segment_removed_under_a_live_pool(seg, secrets):
    name = seg("gone")
    pool = SyncKeyPool.create(name, cfg(secrets[:2]))
    pool.release(pool.acquire())
    unlink(name)
    with pytest.raises(SegmentRemovedError) as e:
        pool.status()
    assert name in str(e.value) and isinstance(e.value, KeyMeshError)
    # the hot path notices within a second
    deadline = time.monotonic() + 3
    err = None
    while time.monotonic() < deadline:
        try:
            pool.release(pool.acquire())
        except SegmentRemovedError as x:
            err = x
            break
    assert err is not None
    with pytest.raises(SegmentRemovedError):
        SyncKeyPool.open(name)
    # a pool of the same name made anew is not mistaken for the old one
    fresh = SyncKeyPool.create(name, cfg(secrets[2:4]))
    with pytest.raises(SegmentRemovedError):
        pool.available_count()
    assert fresh.acquire() in secrets[2:4]
    pool.close()
    fresh.close()


def test_private_segment_cannot_be_removed_under_a_live_pool():
    # A private pool lives in a memfd (issue 17): it has no name in
    # /dev/shm that anyone could remove or replace under it.
    pool = SyncKeyPool(keys=KEYS)
    assert not os.path.exists("/dev/shm/" + pool.segment)
    with pytest.raises(KeyMeshError):
        keymesh.unlink(pool.segment)
    assert pool.status()["pool_metrics"]["total_releases"] == 0
    pool.close()   # never a crash, nothing raised


def test_open_without_a_pool_name_after_pool_0_was_removed(seg, secrets, kmctl):
    """The pool opened when none is named is the first one still in use:
    pool 0 until it is removed live (kmctl remove-pool), then the next."""
    import subprocess
    name = seg("first")
    c = cfg(secrets[:1])
    c["pools"].append({"name": "q", "keys": [{"id": "q1", "secret": secrets[1]}]})
    made = SyncKeyPool.create(name, c)
    assert SyncKeyPool.open(name).pool_name == "p"
    r = subprocess.run([kmctl, "remove-pool", name, "p"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pool = SyncKeyPool.open(name)
    assert pool.pool_name == "q" and pool.acquire() == secrets[1]
    pool.close()
    made.close()
