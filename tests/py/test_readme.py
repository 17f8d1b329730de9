"""Code written for the in-process key-pool library (the KeyMesh Python
library whose API the binding mirrors) runs unchanged on the binding.

Each script below follows one usage example of that library's README (its
quick starts, its OpenAI handlers, its three integration patterns): the
same imports, constructors, calls and keyword arguments, written out here in
our own words rather than copied.  They run as separate programs against
the mock provider, with tests/py/stubs/openai standing in for the OpenAI
SDK (which Debian does not package); the keys are the README's
placeholders, which the mock provider accepts.
"""
import os
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

ASYNC_QUICKSTART = """
import asyncio
from openai import AsyncOpenAI
from keymesh import KeyPool, SchedulerStrategy

async def main():
    pool = KeyPool(keys=["sk-key-1", "sk-key-2", "sk-key-3"],
                   strategy=SchedulerStrategy.LEAST_BUSY)
    key = await pool.acquire()
    client = AsyncOpenAI(api_key=key)
    try:
        began = asyncio.get_event_loop().time()
        answer = await client.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "ping"}])
        latency = asyncio.get_event_loop().time() - began
        await pool.release(key, latency=latency)
        print(f"Response: {answer.choices[0].message.content}")
    except Exception as e:
        if "rate_limit" in str(e).lower():
            await pool.mark_rate_limited(key, cooldown=60.0)
        else:
            await pool.mark_failed(key)
    print("metrics", pool.status()["pool_metrics"]["total_releases"], pool.available_count())

asyncio.run(main())
"""

SYNC_QUICKSTART = """
import time
from openai import OpenAI
from keymesh import SyncKeyPool, SchedulerStrategy

def main():
    pool = SyncKeyPool(keys=["sk-key-1", "sk-key-2", "sk-key-3"],
                       strategy=SchedulerStrategy.LEAST_BUSY)
    key = pool.acquire()
    client = OpenAI(api_key=key)
    try:
        began = time.monotonic()
        answer = client.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "ping"}])
        latency = time.monotonic() - began
        pool.release(key, latency=latency)
        print(f"Response: {answer.choices[0].message.content}")
    except Exception as e:
        if "rate_limit" in str(e).lower():
            pool.mark_rate_limited(key, cooldown=60.0)
        else:
            pool.mark_failed(key)
    print("metrics", pool.status()["pool_metrics"]["total_releases"], pool.available_count())

main()
"""

ASYNC_HANDLER = """
import asyncio
from openai import AsyncOpenAI
from keymesh import AsyncOpenAIHandler, SchedulerStrategy

async def main():
    handler = AsyncOpenAIHandler(keys=["sk-key-1", "sk-key-2", "sk-key-3"],
                                 strategy=SchedulerStrategy.LEAST_BUSY,
                                 default_cooldown=60.0)
    client = AsyncOpenAI(api_key="dummy-key", http_client=handler)
    try:
        answer = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "ping"}])
        print(f"Response: {answer.choices[0].message.content}")
        print("metrics", handler.pool.status()["pool_metrics"]["total_releases"],
              handler.pool.available_count())
    finally:
        await handler.aclose()

asyncio.run(main())
"""

SYNC_HANDLER = """
from openai import OpenAI
from keymesh import OpenAIHandler, SchedulerStrategy

def main():
    handler = OpenAIHandler(keys=["sk-key-1", "sk-key-2", "sk-key-3"],
                            strategy=SchedulerStrategy.ROUND_ROBIN)
    client = OpenAI(api_key="dummy-key", http_client=handler)
    try:
        answer = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "ping"}])
        print(f"Response: {answer.choices[0].message.content}")
        print("metrics", handler.pool.status()["pool_metrics"]["total_releases"],
              handler.pool.available_count())
    finally:
        handler.close()

if __name__ == "__main__":
    main()
"""

PATTERNS = """
import asyncio
import contextlib
import time
from openai import AsyncOpenAI
from keymesh import KeyPool

pool = KeyPool(keys=["sk-key-1", "sk-key-2", "sk-key-3"])
client = AsyncOpenAI(api_key="dummy-key")

async def scoped_client():
    key = await pool.acquire()
    start = time.monotonic()
    try:
        scoped = client.with_options(api_key=key)
        r = await scoped.chat.completions.create(model="gpt-4o", messages=[])
        await pool.release(key, latency=time.monotonic() - start)
        return r
    except Exception:
        await pool.mark_failed(key)
        raise

async def per_request_header():
    key = await pool.acquire()
    start = time.monotonic()
    try:
        r = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Query"}],
            extra_headers={"Authorization": f"Bearer {key}"})
        await pool.release(key, latency=time.monotonic() - start)
        return r
    except Exception:
        await pool.mark_failed(key)
        raise

@contextlib.asynccontextmanager
async def key_lifecycle(pool: KeyPool):
    key = await pool.acquire()
    start = time.monotonic()
    try:
        yield key
        await pool.release(key, latency=time.monotonic() - start)
    except Exception:
        await pool.mark_failed(key)
        raise

async def main():
    for f in (scoped_client, per_request_header):
        r = await f()
        print(f"Response: {r.choices[0].message.content}")
    async with key_lifecycle(pool) as key:
        scoped = client.with_options(api_key=key)
        r = await scoped.chat.completions.create(model="gpt-4o", messages=[])
        print(f"Response: {r.choices[0].message.content}")
    print("metrics", pool.status()["pool_metrics"]["total_releases"], pool.available_count())

asyncio.run(main())
"""

EXAMPLES = {"async quick start": (ASYNC_QUICKSTART, 1),
            "sync quick start": (SYNC_QUICKSTART, 1),
            "AsyncOpenAIHandler": (ASYNC_HANDLER, 1),
            "OpenAIHandler": (SYNC_HANDLER, 1),
            "patterns: with_options, extra_headers, key_lifecycle": (PATTERNS, 3)}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_readme_usage_runs_unchanged(provider, tmp_path, name):
    code, releases = EXAMPLES[name]
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(HERE, "stubs"), env.get("PYTHONPATH", "")])
    env["OPENAI_BASE_URL"] = provider.url + "/v1"
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("Response: hello from mock") == releases, r.stdout
    # every call reached the provider with one of the pool's keys, and the
    # pool counted each as a release (none failed, none left out)
    called = provider.secrets_called()
    assert len(called) == releases and all(s.startswith("sk-key-") for s in called)
    assert ("metrics %d 3" % releases) in r.stdout, r.stdout
