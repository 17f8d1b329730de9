"""KeyMesh for Python: API keys shared by every worker process of a host.

A pure-Python (ctypes, standard library only) binding of libkeymesh.  The
pool lives in one POSIX shared-memory segment; each process that uses it
attaches, and rate limits, cooldowns and health hold for all of them
together.  KeyMesh never sends a request: you get a key, call the provider
with any client, and say what happened.

    from keymesh import SyncKeyPool, SchedulerStrategy

    pool = SyncKeyPool(keys=["sk-...", "sk-..."], strategy=SchedulerStrategy.LEAST_BUSY)
    key = pool.acquire()
    ...                                  # call the provider with `key`
    pool.release(key, latency=0.42)      # or mark_failed / mark_rate_limited

Shared between unrelated processes (a gunicorn master creates, workers use):

    pool = SyncKeyPool.create("llm", "pool.json")   # in the master
    pool = SyncKeyPool.open("llm", "openai")        # anywhere else
    with pool.lease(model="gpt-4o-mini", estimated_tokens=800) as lease:
        resp = client.with_options(api_key=lease.key).chat.completions.create(...)
        lease.usage(resp.usage.prompt_tokens, resp.usage.completion_tokens)

The library is found through $KEYMESH_LIBRARY, $KM_BUILD, the repository's
build/ directory, or an installed libkeymesh.so.0 (see keymesh._lib).
"""

from ._lib import lib as _km
from ._pool import (KeyExhaustedError, KeyMeshError, KeyPool, Lease,
                    NoAvailableKeyError, SchedulerStrategy, SyncKeyPool,
                    outcome_from_http, unlink)

__all__ = ["SyncKeyPool", "KeyPool", "Lease", "SchedulerStrategy", "KeyMeshError",
           "NoAvailableKeyError", "KeyExhaustedError", "unlink", "library_version",
           "library_path", "outcome_from_http", "__version__"]

__version__ = "0.1.0"


def library_version() -> str:
    """The version of the libkeymesh loaded ("0.1.0")."""
    return _km.km_version().decode()


def library_path() -> str:
    """Which libkeymesh was loaded (a path or a soname)."""
    _km.km_version()
    return str(_km.path)
