"""A private pool (SyncKeyPool(keys=[...])) lives in a memfd (issue 17,
finding 8): nothing in /dev/shm while it runs, nothing and no secret after
its processes are SIGKILLed, and a forked child uses it through the
inherited descriptor."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import keymesh

SECRET = "sk-test-pyt-private-7f3a9c"


def shm_entries(pids):
    """What a private pool of processes `pids` could leave in /dev/shm: a
    named private segment (keymesh-py-PID-..., as before issue 17) or a
    creation's temporary (.kmtmp.PID....).  Other tests, here or in another
    tree on the same machine, create segments (and so temporaries) all the
    while: only names made by `pids` count."""
    pids = set(str(p) for p in pids)
    found = set()
    for n in os.listdir("/dev/shm"):
        for prefix in ("keymesh-py-", "private:keymesh-py-", ".kmtmp."):
            if n.startswith(prefix) and n[len(prefix):].split("-")[0].split(".")[0] in pids:
                found.add(n)
    return found


def shm_holding(secret):
    """Objects in /dev/shm that contain `secret` (those this user may read)."""
    found = []
    for name in os.listdir("/dev/shm"):
        try:
            with open(os.path.join("/dev/shm", name), "rb") as f:
                if secret.encode() in f.read():
                    found.append(name)
        except OSError:
            pass
    return found


def gone(pid):
    """Exited: no such process, or a zombie (it holds no memory any more)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_private_pool_has_no_name_and_a_child_uses_it():
    pids = [os.getpid()]
    before = shm_entries(pids)
    pool = keymesh.SyncKeyPool(keys=[SECRET, SECRET + "-2"])
    try:
        assert shm_entries(pids) - before == set(), "a private pool made a file in /dev/shm"
        fds = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds.append(os.readlink("/proc/self/fd/" + fd))
            except OSError:
                pass  # the directory's own descriptor, closed already
        assert any(t.startswith("/memfd:keymesh-private") for t in fds), fds
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child attaches through the inherited descriptor
            os.close(r)
            ok = 0
            try:
                for _ in range(5):
                    k = pool.acquire()
                    pool.release(k)
                    ok += 1
            finally:
                os.write(w, str(ok).encode())
                os._exit(0)
        os.close(w)
        pids.append(pid)
        assert os.read(r, 16) == b"5"
        os.waitpid(pid, 0)
        k = pool.acquire()
        pool.release(k)
        # The child's releases counted in the same segment.
        assert pool.status()["pool_metrics"]["total_releases"] == 6
    finally:
        pool.close()
    assert shm_entries(pids) - before == set()


def test_sigkilled_private_pool_leaves_nothing():
    code = textwrap.dedent("""
        import os, sys, time
        import keymesh
        pool = keymesh.SyncKeyPool(keys=[%r])
        k = pool.acquire()
        child = os.fork()
        # Both processes write to one pipe: one write(2) per line (atomic
        # below PIPE_BUF), as print() is not always, and the other's line
        # split one ("4190child" then " 4191" under the sanitizer build).
        if child == 0:
            k2 = pool.acquire()
            os.write(1, b"child\\n")
            time.sleep(60)
            os._exit(0)
        os.write(1, ("%%d %%d\\n" %% (os.getpid(), child)).encode())
        time.sleep(60)
    """ % SECRET)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ))
    try:
        lines = [p.stdout.readline().split() for _ in range(2)]
        pids = [int(x) for ln in lines for x in ln if x.isdigit()]
        assert len(pids) == 2, lines
        assert shm_holding(SECRET) == [], "the secret is in a file of /dev/shm while it runs"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        p.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not gone(pids[1]):
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    left = shm_entries(pids)  # the two pids are new: nothing of theirs was there before
    assert left == set(), "SIGKILL left %s" % left
    assert shm_holding(SECRET) == []
