"""examples/python_gunicorn.py - KeyMesh under gunicorn: the master creates
the pool, every worker shares it.  Runnable as is (no network: the "call"
is a sleep); with a real provider, see the comments.

    make                                    # build/libkeymesh.so.0
    PYTHONPATH=bindings/python gunicorn -w 4 -b 127.0.0.1:8000 \
        -c examples/python_gunicorn.py --chdir examples python_gunicorn:app
    curl http://127.0.0.1:8000/
    build/kmctl inspect keymesh-example

With the OpenAI SDK (pip's openai; not needed to run this file), one client
per worker, the key chosen per request:

    from openai import OpenAI, RateLimitError
    client = OpenAI(api_key="unused")       # the real key comes per request
    with POOL.lease(model="gpt-4o-mini", estimated_tokens=800) as lease:
        resp = client.with_options(api_key=lease.key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        lease.usage(resp.usage.prompt_tokens, resp.usage.completion_tokens)
    # An openai.RateLimitError raised in the block carries status 429 and
    # the response's Retry-After: the lease reports it and the key cools
    # down for every worker; a 401 makes the key invalid; any other
    # exception counts as a failure.  The exception still propagates.
"""
import os
import time

import keymesh

SEGMENT = os.environ.get("KEYMESH_SEGMENT", "keymesh-example")
CONFIG = {
    "capacity": {"keys": 8, "processes": 32},
    "pools": [{"name": "openai", "strategy": "least_busy",
               "limits": {"rpm": {"limit": 60, "mode": "sliding", "burst": 10},
                          "tpm": 90000},
               "cooldown_s": 30, "max_failures": 5,
               "keys": [{"id": "a", "secret": os.environ.get("OPENAI_KEY_A", "sk-demo-aaaa1111")},
                        {"id": "b", "secret": os.environ.get("OPENAI_KEY_B", "sk-demo-bbbb2222")}]}],
}

# ---- gunicorn server hooks (this file is also the -c config) -------------
workers = 4


def on_starting(server):
    # In the master, before the fork: create the segment (once).
    try:
        keymesh.unlink(SEGMENT)             # a segment left by a crashed run
    except keymesh.KeyMeshError:
        pass
    server.keymesh = keymesh.SyncKeyPool.create(SEGMENT, CONFIG)


def on_exit(server):
    server.keymesh.close()
    keymesh.unlink(SEGMENT)


# ---- the application (each worker) ---------------------------------------
POOL = None


def app(environ, start_response):
    global POOL
    if POOL is None:                        # attach once per worker
        POOL = keymesh.SyncKeyPool.open(SEGMENT, "openai", acquire_timeout=5)
    try:
        with POOL.lease(model="gpt-4o-mini", estimated_tokens=800) as lease:
            time.sleep(0.05)                # the provider call, with lease.key
            lease.usage(input_tokens=600, output_tokens=150)
            body = "served with key %s (worker %d)\n" % (lease.key_id, os.getpid())
            status = "200 OK"
    except keymesh.NoAvailableKeyError as e:
        body, status = "busy, retry in %.1f s\n" % (e.retry_after or 1), "503 Service Unavailable"
    start_response(status, [("Content-Type", "text/plain")])
    return [body.encode()]
