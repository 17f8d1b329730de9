"""SyncKeyPool, KeyPool (asyncio), Lease and the exceptions.

One attachment per process and segment: every pool object of a process that
names the same segment shares one km_env (KeyMesh counts a process attached
twice as a fault).  After fork() the child never touches the handle it
inherited; it attaches again, by name, the first time it uses a pool.  So a
pool made in a gunicorn master (or at import time with --preload) just works
in every worker.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import enum
import json
import math
import os
import threading
import time
import uuid
import weakref
from typing import (Any, AsyncIterator, Dict, Iterator, List, Mapping, Optional,
                    Sequence, Tuple, Union)

from . import _lib as L
from ._lib import lib

__all__ = ["KeyMeshError", "NoAvailableKeyError", "KeyExhaustedError",
           "SchedulerStrategy", "Lease", "SyncKeyPool", "KeyPool", "unlink"]

ConfigLike = Union[Mapping[str, Any], str, "os.PathLike[str]"]


# ------------------------------------------------------------------ errors

class KeyMeshError(Exception):
    """Any KeyMesh failure.  `code` is the negative KM_E* code (0 when the
    error is the binding's own), `errname` its name ("EAGAIN")."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.errname = L.err_name(code) if code else ""


class NoAvailableKeyError(KeyMeshError):
    """No key became admissible before the timeout (every key at a limit,
    cooling down or at its in-flight cap).  `retry_after` is the number of
    seconds until one may be, when KeyMesh knows it (else None)."""

    def __init__(self, message: str, code: int = 0,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(message, code)
        self.retry_after = retry_after


class KeyExhaustedError(KeyMeshError):
    """No key can become usable without an operator: all disabled, invalid
    (401/403), exhausted (quota), or the pool's hard budget is spent."""


def _raise(rc: int, what: str, retry_at_ns: int = 0) -> None:
    msg = "%s: %s" % (what, L.strerror(rc))
    if rc in (L.EAGAIN, L.ETIMEDOUT):
        ra = None
        if retry_at_ns:
            ra = max(0.0, (retry_at_ns - lib.km_now_ns()) / 1e9)
        raise NoAvailableKeyError(msg, rc, ra)
    if rc in (L.EUNAVAIL, L.EBUDGET):
        raise KeyExhaustedError(msg, rc)
    raise KeyMeshError(msg, rc)


# -------------------------------------------------------------- strategies

class SchedulerStrategy(str, enum.Enum):
    """How a pool chooses among admissible keys (README, "Choosing a key").
    The value is the configuration name."""

    ROUND_ROBIN = "round_robin"
    LEAST_BUSY = "least_busy"
    WEIGHTED = "weighted"
    LATENCY = "latency"
    COST = "cost"
    RELIABILITY = "reliability"
    FILL_FIRST = "fill_first"

    @property
    def code(self) -> int:
        """The km_strategy value."""
        return _STRATEGY_CODES[self.value]

    def __str__(self) -> str:
        return self.value


_STRATEGY_CODES = {"round_robin": 1, "least_busy": 2, "weighted": 3, "latency": 4,
                   "cost": 5, "reliability": 6, "fill_first": 7}
_STRATEGY_NAMES = {v: k for k, v in _STRATEGY_CODES.items()}


def _strategy_code(s: Union[SchedulerStrategy, str, None]) -> int:
    if s is None:
        return 0
    return SchedulerStrategy(s).code


# ---------------------------------------------------------- attachments

def _segname(name: str) -> str:
    n = os.fspath(name)
    return n[1:] if n.startswith("/") else n


class _Env:
    """One km_env of this process, shared by the pools that name its segment."""

    def __init__(self, name: str, ptr: int) -> None:
        self.name = name
        self.ptr = ptr
        self.pid = os.getpid()
        self.refs = 0


_envs: Dict[str, _Env] = {}
_envs_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # The child must not use or close what it inherited (the process slot
    # and leases belong to the parent): forget it and attach again on use.
    global _envs_lock
    _envs_lock = threading.Lock()
    _envs.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_all_at_exit() -> None:
    # A process that exits normally detaches, so its slot is freed and any
    # lease it still holds is released (abandoned) at once, not left for a
    # reaper.  Only this process's attachments: a forked child never closes
    # what it inherited.
    with _envs_lock:
        mine = [e for e in _envs.values() if e.pid == os.getpid()]
        for e in mine:
            del _envs[e.name]
    for e in mine:
        ptr, e.ptr = e.ptr, 0
        if ptr:
            lib.km_close(ptr)


atexit.register(_close_all_at_exit)


def _attach(name: str, create_cfg: Optional[int] = None, mode: int = 0o600) -> _Env:
    with _envs_lock:
        env = _envs.get(name)
        if env is not None and env.pid == os.getpid():
            if create_cfg is not None:
                raise KeyMeshError("segment '%s': %s" % (name, L.strerror(L.EEXIST)),
                                   L.EEXIST)
            env.refs += 1
            return env
        ptr = ctypes.c_void_p()
        if create_cfg is not None:
            rc = lib.km_create(name.encode(), create_cfg, mode, ctypes.byref(ptr))
        else:
            rc = lib.km_open(name.encode(), ctypes.byref(ptr))
        if rc != 0:
            _raise(rc, "segment '%s'" % name)
        env = _Env(name, ptr.value or 0)
        env.refs = 1
        _envs[name] = env
        return env


def _detach(env: _Env) -> None:
    with _envs_lock:
        if env.pid != os.getpid():
            return
        env.refs -= 1
        if env.refs > 0:
            return
        if _envs.get(env.name) is env:
            del _envs[env.name]
        ptr, env.ptr = env.ptr, 0
    if ptr:
        lib.km_close(ptr)


def unlink(name: str) -> None:
    """Remove segment `name` (processes attached keep working until they
    close).  KeyMeshError(ENOENT) if there is none."""
    rc = lib.km_unlink(_segname(name).encode())
    if rc != 0:
        _raise(rc, "segment '%s'" % _segname(name))


def _unlink_quietly(name: str, pid: int) -> None:
    if os.getpid() == pid:
        lib.km_unlink(name.encode())


def _parse_config(config: ConfigLike) -> int:
    """km_config pointer (caller frees) from a mapping, JSON text or a path."""
    cfg = ctypes.c_void_p()
    err = ctypes.create_string_buffer(512)
    if isinstance(config, Mapping):
        text = json.dumps(config).encode()
        rc = lib.km_config_parse(text, len(text), b"<config>", ctypes.byref(cfg), err, 512)
    elif isinstance(config, str) and config.lstrip().startswith("{"):
        text = config.encode()
        rc = lib.km_config_parse(text, len(text), b"<config>", ctypes.byref(cfg), err, 512)
    else:
        rc = lib.km_config_parse_file(os.fsencode(config), ctypes.byref(cfg), err, 512)
    if rc != 0:
        # The library's message names the field, never a secret.
        raise KeyMeshError("configuration: %s" % err.value.decode("utf-8", "replace"), rc)
    return cfg.value or 0


# ------------------------------------------------------------------ leases

def _headers_list(headers: Any) -> List[Tuple[str, str]]:
    if headers is None:
        return []
    items = headers.items() if hasattr(headers, "items") else headers
    return [(str(k), str(v)) for k, v in items]


def _status_of(exc: BaseException) -> Tuple[Optional[int], Any, Optional[bytes]]:
    """(HTTP status, headers, body) that an exception carries, as raised by
    the OpenAI and Anthropic SDKs (status_code, response), httpx
    (response.status_code), requests (response.status_code) and urllib
    (HTTPError.code, .headers)."""
    status = None
    for attr in ("status_code", "status", "code"):
        v = getattr(exc, attr, None)
        if isinstance(v, int) and 100 <= v < 600:
            status = v
            break
    resp = getattr(exc, "response", None)
    headers = getattr(exc, "headers", None)
    body = None
    if resp is not None:
        if status is None:
            v = getattr(resp, "status_code", getattr(resp, "status", None))
            if isinstance(v, int):
                status = v
        headers = getattr(resp, "headers", headers)
        try:
            content = getattr(resp, "content", None)
            if isinstance(content, (bytes, bytearray)):
                body = bytes(content)
        except Exception:  # a streamed response: no body, fine
            body = None
    eb = getattr(exc, "body", None)
    if body is None and isinstance(eb, (dict, list)):
        body = json.dumps({"error": eb} if isinstance(eb, dict) and "error" not in eb
                          else eb).encode()
    return status, headers, body


def outcome_from_http(status: int, headers: Any = None, body: Union[bytes, str, None] = None,
                      error_code: Optional[str] = None) -> L.Outcome:
    """km_outcome_from_http(): the outcome for a provider's answer
    (docs/outcomes.md).  `headers`: a mapping or (name, value) pairs."""
    out = L.Outcome(kind=L.OUT_FAILURE, latency_us=-1, tokens=-1,
                    input_tokens=-1, output_tokens=-1)
    hl = _headers_list(headers)
    arr = (ctypes.c_char_p * max(1, 2 * len(hl)))()
    for i, (k, v) in enumerate(hl):
        arr[2 * i] = k.encode("latin-1", "replace")
        arr[2 * i + 1] = v.encode("latin-1", "replace")
    if isinstance(body, str):
        body = body.encode()
    resp = L.HttpResponse(status=int(status),
                          error_code=error_code.encode() if error_code else None,
                          body=body, body_len=len(body) if body else 0,
                          headers=arr, n_headers=len(hl), now_unix_ms=0)
    lib.km_outcome_from_http(ctypes.byref(resp), ctypes.byref(out))
    return out


class Lease:
    """One key handed out: `key` is the secret to send, `key_id` its id,
    `meta` the key's metadata.  Finish it once, with release()/report()
    or by leaving `with pool.lease(...)`; repr() never shows the secret."""

    __slots__ = ("_c", "_pool", "_pid", "_done", "_outcome", "model", "estimated_tokens",
                 "__weakref__")

    def __init__(self, pool: "_Core", c: L.Lease, model: Optional[str], tokens: int) -> None:
        self._c = c
        self._pool = pool
        self._pid = os.getpid()
        self._done = False
        self._outcome: Optional[L.Outcome] = None
        self.model = model
        self.estimated_tokens = tokens

    @property
    def key(self) -> str:
        """The secret (the API key to send)."""
        return self._c.secret.decode()

    @property
    def key_id(self) -> str:
        return self._c.key_id.decode()

    @property
    def meta(self) -> Dict[str, str]:
        m = self._c.meta.decode()
        return json.loads(m) if m else {}

    @property
    def elapsed(self) -> float:
        """Seconds since the key was acquired."""
        return max(0, lib.km_now_ns() - self._c.start_ns) / 1e9

    @property
    def done(self) -> bool:
        return self._done

    def __repr__(self) -> str:
        return "<Lease key_id=%r key=%r model=%r%s>" % (
            self.key_id, L.mask(self.key), self.model, " done" if self._done else "")

    __str__ = __repr__

    # What happened, to be applied when the lease is finished.
    def report(self, status: Optional[int] = None, *, headers: Any = None,
               body: Union[bytes, str, None] = None, error_code: Optional[str] = None,
               tokens: Optional[int] = None, input_tokens: Optional[int] = None,
               output_tokens: Optional[int] = None) -> None:
        """Record the provider's answer (HTTP status, headers for Retry-After
        and rate-limit views, error body) and the tokens used; applied when
        the lease ends (the `with` block exits, or release()).  Without a
        status the request counts as a success."""
        out = outcome_from_http(status if status is not None else 200, headers, body,
                                error_code)
        if input_tokens is not None or output_tokens is not None:
            out.input_tokens = input_tokens if input_tokens is not None else -1
            out.output_tokens = output_tokens if output_tokens is not None else -1
            if tokens is None:
                tokens = (input_tokens or 0) + (output_tokens or 0)
        out.tokens = tokens if tokens is not None else -1
        self._outcome = out

    def usage(self, input_tokens: Optional[int] = None, output_tokens: Optional[int] = None,
              tokens: Optional[int] = None) -> None:
        """Record the tokens a successful response used (settles the token
        limits and the spend)."""
        self.report(None, tokens=tokens, input_tokens=input_tokens, output_tokens=output_tokens)

    def release(self, latency: Optional[float] = None) -> None:
        """End the lease with what report() recorded (success if nothing)."""
        self._pool._finish(self, self._outcome, latency)

    def cancel(self) -> None:
        """End the lease as never sent: the token reservation comes back."""
        self._pool._finish(self, L.Outcome(kind=L.OUT_CANCELLED, latency_us=-1, tokens=-1,
                                           input_tokens=-1, output_tokens=-1), None)

    def fail(self, exc: Optional[BaseException] = None) -> None:
        """End the lease as failed; an exception carrying an HTTP status
        (SDK errors) is mapped like report() (429 -> rate limited)."""
        self._pool._finish(self, self._pool._outcome_for(exc), None)


# --------------------------------------------------------------- the core

_KM_KEYS_DEFAULT_SPARE = 64


class _Core:
    """What SyncKeyPool and KeyPool share: the attachment, the pool index,
    the leases handed out by acquire() (by secret, for release(key))."""

    def __init__(self, keys: Optional[Sequence[str]] = None,
                 strategy: Union[SchedulerStrategy, str] = SchedulerStrategy.LEAST_BUSY,
                 default_cooldown: float = 60.0, max_failures: int = 10,
                 acquire_timeout: float = 30.0, *, _attach_to: Optional[Tuple[str, Optional[str]]] = None,
                 _create: Optional[Tuple[str, ConfigLike, int]] = None) -> None:
        self.acquire_timeout = float(acquire_timeout)
        self._lock = threading.Lock()
        self._leases: Dict[str, List[Lease]] = {}
        self._pid = os.getpid()
        self._env: Optional[_Env] = None
        self._closed = False
        self._private = False
        pool_name: Optional[str] = None
        if _attach_to is not None:
            self.segment, pool_name = _segname(_attach_to[0]), _attach_to[1]
            self._env = _attach(self.segment)
        elif _create is not None:
            name, config, mode = _create
            self.segment, pool_name = _segname(name), None
            cfg = _parse_config(config)
            try:
                self._env = _attach(self.segment, create_cfg=cfg, mode=mode)
            finally:
                lib.km_config_free(cfg)
        else:
            # A private segment: one pool "default", unlinked when this
            # object is closed or collected, or at exit, by its creator.
            keys = list(keys or [])
            if not keys:
                raise ValueError("keys: at least one key is required")
            cooldown = max(1, int(math.ceil(default_cooldown)))
            config = {
                "capacity": {"keys": max(_KM_KEYS_DEFAULT_SPARE, 2 * len(keys))},
                "pools": [{
                    "name": "default", "strategy": SchedulerStrategy(strategy).value,
                    "cooldown_s": cooldown, "max_cooldown_s": max(3600, cooldown),
                    "max_failures": int(max_failures),
                    "keys": [{"id": "key-%d" % (i + 1), "secret": k}
                             for i, k in enumerate(keys)]}]}
            self.segment = "keymesh-py-%d-%s" % (os.getpid(), uuid.uuid4().hex[:12])
            cfg = _parse_config(config)
            try:
                self._env = _attach(self.segment, create_cfg=cfg)
            finally:
                lib.km_config_free(cfg)
            self._private = True
            self._finalizer = weakref.finalize(self, _unlink_quietly, self.segment, os.getpid())
        env = self._env
        if pool_name is None:
            info = L.PoolInfo()
            rc = lib.km_pool_info_get(env.ptr, 0, ctypes.byref(info))
            if rc != 0:
                _detach(env)
                _raise(rc, "pool 0")
            pool_name = info.name.decode()
        idx = lib.km_pool_find(env.ptr, pool_name.encode())
        if idx < 0:
            _detach(env)
            _raise(idx, "pool '%s'" % pool_name)
        self.pool_name = pool_name
        self._pool = idx

    # -- attachment, fork-aware
    def _ptr(self) -> int:
        if self._closed:
            raise KeyMeshError("pool is closed")
        if self._pid != os.getpid():
            # Forked: the leases of the parent are not ours; attach anew.
            with self._lock:
                if self._pid != os.getpid():
                    self._leases = {}
                    self._env = None
                    self._pid = os.getpid()
        env = self._env
        if env is None or env.pid != os.getpid() or not env.ptr:
            env = self._env = _attach(self.segment)
        return env.ptr

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        env, self._env = self._env, None
        if env is not None and env.pid == os.getpid():
            _detach(env)
        if self._private:
            self._finalizer()

    def __repr__(self) -> str:
        return "<%s segment=%r pool=%r%s>" % (type(self).__name__, self.segment,
                                             self.pool_name, " closed" if self._closed else "")

    # -- acquire
    def _request(self, model: Optional[str], tokens: int, key_id: Optional[str],
                 strategy: Union[SchedulerStrategy, str, None]) -> L.Request:
        return L.Request(pool=self._pool, strategy=_strategy_code(strategy),
                         tokens=int(tokens), model=model.encode() if model else None,
                         key_id=key_id.encode() if key_id else None)

    def _try(self, req: L.Request) -> Tuple[int, L.Lease]:
        c = L.Lease()
        rc = lib.km_acquire(self._ptr(), ctypes.byref(req), ctypes.byref(c))
        return rc, c

    def _wait(self, req: L.Request, timeout: float) -> Tuple[int, L.Lease]:
        c = L.Lease()
        ms = max(0, min(int(timeout * 1000), 0xFFFFFFFF))
        rc = lib.km_acquire_wait(self._ptr(), ctypes.byref(req), ctypes.byref(c), ms)
        return rc, c

    def _made(self, c: L.Lease, model: Optional[str], tokens: int, track: bool) -> Lease:
        lease = Lease(self, c, model, tokens)
        if track:
            with self._lock:
                self._leases.setdefault(lease.key, []).append(lease)
        return lease

    # -- release
    def _take(self, key: str) -> Optional[Lease]:
        self._ptr()
        with self._lock:
            lst = self._leases.get(key)
            if not lst:
                return None
            lease = lst.pop(0)
            if not lst:
                del self._leases[key]
            return lease

    def _finish(self, lease: Lease, out: Optional[L.Outcome], latency: Optional[float]) -> None:
        if lease._done:
            raise KeyMeshError("lease already finished")
        if lease._pid != os.getpid():
            raise KeyMeshError("lease belongs to another process (acquired before fork)")
        if out is None:
            out = L.Outcome(kind=L.OUT_SUCCESS, latency_us=-1, tokens=-1,
                            input_tokens=-1, output_tokens=-1)
        if latency is not None and latency > 0:
            out.latency_us = int(latency * 1e6)
        lease._done = True
        with self._lock:
            lst = self._leases.get(lease.key)
            if lst and lease in lst:
                lst.remove(lease)
                if not lst:
                    del self._leases[lease.key]
        rc = lib.km_release(self._ptr(), ctypes.byref(lease._c), ctypes.byref(out))
        if rc not in (0, L.ESTALE):
            _raise(rc, "release")

    def _outcome_for(self, exc: Optional[BaseException]) -> L.Outcome:
        if exc is not None and not isinstance(exc, Exception):
            # Cancellation (asyncio.CancelledError), KeyboardInterrupt,
            # SystemExit: the caller gave up, the key did nothing wrong.
            return L.Outcome(kind=L.OUT_CANCELLED, latency_us=-1, tokens=-1,
                             input_tokens=-1, output_tokens=-1)
        if exc is not None:
            status, headers, body = _status_of(exc)
            if status is not None:
                return outcome_from_http(status, headers, body)
        return L.Outcome(kind=L.OUT_FAILURE, latency_us=-1, tokens=-1,
                         input_tokens=-1, output_tokens=-1)

    def _mark(self, key: str, kind: int, retry_after: Optional[float]) -> None:
        out = L.Outcome(kind=kind, latency_us=-1, tokens=-1, input_tokens=-1, output_tokens=-1,
                        retry_after_s=float(retry_after) if retry_after else 0.0)
        lease = self._take(key)
        if lease is None:
            # No lease of this key is out here (already released, or the key
            # came from elsewhere): take a pinned lease on it to record the
            # outcome.  A key already cooling or at a limit needs nothing.
            kid = self._key_id_of(key)
            if kid is None:
                raise KeyMeshError("key not in the pool")
            rc, c = self._try(self._request(None, 0, kid, None))
            if rc != 0:
                if rc in (L.EAGAIN, L.EUNAVAIL):
                    return
                _raise(rc, "mark")
            lease = self._made(c, None, 0, track=False)
        self._finish(lease, out, None)

    def _key_id_of(self, key: str) -> Optional[str]:
        # Secrets are never readable from the segment except through a
        # lease, so only keys leased here can be matched exactly; otherwise
        # compare the masked form, which is unique enough only if unique.
        m = L.mask(key)
        hits = [k["id"] for k in self._keys() if k["key"] == m]
        return hits[0] if len(hits) == 1 else None

    # -- reading
    def _keys(self) -> List[Dict[str, Any]]:
        ptr = self._ptr()
        pinfo = L.PoolInfo()
        rc = lib.km_pool_info_get(ptr, self._pool, ctypes.byref(pinfo))
        if rc != 0:
            _raise(rc, "pool")
        now = lib.km_now_ns()
        out = []
        for i in range(pinfo.n_keys):
            k = lib.km_pool_key(ptr, self._pool, i)
            if k < 0:
                break
            ki = L.KeyInfo()
            if lib.km_key_info_get(ptr, k, ctypes.byref(ki)) != 0:
                continue
            limits = {}
            for w, wname in enumerate(L.WINDOWS):
                li = ki.limits[w]
                if li.limit:
                    limits[wname] = {"limit": li.limit, "burst": li.burst,
                                     "mode": "sliding" if li.mode == 1 else "token_bucket",
                                     "available": li.available}
            cool = max(0, ki.cooldown_until_ns - now) / 1e9 if ki.cooldown_until_ns else 0.0
            d: Dict[str, Any] = {
                "id": ki.id.decode(), "key": ki.secret_masked.decode("utf-8", "replace"),
                "state": lib.km_key_state_name(ki.state).decode(),
                "weight": ki.weight, "inflight": ki.inflight, "max_inflight": ki.max_inflight,
                "acquired": ki.acquired,
                "consecutive_failures": ki.consecutive_failures,
                "consecutive_429s": ki.consecutive_429s,
                "latency_ema_ms": ki.latency_ema_us / 1000.0 if ki.latency_ema_us else None,
                "success_rate": ki.success_ppm / 1e6,
                "cooldown_remaining_s": round(cool, 3),
                "abandoned": ki.abandoned, "stale_releases": ki.stale_releases,
                "tokens_used": ki.tokens_used, "spent_usd": ki.spent_microusd / 1e6,
                "limits": limits,
                "meta": json.loads(ki.meta.decode()) if ki.meta else {},
            }
            for o, oname in enumerate(L.OUTCOMES):
                d[oname] = ki.outcomes[o]
            d["_index"] = k
            d["_available"] = (ki.state == L.KEY_ACTIVE and ki.inflight < ki.max_inflight and
                               all(v["available"] >= 1 for v in limits.values()))
            out.append(d)
        return out

    def _status(self) -> Dict[str, Any]:
        ptr = self._ptr()
        pinfo = L.PoolInfo()
        rc = lib.km_pool_info_get(ptr, self._pool, ctypes.byref(pinfo))
        if rc != 0:
            _raise(rc, "pool")
        keys = self._keys()
        for k in keys:
            k.pop("_index")
            k["available"] = k.pop("_available")
        return {"segment": self.segment, "pool": self.pool_name,
                "strategy": _STRATEGY_NAMES.get(pinfo.strategy, str(pinfo.strategy)),
                "total_keys": len(keys),
                "available_keys": sum(1 for k in keys if k["available"]),
                "inflight": sum(k["inflight"] for k in keys),
                "held_here": sum(len(v) for v in self._leases.values()),
                "waiters": pinfo.waiters, "spent_usd": pinfo.spent_microusd / 1e6,
                "keys": keys}

    def _available_count(self) -> int:
        return sum(1 for k in self._keys() if k["_available"])

    # -- reconfiguration (bound lazily: km_key_add and friends)
    def _add_key(self, key: str, id: Optional[str], fields: Dict[str, Any]) -> str:
        fn = lib.optional("km_key_add")
        if fn is None:
            raise KeyMeshError("add_key: this libkeymesh (%s) has no km_key_add; "
                               "a newer library is needed" % (lib.path,))
        ptr = self._ptr()
        err = ctypes.create_string_buffer(512)
        auto = id is None
        n = len(self._keys()) + 1
        for _ in range(1000):
            kid = id if id is not None else "key-%d" % n
            obj = dict(fields)
            obj["id"] = kid
            obj["secret"] = key
            rc = fn(ptr, self._pool, json.dumps(obj).encode(), err, len(err))
            if rc >= 0:
                return kid
            if auto and (rc == L.EEXIST or "EXIST" in L.err_name(rc)):
                n += 1
                continue
            msg = err.value.decode("utf-8", "replace") if rc == L.ECONFIG else ""
            msg = msg.replace(key, L.mask(key)) if key else msg
            raise KeyMeshError("add_key %r: %s%s" % (kid, L.strerror(rc),
                                                     (": " + msg) if msg else ""), rc)
        raise KeyMeshError("add_key: no free key id")

    def _key_index(self, key_or_id: str) -> int:
        ptr = self._ptr()
        k = lib.km_key_find(ptr, self._pool, key_or_id.encode())
        if k < 0:
            kid = self._key_id_of(key_or_id)
            if kid is not None:
                k = lib.km_key_find(ptr, self._pool, kid.encode())
        if k < 0:
            raise KeyMeshError("no such key in pool %r" % self.pool_name, L.ENOKEY)
        return k

    def _remove_key(self, key_or_id: str) -> None:
        fn = lib.optional("km_key_remove")
        if fn is None:
            raise KeyMeshError("remove_key: this libkeymesh has no km_key_remove")
        rc = fn(self._ptr(), self._key_index(key_or_id))
        if rc != 0:
            _raise(rc, "remove_key")

    def _set_weight(self, key_or_id: str, weight: int) -> None:
        fn = lib.optional("km_key_set_weight")
        if fn is None:
            raise KeyMeshError("set_weight: this libkeymesh has no km_key_set_weight")
        rc = fn(self._ptr(), self._key_index(key_or_id), int(weight))
        if rc != 0:
            _raise(rc, "set_weight")

    def _set_state(self, key_or_id: str, state: int) -> None:
        rc = lib.km_key_set_state(self._ptr(), self._key_index(key_or_id), state)
        if rc != 0:
            _raise(rc, "set_state")


def _key_fields(weight: Optional[int], limits: Optional[Mapping[str, Any]],
                max_inflight: Optional[int], meta: Optional[Mapping[str, str]],
                extra: Mapping[str, Any]) -> Dict[str, Any]:
    f: Dict[str, Any] = dict(extra)
    if weight is not None:
        f["weight"] = int(weight)
    if limits is not None:
        f["limits"] = dict(limits)
    if max_inflight is not None:
        f["max_inflight"] = int(max_inflight)
    if meta is not None:
        f["meta"] = dict(meta)
    return f


# ------------------------------------------------------------- SyncKeyPool

class SyncKeyPool(_Core):
    """A pool of API keys shared by every process attached to its segment.

    ``SyncKeyPool(keys=[...])`` makes a private segment (this process and
    its forked children); ``SyncKeyPool.create(name, config)`` and
    ``SyncKeyPool.open(name)`` share one between unrelated processes.
    Thread-safe.  Blocking calls release the GIL."""

    @classmethod
    def create(cls, name: str, config: ConfigLike, *, mode: int = 0o600,
               pool: Optional[str] = None, acquire_timeout: float = 30.0) -> "SyncKeyPool":
        """Create segment `name` from `config` (a dict, JSON text, or a path
        to a JSON file; format in docs/config.md) and attach to `pool` (the
        first pool by default).  KeyMeshError(EEXIST) if it exists."""
        self = cls.__new__(cls)
        _Core.__init__(self, acquire_timeout=acquire_timeout,
                       _create=(name, config, mode))
        if pool is not None:
            self._select(pool)
        return self

    @classmethod
    def open(cls, name: str, pool: Optional[str] = None, *,
             acquire_timeout: float = 30.0) -> "SyncKeyPool":
        """Attach to existing segment `name`, pool `pool` (the first by default)."""
        self = cls.__new__(cls)
        _Core.__init__(self, acquire_timeout=acquire_timeout, _attach_to=(name, pool))
        return self

    def _select(self, pool: str) -> None:
        idx = lib.km_pool_find(self._ptr(), pool.encode())
        if idx < 0:
            _raise(idx, "pool '%s'" % pool)
        self._pool, self.pool_name = idx, pool

    def pool(self, name: str) -> "SyncKeyPool":
        """Another pool of the same segment (the attachment is shared)."""
        return type(self).open(self.segment, name, acquire_timeout=self.acquire_timeout)

    # -- the KeyMesh Python library's API
    def acquire(self, timeout: Optional[float] = None, *, model: Optional[str] = None,
                estimated_tokens: int = 0, key_id: Optional[str] = None,
                strategy: Union[SchedulerStrategy, str, None] = None) -> str:
        """A key (the secret).  Waits up to `timeout` seconds (default
        acquire_timeout) for one to become admissible, then raises
        NoAvailableKeyError; KeyExhaustedError if none can without an
        operator.  Give it back with release(key), mark_failed(key) or
        mark_rate_limited(key)."""
        return self._acquire(timeout, model, estimated_tokens, key_id, strategy, True).key

    def _acquire(self, timeout: Optional[float], model: Optional[str], tokens: int,
                 key_id: Optional[str], strategy: Any, track: bool) -> Lease:
        t = self.acquire_timeout if timeout is None else float(timeout)
        req = self._request(model, tokens, key_id, strategy)
        rc, c = self._wait(req, t) if t > 0 else self._try(req)
        if rc != 0:
            _raise(rc, "acquire from pool '%s'" % self.pool_name, c.retry_at_ns)
        return self._made(c, model, tokens, track)

    def release(self, key: str, latency: float = 0.0, *, tokens: Optional[int] = None) -> None:
        """The request made with `key` succeeded; `latency` in seconds (0:
        measured since acquire)."""
        lease = self._take(key)
        if lease is None:
            raise KeyMeshError("release: no lease of that key is held here")
        out = L.Outcome(kind=L.OUT_SUCCESS, latency_us=-1,
                        tokens=tokens if tokens is not None else -1,
                        input_tokens=-1, output_tokens=-1)
        self._finish(lease, out, latency)

    def mark_failed(self, key: str) -> None:
        """The request made with `key` failed (5xx, timeout, network): after
        max_failures in a row the key cools down."""
        self._mark(key, L.OUT_FAILURE, None)

    def mark_rate_limited(self, key: str, cooldown: Optional[float] = None) -> None:
        """The provider answered 429: the key cools down for `cooldown`
        seconds (its Retry-After), or for default_cooldown doubling per
        consecutive 429 when None."""
        self._mark(key, L.OUT_RATE_LIMITED, cooldown)

    def add_key(self, key: str, *, id: Optional[str] = None, weight: Optional[int] = None,
                limits: Optional[Mapping[str, Any]] = None, max_inflight: Optional[int] = None,
                meta: Optional[Mapping[str, str]] = None, **fields: Any) -> str:
        """Add a key to the pool, for every attached process; returns its id.
        Needs spare "capacity": {"keys": N} and a libkeymesh with km_key_add."""
        return self._add_key(key, id, _key_fields(weight, limits, max_inflight, meta, fields))

    def remove_key(self, key_or_id: str) -> None:
        self._remove_key(key_or_id)

    def set_weight(self, key_or_id: str, weight: int) -> None:
        self._set_weight(key_or_id, weight)

    def disable(self, key_or_id: str) -> None:
        self._set_state(key_or_id, L.KEY_DISABLED)

    def enable(self, key_or_id: str) -> None:
        self._set_state(key_or_id, L.KEY_ACTIVE)

    def status(self) -> Dict[str, Any]:
        """The pool and each key: state, in-flight, counters, limits; secrets masked."""
        return self._status()

    def available_count(self) -> int:
        """Keys admissible right now (active, below their in-flight cap,
        every limit with room for one more request)."""
        return self._available_count()

    def close(self) -> None:
        """Detach (leases still held here count as abandoned).  A private
        pool's segment is removed."""
        self._close()

    # -- leases
    @contextlib.contextmanager
    def lease(self, model: Optional[str] = None, estimated_tokens: int = 0, *,
              timeout: Optional[float] = None, key_id: Optional[str] = None,
              strategy: Union[SchedulerStrategy, str, None] = None) -> Iterator[Lease]:
        """Acquire a key for one request; on leaving the block release it,
        timed, with what Lease.report() recorded (success by default).  An
        exception is a failure (an SDK error with HTTP status 429 cools the
        key down, 401 invalidates it: docs/outcomes.md), and propagates."""
        lease = self._acquire(timeout, model, estimated_tokens, key_id, strategy, False)
        try:
            yield lease
        except BaseException as exc:
            if not lease._done:
                lease._pool._finish(lease, self._outcome_for(exc), None)
            raise
        else:
            if not lease._done:
                lease.release()

    def __enter__(self) -> "SyncKeyPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------- KeyPool

_POLL_CAP_S = 0.25  # longest sleep between tries: picks up enables and releases


class KeyPool(_Core):
    """SyncKeyPool's API for asyncio.  acquire() never blocks the event
    loop: while no key is admissible it awaits asyncio.sleep() until the
    time KeyMesh says one may be (at most 250 ms, so releases, enables and
    refunds are noticed), then tries again."""

    @classmethod
    def create(cls, name: str, config: ConfigLike, *, mode: int = 0o600,
               pool: Optional[str] = None, acquire_timeout: float = 30.0) -> "KeyPool":
        """As SyncKeyPool.create (a quick system call: not a coroutine)."""
        self = cls.__new__(cls)
        _Core.__init__(self, acquire_timeout=acquire_timeout, _create=(name, config, mode))
        if pool is not None:
            SyncKeyPool._select(self, pool)  # type: ignore[arg-type]
        return self

    @classmethod
    def open(cls, name: str, pool: Optional[str] = None, *,
             acquire_timeout: float = 30.0) -> "KeyPool":
        self = cls.__new__(cls)
        _Core.__init__(self, acquire_timeout=acquire_timeout, _attach_to=(name, pool))
        return self

    def pool(self, name: str) -> "KeyPool":
        return type(self).open(self.segment, name, acquire_timeout=self.acquire_timeout)

    async def acquire(self, timeout: Optional[float] = None, *, model: Optional[str] = None,
                      estimated_tokens: int = 0, key_id: Optional[str] = None,
                      strategy: Union[SchedulerStrategy, str, None] = None) -> str:
        return (await self._acquire(timeout, model, estimated_tokens, key_id, strategy,
                                    True)).key

    async def _acquire(self, timeout: Optional[float], model: Optional[str], tokens: int,
                       key_id: Optional[str], strategy: Any, track: bool) -> Lease:
        t = self.acquire_timeout if timeout is None else float(timeout)
        req = self._request(model, tokens, key_id, strategy)
        deadline = lib.km_now_ns() + int(t * 1e9)
        while True:
            rc, c = self._try(req)
            if rc == 0:
                return self._made(c, model, tokens, track)
            now = lib.km_now_ns()
            if rc != L.EAGAIN or now >= deadline:
                if rc == L.EAGAIN:
                    rc = L.ETIMEDOUT
                _raise(rc, "acquire from pool '%s'" % self.pool_name, c.retry_at_ns)
            wake = c.retry_at_ns if c.retry_at_ns > now else now + 1_000_000
            wake = min(wake, deadline, now + int(_POLL_CAP_S * 1e9))
            await asyncio.sleep((wake - now) / 1e9)

    async def release(self, key: str, latency: float = 0.0, *,
                      tokens: Optional[int] = None) -> None:
        SyncKeyPool.release(self, key, latency, tokens=tokens)  # type: ignore[arg-type]

    async def mark_failed(self, key: str) -> None:
        self._mark(key, L.OUT_FAILURE, None)

    async def mark_rate_limited(self, key: str, cooldown: Optional[float] = None) -> None:
        self._mark(key, L.OUT_RATE_LIMITED, cooldown)

    async def add_key(self, key: str, *, id: Optional[str] = None, weight: Optional[int] = None,
                      limits: Optional[Mapping[str, Any]] = None,
                      max_inflight: Optional[int] = None,
                      meta: Optional[Mapping[str, str]] = None, **fields: Any) -> str:
        return self._add_key(key, id, _key_fields(weight, limits, max_inflight, meta, fields))

    async def remove_key(self, key_or_id: str) -> None:
        self._remove_key(key_or_id)

    async def set_weight(self, key_or_id: str, weight: int) -> None:
        self._set_weight(key_or_id, weight)

    async def disable(self, key_or_id: str) -> None:
        self._set_state(key_or_id, L.KEY_DISABLED)

    async def enable(self, key_or_id: str) -> None:
        self._set_state(key_or_id, L.KEY_ACTIVE)

    async def status(self) -> Dict[str, Any]:
        return self._status()

    async def available_count(self) -> int:
        return self._available_count()

    async def close(self) -> None:
        self._close()

    @contextlib.asynccontextmanager
    async def lease(self, model: Optional[str] = None, estimated_tokens: int = 0, *,
                    timeout: Optional[float] = None, key_id: Optional[str] = None,
                    strategy: Union[SchedulerStrategy, str, None] = None
                    ) -> AsyncIterator[Lease]:
        """As SyncKeyPool.lease, in `async with`."""
        lease = await self._acquire(timeout, model, estimated_tokens, key_id, strategy, False)
        try:
            yield lease
        except BaseException as exc:
            if not lease._done:
                self._finish(lease, self._outcome_for(exc), None)
            raise
        else:
            if not lease._done:
                lease.release()

    async def __aenter__(self) -> "KeyPool":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._close()
