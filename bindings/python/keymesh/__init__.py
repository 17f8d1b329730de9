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
build/ directory, or an installed libkeymesh.so.0 (see keymesh._lib).  The
hot path runs in the C extension keymesh._ext when it is built (installed
with the package, or by `make` beside the library), else on ctypes;
KEYMESH_NO_EXT=1 forces ctypes.  keymesh.implementation() says which.

keymesh.httpx.KeyMeshAuth(pool) is an httpx.Auth that leases a key per
request (imported on demand: httpx is not needed otherwise).
"""

from typing import Any

from . import _lib as _L

# An extension built by `make` sits beside its library, in
# <build>/python/keymesh: let `from . import _ext` find it there too.
__path__ = list(__path__) + [d for d in _L.ext_dirs() if d not in __path__]  # noqa: F821

from ._lib import lib as _km  # noqa: E402
from ._pool import (JSONStorage, KeyExhaustedError, KeyMeshError, KeyPool,  # noqa: E402
                    Lease, NoAvailableKeyError, SchedulerStrategy, SegmentRemovedError,
                    SyncJSONStorage, SyncKeyPool, implementation, implementation_detail,
                    outcome_from_http, unlink)

__all__ = ["SyncKeyPool", "KeyPool", "Lease", "SchedulerStrategy", "KeyMeshError",
           "NoAvailableKeyError", "KeyExhaustedError", "SegmentRemovedError", "unlink",
           "library_version", "library_path", "format_version", "outcome_from_http",
           "implementation", "implementation_detail", "JSONStorage", "SyncJSONStorage",
           "OpenAIHandler", "AsyncOpenAIHandler", "__version__"]

__version__ = "0.1.0"


def library_version() -> str:
    """The version of the libkeymesh loaded ("0.1.0")."""
    return _km.km_version().decode()


def library_path() -> str:
    """Which libkeymesh was loaded (a path or a soname)."""
    _km.km_version()
    return str(_km.path)


def format_version() -> int:
    """The segment format this libkeymesh reads and writes."""
    return int(_km.km_format_version())


def __getattr__(name: str) -> Any:
    # httpx-based helpers, imported on first use only.
    if name in ("OpenAIHandler", "AsyncOpenAIHandler"):
        from . import httpx as _h
        return getattr(_h, name)
    raise AttributeError("module 'keymesh' has no attribute %r" % name)
