#!/usr/bin/python3
"""Mock LLM upstream for the end-to-end tests: 127.0.0.1 only.

Every request must carry "Authorization: Bearer <key>".  Each key may make at
most RPM requests in any 60 s sliding window (an exact log of arrival
times); the next one gets 429 with Retry-After (whole seconds until the
oldest request leaves the window).  Keys not starting with "sk-test-" get
401.  Each accepted request sleeps DELAY seconds (a model thinking).

  upstream.py --rpm N [--delay S] --port-file FILE
GET /stats  -> {"keys": {"…1111": {"ok": n, "429": n, "401": n,
                "max_concurrent": n}}, "total": n}
Keys are shown by their last 4 characters only: the secrets stay out of logs.
"""
import argparse
import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--rpm", type=int, required=True)
ap.add_argument("--delay", type=float, default=0.005)
ap.add_argument("--port-file", required=True)
args = ap.parse_args()

lock = threading.Lock()
log = collections.defaultdict(collections.deque)      # key -> arrival times
stats = collections.defaultdict(lambda: {"ok": 0, "429": 0, "401": 0,
                                         "concurrent": 0, "max_concurrent": 0})
WINDOW = 60.0


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, code, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/stats":
            with lock:
                keys = {k: {x: v[x] for x in ("ok", "429", "401", "max_concurrent")}
                        for k, v in stats.items()}
            self.reply(200, {"keys": keys,
                             "total": sum(v["ok"] + v["429"] + v["401"] for v in keys.values())})
            return
        self.handle_call()

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self.handle_call()

    def handle_call(self):
        auth = self.headers.get("Authorization") or ""
        key = auth[7:] if auth.startswith("Bearer ") else ""
        tag = "…" + key[-4:]
        now = time.monotonic()
        with lock:
            st = stats[tag]
            if not key.startswith("sk-test-"):
                st["401"] += 1
                code = 401
            else:
                q = log[key]
                while q and q[0] <= now - WINDOW:
                    q.popleft()
                if len(q) >= args.rpm:
                    st["429"] += 1
                    code = 429
                    retry = max(1, int(q[0] + WINDOW - now + 0.999))
                else:
                    q.append(now)
                    st["ok"] += 1
                    st["concurrent"] += 1
                    st["max_concurrent"] = max(st["max_concurrent"], st["concurrent"])
                    code = 200
        if code == 401:
            self.reply(401, {"error": {"type": "invalid_request_error",
                                       "code": "invalid_api_key"}})
            return
        if code == 429:
            self.reply(429, {"error": {"type": "requests", "code": "rate_limit_exceeded"}},
                       [("Retry-After", str(retry))])
            return
        try:
            time.sleep(args.delay)
            self.reply(200, {"choices": [{"message": {"content": "ok"}}],
                             "usage": {"prompt_tokens": 10, "completion_tokens": 5,
                                       "total_tokens": 15}})
        finally:
            with lock:
                stats[tag]["concurrent"] -= 1


srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
with open(args.port_file + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
import os
os.rename(args.port_file + ".tmp", args.port_file)
srv.serve_forever()
