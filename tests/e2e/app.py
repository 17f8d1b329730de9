"""WSGI app of the gunicorn end-to-end tests (tests/t_gunicorn*.sh).

Each request takes a key from the shared segment $KMT_SEG, calls the mock
upstream on 127.0.0.1:$KMT_UPSTREAM with it, and answers with the
upstream's status (503 when the pool had no key in time).
  /call?pool=P            the lease() context manager, outcome from the HTTP answer
  /call?pool=P&api=legacy acquire() / release() / mark_rate_limited(cooldown=Retry-After)
  /hold?pool=P            take a lease, write "pid" to $KMT_HOLD_FILE, sleep 60 s
Headers X-Key-Id and X-Worker-Pid say which key and worker served it.
"""
import os
import time
import urllib.error
import urllib.parse
import urllib.request

from keymesh import KeyMeshError, NoAvailableKeyError, SyncKeyPool

SEG = os.environ["KMT_SEG"]
UPSTREAM = "http://127.0.0.1:%s/v1/chat/completions" % os.environ["KMT_UPSTREAM"]
TIMEOUT = float(os.environ.get("KMT_ACQUIRE_TIMEOUT", "0.3"))
_pools = {}


def pool(name):
    # Opened on first use in each worker (one attachment per process).
    p = _pools.get(name)
    if p is None:
        p = _pools[name] = SyncKeyPool.open(SEG, name, acquire_timeout=TIMEOUT)
    return p


def upstream(key):
    req = urllib.request.Request(UPSTREAM, data=b"{}", method="POST",
                                 headers={"Authorization": "Bearer " + key,
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
    p = pool(q.get("pool", "llm"))
    kid = "-"
    try:
        if path == "/call" and q.get("api") == "legacy":
            key = p.acquire()
            t0 = time.monotonic()
            status, headers, body = upstream(key)
            kid = "legacy"
            if status == 429:
                p.mark_rate_limited(key, cooldown=float(headers.get("Retry-After", 0)) or None)
            elif status >= 500:
                p.mark_failed(key)
            else:
                p.release(key, latency=time.monotonic() - t0)
        elif path == "/call":
            with p.lease(estimated_tokens=15) as lease:
                kid = lease.key_id
                status, headers, body = upstream(lease.key)
                lease.report(status, headers=headers, body=body,
                             tokens=15 if status == 200 else None)
        elif path == "/hold":
            with p.lease() as lease:
                with open(os.environ["KMT_HOLD_FILE"] + ".tmp", "w") as f:
                    f.write("%d\n" % os.getpid())
                os.rename(os.environ["KMT_HOLD_FILE"] + ".tmp", os.environ["KMT_HOLD_FILE"])
                time.sleep(60)
            status, body = 200, b"held\n"
        else:
            status, body = 404, b"not found\n"
    except NoAvailableKeyError:
        status, body = 503, b"no key available\n"
    except KeyMeshError as e:
        status, body = 500, ("keymesh: %s\n" % e).encode()
    reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
              500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "X")
    start_response("%d %s" % (status, reason),
                   [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                    ("X-Key-Id", kid), ("X-Worker-Pid", str(os.getpid()))])
    return [body]
