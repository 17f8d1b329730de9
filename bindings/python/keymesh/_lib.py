"""ctypes declarations of libkeymesh (include/keymesh.h), loaded once.

Where the library comes from, first match wins:

1. ``$KEYMESH_LIBRARY``: a path to ``libkeymesh.so.0`` (or any file name);
2. ``$KM_BUILD/libkeymesh.so.0``: a build directory (relative paths are
   tried from the current directory and from the repository root);
3. ``build/libkeymesh.so.0`` of the repository this package sits in
   (``bindings/python/keymesh`` -> ``../../../build``), i.e. after ``make``;
4. ``ctypes.util.find_library("keymesh")``: an installed library
   (``make install``), then the bare soname ``libkeymesh.so.0``.

Every structure below mirrors the C one field for field; ctypes lays them out
with the platform's C rules, so sizes and offsets agree with the compiler's
(tests/e2e/layout.c checks that).  ctypes releases the GIL around every call
into a CDLL, so a thread blocked in km_acquire_wait() does not stop others.

The library is loaded with RTLD_GLOBAL before the C extension (keymesh._ext)
is imported: the extension's own reference to libkeymesh.so.0 then binds to
this same copy (the dynamic linker matches the soname of what is loaded), so
both paths share one library, one attachment table and one set of handles.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from ctypes import (POINTER, Structure, Union, c_char, c_char_p, c_double, c_int,
                    c_int16, c_int32, c_int64, c_size_t, c_uint, c_uint16, c_uint32,
                    c_uint64, c_void_p)
from typing import Any, Callable, Optional

ID_MAX = 63
SECRET_MAX = 255
META_MAX = 255
WIN_COUNT = 6
OUT_COUNT = 6

# Error codes (KM_ERRNO_MAP).  Codes added later are named at run time by
# km_err_name(), so an unknown code still gets its name and message.
OK = 0
EINVAL = -1
ENOMEM = -2
ESYS = -3
ENOENT = -4
EEXIST = -5
EACCES = -6
ENOTKM = -7
EFORMAT = -8
ELAYOUT = -9
ETRUNC = -10
ENOTREADY = -11
ECONFIG = -12
ENOPOOL = -13
ENOKEY = -14
EAGAIN = -15
EUNAVAIL = -16
ECOST = -17
ESTALE = -18
EPROCS = -19
ENAME = -20
ECORRUPT = -21
ENOMODEL = -22
EBUDGET = -23
ETIMEDOUT = -24
EBUSY = -25
EKEYEXISTS = -26
EFULL = -27
ECRYPTO = -28
ENOSLOT = -29
EREADONLY = -30
EDUPSECRET = -31

# km_outcome_kind
OUT_SUCCESS = 0
OUT_RATE_LIMITED = 1
OUT_FAILURE = 2
OUT_AUTH = 3
OUT_QUOTA = 4
OUT_CANCELLED = 5

# km_key_state
KEY_ACTIVE = 0
KEY_COOLING = 1
KEY_PROBING = 2
KEY_DISABLED = 3
KEY_INVALID = 4
KEY_EXHAUSTED = 5

WINDOWS = ("rpm", "rph", "rpd", "tpm", "tph", "tpd")
OUTCOMES = ("success", "rate_limited", "failure", "auth", "quota", "cancelled")


RESERVED = ("reserved", c_uint64 * 4)  # keymesh.h: zero in, zeroed out

BUDGET_LIFETIME, BUDGET_DAY, BUDGET_WEEK, BUDGET_MONTH = 0, 1, 2, 3
BUDGET_PERIODS = ("lifetime", "day", "week", "month")


class BudgetState(Structure):
    # keymesh.h km_budget_state: km_pool_info.budget and km_key_info.budget,
    # in a union with what was their reserved[4].
    _fields_ = [("prev_spent_microusd", c_uint64), ("period_end_unix_ns", c_uint64),
                ("period", c_int32), ("tz_min", c_int16), ("rolls", c_uint16),
                ("warnings", c_uint32), ("over", c_uint32)]


class _BudgetUnion(Union):
    _fields_ = [("budget", BudgetState), RESERVED]


BUDGET_TAIL = ("_budget", _BudgetUnion)  # the last field of PoolInfo, KeyInfo


class Request(Structure):
    _fields_ = [("pool", c_int), ("strategy", c_int), ("tokens", c_uint32),
                ("model", c_char_p), ("key_id", c_char_p), RESERVED]


class Lease(Structure):
    _fields_ = [("key", c_int), ("key_gen", c_uint32), ("slot", c_int),
                ("seq", c_uint32), ("pool", c_int), ("tokens", c_uint32),
                ("start_ns", c_uint64), ("retry_at_ns", c_uint64),
                ("secret_len", c_uint32), ("model", c_int), ("meta_len", c_uint32),
                ("key_id", c_char * (ID_MAX + 1)),
                ("secret", c_char * (SECRET_MAX + 1)),
                ("meta", c_char * (META_MAX + 1)), RESERVED]


class Outcome(Structure):
    _fields_ = [("kind", c_int), ("latency_us", c_int64), ("tokens", c_int64),
                ("retry_after_s", c_double), ("view_flags", c_uint32),
                ("requests_remaining", c_uint64), ("tokens_remaining", c_uint64),
                ("requests_reset_ms", c_uint64), ("tokens_reset_ms", c_uint64),
                ("input_tokens", c_int64), ("output_tokens", c_int64), RESERVED]


class HttpResponse(Structure):
    _fields_ = [("status", c_int), ("error_code", c_char_p), ("body", c_char_p),
                ("body_len", c_size_t), ("headers", POINTER(c_char_p)),
                ("n_headers", c_size_t), ("now_unix_ms", c_int64), RESERVED]


class Info(Structure):
    _fields_ = [("format", c_uint32), ("cap_keys", c_uint32), ("cap_pools", c_uint32),
                ("cap_procs", c_uint32), ("cap_inflight", c_uint32),
                ("n_keys", c_uint32), ("n_pools", c_uint32), ("n_procs", c_uint32),
                ("size_bytes", c_uint64), ("created_wall_ns", c_uint64), RESERVED]


class LimitInfo(Structure):
    _fields_ = [("limit", c_uint64), ("burst", c_uint64), ("mode", c_int),
                ("reserved0", c_uint32), ("available", c_uint64), ("tat_ns", c_uint64),
                ("reserved", c_uint64 * 2)]


class PoolInfo(Structure):
    _anonymous_ = ("_budget",)
    _fields_ = [("name", c_char * (ID_MAX + 1)), ("strategy", c_int),
                ("n_keys", c_uint32), ("cooldown_s", c_uint32),
                ("max_cooldown_s", c_uint32), ("max_failures", c_uint32),
                ("model_mode", c_int), ("n_models", c_uint32),
                ("budget_microusd", c_uint64), ("budget_hard", c_int),
                ("spent_microusd", c_uint64), ("waiters", c_uint32), BUDGET_TAIL]


class KeyInfo(Structure):
    _anonymous_ = ("_budget",)
    _fields_ = [("id", c_char * (ID_MAX + 1)), ("secret_masked", c_char * 24),
                ("pool", c_int), ("weight", c_uint32), ("gen", c_uint32),
                ("state", c_int), ("cooldown_until_ns", c_uint64),
                ("inflight", c_uint32), ("max_inflight", c_uint32),
                ("consecutive_failures", c_uint32), ("consecutive_429s", c_uint32),
                ("latency_ema_us", c_uint64), ("acquired", c_uint64),
                ("outcomes", c_uint64 * OUT_COUNT), ("abandoned", c_uint64),
                ("stale_releases", c_uint64), ("tokens_used", c_uint64),
                ("limits", LimitInfo * WIN_COUNT), ("success_ppm", c_uint32),
                ("price_in_microusd_per_1k", c_uint64),
                ("price_out_microusd_per_1k", c_uint64),
                ("budget_microusd", c_uint64), ("budget_hard", c_int),
                ("spent_microusd", c_uint64), ("meta", c_char * (META_MAX + 1)),
                BUDGET_TAIL]


class ReapReport(Structure):
    _fields_ = [("processes", c_uint32), ("leases", c_uint64),
                ("recounted", c_uint32), ("pending", c_uint32), ("repaired", c_uint32),
                RESERVED]


STRUCTS = {"km_request": Request, "km_lease": Lease, "km_outcome": Outcome,
           "km_http_response": HttpResponse, "km_info": Info,
           "km_limit_info": LimitInfo, "km_pool_info": PoolInfo,
           "km_key_info": KeyInfo, "km_reap_report": ReapReport}

# km_struct_id (keymesh.h) of each struct above: km_struct_size(id) is the
# library's sizeof, compared with ctypes' when the library is loaded.
STRUCT_IDS = {"km_request": 1, "km_lease": 2, "km_outcome": 3, "km_http_response": 4,
              "km_info": 5, "km_limit_info": 6, "km_pool_info": 7, "km_key_info": 8,
              "km_reap_report": 12}


def size_mismatches(dll: Any, structs: Optional[dict] = None) -> list:
    """Each struct of `structs` (name -> ctypes class; default STRUCTS)
    whose size differs from the library's km_struct_size(), as text; [] if
    all agree.  A library without km_struct_size predates this binding."""
    fn = getattr(dll, "km_struct_size", None)
    if fn is None:
        return ["km_struct_size: missing (a libkeymesh older than this binding)"]
    fn.restype, fn.argtypes = c_size_t, [c_int]
    out = []
    for name, cls in (STRUCTS if structs is None else structs).items():
        lib_size = fn(STRUCT_IDS[name])
        if lib_size != ctypes.sizeof(cls):
            out.append("%s: %d bytes in libkeymesh, %d in this binding"
                       % (name, lib_size, ctypes.sizeof(cls)))
    return out

env_p = c_void_p
cfg_p = c_void_p
REPORT_FN = ctypes.CFUNCTYPE(None, c_void_p, c_char_p)

# name: (restype, argtypes).  All are required except those in OPTIONAL.
_PROTOS: dict = {
    "km_version": (c_char_p, []),
    "km_format_version": (c_int, []),
    "km_version_number": (c_int, []),
    "km_struct_size": (c_size_t, [c_int]),
    "km_strerror": (c_char_p, [c_int]),
    "km_err_name": (c_char_p, [c_int]),
    "km_strategy_name": (c_char_p, [c_int]),
    "km_key_state_name": (c_char_p, [c_int]),
    "km_outcome_name": (c_char_p, [c_int]),
    "km_now_ns": (c_uint64, []),
    "km_config_parse": (c_int, [c_char_p, c_size_t, c_char_p, POINTER(cfg_p),
                                c_char_p, c_size_t]),
    "km_config_parse_file": (c_int, [c_char_p, POINTER(cfg_p), c_char_p, c_size_t]),
    "km_config_free": (None, [cfg_p]),
    "km_create": (c_int, [c_char_p, cfg_p, c_uint, POINTER(env_p)]),
    "km_open": (c_int, [c_char_p, POINTER(env_p)]),
    "km_close": (c_int, [env_p]),
    "km_unlink": (c_int, [c_char_p]),
    "km_acquire": (c_int, [env_p, POINTER(Request), POINTER(Lease)]),
    "km_acquire_wait": (c_int, [env_p, POINTER(Request), POINTER(Lease), c_uint32]),
    "km_outcome_from_http": (c_int, [POINTER(HttpResponse), POINTER(Outcome)]),
    "km_release": (c_int, [env_p, POINTER(Lease), POINTER(Outcome)]),
    "km_info_get": (c_int, [env_p, POINTER(Info)]),
    "km_pool_find": (c_int, [env_p, c_char_p]),
    "km_pool_first": (c_int, [env_p]),
    "km_pool_info_get": (c_int, [env_p, c_int, POINTER(PoolInfo)]),
    "km_key_find": (c_int, [env_p, c_int, c_char_p]),
    "km_pool_key": (c_int, [env_p, c_int, c_int]),
    "km_key_info_get": (c_int, [env_p, c_int, POINTER(KeyInfo)]),
    "km_budget_tz": (c_int, [env_p, c_int, c_int, c_char_p, c_size_t]),
    "km_key_set_state": (c_int, [env_p, c_int, c_int]),
    "km_reap": (c_int, [env_p, POINTER(ReapReport)]),
    "km_check": (c_int, [env_p, REPORT_FN, c_void_p]),
    "km_snapshot_json": (c_int, [env_p, POINTER(c_void_p)]),
    "km_mask_secret": (None, [c_char_p, c_char_p]),
    "km_snapshot_json_ex": (c_int, [env_p, c_uint, c_char_p, POINTER(c_void_p)]),
    "km_restore": (c_int, [c_char_p, c_char_p, c_size_t, c_char_p, c_uint, POINTER(env_p),
                           c_char_p, c_size_t]),
    "km_snapshot_key_parse": (c_int, [c_char_p, c_size_t, c_char_p]),
    # Reconfiguration: bound when first used (see optional()).
    "km_key_add": (c_int, [env_p, c_int, c_char_p, c_char_p, c_size_t]),
    "km_key_remove": (c_int, [env_p, c_int]),
    "km_key_set_weight": (c_int, [env_p, c_int, c_uint32]),
    # Lookup by secret (pinning by secret, add_key of a known secret):
    # without it, a masked-secret match confirmed by a pinned lease.
    "km_key_find_secret": (c_int, [env_p, c_int, c_char_p]),
    # Private segments (a memfd): bound when first used; without them a
    # private pool is a named segment, as before.
    "km_create_private": (c_int, [cfg_p, POINTER(env_p)]),
    "km_open_fd": (c_int, [c_int, c_uint, POINTER(env_p)]),
    "km_fd": (c_int, [env_p]),
}
OPTIONAL = {"km_key_add", "km_key_remove", "km_key_set_weight", "km_create_private",
            "km_open_fd", "km_fd", "km_key_find_secret"}


def _here_repo() -> str:
    # bindings/python/keymesh/_lib.py -> the repository root
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def candidates() -> list:
    """Paths tried, in order (see the module docstring)."""
    out = []
    lib = os.environ.get("KEYMESH_LIBRARY")
    if lib:
        out.append(lib)
    repo = _here_repo()
    build = os.environ.get("KM_BUILD")
    if build:
        for base in ([build] if os.path.isabs(build) else
                     [os.path.abspath(build), os.path.join(repo, build)]):
            out.append(os.path.join(base, "libkeymesh.so.0"))
    out.append(os.path.join(repo, "build", "libkeymesh.so.0"))
    return out


def ext_dirs() -> list:
    """Where a C extension built by `make` (not installed by pip) may sit:
    beside the libkeymesh it was built with, in <build>/python/keymesh."""
    out = []
    lib = os.environ.get("KEYMESH_LIBRARY")
    if lib:
        out.append(os.path.join(os.path.dirname(os.path.abspath(lib)), "python", "keymesh"))
    for c in candidates():
        d = os.path.join(os.path.dirname(c), "python", "keymesh")
        if d not in out:
            out.append(d)
    return [d for d in out if os.path.isdir(d)]


def _reason(path: str, err: str) -> str:
    """dlopen's message without the path it repeats ("PATH: undefined
    symbol: x" -> "undefined symbol: x")."""
    return err[len(path) + 2:] if err.startswith(path + ": ") else err


class _Lib:
    def __init__(self) -> None:
        self._dll: Optional[ctypes.CDLL] = None
        self._lock = threading.Lock()
        self.path: Optional[str] = None
        self._optional: dict = {}

    def _load(self) -> ctypes.CDLL:
        with self._lock:
            if self._dll is not None:
                return self._dll
            tried = []
            failed = []  # (path, reason): found, but the dynamic linker refused it
            dll = None
            explicit = os.environ.get("KEYMESH_LIBRARY")
            for path in candidates():
                if path != explicit and not os.path.exists(path):
                    tried.append(path)
                    continue
                try:
                    dll = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                    self.path = path
                    break
                except OSError as e:
                    tried.append("%s (%s)" % (path, e))
                    if path == explicit:
                        # An explicit choice that fails is an error, not a hint.
                        raise OSError("keymesh: cannot load KEYMESH_LIBRARY=%s: %s"
                                      % (path, e)) from None
                    failed.append((path, str(e)))
            if dll is None:
                for name in filter(None, [ctypes.util.find_library("keymesh"),
                                          "libkeymesh.so.0"]):
                    try:
                        dll = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
                        self.path = name
                        break
                    except OSError as e:
                        tried.append("%s (%s)" % (name, e))
                        # A bare name the linker did not find is "not
                        # found"; any other failure is of a library found.
                        if "cannot open shared object file" not in str(e):
                            failed.append((name, str(e)))
            if dll is None and failed:
                # Found, but it does not load (a half-linked build, a missing
                # dependency, another architecture): say so, not "not found".
                path, why = failed[0]
                raise OSError("keymesh: libkeymesh was found at %s and failed to load: %s%s"
                              % (path, _reason(path, why),
                                 "" if len(failed) == 1 else " (also tried: %s)"
                                 % "; ".join(tried)))
            if dll is None:
                raise OSError("keymesh: libkeymesh not found; build it with make, or set "
                              "KEYMESH_LIBRARY=/path/to/libkeymesh.so.0 (tried: %s)"
                              % "; ".join(tried))
            bad = size_mismatches(dll)
            if bad:
                # Reading or writing through a struct of another size would
                # corrupt memory: refuse, naming both sides.
                raise OSError("keymesh: %s does not match this binding (%s): install the "
                              "binding and the library from the same version"
                              % (self.path, "; ".join(bad)))
            for name, (res, args) in _PROTOS.items():
                if name in OPTIONAL:
                    continue
                fn = getattr(dll, name)
                fn.restype = res
                fn.argtypes = args
            self._dll = dll
            return dll

    def load(self) -> ctypes.CDLL:
        """Load the library now (the C extension needs it loaded first)."""
        return self._load()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if not name.startswith("km_"):
            raise AttributeError(name)
        if name in OPTIONAL:
            fn = self.optional(name)
            if fn is None:
                raise AttributeError(name)
            return fn
        fn = getattr(self._load(), name)
        return fn

    def optional(self, name: str) -> Optional[Callable[..., Any]]:
        """The function `name`, or None when this libkeymesh lacks it.
        Looked up when first asked for, so a library without the
        reconfiguration API serves everything else."""
        if name in self._optional:
            return self._optional[name]
        dll = self._load()
        try:
            fn = getattr(dll, name)
        except AttributeError:
            fn = None
        if fn is not None:
            res, args = _PROTOS[name]
            fn.restype = res
            fn.argtypes = args
        self._optional[name] = fn
        return fn


lib = _Lib()


def err_name(rc: int) -> str:
    return lib.km_err_name(rc).decode()


def strerror(rc: int) -> str:
    return lib.km_strerror(rc).decode()


def mask(secret: str) -> str:
    buf = (c_char * 24)()
    lib.km_mask_secret(secret.encode(), buf)
    return buf.value.decode("utf-8", "replace")
