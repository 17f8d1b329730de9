"""A mock LLM provider for tests/py, on 127.0.0.1 (a free port), in a
thread of the test process.  By the secret it is called with:

  sk-test-*, sk-key-*  200 with a chat completion and usage, and
                   x-ratelimit-remaining-requests / -reset-requests headers
                   (remaining set by .remaining[secret], default 99)
  sk-rl-*          429, Retry-After: 7, OpenAI's rate_limit_exceeded body
  sk-quota-*       429 with insufficient_quota (OpenAI's "out of credit")
  sk-bad-*         401
  anything else    401

The secret is read from Authorization: Bearer, x-api-key or
x-goog-api-key.  .calls lists (path, header name, secret, body) per request.
"""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class MockProvider:
    def __init__(self):
        self.calls = []
        self.remaining = {}
        self.lock = threading.Lock()
        mp = self

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
                self.handle_call(b"")

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.handle_call(self.rfile.read(n) if n else b"")

            def handle_call(self, body):
                secret, hname = "", None
                auth = self.headers.get("Authorization") or ""
                if auth.startswith("Bearer "):
                    secret, hname = auth[7:], "authorization"
                for h in ("x-api-key", "x-goog-api-key"):
                    if self.headers.get(h):
                        secret, hname = self.headers[h], h
                with mp.lock:
                    mp.calls.append((self.path, hname, secret, body))
                    rem = mp.remaining.get(secret, 99)
                if secret.startswith(("sk-test-", "sk-key-")):
                    self.reply(200, {"id": "chatcmpl-1", "object": "chat.completion",
                                     "choices": [{"index": 0, "message": {
                                         "role": "assistant", "content": "hello from mock"}}],
                                     "usage": {"prompt_tokens": 10, "completion_tokens": 5,
                                               "total_tokens": 15}},
                               [("x-ratelimit-remaining-requests", str(rem)),
                                ("x-ratelimit-reset-requests", "30s")])
                elif secret.startswith("sk-rl-"):
                    self.reply(429, {"error": {"message": "Rate limit reached",
                                               "type": "requests",
                                               "code": "rate_limit_exceeded"}},
                               [("Retry-After", "7")])
                elif secret.startswith("sk-quota-"):
                    self.reply(429, {"error": {"message": "You exceeded your current quota",
                                               "type": "insufficient_quota",
                                               "code": "insufficient_quota"}})
                else:
                    self.reply(401, {"error": {"type": "invalid_request_error",
                                               "code": "invalid_api_key"}})

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join(5)

    def secrets_called(self):
        with self.lock:
            return [c[2] for c in self.calls]
