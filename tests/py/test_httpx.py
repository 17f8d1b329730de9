"""keymesh.httpx.KeyMeshAuth with Debian's python3-httpx against the mock
provider (tests/py/mockprovider.py) on 127.0.0.1."""
import asyncio

import httpx
import pytest

from keymesh import KeyPool, SyncKeyPool
from keymesh.httpx import KeyMeshAuth

from conftest import cfg, no_secret

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def by_id(pool):
    return {k["id"]: k for k in pool.status()["keys"]}


def test_sync_bearer_and_release(provider, secrets):
    pool = SyncKeyPool(keys=secrets[:2], strategy="round_robin")
    with httpx.Client(base_url=provider.url, auth=KeyMeshAuth(pool),
                      headers={"Authorization": "Bearer dummy"}) as c:
        for _ in range(4):
            r = c.post("/v1/chat/completions", json=BODY)
            assert r.status_code == 200 and r.json()["usage"]["total_tokens"] == 15
    assert sorted(provider.secrets_called()) == sorted(secrets[:2] * 2)
    assert all(c[1] == "authorization" for c in provider.calls)
    st = pool.status()
    assert st["inflight"] == 0 and [k["success"] for k in st["keys"]] == [2, 2]
    pool.close()


@pytest.mark.parametrize("kw,hname", [({"provider": "anthropic"}, "x-api-key"),
                                      ({"provider": "gemini"}, "x-goog-api-key"),
                                      ({"header": "x-api-key"}, "x-api-key"),
                                      ({"provider": "groq"}, "authorization")])
def test_header_by_provider(provider, secrets, kw, hname):
    pool = SyncKeyPool(keys=secrets[:1])
    with httpx.Client(base_url=provider.url, auth=KeyMeshAuth(pool, **kw)) as c:
        assert c.post("/v1/messages", json=BODY).status_code == 200
    assert provider.calls[0][1] == hname and provider.calls[0][2] == secrets[0]
    pool.close()


def test_429_retried_once_on_another_key(provider, secrets):
    rl = "sk-rl-aaaa9999"
    pool = SyncKeyPool(keys=[rl, secrets[0]], strategy="fill_first")
    with httpx.Client(base_url=provider.url, auth=KeyMeshAuth(pool)) as c:
        r = c.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 200
    assert provider.secrets_called() == [rl, secrets[0]]
    k = by_id(pool)
    assert k["key-1"]["rate_limited"] == 1 and k["key-1"]["state"] == "cooling"
    assert 6000 <= k["key-1"]["cooldown_remaining_ms"] <= 7000         # Retry-After: 7
    assert k["key-2"]["success"] == 1 and pool.status()["inflight"] == 0
    pool.close()


def test_429_not_retried_without_a_replayable_body_or_a_free_key(provider, secrets):
    rl = "sk-rl-aaaa9999"
    pool = SyncKeyPool(keys=[rl, secrets[0]], strategy="fill_first")

    def gen():
        yield b'{"model": "x"}'

    with httpx.Client(base_url=provider.url, auth=KeyMeshAuth(pool)) as c:
        r = c.post("/v1/chat/completions", content=gen())
        assert r.status_code == 429 and provider.secrets_called() == [rl]
    pool.close()
    pool = SyncKeyPool(keys=["sk-rl-bbbb8888"])
    with httpx.Client(base_url=provider.url, auth=KeyMeshAuth(pool)) as c:
        assert c.post("/v1/chat/completions", json=BODY).status_code == 429
    assert pool.status()["inflight"] == 0
    pool.close()


def test_401_invalidates_and_quota_exhausts(provider, secrets):
    pool = SyncKeyPool(keys=["sk-bad-cccc7777", "sk-quota-dddd6666", secrets[0]],
                       strategy="fill_first")
    with httpx.Client(base_url=provider.url, auth=KeyMeshAuth(pool, retry_429=False)) as c:
        codes = [c.post("/v1/chat/completions", json=BODY).status_code for _ in range(3)]
    assert codes == [401, 429, 200]
    k = by_id(pool)
    assert k["key-1"]["state"] == "invalid" and k["key-2"]["state"] == "exhausted"
    assert k["key-3"]["success"] == 1
    pool.close()


def test_provider_remaining_zero_tightens_the_key(provider, secrets, seg):
    pool = SyncKeyPool.create(seg("view"), cfg(secrets[:1], {"rpm": 1000}))
    provider.remaining[secrets[0]] = 0
    with httpx.Client(base_url=provider.url, auth=KeyMeshAuth(pool, timeout=0)) as c:
        assert c.post("/v1/chat/completions", json=BODY).status_code == 200
        # the provider said 0 requests remain for 30 s: no key now
        with pytest.raises(Exception) as e:
            c.post("/v1/chat/completions", json=BODY)
    assert "NoAvailableKeyError" in type(e.value).__name__
    assert by_id(pool)["k1"]["limits"]["rpm"]["available"] == 0
    pool.close()


def test_transport_error_is_a_failure(secrets):
    pool = SyncKeyPool(keys=secrets[:1], max_failures=5)
    with httpx.Client(base_url="http://127.0.0.1:9", auth=KeyMeshAuth(pool)) as c:
        with pytest.raises(httpx.TransportError):
            c.post("/v1/chat/completions", json=BODY)
    k = pool.status()["keys"][0]
    assert k["failure"] == 1 and k["inflight"] == 0
    pool.close()


def test_async_client(provider, secrets, seg):
    name = seg("ahttpx")
    pool = KeyPool.create(name, cfg(["sk-rl-eeee5555"] + secrets[:1], max_inflight=1,
                                                 strategy="fill_first"),
                          acquire_timeout=5)

    async def main():
        async with httpx.AsyncClient(base_url=provider.url, auth=KeyMeshAuth(pool)) as c:
            r = await c.post("/v1/chat/completions", json=BODY)
            assert r.status_code == 200               # the 429 key, then the other
            # 5 at once on the one usable key (max_inflight 1): they wait in turn
            rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=BODY)
                                        for _ in range(5)))
            assert [x.status_code for x in rs] == [200] * 5
        st = pool.status()
        assert st["inflight"] == 0 and by_id(pool)["k2"]["success"] == 6
        await pool.close()
    asyncio.run(main())


def test_no_secret_in_errors(provider, secrets):
    pool = SyncKeyPool(keys=["sk-bad-cccc7777"])
    with httpx.Client(base_url=provider.url, auth=KeyMeshAuth(pool)) as c:
        c.post("/v1/chat/completions", json=BODY)
        with pytest.raises(Exception) as e:
            c.post("/v1/chat/completions", json=BODY)
    assert "cccc7777" not in str(e.value) and no_secret(str(pool.status()))
    pool.close()


def test_release_in_one_call_with_the_raw_headers(provider, secrets, monkeypatch):
    # KeyMeshAuth releases through lease._release_http(status,
    # response.headers.raw, body): with keymesh._ext nothing goes back to
    # keymesh.outcome_from_http (ctypes); the provider's headers still count.
    from keymesh import _pool, implementation
    calls = []
    real = _pool.outcome_from_http
    monkeypatch.setattr(_pool, "outcome_from_http",
                        lambda *a, **kw: (calls.append(a[0]), real(*a, **kw))[1])
    pool = SyncKeyPool(keys=["sk-rl-ffff4444", secrets[0]], strategy="fill_first")
    with httpx.Client(base_url=provider.url, auth=KeyMeshAuth(pool)) as c:
        assert c.post("/v1/chat/completions", json=BODY).status_code == 200  # 429, retried
    k = by_id(pool)
    assert k["key-1"]["rate_limited"] == 1 and k["key-1"]["state"] == "cooling"
    assert 5000 <= k["key-1"]["cooldown_remaining_ms"] <= 7000   # Retry-After: 7
    assert k["key-2"]["success"] == 1
    assert calls == ([] if implementation() == "c-extension" else [429, 200])
    pool.close()
