"""examples/python_gunicorn.py - KeyMesh under gunicorn: the master creates
the pool, every worker shares it.  Runnable as is (no network: the "call"
is a sleep); with a real provider, see the comments.

Two masters may run with one segment name at once (a second instance, or
gunicorn's USR2 upgrade, where the new master starts before the old one
stops): the second shares the first one's segment instead of replacing it,
and the segment is removed when the last of them stops, never while a
master still uses it (see "the segment's life" below).

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
import fcntl
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
    # In the master, before the fork: create the segment, or share the one
    # another master runs on.
    server.keymesh, server.keymesh_lock, server.keymesh_owned = master_attach(server.log)


def on_exit(server):
    server.keymesh.close()
    master_detach(server.log, server.keymesh_lock, server.keymesh_owned)


# ---- the segment's life, in the masters ----------------------------------
# Every master holds a shared flock(2) on the segment's file (on Linux,
# /dev/shm/NAME) for as long as it runs; its workers inherit the lock, and
# the kernel drops it when the last of them is gone, even after a SIGKILL.
# So a master can tell a segment another master uses from one that nobody
# runs on, without unlinking anything to find out:
#   - starting, it creates the segment; if the name exists, it shares that
#     segment as it is.  It owns it (removes it at the end) only if another
#     master holds it: a segment no master holds was left by a crashed run or
#     made by someone else (`kmctl create`), and stays theirs.
#   - stopping, it removes the segment only if it owns it, no other master
#     holds it anymore, and the name still names the segment it used.
# Removal holds the lock exclusively, so a master starting meanwhile waits
# for it, sees the name gone, and creates a new segment.

def _segment_path():
    return os.path.join("/dev/shm", SEGMENT.lstrip("/"))


def _held_by_another(fd):
    """True if another process holds a lock on fd's file.  The caller holds
    a shared one, and holds it again on return (the test upgrades it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = False
    except BlockingIOError:
        held = True
    fcntl.flock(fd, fcntl.LOCK_SH)
    return held


def _same_file(fd):
    try:
        st = os.stat(_segment_path())
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)


def master_attach(log):
    """(pool, lock fd, owned): attach this master to SEGMENT."""
    for _ in range(50):
        pool = None
        try:
            pool, made = keymesh.SyncKeyPool.create(SEGMENT, CONFIG), True
        except keymesh.KeyMeshError as e:
            if e.errname != "EEXIST":
                raise
            made = False
        try:
            fd = os.open(_segment_path(), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:      # removed by a master that stopped: again
            continue
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a master removes it
        if made:
            log.info("keymesh: created segment %s", SEGMENT)
            return pool, fd, True
        owned = _held_by_another(fd)
        try:
            pool = keymesh.SyncKeyPool.open(SEGMENT)
        except keymesh.KeyMeshError as e:
            if e.errname not in ("ENOENT", "ENOTREADY"):
                os.close(fd)
                raise
        if pool is not None and _same_file(fd):
            if owned:
                log.info("keymesh: sharing segment %s with the master that runs on it", SEGMENT)
            else:
                log.warning("keymesh: segment %s exists and no master runs on it (a crashed run, "
                            "or kmctl create): using it as it is, with its own configuration, "
                            "and leaving it in place at exit; to start from this file's "
                            "configuration, stop, run `kmctl destroy %s`, and start again",
                            SEGMENT, SEGMENT)
            return pool, fd, owned
        if pool is not None:           # the name was replaced meanwhile: again
            pool.close()
        os.close(fd)
        time.sleep(0.1)
    raise RuntimeError("keymesh: segment %s keeps changing; not starting" % SEGMENT)


def master_detach(log, fd, owned):
    """Remove SEGMENT if this master owns it and is the last one on it."""
    try:
        if not owned:
            log.info("keymesh: leaving segment %s to its maker", SEGMENT)
            return
        try:                           # exclusive: no other master holds it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("keymesh: leaving segment %s to the master still running on it", SEGMENT)
            return
        if _same_file(fd):
            keymesh.unlink(SEGMENT)
            log.info("keymesh: removed segment %s", SEGMENT)
    finally:
        os.close(fd)                   # drops the lock: a master waiting in master_attach goes on


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
