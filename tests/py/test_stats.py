"""pool.stats() (keymesh._stats, issue 13 item 1): the C API's statistics
of the pool a pool object is bound to, with the field names and units of
`kmctl stats --json`.  Workers (threads, or forked processes) do a known
number of acquires and releases with known outcomes and tokens; stats()
must count exactly that.  Windows agree with their limits, a cooling key
shows its cooldown, no secret appears, and a pool's stats() equals kmctl's
for the same segment field by field.  t_py.sh runs this file on the C
extension and on ctypes."""
import asyncio
import json
import os
import subprocess
import threading
import time

import pytest

import keymesh
from keymesh import KeyMeshError, KeyPool, SyncKeyPool
from keymesh import _lib as L
from keymesh import _stats

from conftest import SECRETS, cfg, no_secret

OUTCOME_FIELDS = ("success", "rate_limited", "failure", "auth", "quota", "cancelled")
COUNTER_FIELDS = ("requests",) + OUTCOME_FIELDS + ("abandoned", "stale_releases", "tokens")
POOL_FIELDS = ("segment", "taken_unix_ms", "name", "strategy", "model_limits", "keys_total",
               "keys_by_state", "inflight", "max_inflight", "waiters", "counters",
               "latency_ema_us", "success_rate", "spent_usd", "budget_usd", "budget_hard",
               "budget_period", "budget_tz", "prev_spent_usd", "period_end_unix_ms",
               "budget_warnings", "budget_over", "windows", "models", "keys")
KEY_FIELDS = ("id", "state", "weight", "cooldown_remaining_ms", "inflight", "max_inflight",
              "consecutive_failures", "consecutive_429s", "latency_ema_us", "success_rate",
              "counters", "windows", "spent_usd", "budget_usd", "budget_hard", "budget_period",
              "budget_tz", "prev_spent_usd", "period_end_unix_ms", "budget_warnings",
              "budget_over", "models")


def masked_forms():
    return [L.mask(s) for s in SECRETS] + [s[-8:] for s in SECRETS]


def assert_no_secret(st):
    text = repr(st) + json.dumps(st)
    assert no_secret(text), "a secret in stats()"
    assert not any(m in text for m in masked_forms()), "a masked secret in stats()"


def kmctl_stats(kmctl, name, *args):
    r = subprocess.run([kmctl, "stats", name, "--json"] + list(args),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert no_secret(r.stdout + r.stderr)
    return json.loads(r.stdout)


# ------------------------------------------------------------- counters

def work(pool, plan, ids):
    """Do `plan` (a list of (outcome, tokens)) on `pool`; what was done,
    per key id: {id: {"requests", "success", "rate_limited", "failure",
    "tokens"}}."""
    done = {}
    for outcome, tokens in plan:
        k = pool.acquire(timeout=10)
        d = done.setdefault(ids[k], {"requests": 0, "success": 0, "rate_limited": 0,
                                     "failure": 0, "tokens": 0})
        d["requests"] += 1
        if outcome == "success":
            pool.release(k, 0.002, tokens=tokens)
            d["tokens"] += tokens
        elif outcome == "rate_limited":
            # 1 ms of cooldown: the key is free again at once, so every
            # worker keeps getting keys and nothing waits.
            pool.mark_rate_limited(k, cooldown=0.001)
        else:
            pool.mark_failed(k)
        d[outcome] += 1
    return done


def plan_of(worker, n):
    out = []
    for i in range(n):
        r = (i + worker) % 10
        if r < 7:
            out.append(("success", 10 + (i % 7) + worker))
        elif r < 9:
            out.append(("rate_limited", 0))
        else:
            out.append(("failure", 0))
    return out


def merge(into, done):
    for kid, d in done.items():
        t = into.setdefault(kid, dict.fromkeys(d, 0))
        for f, v in d.items():
            t[f] += v


@pytest.mark.parametrize("how", ["threads", "processes"])
def test_counters_equal_what_the_workers_did(seg, secrets, how):
    name = seg("cnt")
    keys = secrets[:3]
    ids = {s: "k%d" % (i + 1) for i, s in enumerate(keys)}
    # max_failures high: failures must not cool a key (that would only
    # make the workers wait, not change what is counted).
    pool = SyncKeyPool.create(name, cfg(keys, max_failures=100000))
    workers, n = 4, 150
    expected = {}
    if how == "threads":
        results = [None] * workers

        def run(w):
            results[w] = work(pool, plan_of(w, n), ids)
        ts = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for r in results:
            merge(expected, r)
    else:
        pids = []
        for w in range(workers):
            r, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(r)
                    done = work(pool, plan_of(w, n), ids)
                    pool.close()
                    os.write(wfd, json.dumps(done).encode())
                    code = 0
                finally:
                    os._exit(code)
            os.close(wfd)
            pids.append((pid, r))
        for pid, r in pids:
            data = b""
            while True:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
            os.close(r)
            _, status = os.waitpid(pid, 0)
            assert status == 0 and data, "worker %d failed" % pid
            merge(expected, json.loads(data))

    time.sleep(0.05)   # the last 429's millisecond of cooldown is over
    st = pool.stats()
    assert_no_secret(st)
    assert tuple(st) == POOL_FIELDS
    assert st["segment"] == name and st["name"] == "p" and st["keys_total"] == 3
    assert sorted(st["keys"]) == ["k1", "k2", "k3"]
    total = dict.fromkeys(COUNTER_FIELDS, 0)
    for kid, k in st["keys"].items():
        assert tuple(k) == KEY_FIELDS and k["id"] == kid
        want = expected.get(kid, {})
        got = k["counters"]
        assert tuple(got) == COUNTER_FIELDS
        for f in ("requests", "success", "rate_limited", "failure", "tokens"):
            assert got[f] == want.get(f, 0), (kid, f, got, want)
        for f in ("auth", "quota", "cancelled", "abandoned", "stale_releases"):
            assert got[f] == 0, (kid, f, got)
        assert k["inflight"] == 0
        assert k["state"] == "active" and k["cooldown_remaining_ms"] == 0, k
        for f in COUNTER_FIELDS:
            total[f] += got[f]
    assert total["requests"] == workers * n
    assert st["counters"] == total
    assert st["inflight"] == 0 and st["waiters"] == 0
    assert st["keys_by_state"]["active"] == 3 and sum(st["keys_by_state"].values()) == 3
    # Latency: every success reported 2 ms.
    assert st["latency_ema_us"] == pytest.approx(2000, rel=0.01)
    assert 0.0 < st["success_rate"] <= 1.0
    pool.close()


# -------------------------------------------------------------- windows

def test_windows_used_and_left_agree_with_the_limits(seg, secrets):
    name = seg("win")
    limits = {"rpm": 10, "tpm": 1000, "rph": {"limit": 100, "mode": "sliding"}}
    pool = SyncKeyPool.create(name, cfg(secrets[:1], limits=limits))
    t0 = time.monotonic()
    for _ in range(4):
        with pool.lease(estimated_tokens=100) as lease:
            lease.usage(tokens=100)
    st = pool.stats()
    elapsed = time.monotonic() - t0 + 1.0
    w = st["keys"]["k1"]["windows"]
    assert sorted(w) == ["rph", "rpm", "tpm"]   # only the windows that have a limit
    for wname, x in w.items():
        assert tuple(x) == ("limit", "burst", "mode", "period_s", "used", "left", "full_in_ms")
        assert x["used"] + x["left"] == x["burst"], (wname, x)
        assert 0 <= x["used"] <= x["burst"] and x["burst"] <= x["limit"]
    rpm, tpm, rph = w["rpm"], w["tpm"], w["rph"]
    assert (rpm["limit"], rpm["mode"], rpm["period_s"]) == (10, "token_bucket", 60)
    assert (rph["limit"], rph["mode"], rph["period_s"]) == (100, "sliding", 3600)
    assert (tpm["limit"], tpm["period_s"]) == (1000, 60)
    # rpm refills one request per 6 s, tpm ~17 tokens/s: 4 requests and
    # 400 tokens are held, less what refilled since.
    assert rpm["used"] == 4 and rpm["left"] == rpm["burst"] - 4
    assert 400 - 17 * elapsed <= tpm["used"] <= 400
    # sliding: left never exceeds the burst (limit/10 by default).
    assert rph["burst"] == 10 and rph["used"] == 4 and rph["left"] == 6
    # full_in_ms: used x the emission interval (6000 ms per request).
    assert 24000 - 1000 * elapsed <= rpm["full_in_ms"] <= 24000
    # The pool sums its keys' windows and says how many keys have each.
    pw = st["windows"]
    assert pw["rpm"]["keys"] == 1 and pw["rpm"]["used"] == 4 and pw["rpm"]["limit"] == 10
    assert st["counters"]["tokens"] == 400 and st["counters"]["success"] == 4
    assert_no_secret(st)
    pool.close()


def test_per_model_windows_and_filters(seg, secrets):
    name = seg("mod")
    config = cfg(secrets[:2], model_limits="per_model",
                 models={"m1": {"rpm": 5}, "m2": {}})
    pool = SyncKeyPool.create(name, config)
    for _ in range(3):
        with pool.lease(model="m1", key_id="k1"):
            pass
    with pool.lease(model="m2", key_id="k2"):
        pass
    st = pool.stats()
    assert st["model_limits"] == "per_model"
    assert list(st["models"]) == ["m1", "m2"]
    m1 = st["models"]["m1"]
    assert m1["name"] == "m1" and m1["counters"]["requests"] == 3   # counted per key x model
    assert m1["counters"]["success"] == 3 and st["models"]["m2"]["counters"]["requests"] == 1
    assert m1["windows"]["rpm"]["keys"] == 2 and m1["windows"]["rpm"]["limit"] == 10
    assert m1["windows"]["rpm"]["used"] == 3
    assert st["models"]["m2"]["windows"] == {}
    k1m1 = st["keys"]["k1"]["models"]["m1"]["windows"]["rpm"]
    k2m1 = st["keys"]["k2"]["models"]["m1"]["windows"]["rpm"]
    assert (k1m1["limit"], k1m1["used"], k1m1["left"]) == (5, 3, 2)
    assert "keys" not in k1m1   # one key: not a sum
    assert (k2m1["used"], k2m1["left"]) == (0, 5)
    assert st["keys"]["k1"]["counters"]["requests"] == 3
    assert st["keys"]["k2"]["counters"]["requests"] == 1
    assert st["keys"]["k1"]["models"]["m1"]["counters"]["requests"] == 3
    assert st["keys"]["k1"]["models"]["m2"]["counters"]["requests"] == 0
    assert st["keys"]["k2"]["models"]["m2"]["counters"]["requests"] == 1

    # Filters: only that key / model; the pool's own numbers stay whole.
    only = pool.stats(key="k2")
    assert list(only["keys"]) == ["k2"] and only["counters"] == st["counters"]
    only = pool.stats(model="m1")
    assert list(only["models"]) == ["m1"]
    assert all(list(k["models"]) == ["m1"] for k in only["keys"].values())
    both = pool.stats(key="k1", model="m2")
    assert list(both["keys"]) == ["k1"] and list(both["keys"]["k1"]["models"]) == ["m2"]
    with pytest.raises(KeyError) as e:
        pool.stats(key="nope")
    assert e.value.code == L.ENOKEY and "nope" in str(e.value)
    with pytest.raises(KeyMeshError) as e:
        pool.stats(model="nope")
    assert e.value.code == L.ENOMODEL and "nope" in str(e.value)
    assert_no_secret(st)
    pool.close()


# --------------------------------------------------------------- cooling

def test_cooling_key_shows_its_cooldown(secrets):
    pool = SyncKeyPool(keys=secrets[:2])   # a private pool (memfd)
    assert pool.segment.startswith("private:")
    got = {pool.acquire(), pool.acquire()}
    cooled, other = sorted(got)
    pool.mark_rate_limited(cooled, cooldown=30)
    pool.release(other)
    st = pool.stats()
    by_state = {k["state"]: k for k in st["keys"].values()}
    assert set(by_state) == {"cooling", "active"}
    c = by_state["cooling"]
    assert 25000 < c["cooldown_remaining_ms"] <= 30000
    assert c["consecutive_429s"] == 1 and c["counters"]["rate_limited"] == 1
    assert by_state["active"]["cooldown_remaining_ms"] == 0
    assert st["keys_by_state"]["cooling"] == 1 and st["keys_by_state"]["active"] == 1
    assert st["segment"] == pool.segment and st["name"] == "default"
    assert_no_secret(st)
    pool.close()


# ------------------------------------------------- named segment, asyncio

def test_named_segment_from_both_classes(seg, secrets):
    name = seg("named")
    owner = SyncKeyPool.create(name, cfg(secrets[:2], limits={"rpd": 1000}))
    other = SyncKeyPool.open(name, "p")
    with other.lease(key_id="k2") as lease:
        lease.usage(tokens=7)

    async def main():
        apool = KeyPool.open(name, "p")
        async with apool.lease(key_id="k1") as lease:
            lease.usage(tokens=5)
        st = apool.stats()   # a plain method: no await
        await apool.close()
        return st
    ast = asyncio.run(main())
    st = owner.stats()
    for s in (ast, st):
        assert s["segment"] == name and s["counters"]["requests"] == 2
        assert s["counters"]["tokens"] == 12
        assert s["keys"]["k1"]["counters"]["tokens"] == 5
        assert s["keys"]["k2"]["counters"]["tokens"] == 7
        assert s["windows"]["rpd"]["used"] == 2 and s["windows"]["rpd"]["keys"] == 2
        assert_no_secret(s)
    other.close()
    owner.close()
    with pytest.raises(KeyMeshError):
        owner.stats()   # closed


# ------------------------------------------------------- against kmctl

def approx_equal(a, b, path=""):
    """a == b, but floats to 1e-9 relative (kmctl prints 15 digits) and
    the time-driven fields within a few seconds."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (path, list(a), list(b))
        for k in a:
            approx_equal(a[k], b[k], path + "." + k)
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (path, a, b)
    elif path.endswith((".full_in_ms", ".cooldown_remaining_ms")):
        assert abs(a - b) <= 5000, (path, a, b)
    else:
        assert a == b, (path, a, b)


def as_python_shape(p):
    """kmctl's pool object with the lists as stats() has them: keys and
    models by id and name."""
    p = dict(p)
    p["models"] = {m["name"]: m for m in p["models"]}
    keys = {}
    for k in p["keys"]:
        k = dict(k)
        k["models"] = {m["name"]: m for m in k["models"]}
        keys[k["id"]] = k
    p["keys"] = keys
    return p


def test_stats_equal_kmctl_stats_json(seg, secrets, kmctl):
    name = seg("kmctl")
    config = cfg(secrets[:3], limits={"rpd": 1000, "tpd": {"limit": 100000, "mode": "sliding"}},
                 max_failures=1000, model_limits="per_model",
                 models={"m1": {"rpd": 50}, "m2": {}},
                 price={"input_per_1k": 0.5, "output_per_1k": 1.5},
                 budget={"usd": 100.0, "mode": "hard", "period": "month", "tz": "+02:00"})
    pool = SyncKeyPool.create(name, config)
    for i in range(9):
        with pool.lease(model="m1" if i % 2 else "m2", key_id="k%d" % (i % 3 + 1),
                        estimated_tokens=50) as lease:
            lease.usage(input_tokens=20 + i, output_tokens=10)
    pool.mark_failed(pool.acquire(key_id="k2"))
    pool.mark_rate_limited(pool.acquire(key_id="k3"), cooldown=60)
    held = pool.acquire(key_id="k1")           # one lease in flight

    mine = pool.stats()
    doc = kmctl_stats(kmctl, name)
    assert doc["kind"] == "stats" and doc["segment"] == name
    assert len(doc["pools"]) == 1
    theirs = as_python_shape(doc["pools"][0])
    assert abs(mine["taken_unix_ms"] - doc["taken_unix_ms"]) < 60000
    extra = [f for f in mine if f not in theirs]
    assert extra == ["segment", "taken_unix_ms"]
    approx_equal({k: v for k, v in mine.items() if k not in extra}, theirs)
    # The same numbers as kmctl and something to compare: not all zero.
    assert mine["inflight"] == 1 and mine["keys_by_state"]["cooling"] == 1
    assert mine["keys"]["k3"]["cooldown_remaining_ms"] > 0
    assert mine["spent_usd"] > 0 and mine["budget_usd"] == 100.0 and mine["budget_hard"] is True
    # The budget's period (issue 18), as kmctl shows it.
    assert (mine["budget_period"], mine["budget_tz"]) == ("month", "+02:00")
    assert mine["prev_spent_usd"] == 0 and mine["budget_warnings"] == 0
    assert mine["period_end_unix_ms"] > mine["taken_unix_ms"] and mine["budget_over"] is False
    assert mine["keys"]["k1"]["budget_period"] is None
    assert mine["keys"]["k1"]["models"]["m1"]["windows"]["rpd"]["limit"] == 50

    # Filters, as kmctl's --key and --model.
    mk = pool.stats(key="k2", model="m1")
    tk = as_python_shape(kmctl_stats(kmctl, name, "--key", "k2", "--model", "m1")["pools"][0])
    approx_equal({k: v for k, v in mk.items() if k not in extra}, tk)
    pool.release(held)
    pool.close()


# ---------------------------------------------------------- the binding

def test_budget_in_a_named_zone_shown_by_name(seg, secrets, kmctl):
    # A budget in a named time zone: stats() and kmctl name the zone as
    # configured (km_budget_tz), not the offset in force.
    name = seg("tzname")
    config = cfg(secrets[:1], price={"input_per_1k": 0.5, "output_per_1k": 1.5},
                 budget={"usd": 100.0, "period": "day", "tz": "Europe/Paris"})
    pool = SyncKeyPool.create(name, config)
    mine = pool.stats()
    assert (mine["budget_period"], mine["budget_tz"]) == ("day", "Europe/Paris")
    theirs = kmctl_stats(kmctl, name)["pools"][0]
    assert theirs["budget_tz"] == "Europe/Paris"
    assert mine["period_end_unix_ms"] == theirs["period_end_unix_ms"]
    pool.close()


def test_struct_sizes_agree_with_the_library():
    dll = L.lib.load()
    assert _stats.size_mismatches(dll) == []
    assert set(_stats.STRUCTS) == set(_stats.STRUCT_IDS)
    # keymesh.h's KM_ST_* ids: 15..19, one each.
    assert sorted(_stats.STRUCT_IDS.values()) == [15, 16, 17, 18, 19]
    # Another library: a longer km_key_stats is passed by its size (fields
    # are only appended), an embedded struct of another size is refused.
    sizes = _stats.library_sizes(dll)
    grown = dict(sizes, km_key_stats=sizes["km_key_stats"] + 16)
    assert _stats.size_mismatches(dll, grown) == [
        "km_key_stats: %d bytes in libkeymesh, %d in this binding"
        % (sizes["km_key_stats"] + 16, sizes["km_key_stats"])]
    assert _stats.size_mismatches(dll, grown, fatal_only=True) == []
    other = dict(grown, km_window_stats=56)
    assert _stats.size_mismatches(dll, other, fatal_only=True) == [
        "km_window_stats: 56 bytes in libkeymesh, 48 in this binding"]
    assert _stats.size_mismatches(dll, {}) == [
        "km_struct_size: missing (a libkeymesh older than this binding)"]


def test_stats_is_not_on_the_hot_path():
    # stats() is a method of the shared core (one for both classes), read
    # through ctypes whichever implementation runs the hot path.
    assert SyncKeyPool.stats is KeyPool.stats
    assert "Not the hot path" in (SyncKeyPool.stats.__doc__ or "")
    assert keymesh.implementation() in ("c-extension", "ctypes")


def test_type_hints_name_every_field(secrets):
    # keymesh._stats' TypedDicts (the package is py.typed) list the fields
    # stats() returns, in its order.
    pool = SyncKeyPool(keys=secrets[:1])
    st = pool.stats()
    assert tuple(_stats.PoolStatsDict.__annotations__) == tuple(st) == POOL_FIELDS
    k = st["keys"]["key-1"]
    assert tuple(_stats.KeyDict.__annotations__) == tuple(k) == KEY_FIELDS
    assert tuple(_stats.CountersDict.__annotations__) == tuple(k["counters"]) == COUNTER_FIELDS
    pool.close()
