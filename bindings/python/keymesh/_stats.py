"""pool.stats(): the statistics of one pool as a dict, through the C API's
km_key_stats_get, km_pool_stats_get, km_model_stats_get and
km_key_model_stats_get (include/keymesh.h, "statistics"; src/stats.c).

The shape is that of one pool of ``kmctl stats --json`` (docs/kmctl.md,
"stats"; tools/kmctl/cmd_stats.c builds it from the same calls), with the
same field names and units: durations of latency in _us, other durations
in _ms, a window's period in _s, money in _usd (floats), a quantity with
no value yet None.  Two differences, both for Python: "keys" and "models"
are dicts by key id and model name instead of lists (each entry still
carries its "id" or "name"), and the top level adds "segment" and
"taken_unix_ms" (the wall clock when read), which kmctl puts on its
document.  Secrets are never read: the stats structs hold ids only.

Not the hot path: stats() reads every key of the pool through ctypes in
both implementations (the C extension, keymesh._ext, does acquire and
release only).  It takes no lock and writes nothing to the segment; the
numbers are read one by one while workers run, so those of one key need
not be consistent with each other to the request (see keymesh.h).

Every struct here mirrors the C one field for field and is compared with
the library's km_struct_size() when this module is imported: OSError, as
keymesh._lib does for its own structs, when km_window_stats or
km_stats_counters differ; km_key_stats, km_pool_stats and km_model_stats
are passed with their size, which keymesh.h lets grow ("Growth without an
ABI break"), so a library with longer ones is used (see GROWABLE).  With
the library of its own tree every size agrees: tests/e2e/layout.c and
test_binding.py compare every field's offset, tests/py/test_stats.py the
sizes.
"""

from __future__ import annotations

import ctypes
import time
from ctypes import POINTER, Structure, c_char, c_int, c_int32, c_size_t, c_uint32, c_uint64
from typing import Any, Dict, List, Optional, TypedDict

from . import _lib as L
from ._lib import ID_MAX, OUT_COUNT, WIN_COUNT, lib

KEY_STATE_COUNT = 6   # KM_KEY_STATE_COUNT
STATS_ALL_KEYS = -1   # KM_STATS_ALL_KEYS
MODE_TOKEN_BUCKET = 0
MODE_SLIDING = 1
MODELS_PER_MODEL = 1  # km_model_mode


# ------------------------------------------------------------ the structs

class WindowStats(Structure):
    _fields_ = [("limit", c_uint64), ("burst", c_uint64), ("mode", c_int32),
                ("period_s", c_uint32), ("used", c_uint64), ("left", c_uint64),
                ("full_in_ms", c_uint64)]


class StatsCounters(Structure):
    _fields_ = [("requests", c_uint64), ("outcomes", c_uint64 * OUT_COUNT),
                ("abandoned", c_uint64), ("stale_releases", c_uint64), ("tokens", c_uint64)]


class KeyStats(Structure):
    _fields_ = [("size", c_uint32), ("key", c_int32), ("gen", c_uint32), ("pool", c_int32),
                ("id", c_char * (ID_MAX + 1)), ("state", c_int32), ("weight", c_uint32),
                ("taken_ns", c_uint64), ("cooldown_remaining_ms", c_uint64),
                ("inflight", c_uint32), ("max_inflight", c_uint32),
                ("consecutive_failures", c_uint32), ("consecutive_429s", c_uint32),
                ("latency_ema_us", c_uint64), ("success_ppm", c_uint32),
                ("n_models", c_uint32), ("counters", StatsCounters),
                ("windows", WindowStats * WIN_COUNT), ("spent_microusd", c_uint64),
                ("budget_microusd", c_uint64), ("budget_hard", c_int32),
                ("reserved0", c_uint32), ("price_in_microusd_per_1k", c_uint64),
                ("price_out_microusd_per_1k", c_uint64)]


class PoolStats(Structure):
    _fields_ = [("size", c_uint32), ("pool", c_int32), ("name", c_char * (ID_MAX + 1)),
                ("strategy", c_int32), ("model_mode", c_int32), ("taken_ns", c_uint64),
                ("n_keys", c_uint32), ("keys_by_state", c_uint32 * KEY_STATE_COUNT),
                ("inflight", c_uint32), ("max_inflight", c_uint32), ("waiters", c_uint32),
                ("n_models", c_uint32), ("counters", StatsCounters),
                ("latency_ema_us", c_uint64), ("success_ppm", c_uint32),
                ("reserved0", c_uint32), ("windows", WindowStats * WIN_COUNT),
                ("keys_limited", c_uint32 * WIN_COUNT), ("spent_microusd", c_uint64),
                ("budget_microusd", c_uint64), ("budget_hard", c_int32),
                ("reserved1", c_uint32)]


class ModelStats(Structure):
    _fields_ = [("size", c_uint32), ("pool", c_int32), ("model", c_int32), ("key", c_int32),
                ("name", c_char * (ID_MAX + 1)), ("taken_ns", c_uint64),
                ("n_keys", c_uint32), ("counters_valid", c_int32),
                ("counters", StatsCounters), ("windows", WindowStats * WIN_COUNT),
                ("keys_limited", c_uint32 * WIN_COUNT)]


STRUCTS = {"km_window_stats": WindowStats, "km_stats_counters": StatsCounters,
           "km_key_stats": KeyStats, "km_pool_stats": PoolStats,
           "km_model_stats": ModelStats}
# km_struct_id (keymesh.h): KM_ST_WINDOW_STATS .. KM_ST_MODEL_STATS.
STRUCT_IDS = {"km_window_stats": 15, "km_stats_counters": 16, "km_key_stats": 17,
              "km_pool_stats": 18, "km_model_stats": 19}

# name: (restype, argtypes).  Declared here, not in _lib._PROTOS, on
# function objects of this module's own (see _bind).
_PROTOS: Dict[str, Any] = {
    "km_key_stats_get": (c_int, [L.env_p, c_int, POINTER(KeyStats), c_size_t]),
    "km_pool_stats_get": (c_int, [L.env_p, c_int, POINTER(PoolStats), c_size_t]),
    "km_model_stats_get": (c_int, [L.env_p, c_int, c_int, POINTER(ModelStats), c_size_t]),
    "km_key_model_stats_get": (c_int, [L.env_p, c_int, c_int, POINTER(ModelStats), c_size_t]),
    "km_window_name": (ctypes.c_char_p, [c_int]),
}


# Passed by their size (the `size` argument; the library fills at most
# that and says in `size` how much it filled): a library with longer or
# shorter ones (fields are only appended) still serves this binding.  The
# two structs embedded in them have no such room: their size must agree.
GROWABLE = ("km_key_stats", "km_pool_stats", "km_model_stats")


def library_sizes(dll: Any) -> Dict[str, int]:
    """km_struct_size() of every struct of STRUCTS ({} if the library has
    no km_struct_size: older than this binding)."""
    if getattr(dll, "km_struct_size", None) is None:
        return {}
    fn = dll._FuncPtr(("km_struct_size", dll))
    fn.restype, fn.argtypes = c_size_t, [c_int]
    return {name: fn(STRUCT_IDS[name]) for name in STRUCTS}


def size_mismatches(dll: Any, sizes: Optional[Dict[str, int]] = None,
                    fatal_only: bool = False) -> List[str]:
    """Each struct of STRUCTS whose ctypes size differs from the library's
    km_struct_size() (or `sizes`), as text in keymesh._lib.size_mismatches'
    wording; with fatal_only, only those this binding cannot use (not
    GROWABLE)."""
    if sizes is None:
        sizes = library_sizes(dll)
    if not sizes:
        return ["km_struct_size: missing (a libkeymesh older than this binding)"]
    return ["%s: %d bytes in libkeymesh, %d in this binding"
            % (name, sizes[name], ctypes.sizeof(cls))
            for name, cls in STRUCTS.items()
            if sizes[name] != ctypes.sizeof(cls) and not (fatal_only and name in GROWABLE)]


def _bind() -> Dict[str, Any]:
    """The stats functions of the loaded libkeymesh, with prototypes, after
    checking every struct's size against km_struct_size()."""
    dll = lib.load()
    bad = size_mismatches(dll, fatal_only=True)
    if bad:
        # Reading through a struct of another size would write past it.
        raise OSError("keymesh: %s does not match this binding (%s): install the binding and "
                      "the library from the same version" % (lib.path, "; ".join(bad)))
    fns = {}
    for name, (res, args) in _PROTOS.items():
        if getattr(dll, name, None) is None:
            raise OSError("keymesh: %s has no %s (a libkeymesh older than this binding): "
                          "stats() needs the statistics API" % (lib.path, name))
        # Function objects of our own: the CDLL's cached ones are shared.
        fn = dll._FuncPtr((name, dll))
        fn.restype, fn.argtypes = res, args
        fns[name] = fn
    return fns


_F = _bind()
_WINDOW_NAMES = tuple(_F["km_window_name"](w).decode() for w in range(WIN_COUNT))
_STATE_NAMES = tuple(lib.km_key_state_name(s).decode() for s in range(KEY_STATE_COUNT))


# ------------------------------------------------------- the dict's shape
# What stats() returns, for type checkers and readers (at run time plain
# dicts): st: PoolStatsDict = cast(PoolStatsDict, pool.stats()).

class WindowDict(TypedDict, total=False):
    limit: int
    burst: int
    mode: str            # "token_bucket", "sliding", "mixed" (sums)
    period_s: int
    used: int
    left: int
    full_in_ms: int
    keys: int            # sums over keys only: keys that have the window


class CountersDict(TypedDict):
    requests: int
    success: int
    rate_limited: int
    failure: int
    auth: int
    quota: int
    cancelled: int
    abandoned: int
    stale_releases: int
    tokens: int


class ModelDict(TypedDict):
    name: str
    counters: Optional[CountersDict]   # None: a library that keeps none
    windows: Dict[str, WindowDict]


class KeyDict(TypedDict):
    id: str
    state: str
    weight: int
    cooldown_remaining_ms: int
    inflight: int
    max_inflight: int
    consecutive_failures: int
    consecutive_429s: int
    latency_ema_us: Optional[int]
    success_rate: float
    counters: CountersDict
    windows: Dict[str, WindowDict]
    spent_usd: float
    budget_usd: Optional[float]
    budget_hard: Optional[bool]
    budget_period: Optional[str]
    budget_tz: Optional[str]
    prev_spent_usd: float
    period_end_unix_ms: Optional[int]
    budget_warnings: int
    budget_over: Optional[bool]
    models: Dict[str, ModelDict]


class PoolStatsDict(TypedDict):
    segment: str
    taken_unix_ms: int
    name: str
    strategy: str
    model_limits: str
    keys_total: int
    keys_by_state: Dict[str, int]
    inflight: int
    max_inflight: int
    waiters: int
    counters: CountersDict
    latency_ema_us: Optional[int]
    success_rate: float
    spent_usd: float
    budget_usd: Optional[float]
    budget_hard: Optional[bool]
    budget_period: Optional[str]
    budget_tz: Optional[str]
    prev_spent_usd: float
    period_end_unix_ms: Optional[int]
    budget_warnings: int
    budget_over: Optional[bool]
    windows: Dict[str, WindowDict]
    models: Dict[str, ModelDict]
    keys: Dict[str, KeyDict]


# ---------------------------------------------------------- conversions
# Each mirrors its kmctl twin (tools/kmctl/json.c, cmd_stats.c).

_I64_MAX = (1 << 63) - 1


def _u64(v: int) -> int:
    # kmctl's ju64: JSON integers are signed 64-bit, clamped, never wrapped.
    return v if v <= _I64_MAX else _I64_MAX


def _mode(m: int) -> str:
    return "sliding" if m == MODE_SLIDING else "token_bucket" if m == MODE_TOKEN_BUCKET \
        else "mixed"


def counters(c: StatsCounters) -> Dict[str, int]:
    d = {"requests": _u64(c.requests)}
    for o, name in enumerate(L.OUTCOMES):
        d[name] = _u64(c.outcomes[o])
    d["abandoned"] = _u64(c.abandoned)
    d["stale_releases"] = _u64(c.stale_releases)
    d["tokens"] = _u64(c.tokens)
    return d


def windows(ws: Any, keys_limited: Any = None) -> Dict[str, Dict[str, Any]]:
    """The windows that have a limit, by name; with "keys" for sums."""
    out: Dict[str, Dict[str, Any]] = {}
    for w in range(WIN_COUNT):
        x = ws[w]
        if not x.limit:
            continue
        d: Dict[str, Any] = {"limit": _u64(x.limit), "burst": _u64(x.burst),
                             "mode": _mode(x.mode), "period_s": x.period_s,
                             "used": _u64(x.used), "left": _u64(x.left),
                             "full_in_ms": _u64(x.full_in_ms)}
        if keys_limited is not None:
            d["keys"] = keys_limited[w]
        out[_WINDOW_NAMES[w]] = d
    return out


def _usd(micro: int) -> float:
    return micro / 1e6


def _tz(tz_min: int) -> str:
    if not tz_min:
        return "UTC"
    a = abs(tz_min)
    return "%s%02d:%02d" % ("-" if tz_min < 0 else "+", a // 60, a % 60)


def budget_tz(ptr: Any, pool: int, key: int) -> Optional[str]:
    """The budget's zone as configured (km_budget_tz): "UTC", "+HH:MM" or a
    name such as "Europe/Paris"; None if the key or pool is gone."""
    buf = ctypes.create_string_buffer(64)
    if lib.km_budget_tz(ptr, pool, key, buf, len(buf)) != 0:
        return None
    return buf.value.decode("utf-8", "replace")


def _spend(s: Any, info: Any, tz: Optional[str] = None) -> Dict[str, Any]:
    # kmctl's cmd_stats.c budget_json: the period fields come from the
    # info struct (km_pool_info / km_key_info), as kmctl reads them, the
    # zone by name (km_budget_tz).
    b = s.budget_microusd
    st = info.budget
    period = st.period if 0 <= st.period < len(L.BUDGET_PERIODS) else 0
    return {"spent_usd": _usd(s.spent_microusd),
            "budget_usd": _usd(b) if b else None,
            "budget_hard": bool(s.budget_hard) if b else None,
            "budget_period": L.BUDGET_PERIODS[period] if b else None,
            "budget_tz": (tz or _tz(st.tz_min)) if b else None,
            "prev_spent_usd": _usd(st.prev_spent_microusd),
            "period_end_unix_ms": _u64(st.period_end_unix_ns // 1000000)
            if st.period_end_unix_ns else None,
            "budget_warnings": st.warnings,
            "budget_over": bool(st.over) if b else None}


def model_dict(m: ModelStats, summed: bool) -> Dict[str, Any]:
    # Per key x model counters: kept since segment format 4 (counters_valid
    # 1); None, as in kmctl, from a library that keeps none.
    return {"name": m.name.decode("utf-8", "replace"),
            "counters": counters(m.counters) if m.counters_valid else None,
            "windows": windows(m.windows, m.keys_limited if summed else None)}


def key_dict(k: KeyStats, models: List[ModelStats], info: Any,
             tz: Optional[str] = None) -> Dict[str, Any]:
    d: Dict[str, Any] = {
        "id": k.id.decode("utf-8", "replace"),
        "state": _STATE_NAMES[k.state] if 0 <= k.state < KEY_STATE_COUNT else str(k.state),
        "weight": k.weight,
        "cooldown_remaining_ms": _u64(k.cooldown_remaining_ms),
        "inflight": k.inflight,
        "max_inflight": k.max_inflight,
        "consecutive_failures": k.consecutive_failures,
        "consecutive_429s": k.consecutive_429s,
        "latency_ema_us": _u64(k.latency_ema_us) if k.latency_ema_us else None,
        "success_rate": k.success_ppm / 1e6,
        "counters": counters(k.counters),
        "windows": windows(k.windows),
    }
    d.update(_spend(k, info, tz))
    d["models"] = {m["name"]: m for m in (model_dict(x, False) for x in models)}
    return d


def pool_dict(p: PoolStats, models: List[ModelStats], keys: Dict[str, Any],
              info: Any, tz: Optional[str] = None) -> Dict[str, Any]:
    d: Dict[str, Any] = {
        "name": p.name.decode("utf-8", "replace"),
        "strategy": lib.km_strategy_name(p.strategy).decode(),
        "model_limits": "per_model" if p.model_mode == MODELS_PER_MODEL else "global",
        "keys_total": p.n_keys,
        "keys_by_state": {_STATE_NAMES[s]: p.keys_by_state[s] for s in range(KEY_STATE_COUNT)},
        "inflight": p.inflight,
        "max_inflight": p.max_inflight,
        "waiters": p.waiters,
        "counters": counters(p.counters),
        "latency_ema_us": _u64(p.latency_ema_us) if p.latency_ema_us else None,
        "success_rate": p.success_ppm / 1e6,
    }
    d.update(_spend(p, info, tz))
    d["windows"] = windows(p.windows, p.keys_limited)
    d["models"] = {m["name"]: m for m in (model_dict(x, True) for x in models)}
    d["keys"] = keys
    return d


# ------------------------------------------------------------- reading

def _check(rc: int, what: str) -> None:
    if rc != 0:
        from ._pool import _raise
        _raise(rc, what)


def pool_stats(ptr: int, pool: int, segment: str, key: Optional[str] = None,
               model: Optional[str] = None) -> Dict[str, Any]:
    """The stats dict of pool index `pool` on the handle `ptr` (see the
    module docstring); `key` keeps only the key with that id, `model` only
    that model (in "models" of the pool and of each key), as kmctl stats
    --key/--model.  The pool's own numbers stay those of the whole pool.
    UnknownKeyError / KeyMeshError (KM_ENOMODEL) when a filter matches
    nothing."""
    taken_unix_ms = time.time_ns() // 1000000
    ps = PoolStats()
    _check(_F["km_pool_stats_get"](ptr, pool, ctypes.byref(ps), ctypes.sizeof(ps)), "pool")
    pname = ps.name.decode("utf-8", "replace")

    # Models of the pool (over all its keys), by index: those wanted.
    midx: List[int] = []
    pmodels: List[ModelStats] = []
    for m in range(ps.n_models):
        ms = ModelStats()
        _check(_F["km_model_stats_get"](ptr, pool, m, ctypes.byref(ms), ctypes.sizeof(ms)),
               "model %d of pool '%s'" % (m, pname))
        if model is None or ms.name.decode("utf-8", "replace") == model:
            midx.append(m)
            pmodels.append(ms)
    if model is not None and not midx:
        from ._pool import KeyMeshError
        raise KeyMeshError("model %r in pool '%s': %s" % (model, pname, L.strerror(L.ENOMODEL)),
                           L.ENOMODEL)

    pi = L.PoolInfo()
    _check(lib.km_pool_info_get(ptr, pool, ctypes.byref(pi)), "pool '%s'" % pname)
    # Keys: the pool's member list now (it may change while read: stop at
    # its end, skip a key removed meanwhile), or the one asked for.
    if key is not None:
        k = lib.km_key_find(ptr, pool, key.encode())
        if k < 0:
            from ._pool import UnknownKeyError
            raise UnknownKeyError("key %r in pool '%s': %s" % (key, pname, L.strerror(k)), k)
        indices = [k]
    else:
        indices = []
        for i in range(max(pi.n_keys, ps.n_keys)):
            k = lib.km_pool_key(ptr, pool, i)
            if k == L.ENOKEY:
                break
            if k < 0:
                _check(k, "key %d of pool '%s'" % (i, pname))
            indices.append(k)
    keys: Dict[str, Any] = {}
    for k in indices:
        ks = KeyStats()
        rc = _F["km_key_stats_get"](ptr, k, ctypes.byref(ks), ctypes.sizeof(ks))
        if rc == L.ENOKEY and key is None:
            continue  # removed while we read
        _check(rc, "key %d" % k)
        ki = L.KeyInfo()
        if lib.km_key_info_get(ptr, k, ctypes.byref(ki)) != 0:
            ki = L.KeyInfo()  # removed since: no period figures
        kms = []
        for m in midx:
            x = ModelStats()
            rc = _F["km_key_model_stats_get"](ptr, k, m, ctypes.byref(x), ctypes.sizeof(x))
            if rc == L.ENOKEY:
                break
            _check(rc, "model %d of key %d" % (m, k))
            kms.append(x)
        kd = key_dict(ks, kms, ki, budget_tz(ptr, pool, k))
        keys[kd["id"]] = kd
    out: Dict[str, Any] = {"segment": segment, "taken_unix_ms": taken_unix_ms}
    out.update(pool_dict(ps, pmodels, keys, pi, budget_tz(ptr, pool, -1)))
    return out
