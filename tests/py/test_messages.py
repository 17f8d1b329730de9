"""What the Python binding says and reports, held against kmctl (issue 14,
items 7, 9, 10 and 12): the same units for the same quantity in status(),
kmctl's JSON and kmctl's tables; the same detail on a permission error; an
empty object named for what it is; unsafe modes refused with the reason;
a library found but not loadable reported as such, not as "not found"."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from keymesh import KeyMeshError, SyncKeyPool
from keymesh import _lib as L

from conftest import cfg, no_secret

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.join(HERE, "..", "..", "bindings", "python", "keymesh")


def _table(text, first):
    """The rows of the table whose title row starts with `first`, as dicts
    by column title (cells hold no spaces in these tables)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = line.split()
        if cells and cells[0] == first:
            rows = []
            for row in lines[i + 1:]:
                got = row.split()
                if not row.startswith("  ") or len(got) != len(cells):
                    break
                rows.append(dict(zip(cells, got)))
            return rows
    raise AssertionError("no table starting with %s in:\n%s" % (first, text))


def _kmctl(kmctl, *args):
    r = subprocess.run([kmctl, *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_units_agree_across_kmctl_json_tables_and_status(seg, secrets, kmctl):
    name = seg("units")
    pool = SyncKeyPool.create(name, cfg(secrets[:2]))
    k1 = pool.acquire()
    k2 = pool.acquire()
    pool.release(k1, latency=0.0123)           # EMA 12300 us
    pool.mark_rate_limited(k2, cooldown=600)   # 600000 ms of cooldown
    t0 = time.monotonic()
    st = {k["id"]: k for k in pool.status()["keys"]}
    ins = {k["id"]: k for k in json.loads(_kmctl(kmctl, "inspect", name, "--json"))
           ["pools"][0]["keys"]}
    sta = {k["id"]: k for k in json.loads(_kmctl(kmctl, "stats", name, "--json"))
           ["pools"][0]["keys"]}
    ins_t = {r["ID"]: r for r in _table(_kmctl(kmctl, "inspect", name), "ID")}
    sta_t = {r["KEY"]: r for r in _table(_kmctl(kmctl, "stats", name), "KEY")}
    spread_ms = (time.monotonic() - t0) * 1000 + 2
    hot = next(i for i, k in st.items() if k["latency_ema_us"])
    cool = next(i for i, k in st.items() if k["cooldown_remaining_ms"])
    assert hot != cool

    # Latency: microseconds everywhere, the same number.
    assert st[hot]["latency_ema_us"] == 12300
    assert ins[hot]["latency_ema_us"] == sta[hot]["latency_ema_us"] == 12300
    assert ins_t[hot]["EMA_US"] == sta_t[hot]["LAT_EMA_US"] == "12300"
    # No sample yet: None/null (inspect --json is the snapshot document,
    # which writes 0 there).
    assert st[cool]["latency_ema_us"] is None and sta[cool]["latency_ema_us"] is None
    assert ins[cool]["latency_ema_us"] == 0
    assert ins_t[cool]["EMA_US"] == sta_t[cool]["LAT_EMA_US"] == "-"
    # Cooldown: milliseconds everywhere, read a few ms apart.
    got = [st[cool]["cooldown_remaining_ms"], ins[cool]["cooldown_remaining_ms"],
           sta[cool]["cooldown_remaining_ms"], int(ins_t[cool]["COOLDOWN_MS"]),
           int(sta_t[cool]["COOLDOWN_MS"])]
    assert all(590000 <= v <= 600000 for v in got), got
    assert max(got) - min(got) <= spread_ms, (got, spread_ms)
    assert st[hot]["cooldown_remaining_ms"] == ins[hot]["cooldown_remaining_ms"] == 0
    assert ins_t[hot]["COOLDOWN_MS"] == sta_t[hot]["COOLDOWN_MS"] == "-"
    # The old names are gone; the in-process pools' names stay, in seconds.
    assert not {"latency_ema_ms", "cooldown_remaining_s"} & set(st[cool])
    assert st[hot]["latency_avg"] == pytest.approx(0.0123)
    assert 590 <= st[cool]["cooldown_remaining"] <= 600
    pool.close()


def _as_nobody(fn):
    """Run fn() in a forked child as uid/gid 65534; what it returns (text)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out = fn()
        except BaseException as e:  # noqa: BLE001 - the child reports anything
            out = "child failed: %r" % (e,)
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as uid 65534")
def test_permission_error_gives_kmctl_detail(seg, secrets, kmctl):
    name = seg("perm")
    pool = SyncKeyPool.create(name, cfg(secrets[:1]))

    def attach():
        try:
            SyncKeyPool.open(name).status()
            return "opened"
        except KeyMeshError as e:
            return "%s|%s" % (e.errname, e)
    got = _as_nobody(attach)
    errname, _, msg = got.partition("|")
    assert errname == "EACCES", got

    def run_kmctl():
        r = subprocess.run([kmctl, "inspect", name], capture_output=True, text=True)
        return r.stderr
    lines = _as_nobody(run_kmctl).splitlines()
    assert len(lines) == 2, lines
    detail = lines[1].split(": ", 2)[2]   # "kmctl: inspect: <detail>"
    assert detail == ("segment '%s' is mode 0600, owner root, group root; this process "
                      "(uid 65534) needs membership of its group, or its owner's user id"
                      % name), detail
    assert msg == "segment '%s': %s; %s" % (name, L.strerror(L.EACCES), detail), msg
    assert no_secret(msg)
    pool.close()


def test_empty_object_is_named_with_how_to_remove_it(seg):
    name = seg("empty")
    open("/dev/shm/" + name, "w").close()
    with pytest.raises(KeyMeshError) as e:
        SyncKeyPool.open(name).status()
    msg = str(e.value)
    assert "an empty shared-memory object" in msg and "not a KeyMesh segment" in msg, msg
    assert "kmctl destroy --force %s" % name in msg and "rm /dev/shm/%s" % name in msg, msg
    assert "being created" not in msg and e.value.errname == "ENOTREADY"
    # kmctl's line, word for word.
    assert msg == "segment '%s': an empty shared-memory object (0 bytes, mode %04o, uid %d), " \
        "not a KeyMesh segment: another program's, or a creation that died before sizing " \
        "it; remove it with 'kmctl destroy --force %s' or 'rm /dev/shm/%s'" % (
            name, os.stat("/dev/shm/" + name).st_mode & 0o7777, os.geteuid(), name, name), msg


@pytest.mark.parametrize("mode, why", [(0o666, "world-writable"), (0o777, "world-writable"),
                                       (0o4600, "setuid, setgid and sticky"),
                                       (0o1660, "setuid, setgid and sticky")])
def test_create_refuses_unsafe_modes(seg, secrets, mode, why):
    name = seg("mode")
    with pytest.raises(KeyMeshError) as e:
        SyncKeyPool.create(name, cfg(secrets[:1]), mode=mode)
    assert e.value.errname == "EINVAL" and why in str(e.value), str(e.value)
    assert "%04o" % mode in str(e.value)
    assert not os.path.exists("/dev/shm/" + name)


def test_create_mode_is_exact(seg, secrets):
    name = seg("mode")
    old = os.umask(0o077)
    try:
        pool = SyncKeyPool.create(name, cfg(secrets[:1]), mode=0o660)
    finally:
        os.umask(old)
    assert os.stat("/dev/shm/" + name).st_mode & 0o7777 == 0o660
    pool.close()


def _load_error(tmp_path, lib_bytes=None, lib_from=None):
    """Import a copy of the package whose repository build/ holds the given
    libkeymesh.so.0, with nothing else to find; the OSError's text."""
    root = tmp_path / "repo"
    shutil.copytree(PKG, root / "bindings" / "python" / "keymesh",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "build").mkdir()
    lib = root / "build" / "libkeymesh.so.0"
    if lib_from:
        shutil.copy(lib_from, lib)
    elif lib_bytes is not None:
        lib.write_bytes(lib_bytes)
    code = ("import ctypes.util; ctypes.util.find_library = lambda n: None\n"
            "import keymesh\n"
            "try:\n"
            "    keymesh.SyncKeyPool(keys=['sk-x-1'])\n"
            "except OSError as e:\n"
            "    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("KEYMESH_LIBRARY", "KM_BUILD")}
    env["PYTHONPATH"] = str(root / "bindings" / "python")
    env["KEYMESH_NO_EXT"] = "1"
    env["LD_LIBRARY_PATH"] = str(tmp_path)   # no libkeymesh.so.0 there
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=str(tmp_path))
    return r.stdout.strip() + r.stderr.strip(), str(lib)


def test_loader_says_found_but_failed_to_load(tmp_path):
    msg, lib = _load_error(tmp_path, lib_bytes=b"not a shared object\n")
    assert msg.startswith("keymesh: libkeymesh was found at %s and failed to load: " % lib), msg
    assert "not found" not in msg


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_loader_names_the_undefined_symbol(tmp_path):
    src = tmp_path / "half.c"
    src.write_text("int json_string_length(void);\nint f(void) { return json_string_length(); }\n")
    so = tmp_path / "half.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    msg, lib = _load_error(tmp_path, lib_from=str(so))
    assert msg == ("keymesh: libkeymesh was found at %s and failed to load: undefined symbol: "
                   "json_string_length" % lib), msg


def test_loader_not_found_is_still_not_found(tmp_path):
    msg, _ = _load_error(tmp_path)
    assert msg.startswith("keymesh: libkeymesh not found;"), msg
