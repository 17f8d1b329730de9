"""The hot path in Python on ctypes: what keymesh._ext does in C.

Two classes with exactly the interface of the extension's types, so that the
pools (keymesh._pool) run on either:

  _PyCore   base of SyncKeyPool / KeyPool: acquire, release, lease(), and
            the primitives the slower Python code builds on (_try_lease,
            _wait_lease, _take, _finish, ...).
  _PyLease  one key handed out (keymesh.Lease when the extension is absent).

keymesh._ext is used when it was built and loads (see keymesh._pool);
KEYMESH_NO_EXT=1 forces this module.  tests/py run the suite on both.

Outcomes travel between the two layers as an 11-tuple (OTUPLE_FIELDS),
the fields of km_outcome in order, so neither side needs the other's types.
"""

from __future__ import annotations

import ctypes
import math
import os
from typing import Any, Dict, Optional, Union

from . import _lib as L
from ._lib import lib

OTUPLE_FIELDS = ("kind", "latency_us", "tokens", "retry_after_s", "view_flags",
                 "requests_remaining", "tokens_remaining", "requests_reset_ms",
                 "tokens_reset_ms", "input_tokens", "output_tokens")

# Set by keymesh._pool once the Python helpers exist (the same dict is
# handed to keymesh._ext.setup()).
H: Dict[str, Any] = {}

# Bumped in the child after fork(): a pool or lease made under another
# generation belongs to the parent.  keymesh._ext keeps its own counter
# (pthread_atfork); each side compares against its own.
_fork_gen = 0


def _bump_fork_gen() -> None:
    global _fork_gen
    _fork_gen += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_bump_fork_gen)

# Longest single km_acquire_wait() of a blocking acquire: between two, the
# waiter notices a pool closed under it (and an async waiter its
# cancellation).  A release wakes a sleeper at once whatever this is.
WAIT_CHUNK_MS = 200


def outcome_of(t: Optional[tuple]) -> L.Outcome:
    if t is None:
        return L.Outcome(kind=L.OUT_SUCCESS, latency_us=-1, tokens=-1,
                         input_tokens=-1, output_tokens=-1)
    return L.Outcome(*t)


def _check_tokens(tokens: Any) -> int:
    t = int(tokens)
    if t < 0:
        raise ValueError("estimated_tokens must be >= 0 (got %d)" % t)
    if t > 0xFFFFFFFF:
        raise ValueError("estimated_tokens must be < 2**32 (got %d)" % t)
    return t


def _check_latency(latency: Any) -> Optional[float]:
    if latency is None:
        return None
    x = float(latency)
    if not math.isfinite(x) or x < 0:
        raise ValueError("latency must be a finite number of seconds >= 0 (got %r)" % (latency,))
    return x


def _strategy_code(s: Any) -> int:
    return 0 if s is None else H["strategy_code"](s)


class _PyLease:
    """One key handed out: `key` is the secret to send, `key_id` its id,
    `meta` the key's metadata.  Finish it once, with release()/report()
    or by leaving `with pool.lease(...)`; repr() never shows the secret."""

    __slots__ = ("_c", "_pool", "_gen", "_done", "_acquired", "_outcome", "model",
                 "estimated_tokens", "_req", "_secret", "__weakref__")

    def __init__(self, pool: "_PyCore", c: Optional[L.Lease], model: Optional[str],
                 tokens: int, req: Optional[tuple] = None) -> None:
        self._c = c
        self._pool = pool
        self._gen = _fork_gen
        self._done = False
        self._acquired = c is not None
        self._outcome: Optional[tuple] = None
        self.model = model
        self.estimated_tokens = tokens
        self._req = req          # (timeout, key_id, strategy) until entered
        self._secret: Optional[str] = None

    # -- what it holds
    @property
    def key(self) -> str:
        """The secret (the API key to send)."""
        self._need()
        if self._secret is None:
            c = self._c
            self._secret = c.secret[:c.secret_len].decode()
        return self._secret

    @property
    def key_id(self) -> str:
        self._need()
        return self._c.key_id.decode()

    @property
    def meta(self) -> Dict[str, str]:
        self._need()
        return H["meta_loads"](self._c.meta[:self._c.meta_len].decode())

    @property
    def elapsed(self) -> float:
        """Seconds since the key was acquired."""
        self._need()
        return max(0, lib.km_now_ns() - self._c.start_ns) / 1e9

    @property
    def done(self) -> bool:
        return self._done

    @property
    def _key_index(self) -> int:
        self._need()
        return self._c.key

    @property
    def _key_gen(self) -> int:
        self._need()
        return self._c.key_gen

    @property
    def _start_ns(self) -> int:
        self._need()
        return self._c.start_ns

    def _need(self) -> None:
        if not self._acquired:
            raise H["KeyMeshError"]("lease not acquired yet: use it in a with block")

    def __repr__(self) -> str:
        if not self._acquired:
            return "<Lease (not acquired) model=%r>" % (self.model,)
        return "<Lease key_id=%r key=%r model=%r%s>" % (
            self.key_id, L.mask(self.key), self.model, " done" if self._done else "")

    __str__ = __repr__

    # -- what happened
    def report(self, status: Optional[int] = None, *, headers: Any = None,
               body: Union[bytes, str, None] = None, error_code: Optional[str] = None,
               tokens: Optional[int] = None, input_tokens: Optional[int] = None,
               output_tokens: Optional[int] = None) -> None:
        """Record the provider's answer (HTTP status, headers for Retry-After
        and rate-limit views, error body) and the tokens used; applied when
        the lease ends (the `with` block exits, or release()).  Without a
        status the request counts as a success."""
        self._outcome = H["report_tuple"](status, headers, body, error_code, tokens,
                                          input_tokens, output_tokens)

    def usage(self, input_tokens: Optional[int] = None, output_tokens: Optional[int] = None,
              tokens: Optional[int] = None) -> None:
        """Record the tokens a successful response used (settles the token
        limits and the spend)."""
        self.report(None, tokens=tokens, input_tokens=input_tokens, output_tokens=output_tokens)

    def _request(self) -> tuple:
        return self._req or (None, None, None)

    def _set_outcome(self, t: Optional[tuple]) -> None:
        self._outcome = t

    def _release_http(self, status: int, headers: Any = None,
                      body: Union[bytes, str, None] = None) -> int:
        """End the lease with the provider's answer (keymesh.httpx): the
        tokens report()/usage() recorded are kept.  The outcome kind."""
        t = H["report_tuple"](status, headers, body, None, None, None, None)
        if self._outcome is not None:
            t = t[:2] + (self._outcome[2],) + t[3:9] + self._outcome[9:]
        self._pool._finish(self, t, None)
        return int(t[0])

    def release(self, latency: Optional[float] = None) -> None:
        """End the lease with what report() recorded (success if nothing)."""
        self._pool._finish(self, self._outcome, latency)

    def cancel(self) -> None:
        """End the lease as never sent: the token reservation comes back."""
        self._pool._finish(self, H["cancelled"], None)

    def fail(self, exc: Optional[BaseException] = None) -> None:
        """End the lease as failed; an exception carrying an HTTP status
        (SDK errors) is mapped like report() (429 -> rate limited)."""
        self._pool._finish(self, H["outcome_for_exc"](exc), None)

    # -- with / async with
    def __enter__(self) -> "_PyLease":
        if not self._acquired:
            timeout, key_id, strategy = self._req
            self._pool._fill(self, timeout, key_id, strategy)
        return self

    def __exit__(self, et: Any, e: Any, tb: Any) -> bool:
        if self._done or not self._acquired:
            return False
        if et is None:
            self._pool._finish(self, self._outcome, None)
        elif not isinstance(e, Exception):
            # Cancellation, KeyboardInterrupt, SystemExit: the caller gave
            # up; the key did nothing wrong.
            self._pool._finish(self, H["cancelled"], None)
        else:
            self._pool._finish(self, H["outcome_for_exc"](e), None)
        return False

    def __aenter__(self) -> Any:
        return H["aenter"](self)

    def __aexit__(self, et: Any, e: Any, tb: Any) -> Any:
        return H["aexit"](self, et, e, tb)


def id_by_secret(ptr: int, pool: int, secret: str) -> Optional[str]:
    """The id of the key of `pool` whose secret is `secret`, or None (also
    with a libkeymesh without km_key_find_secret).  The library compares
    every key's secret in constant time."""
    find = lib.optional("km_key_find_secret")
    if find is None or not secret or "\0" in secret:
        return None  # no key holds it (and C would stop at the NUL)
    k = find(ptr, pool, secret.encode())
    if k < 0:
        return None
    ki = L.KeyInfo()
    if lib.km_key_info_get(ptr, k, ctypes.byref(ki)) != 0:
        return None  # removed meanwhile
    return ki.id.decode()


class _PyCore:
    """Hot path of a pool on ctypes (keymesh._ext.Core in C)."""

    def _hot_init(self) -> None:
        self.acquire_timeout = 30.0
        self._exhaust = False
        self._envobj: Any = None
        self._hptr = 0
        self._hpool = -1
        self._hgen = -1
        self._tracked: Dict[str, list] = {}
        self._last: Dict[int, int] = {}
        self._checked_ns = 0

    def _bind(self, envobj: Any, pool: int) -> None:
        self._envobj = envobj
        self._hptr = envobj.ptr if envobj is not None else 0
        self._hpool = pool
        self._hgen = _fork_gen

    def _reset_tracking(self) -> None:
        self._tracked = {}
        self._last = {}

    def _ptr(self) -> int:
        if self._hgen != _fork_gen or not self._hptr:
            self._reattach()  # raises if closed; binds again otherwise
        return self._hptr

    def _req(self, model: Optional[str], tokens: int, key_id: Optional[str],
             strategy: Any) -> L.Request:
        return L.Request(pool=self._hpool, strategy=_strategy_code(strategy), tokens=tokens,
                         model=model.encode() if model else None,
                         key_id=key_id.encode() if key_id else None)

    def _made(self, c: L.Lease, model: Optional[str], tokens: int, track: bool) -> _PyLease:
        lease = _PyLease(self, c, model, tokens)
        self._last[c.key] = c.start_ns
        if c.start_ns - self._checked_ns > 1_000_000_000:
            self._checked_ns = c.start_ns
            try:
                self._check_segment()
            except BaseException:
                lib.km_release(self._hptr, ctypes.byref(c), None)
                raise
        if track:
            self._tracked.setdefault(lease.key, []).append(lease)
        return lease

    # -- acquire
    def _try_lease(self, model: Optional[str], tokens: int, key_id: Optional[str],
                   strategy: Any, track: bool) -> Union[_PyLease, int]:
        tokens = _check_tokens(tokens)
        ptr = self._ptr()
        req = self._req(model, tokens, key_id, strategy)
        c = L.Lease()
        rc = lib.km_acquire(ptr, ctypes.byref(req), ctypes.byref(c))
        if rc == L.ENOKEY and key_id:
            # No key of that id: pinned by the key's secret?
            kid = id_by_secret(ptr, self._hpool, key_id)
            if kid is not None:
                req = self._req(model, tokens, kid, strategy)
                rc = lib.km_acquire(ptr, ctypes.byref(req), ctypes.byref(c))
        if rc == 0:
            return self._made(c, model, tokens, track)
        if rc == L.EAGAIN:
            return c.retry_at_ns or 1
        H["raise"](rc, "acquire from pool '%s'" % self.pool_name, c.retry_at_ns)
        raise AssertionError("unreachable")

    def _wait_lease(self, model: Optional[str], tokens: int, key_id: Optional[str],
                    strategy: Any, track: bool, timeout_ms: int) -> Union[_PyLease, int]:
        """One km_acquire_wait() of at most timeout_ms (GIL released by
        ctypes).  A lease, or the error code (ETIMEDOUT) to retry on."""
        tokens = _check_tokens(tokens)
        ptr = self._ptr()
        env = self._envobj
        req = self._req(model, tokens, key_id, strategy)
        c = L.Lease()
        env.busy += 1
        try:
            rc = lib.km_acquire_wait(ptr, ctypes.byref(req), ctypes.byref(c),
                                     max(0, min(int(timeout_ms), 0xFFFFFFFF)))
            if rc == L.ENOKEY and key_id:  # pinned by the key's secret?
                kid = id_by_secret(ptr, self._hpool, key_id)
                if kid is not None:
                    req = self._req(model, tokens, kid, strategy)
                    rc = lib.km_acquire_wait(ptr, ctypes.byref(req), ctypes.byref(c),
                                             max(0, min(int(timeout_ms), 0xFFFFFFFF)))
        finally:
            env.busy -= 1
        if rc == 0:
            if env.closing:
                lib.km_release(ptr, ctypes.byref(c), None)
                H["raise_closed"]()
            return self._made(c, model, tokens, track)
        if rc in (L.EAGAIN, L.ETIMEDOUT):
            if env.closing:
                H["raise_closed"]()
            return rc
        H["raise"](rc, "acquire from pool '%s'" % self.pool_name, c.retry_at_ns)
        raise AssertionError("unreachable")

    def _acquire_lease(self, timeout: Optional[float], model: Optional[str], tokens: int,
                       key_id: Optional[str], strategy: Any, track: bool) -> _PyLease:
        t = self.acquire_timeout if timeout is None else float(timeout)
        r = self._try_lease(model, tokens, key_id, strategy, track)
        if not isinstance(r, int):
            return r
        if t > 0:
            deadline = lib.km_now_ns() + int(t * 1e9)
            while True:
                left = (deadline - lib.km_now_ns()) // 1_000_000
                if left <= 0:
                    break
                w = self._wait_lease(model, tokens, key_id, strategy, track,
                                     min(left, WAIT_CHUNK_MS))
                if not isinstance(w, int):
                    return w
        r2 = self._try_lease(model, tokens, key_id, strategy, track)
        if not isinstance(r2, int):
            return r2
        H["raise"](L.ETIMEDOUT if t > 0 else L.EAGAIN,
                   "acquire from pool '%s'" % self.pool_name, r2)
        raise AssertionError("unreachable")

    def acquire(self, timeout: Optional[float] = None, *, model: Optional[str] = None,
                estimated_tokens: int = 0, key_id: Optional[str] = None,
                strategy: Any = None) -> str:
        """A key (the secret).  Waits up to `timeout` seconds (default
        acquire_timeout) for one to become admissible, then raises
        NoAvailableKeyError; KeyExhaustedError if none can without an
        operator.  key_id= pins one key, by its id or by its secret.  Give
        it back with release(key), mark_failed(key) or
        mark_rate_limited(key)."""
        return self._acquire_lease(timeout, model, estimated_tokens, key_id, strategy,
                                   True).key

    def lease(self, model: Optional[str] = None, estimated_tokens: int = 0, *,
              timeout: Optional[float] = None, key_id: Optional[str] = None,
              strategy: Any = None) -> _PyLease:
        """A lease to use in `with` (or `async with`): the key is acquired
        on entering; on leaving it is released, timed, with what
        Lease.report() recorded (success by default).  An exception is a
        failure (an SDK error with HTTP status 429, or whose text says 429
        or "rate limit", cools the key down; 401 invalidates it:
        docs/outcomes.md) and propagates."""
        return _PyLease(self, None, model, _check_tokens(estimated_tokens),
                        (timeout, key_id, strategy))

    def _fill(self, lease: _PyLease, timeout: Optional[float], key_id: Optional[str],
              strategy: Any) -> None:
        got = self._acquire_lease(timeout, lease.model, lease.estimated_tokens, key_id,
                                  strategy, False)
        self._adopt(lease, got)

    def _adopt(self, lease: _PyLease, got: _PyLease) -> None:
        """Move what `got` holds into the not yet acquired `lease`."""
        lease._c, lease._gen, lease._acquired, lease._req = got._c, got._gen, True, None
        got._done = True  # `got` is forgotten; `lease` finishes the lease

    # -- release
    def _take(self, key: str) -> Optional[_PyLease]:
        self._ptr()
        lst = self._tracked.get(key)
        if not lst:
            return None
        lease = lst.pop(0)
        if not lst:
            del self._tracked[key]
        return lease

    def _finish(self, lease: _PyLease, t: Optional[tuple], latency: Optional[float]) -> None:
        lat = _check_latency(latency)
        if lease._done:
            raise H["KeyMeshError"]("lease already finished")
        if not lease._acquired:
            raise H["KeyMeshError"]("lease not acquired yet: use it in a with block")
        if lease._gen != _fork_gen:
            raise H["KeyMeshError"]("lease belongs to another process (acquired before fork)")
        ptr = self._ptr()
        out = outcome_of(t)
        if lat is not None and lat > 0:
            out.latency_us = int(lat * 1e6)
        lease._done = True
        if self._tracked:
            lst = self._tracked.get(lease.key)
            if lst and lease in lst:
                lst.remove(lease)
                if not lst:
                    del self._tracked[lease.key]
        rc = lib.km_release(ptr, ctypes.byref(lease._c), ctypes.byref(out))
        if rc not in (0, L.ESTALE):
            H["raise"](rc, "release", 0)
        if out.kind == L.OUT_FAILURE and self._exhaust:
            self._exhausted_check(lease, False)

    def release(self, key: str, latency: float = 0.0, *, tokens: Optional[int] = None) -> None:
        """The request made with `key` succeeded; `latency` in seconds (0:
        measured since acquire); `tokens` used if known."""
        lat = _check_latency(latency)
        if tokens is not None and int(tokens) < 0:
            raise ValueError("tokens must be >= 0 (got %d)" % int(tokens))
        lease = self._take(key)
        if lease is None:
            raise H["KeyMeshError"]("release: no lease of that key is held here")
        t = None
        if tokens is not None:
            t = (L.OUT_SUCCESS, -1, int(tokens), 0.0, 0, 0, 0, 0, 0, -1, -1)
        self._finish(lease, t, lat)

    _release_key = release

    def _held(self) -> int:
        return sum(len(v) for v in self._tracked.values())

    def _last_used_ns(self, key: int) -> int:
        return self._last.get(key, 0)
