"""SyncKeyPool, KeyPool (asyncio), Lease and the exceptions.

One attachment per process and segment: every pool object of a process that
names the same segment shares one km_env (KeyMesh counts a process attached
twice as a fault).  After fork() the child never touches the handle it
inherited; it attaches again, by name, the first time it uses a pool.  So a
pool made in a gunicorn master (or at import time with --preload) just works
in every worker.

The hot path (acquire, release, lease() enter/exit) runs in the C extension
keymesh._ext when it was built and loads, else in keymesh._hot on ctypes;
KEYMESH_NO_EXT=1 forces the latter.  keymesh.implementation() says which.
Everything slower (creating and opening segments, status, reconfiguration,
outcomes from exceptions, storage, asyncio waiting) is here, shared by both.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import enum
import grp
import hashlib
import hmac
import json
import math
import os
import pwd
import re
import select
import threading
import time
import uuid
import weakref
from typing import (Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union)

from . import _hot
from . import _lib as L
from ._hot import H, _PyCore, _PyLease
from ._lib import lib

__all__ = ["KeyMeshError", "NoAvailableKeyError", "KeyExhaustedError", "SegmentRemovedError",
           "SchedulerStrategy", "Lease", "SyncKeyPool", "KeyPool", "unlink",
           "JSONStorage", "SyncJSONStorage"]

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


class KeyExhaustedError(NoAvailableKeyError):
    """No key can become usable without an operator: all disabled, invalid
    (401/403), exhausted (quota), or the pool's hard budget is spent; with
    exhaust_on_max_failures=True, also a key that reached max_failures
    (raised by the mark_failed() that took it there).  A special case of
    NoAvailableKeyError, so code that catches that one catches this too."""


class SegmentRemovedError(KeyMeshError):
    """The pool's segment was removed (kmctl destroy, keymesh.unlink) or
    replaced by another of the same name while this pool was attached.  The
    old mapping would go on working, but apart from every process that
    attaches from now on: this pool refuses instead.  Open it again."""


class UnknownKeyError(KeyMeshError, KeyError):
    """A key (secret) this pool does not know.  Also a KeyError, as the
    in-process pools raise."""

    def __str__(self) -> str:
        return Exception.__str__(self)


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


def _segment_detail(name: str, rc: int, mode: Optional[int] = None) -> str:
    """What kmctl says after its first line for a segment error (its
    explain_access and the description of an object that is no segment),
    as text to append; "" when there is nothing to add.  From the object's
    stat, as kmctl and km_segment_describe take it."""
    if rc == L.EINVAL and mode is not None:
        if mode & ~0o777:
            return ("mode %04o: the setuid, setgid and sticky bits have no meaning on a "
                    "segment and are refused; give permission bits only (0o600, or 0o660 "
                    "shared with a group)" % mode)
        if mode & 0o002:
            return ("mode %04o makes the segment world-writable: any local user could change "
                    "its keys and limits and read every secret in it; use 0o600, or 0o660 "
                    "shared with a group" % mode)
        return ""
    if rc not in (L.EACCES, L.ENOTREADY, L.ENOTKM):
        return ""
    path = "/dev/shm/" + name
    try:
        st = os.stat(path)
    except OSError:
        return ""
    if rc == L.EACCES:
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = "?"
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = "?"
        me = os.geteuid()
        if st.st_uid == me:
            need = "its owner's read and write bits"
        elif st.st_gid == os.getegid() or st.st_gid in os.getgroups():
            need = "read and write for its group (--mode 0660)"
        else:
            need = "membership of its group, or its owner's user id"
        return ("segment '%s' is mode %04o, owner %s, group %s; this process (uid %d) needs %s"
                % (name, st.st_mode & 0o7777, owner, group, me, need))
    if st.st_size == 0:
        return ("an empty shared-memory object (0 bytes, mode %04o, uid %d), not a KeyMesh "
                "segment: another program's, or a creation that died before sizing it; remove "
                "it with 'kmctl destroy --force %s' or 'rm %s'"
                % (st.st_mode & 0o7777, st.st_uid, name, path))
    return ""


def _raise_segment(rc: int, name: str, mode: Optional[int] = None) -> None:
    """_raise for an error on segment `name`, with kmctl's detail.  An
    object that is no segment is named for what it is instead of the code's
    message ("not initialised (being created?)"), as kmctl does."""
    detail = _segment_detail(name, rc, mode)
    if not detail:
        _raise(rc, "segment '%s'" % name)
    if rc in (L.ENOTREADY, L.ENOTKM):
        raise KeyMeshError("segment '%s': %s" % (name, detail), rc)
    raise KeyMeshError("segment '%s': %s; %s" % (name, L.strerror(rc), detail), rc)


def _raise_closed() -> None:
    raise KeyMeshError("pool is closed")


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


def _seg_ident(name: str) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat("/dev/shm/" + name)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class _Env:
    """One km_env of this process, shared by the pools that name its segment.
    `busy` counts threads inside km_acquire_wait on it (km_close waits for
    them to leave: they sleep at most _hot.WAIT_CHUNK_MS at a time and look
    at `closing` between two sleeps)."""

    __slots__ = ("name", "ptr", "pid", "refs", "busy", "closing", "ident")

    def __init__(self, name: str, ptr: int) -> None:
        self.name = name
        self.ptr = ptr
        self.pid = os.getpid()
        self.refs = 0
        self.busy = 0
        self.closing = False
        # A private segment has no name that could be removed or replaced.
        self.ident = None if name in _private_fds else _seg_ident(name)


_envs: Dict[str, _Env] = {}
_stale_envs: set = set()  # replaced in _envs, still used by older pools
# Private segments (km_create_private: a memfd, no name in /dev/shm): their
# pool's name -> the descriptor of the handle that created it.  Kept across
# fork(): the child inherits the descriptor and attaches through it
# (km_open_fd); it is dropped when the creating handle closes it.
_private_fds: Dict[str, int] = {}
_envs_lock = threading.Lock()
_storage_pools: "weakref.WeakSet[_Core]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The child must not use or close what it inherited (the process slot
    # and leases belong to the parent): forget it and attach again on use.
    global _envs_lock
    _envs_lock = threading.Lock()
    _envs.clear()
    _stale_envs.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _km_close(env: _Env) -> None:
    ptr, env.ptr = env.ptr, 0
    if ptr and env.name in _private_fds and lib.km_fd(ptr) == _private_fds[env.name]:
        del _private_fds[env.name]  # km_close closes that descriptor
    env.closing = True
    # Threads inside km_acquire_wait on this handle leave within one chunk.
    deadline = time.monotonic() + 5 * _hot.WAIT_CHUNK_MS / 1000.0
    while env.busy > 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    if ptr and env.busy == 0:
        lib.km_close(ptr)
    # else: a waiter is stuck (it cannot be: each sleeps <= a chunk); leave
    # the handle mapped rather than free it under the waiter.


def _close_all_at_exit() -> None:
    # A process that exits normally detaches, so its slot is freed and any
    # lease it still holds is released (abandoned) at once, not left for a
    # reaper.  Only this process's attachments: a forked child never closes
    # what it inherited.  Pools with storage= save their state first.
    for p in list(_storage_pools):
        try:
            if not p._closed and p._gen_ok():
                p.save()
        except Exception:
            pass
    with _envs_lock:
        mine = [e for e in list(_envs.values()) + list(_stale_envs)
                if e.pid == os.getpid()]
        _envs.clear()
        _stale_envs.clear()
    for e in mine:
        _km_close(e)


atexit.register(_close_all_at_exit)


def _private_env(name: str, ptr: int) -> _Env:
    """Register a handle on a new private segment (under _envs_lock)."""
    _private_fds[name] = lib.km_fd(ptr)
    env = _Env(name, ptr)
    env.refs = 1
    _envs[name] = env
    return env


def _attach(name: str, create_cfg: Optional[int] = None, mode: int = 0o600,
            private: bool = False) -> _Env:
    with _envs_lock:
        env = _envs.get(name)
        if env is not None and env.pid == os.getpid() and env.ident is not None and \
                _seg_ident(name) != env.ident:
            # Removed or replaced since: the pools still on the old one
            # refuse (SegmentRemovedError); new ones attach to what is there.
            _stale_envs.add(_envs.pop(name))
            env = None
        if env is not None and env.pid == os.getpid():
            if create_cfg is not None:
                raise KeyMeshError("segment '%s': %s" % (name, L.strerror(L.EEXIST)),
                                   L.EEXIST)
            env.refs += 1
            return env
        ptr = ctypes.c_void_p()
        if private:
            rc = lib.km_create_private(create_cfg, ctypes.byref(ptr))
            if rc == 0:
                return _private_env(name, ptr.value or 0)
        elif create_cfg is not None:
            rc = lib.km_create(name.encode(), create_cfg, mode, ctypes.byref(ptr))
        elif name in _private_fds:
            # A private segment inherited across fork(): its descriptor.
            rc = lib.km_open_fd(_private_fds[name], 0, ctypes.byref(ptr))
        else:
            rc = lib.km_open(name.encode(), ctypes.byref(ptr))
        if rc != 0:
            if rc == L.ENOENT:
                raise SegmentRemovedError("segment '%s': %s (removed, or never created)"
                                          % (name, L.strerror(rc)), rc)
            _raise_segment(rc, name, mode if create_cfg is not None and not private else None)
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
        else:
            _stale_envs.discard(env)
    _km_close(env)


def unlink(name: str) -> None:
    """Remove segment `name` (processes attached keep working until they
    close).  KeyMeshError(ENOENT) if there is none."""
    rc = lib.km_unlink(_segname(name).encode())
    if rc != 0:
        _raise(rc, "segment '%s'" % _segname(name))


def _unlink_quietly(name: str, pid: int, memfd: bool = False) -> None:
    # A private segment in a memfd has no name: it goes with its last user.
    if os.getpid() == pid and not memfd:
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


# ---------------------------------------------------------------- outcomes

def _hdr_text(x: Any) -> str:
    return x.decode("latin-1") if isinstance(x, (bytes, bytearray)) else str(x)


def _headers_list(headers: Any) -> List[Tuple[str, str]]:
    """(name, value) pairs of a mapping, an httpx.Headers (every value of
    a repeated header) or an iterable of pairs (httpx.Headers.raw: bytes);
    keymesh._ext's hdr_list() reads the same shapes."""
    if headers is None:
        return []
    if hasattr(headers, "multi_items"):      # httpx.Headers: every value
        items = headers.multi_items()
    else:
        items = headers.items() if hasattr(headers, "items") else headers
    return [(_hdr_text(k), _hdr_text(v)) for k, v in items]


def _status_of(exc: BaseException) -> Tuple[Optional[int], Any, Optional[bytes]]:
    """(HTTP status, headers, body) that an exception carries, as raised by
    the OpenAI and Anthropic SDKs (status_code, response), httpx
    (response.status_code), requests (response.status_code) and urllib
    (HTTPError.code, .headers)."""
    status = None
    for attr in ("status_code", "status", "code"):
        v = getattr(exc, attr, None)
        if isinstance(v, int) and not isinstance(v, bool) and 100 <= v < 600:
            status = v
            break
    try:
        resp = getattr(exc, "response", None)
    except Exception:  # httpx raises RuntimeError for a request error's .response
        resp = None
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


def _otuple(o: L.Outcome) -> tuple:
    return tuple(getattr(o, f) for f in _hot.OTUPLE_FIELDS)


def _kind_tuple(kind: int, retry_after_s: float = 0.0) -> tuple:
    return (kind, -1, -1, float(retry_after_s), 0, 0, 0, 0, 0, -1, -1)


_CANCELLED = _kind_tuple(L.OUT_CANCELLED)
_FAILURE = _kind_tuple(L.OUT_FAILURE)


def _nonneg(name: str, v: Optional[int]) -> Optional[int]:
    if v is None:
        return None
    v = int(v)
    if v < 0:
        raise ValueError("%s must be >= 0 (got %d)" % (name, v))
    return v


def _report_tuple(status: Optional[int], headers: Any, body: Any, error_code: Optional[str],
                  tokens: Optional[int], input_tokens: Optional[int],
                  output_tokens: Optional[int]) -> tuple:
    tokens = _nonneg("tokens", tokens)
    input_tokens = _nonneg("input_tokens", input_tokens)
    output_tokens = _nonneg("output_tokens", output_tokens)
    out = outcome_from_http(status if status is not None else 200, headers, body, error_code)
    if input_tokens is not None or output_tokens is not None:
        out.input_tokens = input_tokens if input_tokens is not None else -1
        out.output_tokens = output_tokens if output_tokens is not None else -1
        if tokens is None:
            tokens = (input_tokens or 0) + (output_tokens or 0)
    out.tokens = tokens if tokens is not None else -1
    return _otuple(out)


# Text of an exception without an HTTP status that means a rate limit, as
# SDKs and wrappers word it: "429", "rate limit", "rate_limit_exceeded",
# "Rate limit reached", "RateLimitError", "too many requests".
_RATE_TEXT = re.compile(r"(?<!\d)429(?!\d)|rate[ _-]?limit|too many requests", re.I)


def _exc_http(exc: Optional[BaseException]) -> tuple:
    """What an exception ending a lease says: (status, headers, body) if it
    carries an HTTP answer (mapped by km_outcome_from_http: in keymesh._ext
    directly, here by _outcome_for_exc), else an outcome tuple."""
    if exc is not None and not isinstance(exc, Exception):
        # Cancellation (asyncio.CancelledError), KeyboardInterrupt,
        # SystemExit: the caller gave up, the key did nothing wrong.
        return _CANCELLED
    if exc is None:
        return _FAILURE
    status, headers, body = _status_of(exc)
    if status is not None:
        return (status, headers, body)
    text = "%s %s" % (type(exc).__name__, exc)
    if _RATE_TEXT.search(text):
        ra = getattr(exc, "retry_after", None)
        ra = float(ra) if isinstance(ra, (int, float)) and ra > 0 else 0.0
        return _kind_tuple(L.OUT_RATE_LIMITED, ra)
    return _FAILURE


def _outcome_for_exc(exc: Optional[BaseException]) -> tuple:
    r = _exc_http(exc)
    if len(r) == 3:
        return _otuple(outcome_from_http(*r))
    return r


def _meta_loads(text: str) -> Dict[str, Any]:
    return json.loads(text) if text else {}


# ----------------------------------------------------- the extension, or not

def _load_ext() -> Tuple[Any, str]:
    """keymesh._ext if it is built for this interpreter and bound to the
    libkeymesh that _lib loaded; else (None, why)."""
    if os.environ.get("KEYMESH_NO_EXT", "") not in ("", "0"):
        return None, "KEYMESH_NO_EXT is set"
    lib.load()  # RTLD_GLOBAL first: the extension binds to this copy
    try:
        from . import _ext as m  # type: ignore[attr-defined]
    except ImportError as e:
        return None, "not built (%s)" % (e,)
    addr = ctypes.cast(lib.km_acquire, ctypes.c_void_p).value
    if m.acquire_fn_address() != addr:
        return None, "bound to another copy of libkeymesh than %s" % (lib.path,)
    if m.header_version() != lib.km_version().decode():
        return None, "built for libkeymesh %s, loaded %s" % (m.header_version(),
                                                             lib.km_version().decode())
    return m, ""


_ext, _ext_why = _load_ext()

if _ext is not None:
    _HotCore: Any = _ext.Core
    Lease: Any = _ext.Lease
else:
    _HotCore = _PyCore
    Lease = _PyLease


def implementation() -> str:
    """"c-extension" when the hot path runs in keymesh._ext, "ctypes"
    otherwise (implementation_detail() says why)."""
    return "c-extension" if _ext is not None else "ctypes"


def implementation_detail() -> str:
    return "keymesh._ext (%s)" % _ext.__file__ if _ext is not None else \
        "ctypes: extension not used: %s" % _ext_why


# ----------------------------------------------------------------- storage

class JSONStorage:
    """storage= for KeyPool/SyncKeyPool: a JSON state file at `path`.

    The file holds a KeyMesh snapshot (km_snapshot_json_ex) with each
    secret sealed (XChaCha20-Poly1305) under a key derived from the pool's
    own secrets (or storage_key= / $KEYMESH_STORAGE_KEY), and per key the
    counters under the first 16 hex digits of the secret's SHA-256, never
    the secret.  A pool made with the same keys restores its state from it:
    counters, cooldowns, limit windows, keys added at run time.  Written
    atomically (mode 0600) by close(), save() and at exit."""

    def __init__(self, path: Union[str, "os.PathLike[str]"] = "keymesh_state.json") -> None:
        self.path = os.fspath(path)


SyncJSONStorage = JSONStorage


def _storage_path(storage: Any) -> Optional[str]:
    if storage is None:
        return None
    if isinstance(storage, (str, bytes, os.PathLike)):
        return os.fsdecode(storage)
    for attr in ("path", "_path"):
        p = getattr(storage, attr, None)
        if p is not None:
            return os.fsdecode(os.fspath(p))
    return None  # an in-memory storage object: nothing to keep


def _storage_key(secrets: Sequence[str], given: Any) -> bytes:
    given = given if given is not None else os.environ.get("KEYMESH_STORAGE_KEY")
    if given is not None:
        raw = given.encode() if isinstance(given, str) else bytes(given)
        out = ctypes.create_string_buffer(32)
        if lib.km_snapshot_key_parse(raw, len(raw), out) != 0:
            raise ValueError("storage_key: 64 hex digits, 44 base64 characters or 32 bytes")
        return out.raw
    # Only someone who already holds every secret can open the file.
    h = hashlib.sha256(b"keymesh-python-storage-v1\0")
    for s in sorted(set(secrets)):
        h.update(s.encode() + b"\0")
    return h.digest()


_libc = ctypes.CDLL(None)
_libc.free.argtypes = [ctypes.c_void_p]
_libc.free.restype = None


def _libc_free(p: ctypes.c_void_p) -> None:
    """free() what the library malloc'd (km_snapshot_json_ex's text)."""
    _libc.free(p)


def _secret_tag(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


# --------------------------------------------------------------- the core

_KM_KEYS_DEFAULT_SPARE = 64


class _Core:
    """What SyncKeyPool and KeyPool share beyond the hot path: the
    attachment, the pool index, status, reconfiguration, storage."""

    # set by _bind()/the hot base; declared for type checkers
    acquire_timeout: float
    _exhaust: bool

    def __init__(self, keys: Optional[Sequence[str]] = None,
                 strategy: Union[SchedulerStrategy, str] = SchedulerStrategy.LEAST_BUSY,
                 default_cooldown: float = 60.0, max_failures: int = 10,
                 acquire_timeout: float = 30.0, *, storage: Any = None,
                 storage_key: Any = None, exhaust_on_max_failures: bool = False,
                 scheduler: Any = None,
                 _attach_to: Optional[Tuple[str, Optional[str]]] = None,
                 _create: Optional[Tuple[str, ConfigLike, int]] = None) -> None:
        self._hot_init()
        self.acquire_timeout = float(acquire_timeout)
        self._exhaust = bool(exhaust_on_max_failures)
        self._exhausted: Dict[int, int] = {}   # key index -> gen, disabled by us
        self._known: Dict[str, str] = {}       # secret -> key id, where known here
        self._envh: Optional[_Env] = None
        self._closed = False
        self._private = False
        self._storage_path: Optional[str] = None
        self._storage_key = b""
        self._created_wall = time.time()
        self._lock = threading.Lock()
        self._fork_pid = os.getpid()
        pool_name: Optional[str] = None
        if scheduler is not None:
            strategy = getattr(scheduler, "strategy", strategy)
        if _attach_to is not None:
            self.segment, pool_name = _segname(_attach_to[0]), _attach_to[1]
            self._envh = _attach(self.segment)
        elif _create is not None:
            name, config, mode = _create
            self.segment, pool_name = _segname(name), None
            cfg = _parse_config(config)
            try:
                self._envh = _attach(self.segment, create_cfg=cfg, mode=mode)
            finally:
                lib.km_config_free(cfg)
        else:
            self._make_private(list(keys or []), strategy, default_cooldown, max_failures,
                               storage, storage_key)
        env = self._envh
        assert env is not None
        if pool_name is None:
            # The first pool still in use (pool 0 until it is removed).
            info = L.PoolInfo()
            first = lib.km_pool_first(env.ptr)
            rc = first if first < 0 else lib.km_pool_info_get(env.ptr, first, ctypes.byref(info))
            if rc != 0:
                _detach(env)
                _raise(rc, "the segment's first pool")
            pool_name = info.name.decode()
        idx = lib.km_pool_find(env.ptr, pool_name.encode())
        if idx < 0:
            _detach(env)
            _raise(idx, "pool '%s'" % pool_name)
        self.pool_name = pool_name
        self._pool = idx
        self._bind(env, idx)

    def _make_private(self, keys: List[str], strategy: Any, default_cooldown: float,
                      max_failures: int, storage: Any, storage_key: Any) -> None:
        # A private segment: one pool "default", in a memfd
        # (km_create_private) that the kernel frees with the last process
        # using it, so that a SIGKILL leaves no file and no secret behind;
        # forked children attach through its descriptor.  With a libkeymesh
        # that lacks it: a named segment, unlinked when this object is
        # closed or collected, or at exit, by its creator.
        if not keys:
            raise ValueError("keys: at least one key is required")
        seen: Dict[str, int] = {}
        for i, k in enumerate(keys):
            if not isinstance(k, str):
                raise TypeError("keys[%d]: a str" % i)
            if k in seen:
                raise ValueError("keys[%d] repeats keys[%d]: the same secret twice would "
                                 "get twice its limits" % (i, seen[k]))
            seen[k] = i
        cooldown = max(1, int(math.ceil(default_cooldown)))
        pool_cfg = {"name": "default", "strategy": SchedulerStrategy(strategy).value,
                    "cooldown_s": cooldown, "max_cooldown_s": max(3600, cooldown),
                    "max_failures": int(max_failures)}
        config = {
            "capacity": {"keys": max(_KM_KEYS_DEFAULT_SPARE, 2 * len(keys))},
            "pools": [dict(pool_cfg, keys=[{"id": "key-%d" % (i + 1), "secret": k}
                                           for i, k in enumerate(keys)])]}
        memfd = lib.optional("km_create_private") is not None and \
            lib.optional("km_open_fd") is not None and lib.optional("km_fd") is not None
        self.segment = "%s-%d-%s" % ("private:keymesh-py" if memfd else "keymesh-py",
                                     os.getpid(), uuid.uuid4().hex[:12])
        self._known = {k: "key-%d" % (i + 1) for i, k in enumerate(keys)}
        path = _storage_path(storage)
        restored = False
        if path is not None:
            self._storage_path = path
            self._storage_key = _storage_key(keys, storage_key)
            restored = self._restore_from(path, pool_cfg, memfd)
        if not restored:
            cfg = _parse_config(config)
            try:
                self._envh = _attach(self.segment, create_cfg=cfg, private=memfd)
            finally:
                lib.km_config_free(cfg)
        self._private = True
        self._finalizer = weakref.finalize(self, _unlink_quietly, self.segment, os.getpid(),
                                           memfd)
        if path is not None:
            _storage_pools.add(self)

    # -- storage
    def _restore_from(self, path: str, pool_cfg: Dict[str, Any], memfd: bool = False) -> bool:
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
            snap = doc["snapshot"]
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise KeyMeshError("storage %s: not a KeyMesh state file (%s)" % (path, e))
        # The constructor's settings win over the file's.
        for p in snap.get("pools", [])[:1]:
            for k in ("strategy", "cooldown_s", "max_cooldown_s", "max_failures"):
                p[k] = pool_cfg[k]
        text = json.dumps(snap).encode()
        err = ctypes.create_string_buffer(512)
        ptr = ctypes.c_void_p()
        # A NULL name restores into a private segment (km_restore).
        rc = lib.km_restore(None if memfd else self.segment.encode(), text, len(text),
                            self._storage_key, 0o600, ctypes.byref(ptr) if memfd else None,
                            err, len(err))
        if rc == L.ECRYPTO:
            return False  # made with other secrets: start afresh, overwritten on save
        if rc != 0:
            raise KeyMeshError("storage %s: cannot restore: %s%s" % (
                path, L.strerror(rc), (": " + err.value.decode("utf-8", "replace"))
                if err.value else ""), rc)
        if memfd:
            with _envs_lock:
                self._envh = _private_env(self.segment, ptr.value or 0)
        else:
            self._envh = _attach(self.segment)
        return True

    def save(self) -> None:
        """Write the storage= state file now (close() and exit do)."""
        path = self._storage_path
        if path is None:
            return
        ptr = self._ptr()
        out = ctypes.c_void_p()
        rc = lib.km_snapshot_json_ex(ptr, 1, self._storage_key, ctypes.byref(out))
        if rc != 0:
            _raise(rc, "storage: snapshot")
        try:
            snap = json.loads(ctypes.string_at(out.value).decode())
        finally:
            _libc_free(out)
        tags = {}
        by_id = {v: k for k, v in self._known.items()}
        for k in self._keys_raw():
            sec = by_id.get(k["id"])
            if sec is not None:
                tags[_secret_tag(sec)] = _upstream_view(k)
        doc = {"keymesh_state": 1, "saved_unix": time.time(), "pool": self.pool_name,
               "keys": tags, "snapshot": snap}
        d = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(d, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    # -- attachment, fork-aware
    def _gen_ok(self) -> bool:
        return self._fork_pid == os.getpid()

    def _reattach(self) -> None:
        """Called by the hot path when this object is unbound or was
        carried across fork(): attach again (a child), or refuse (closed)."""
        if self._closed:
            _raise_closed()
        with self._lock:
            if self._fork_pid != os.getpid():
                # Forked: the parent's leases are not ours; attach anew.
                self._reset_tracking()
                self._exhausted = {}
                self._envh = None
                self._fork_pid = os.getpid()
            env = self._envh
            if env is None or env.pid != os.getpid() or not env.ptr:
                env = self._envh = _attach(self.segment)
            self._bind(env, self._pool)

    def _check_segment(self) -> None:
        """Refuse when the segment's name now points elsewhere or nowhere
        (run at most once a second by the hot path; by every slow path)."""
        env = self._envh
        if env is None or env.ident is None:
            return
        now = _seg_ident(self.segment)
        if now != env.ident:
            raise SegmentRemovedError(
                "segment '%s' was %s while this pool was attached; open it again"
                % (self.segment, "removed" if now is None else "replaced"), L.ENOENT)

    def _slow_ptr(self) -> int:
        ptr = self._ptr()
        self._check_segment()
        return ptr

    def _close(self) -> None:
        if self._closed:
            return
        if self._storage_path is not None and self._gen_ok():
            try:
                self.save()
            except SegmentRemovedError:
                pass
        self._closed = True
        self._bind(None, -1)
        env, self._envh = self._envh, None
        if env is not None and env.pid == os.getpid():
            _detach(env)
        if self._private:
            self._finalizer()

    def __repr__(self) -> str:
        return "<%s segment=%r pool=%r%s>" % (type(self).__name__, self.segment,
                                             self.pool_name, " closed" if self._closed else "")

    # -- the in-process pools' API, shared by both classes
    def _mark(self, key: str, kind: int, retry_after: Optional[float]) -> None:
        if retry_after is not None:
            ra = float(retry_after)
            if not math.isfinite(ra) or ra < 0:
                raise ValueError("cooldown must be a finite number of seconds >= 0 (got %r)"
                                 % (retry_after,))
        t = _kind_tuple(kind, float(retry_after) if retry_after else 0.0)
        lease = self._take(key)
        if lease is None:
            # No lease of this key is out here (already released, or the key
            # came from elsewhere): take a pinned lease on it to record the
            # outcome.  A key already cooling or at a limit needs nothing.
            kid = self._key_id_of(key)
            if kid is None:
                raise UnknownKeyError("key %s is not in pool %r" % (L.mask(key), self.pool_name),
                                      L.ENOKEY)
            try:
                r = self._try_lease(None, 0, kid, None, False)
            except KeyExhaustedError:
                r = 0  # disabled, invalid or exhausted: nothing to record
            if isinstance(r, int):
                if kind == L.OUT_FAILURE and self._exhaust:
                    self._raise_if_exhausted_id(kid)
                return
            lease = r
        self._finish(lease, t, None)
        if kind == L.OUT_FAILURE and self._exhaust:
            self._raise_if_exhausted(lease._key_index, lease._key_gen)

    def _exhausted_check(self, lease: Any, raise_: bool = False) -> bool:
        """exhaust_on_max_failures: after a failure, take a key that reached
        max_failures out of the pool (disabled, for every process) as the
        in-process pools do, instead of cooling it down and probing."""
        ptr = self._ptr()
        k = lease._key_index
        ki = L.KeyInfo()
        if lib.km_key_info_get(ptr, k, ctypes.byref(ki)) != 0 or ki.gen != lease._key_gen:
            return False
        pi = L.PoolInfo()
        if lib.km_pool_info_get(ptr, self._pool, ctypes.byref(pi)) != 0:
            return False
        if ki.consecutive_failures < pi.max_failures:
            return False
        lib.km_key_set_state(ptr, k, L.KEY_DISABLED)
        self._exhausted[k] = ki.gen
        if raise_:
            self._raise_if_exhausted(k, ki.gen)
        return True

    def _raise_if_exhausted(self, k: int, gen: int) -> None:
        if self._exhausted.get(k) == gen:
            ki = L.KeyInfo()
            lib.km_key_info_get(self._ptr(), k, ctypes.byref(ki))
            raise KeyExhaustedError("key %s (%s) reached max_failures and is out of the pool "
                                    "until add_key() or enable()"
                                    % (ki.id.decode(), ki.secret_masked.decode("utf-8", "replace")))

    def _raise_if_exhausted_id(self, kid: str) -> None:
        k = lib.km_key_find(self._ptr(), self._pool, kid.encode())
        if k >= 0 and k in self._exhausted:
            self._raise_if_exhausted(k, self._exhausted[k])

    def _key_id_of(self, key: str) -> Optional[str]:
        """The id of the key of this pool whose secret is `key`, or None.
        Asks the library (km_key_find_secret: every key's secret compared
        in constant time), which finds a key in any state, cooling or
        disabled included, whoever added it.  With a libkeymesh without
        it: exact where this process knows the secret (keys it created or
        added); otherwise a key whose masked secret matches is confirmed
        by a pinned lease (the lease carries the secret; compared in
        constant time) and given back cancelled, so a key that cannot be
        leased now is not found."""
        if lib.optional("km_key_find_secret") is not None:
            return _hot.id_by_secret(self._ptr(), self._pool, key)
        kid = self._known.get(key)
        if kid is not None:
            return kid
        m = L.mask(key)
        cands = [k["id"] for k in self._keys_raw() if k["key"] == m]
        for c in cands:
            try:
                r = self._try_lease(None, 0, c, None, False)
            except KeyMeshError:
                continue
            if isinstance(r, int):
                continue
            same = hmac.compare_digest(r.key.encode(), key.encode())
            r.cancel()
            if same:
                self._known[key] = c
                return c
        return None

    # -- reading
    def _keys_raw(self) -> List[Dict[str, Any]]:
        ptr = self._ptr()
        pinfo = L.PoolInfo()
        rc = lib.km_pool_info_get(ptr, self._pool, ctypes.byref(pinfo))
        if rc != 0:
            _raise(rc, "pool")
        now = lib.km_now_ns()
        mono = time.monotonic()
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
            # As kmctl's (km_key_stats_get): whole ms, rounded up, so a
            # cooling key never shows 0.
            cool_ms = (ki.cooldown_until_ns - now + 999999) // 1000000 \
                if ki.cooldown_until_ns > now else 0
            state = lib.km_key_state_name(ki.state).decode()
            if self._exhausted.get(k) == ki.gen and ki.state == L.KEY_DISABLED:
                state = "exhausted"
            d: Dict[str, Any] = {
                "id": ki.id.decode(), "key": ki.secret_masked.decode("utf-8", "replace"),
                "state": state,
                "weight": ki.weight, "inflight": ki.inflight, "max_inflight": ki.max_inflight,
                "acquired": ki.acquired,
                "consecutive_failures": ki.consecutive_failures,
                "consecutive_429s": ki.consecutive_429s,
                # kmctl's units and names (docs/kmctl.md, JSON output):
                # latency in us (None before the first sample), durations in ms.
                "latency_ema_us": ki.latency_ema_us or None,
                "success_rate": ki.success_ppm / 1e6,
                "cooldown_remaining_ms": cool_ms,
                "abandoned": ki.abandoned, "stale_releases": ki.stale_releases,
                "tokens_used": ki.tokens_used, "spent_usd": ki.spent_microusd / 1e6,
                "limits": limits,
                "meta": json.loads(ki.meta.decode()) if ki.meta else {},
            }
            for o, oname in enumerate(L.OUTCOMES):
                d[oname] = ki.outcomes[o]
            avail = (ki.state == L.KEY_ACTIVE and ki.inflight < ki.max_inflight and
                     all(v["available"] >= 1 for v in limits.values()))
            d["available"] = avail
            # What the in-process pools report per key.
            lat_s = ki.latency_ema_us / 1e6
            done = ki.outcomes[L.OUT_SUCCESS] + ki.outcomes[L.OUT_FAILURE] + \
                ki.outcomes[L.OUT_AUTH] + ki.outcomes[L.OUT_QUOTA]
            rate = ki.success_ppm / 1e6 if done else 1.0
            d["health_score"] = round(rate / (1.0 + lat_s) * (1.0 if avail else 0.0), 4)
            last = self._last_used_ns(k)
            d["last_used"] = mono - (now - last) / 1e9 if last else 0.0
            d["_index"] = k
            out.append(d)
        return out

    def _status(self) -> Dict[str, Any]:
        ptr = self._slow_ptr()
        pinfo = L.PoolInfo()
        rc = lib.km_pool_info_get(ptr, self._pool, ctypes.byref(pinfo))
        if rc != 0:
            _raise(rc, "pool")
        keys = self._keys_raw()
        for k in keys:
            k.pop("_index")
            k.update(_upstream_view(k))
        strategy = _STRATEGY_NAMES.get(pinfo.strategy, str(pinfo.strategy))
        metrics = {
            "total_acquires": sum(k["acquired"] for k in keys),
            "total_releases": sum(k["success"] for k in keys),
            "total_rate_limited": sum(k["rate_limited"] for k in keys),
            "total_cooldowns": sum(k["rate_limited"] for k in keys),
            "total_failures": sum(k["failure"] + k["auth"] + k["quota"] for k in keys),
            "total_cancelled": sum(k["cancelled"] for k in keys),
            "total_abandoned": sum(k["abandoned"] for k in keys),
            "in_flight": sum(k["inflight"] for k in keys),
            "uptime_seconds": round(time.time() - self._created_wall, 2),
        }
        return {"segment": self.segment, "pool": self.pool_name, "strategy": strategy,
                "scheduler": strategy,
                "total_keys": len(keys),
                "available_keys": sum(1 for k in keys if k["available"]),
                "inflight": metrics["in_flight"],
                "held_here": self._held(),
                "waiters": pinfo.waiters, "spent_usd": pinfo.spent_microusd / 1e6,
                "pool_metrics": metrics, "keys": keys}

    def stats(self, key: Optional[str] = None, model: Optional[str] = None) -> Dict[str, Any]:
        """The statistics of this pool as of now, with the field names and
        units of one pool of ``kmctl stats --json``: totals, keys by state,
        in flight, counters, moving averages, spend against budget, the use
        of every limit window ("windows": used/left/full_in_ms), its models,
        and per key (``["keys"][id]``) the same with cooldown and its
        key x model windows.  "keys" and "models" are dicts by id and name;
        "segment" and "taken_unix_ms" are added.  Ids only, never a secret.
        ``key=ID`` / ``model=NAME`` keep only that key / model, as kmctl's
        --key / --model (UnknownKeyError, KeyMeshError KM_ENOMODEL if none).
        Not the hot path: ctypes in both implementations (keymesh._stats);
        a plain method on KeyPool too (no I/O to wait for)."""
        from . import _stats
        return _stats.pool_stats(self._slow_ptr(), self._pool, self.segment, key, model)

    def _available_count(self) -> int:
        self._slow_ptr()
        return sum(1 for k in self._keys_raw() if k["available"])

    # -- reconfiguration (bound lazily: km_key_add and friends)
    def _add_key(self, key: str, id: Optional[str], fields: Dict[str, Any]) -> str:
        if not isinstance(key, str) or not key:
            raise ValueError("add_key: the secret must be a non-empty str")
        existing = self._key_id_of(key)
        if existing is not None:
            # The in-process pools' meaning: the same secret again resets
            # that key (a fresh state), never a second key.
            if id is not None and id != existing:
                raise KeyMeshError("add_key: that secret is already key %r of pool %r"
                                   % (existing, self.pool_name), L.EKEYEXISTS)
            self._set_state(existing, L.KEY_ACTIVE)
            if fields.get("weight") is not None:
                self._set_weight(existing, fields["weight"])
            return existing
        fn = lib.optional("km_key_add")
        if fn is None:
            raise KeyMeshError("add_key: this libkeymesh (%s) has no km_key_add; "
                               "a newer library is needed" % (lib.path,))
        ptr = self._slow_ptr()
        err = ctypes.create_string_buffer(512)
        auto = id is None
        n = len(self._keys_raw()) + 1
        for _ in range(1000):
            kid = id if id is not None else "key-%d" % n
            obj = dict(fields)
            obj["id"] = kid
            obj["secret"] = key
            rc = fn(ptr, self._pool, json.dumps(obj).encode(), err, len(err))
            if rc >= 0:
                self._known[key] = kid
                return kid
            if auto and rc == L.EKEYEXISTS:
                n += 1
                continue
            if rc == L.EDUPSECRET and self._key_id_of(key) is not None:
                # Added to this pool meanwhile (another process): reset it.
                return self._add_key(key, id, fields)
            msg = err.value.decode("utf-8", "replace") if rc in (L.ECONFIG, L.EDUPSECRET) else ""
            msg = msg.replace(key, L.mask(key)) if key else msg
            raise KeyMeshError("add_key %r: %s%s" % (kid, L.strerror(rc),
                                                     (": " + msg) if msg else ""), rc)
        raise KeyMeshError("add_key: no free key id")

    def _key_index(self, key_or_id: str) -> int:
        ptr = self._slow_ptr()
        k = lib.km_key_find(ptr, self._pool, key_or_id.encode())
        if k < 0:  # not an id: the secret of a key?
            kid = self._key_id_of(key_or_id)
            if kid is not None:
                k = lib.km_key_find(ptr, self._pool, kid.encode())
        if k < 0:
            raise UnknownKeyError("no such key in pool %r" % self.pool_name, L.ENOKEY)
        return k

    def _remove_key(self, key_or_id: str) -> None:
        fn = lib.optional("km_key_remove")
        if fn is None:
            raise KeyMeshError("remove_key: this libkeymesh has no km_key_remove")
        k = self._key_index(key_or_id)
        rc = fn(self._ptr(), k)
        if rc != 0:
            _raise(rc, "remove_key")
        ki = L.KeyInfo()
        lib.km_key_info_get(self._ptr(), k, ctypes.byref(ki))
        kid = ki.id.decode()
        for s in [s for s, i in self._known.items() if i == kid]:
            del self._known[s]

    def _set_weight(self, key_or_id: str, weight: int) -> None:
        fn = lib.optional("km_key_set_weight")
        if fn is None:
            raise KeyMeshError("set_weight: this libkeymesh has no km_key_set_weight")
        rc = fn(self._ptr(), self._key_index(key_or_id), int(weight))
        if rc != 0:
            _raise(rc, "set_weight")

    def _set_state(self, key_or_id: str, state: int) -> None:
        k = self._key_index(key_or_id)
        rc = lib.km_key_set_state(self._ptr(), k, state)
        if rc != 0:
            _raise(rc, "set_state")
        self._exhausted.pop(k, None)


def _upstream_view(k: Dict[str, Any]) -> Dict[str, Any]:
    """A key's entry under the names the in-process pools use."""
    return {"key_suffix": k["key"], "active_requests": k["inflight"],
            "cooldown_remaining": k["cooldown_remaining_ms"] / 1000.0,
            "success_count": k["success"],
            "failure_count": k["failure"] + k["auth"] + k["quota"],
            "latency_avg": round((k["latency_ema_us"] or 0) / 1e6, 4),
            "last_used": k["last_used"], "is_available": k["available"],
            "health_score": k["health_score"]}


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

class SyncKeyPool(_HotCore, _Core):
    """A pool of API keys shared by every process attached to its segment.

    ``SyncKeyPool(keys=[...])`` makes a private segment (this process and
    its forked children); ``SyncKeyPool.create(name, config)`` and
    ``SyncKeyPool.open(name)`` share one between unrelated processes.
    Thread-safe.  Blocking calls release the GIL.

    acquire(timeout=None, *, model=None, estimated_tokens=0, key_id=None,
    strategy=None) -> str, release(key, latency=0.0, *, tokens=None) and
    lease(...) are the hot path (keymesh._ext, or keymesh._hot)."""

    def __init__(self, keys: Optional[Sequence[str]] = None,
                 strategy: Union[SchedulerStrategy, str] = SchedulerStrategy.LEAST_BUSY,
                 default_cooldown: float = 60.0, max_failures: int = 10,
                 acquire_timeout: float = 30.0, **kw: Any) -> None:
        _Core.__init__(self, keys, strategy, default_cooldown, max_failures, acquire_timeout,
                       **kw)

    @classmethod
    def create(cls, name: str, config: ConfigLike, *, mode: int = 0o600,
               pool: Optional[str] = None, acquire_timeout: float = 30.0,
               exhaust_on_max_failures: bool = False) -> "SyncKeyPool":
        """Create segment `name` from `config` (a dict, JSON text, or a path
        to a JSON file; format in docs/config.md) and attach to `pool` (the
        first pool by default).  KeyMeshError(EEXIST) if it exists."""
        self = cls.__new__(cls)
        _Core.__init__(self, acquire_timeout=acquire_timeout,
                       exhaust_on_max_failures=exhaust_on_max_failures,
                       _create=(name, config, mode))
        if pool is not None:
            self._select(pool)
        return self

    @classmethod
    def open(cls, name: str, pool: Optional[str] = None, *, acquire_timeout: float = 30.0,
             exhaust_on_max_failures: bool = False) -> "SyncKeyPool":
        """Attach to existing segment `name`, pool `pool` (the first by default)."""
        self = cls.__new__(cls)
        _Core.__init__(self, acquire_timeout=acquire_timeout,
                       exhaust_on_max_failures=exhaust_on_max_failures,
                       _attach_to=(name, pool))
        return self

    def _select(self, pool: str) -> None:
        idx = lib.km_pool_find(self._ptr(), pool.encode())
        if idx < 0:
            _raise(idx, "pool '%s'" % pool)
        self._pool, self.pool_name = idx, pool
        self._bind(self._envh, idx)

    def pool(self, name: str) -> "SyncKeyPool":
        """Another pool of the same segment (the attachment is shared)."""
        return type(self).open(self.segment, name, acquire_timeout=self.acquire_timeout,
                               exhaust_on_max_failures=self._exhaust)

    def mark_failed(self, key: str) -> None:
        """The request made with `key` failed (5xx, timeout, network): after
        max_failures in a row the key cools down (exhaust_on_max_failures:
        is taken out, and this raises KeyExhaustedError)."""
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
        A secret already in the pool is not added twice: that key is reset
        (enabled, failures and cooldowns cleared).  Needs spare "capacity":
        {"keys": N} (a private pool has it)."""
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
        """The pool and each key: state, in-flight, counters, limits, health;
        "pool_metrics" totals (every process's); secrets masked.  Units as
        kmctl's JSON: latency_ema_us (microseconds, None before the first
        sample), cooldown_remaining_ms; the in-process pools' names
        (cooldown_remaining, latency_avg: seconds) are there too."""
        return self._status()

    def available_count(self) -> int:
        """Keys admissible right now (active, below their in-flight cap,
        every limit with room for one more request)."""
        return self._available_count()

    def close(self) -> None:
        """Detach (leases still held here count as abandoned).  A private
        pool's segment is removed; storage= is saved first."""
        self._close()

    def __enter__(self) -> "SyncKeyPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------- KeyPool

class _Waiter:
    """Who gives back a lease the helper thread gets: `lock` makes the hand
    over atomic.  The thread stores its result unless the task already gave
    up (then it releases the lease itself); a task that gives up takes
    whatever result is stored and releases it; deliver() hands the result
    to the task only if it has not given up."""

    __slots__ = ("cancelled", "result", "lock")

    def __init__(self) -> None:
        self.cancelled = False
        self.result: Any = None
        self.lock = threading.Lock()


def _give_back(lease: Any) -> None:
    if lease is not None and not lease.done:
        try:
            lease.cancel()  # never sent: counted as cancelled
        except KeyMeshError:
            pass  # the pool was closed meanwhile: km_close released it


def _wait_thread(core: Any, loop: asyncio.AbstractEventLoop, fut: "asyncio.Future[Any]",
                 w: _Waiter, deadline_ns: int, args: tuple) -> None:
    """Sleep in km_acquire_wait (the segment's futex, GIL released) until a
    key is ours, the deadline passes or the awaiting task is cancelled;
    hand the result to the loop."""
    result: Any = None
    exc: Optional[BaseException] = None
    try:
        while not w.cancelled:
            left = (deadline_ns - lib.km_now_ns()) // 1_000_000
            if left <= 0:
                break
            r = core._wait_lease(*args, min(left, _hot.WAIT_CHUNK_MS))
            if not isinstance(r, int):
                result = r
                break
        if result is None and not w.cancelled:
            r = core._try_lease(*args)
            if isinstance(r, int):
                _raise(L.ETIMEDOUT, "acquire from pool '%s'" % core.pool_name, r)
            result = r
    except BaseException as e:  # handed to the awaiting task
        exc = e
    with w.lock:
        gone = w.cancelled
        if not gone:
            w.result = result
    if gone:
        _give_back(result)
        return

    def deliver() -> None:
        with w.lock:
            if w.cancelled or fut.done():
                return  # the task gave up and gave the lease back
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    try:
        loop.call_soon_threadsafe(deliver)
    except RuntimeError:  # the loop is closed: nobody will take it
        with w.lock:
            mine = not w.cancelled
            w.cancelled = True
            w.result = None
        if mine:
            _give_back(result)


# An idle loop's own wait (_loop_idle): the longest one chunk of it holds
# the loop's thread, which is what a signal's handler may wait.  _IDLE_WAIT
# False: always the helper thread (bench/py times both).
IDLE_CHUNK_MS = 20
_IDLE_WAIT = True


def _loop_idle(loop: asyncio.AbstractEventLoop) -> bool:
    """True if nothing but the awaiting task's acquire can happen on loop:
    an asyncio selector loop with no callback ready, no timer, no file
    descriptor but its own wake-up socket, nothing to read on that (a
    signal for loop.add_signal_handler), and no thread but this one to call
    it (call_soon_threadsafe).  Then waiting for a key in the loop's own
    thread delays nothing -- but a signal's handler, by at most
    IDLE_CHUNK_MS -- and saves the wake-up two thread switches (the helper
    thread's, and the loop's when the helper hands the lease over).  Any
    other loop (uvloop, a loop with a server socket, a connection, a
    timer, an executor thread): False."""
    try:
        if (threading.active_count() > 1 or loop._ready  # type: ignore[attr-defined]
                or loop._scheduled  # type: ignore[attr-defined]
                or len(loop._selector.get_map()) > 1):  # type: ignore[attr-defined]
            return False
        ssock = loop._ssock  # type: ignore[attr-defined]
    except AttributeError:
        return False
    return ssock is not None and not select.select([ssock], [], [], 0)[0]


async def _aacquire(core: Any, timeout: Optional[float], model: Optional[str], tokens: int,
                    key_id: Optional[str], strategy: Any, track: bool) -> Any:
    """A lease without blocking the loop: one non-blocking try; if no key
    is admissible, a helper thread sleeps in km_acquire_wait (woken by the
    release that frees a key, in any process) and hands the lease over
    with call_soon_threadsafe -- or, on a loop where nothing else can run
    (_loop_idle), the loop's own thread sleeps there.  Cancelling the
    awaiting task never leaks a lease: one the thread gets afterwards is
    given back (cancelled)."""
    args = (model, tokens, key_id, strategy, track)
    r = core._try_lease(*args)
    if not isinstance(r, int):
        return r
    t = core.acquire_timeout if timeout is None else float(timeout)
    if t <= 0:
        _raise(L.EAGAIN, "acquire from pool '%s'" % core.pool_name, r)
    loop = asyncio.get_running_loop()
    deadline_ns = lib.km_now_ns() + int(t * 1e9)
    if _IDLE_WAIT and _loop_idle(loop):
        # Nothing else can run on this loop: wait in its own thread, in
        # chunks, while that stays so (_loop_idle); then the helper thread.
        while True:
            left = (deadline_ns - lib.km_now_ns()) // 1_000_000
            if left <= 0:
                break
            r = core._wait_lease(*args, min(left, IDLE_CHUNK_MS))
            if not isinstance(r, int):
                return r
            if not _loop_idle(loop):
                break
        if lib.km_now_ns() >= deadline_ns:  # as the helper thread ends a wait
            r = core._try_lease(*args)
            if isinstance(r, int):
                _raise(L.ETIMEDOUT, "acquire from pool '%s'" % core.pool_name, r)
            return r
    fut = loop.create_future()
    w = _Waiter()
    th = threading.Thread(target=_wait_thread, name="keymesh-wait", daemon=True,
                          args=(core, loop, fut, w, deadline_ns, args))
    th.start()
    try:
        return await fut
    except BaseException:
        # Cancelled (or the loop is going away): a lease the thread stored,
        # even one already set on fut that this task never received, is
        # given back; one it gets later, it gives back itself.
        with w.lock:
            w.cancelled = True
            res, w.result = w.result, None
        _give_back(res)
        raise


async def _aenter(lease: Any) -> Any:
    if not lease._acquired:
        timeout, key_id, strategy = lease._request()
        pool = lease._pool
        got = await _aacquire(pool, timeout, lease.model, lease.estimated_tokens, key_id,
                              strategy, False)
        pool._adopt(lease, got)
    return lease


async def _aexit(lease: Any, et: Any, e: Any, tb: Any) -> bool:
    return lease.__exit__(et, e, tb)


class KeyPool(_HotCore, _Core):
    """SyncKeyPool's API for asyncio.  acquire() never blocks the event
    loop: when no key is admissible it awaits a helper thread asleep in
    km_acquire_wait, woken by the release that frees one (in any process),
    not a polling loop.  status() and available_count() are plain methods
    (as in the in-process KeyPool)."""

    def __init__(self, keys: Optional[Sequence[str]] = None,
                 strategy: Union[SchedulerStrategy, str] = SchedulerStrategy.LEAST_BUSY,
                 default_cooldown: float = 60.0, max_failures: int = 10,
                 acquire_timeout: float = 30.0, **kw: Any) -> None:
        _Core.__init__(self, keys, strategy, default_cooldown, max_failures, acquire_timeout,
                       **kw)

    @classmethod
    def create(cls, name: str, config: ConfigLike, *, mode: int = 0o600,
               pool: Optional[str] = None, acquire_timeout: float = 30.0,
               exhaust_on_max_failures: bool = False) -> "KeyPool":
        """As SyncKeyPool.create (a quick system call: not a coroutine)."""
        self = cls.__new__(cls)
        _Core.__init__(self, acquire_timeout=acquire_timeout,
                       exhaust_on_max_failures=exhaust_on_max_failures,
                       _create=(name, config, mode))
        if pool is not None:
            SyncKeyPool._select(self, pool)  # type: ignore[arg-type]
        return self

    @classmethod
    def open(cls, name: str, pool: Optional[str] = None, *, acquire_timeout: float = 30.0,
             exhaust_on_max_failures: bool = False) -> "KeyPool":
        self = cls.__new__(cls)
        _Core.__init__(self, acquire_timeout=acquire_timeout,
                       exhaust_on_max_failures=exhaust_on_max_failures,
                       _attach_to=(name, pool))
        return self

    def pool(self, name: str) -> "KeyPool":
        return type(self).open(self.segment, name, acquire_timeout=self.acquire_timeout,
                               exhaust_on_max_failures=self._exhaust)

    async def acquire(self, timeout: Optional[float] = None, *,  # type: ignore[override]
                      model: Optional[str] = None, estimated_tokens: int = 0,
                      key_id: Optional[str] = None,
                      strategy: Union[SchedulerStrategy, str, None] = None) -> str:
        r = self._try_lease(model, estimated_tokens, key_id, strategy, True)
        if not isinstance(r, int):
            return r.key
        return (await _aacquire(self, timeout, model, estimated_tokens, key_id, strategy,
                                True)).key

    async def release(self, key: str, latency: float = 0.0, *,  # type: ignore[override]
                      tokens: Optional[int] = None) -> None:
        self._release_key(key, latency, tokens=tokens)

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

    def status(self) -> Dict[str, Any]:
        return self._status()

    def available_count(self) -> int:
        return self._available_count()

    async def close(self) -> None:
        self._close()

    async def __aenter__(self) -> "KeyPool":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._close()


# ------------------------------------------------ helpers for both hot paths

H.update({
    "KeyMeshError": KeyMeshError,
    "raise": _raise,
    "raise_closed": _raise_closed,
    "strategy_code": _strategy_code,
    "meta_loads": _meta_loads,
    "report_tuple": _report_tuple,
    "outcome_for_exc": _outcome_for_exc,
    "exc_http": _exc_http,
    "cancelled": _CANCELLED,
    "aenter": _aenter,
    "aexit": _aexit,
})
if _ext is not None:
    _ext.setup(H)
