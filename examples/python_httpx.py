"""examples/python_httpx.py - one key per request through httpx.

    make && PYTHONPATH=bindings/python /usr/bin/python3 examples/python_httpx.py

keymesh.httpx.KeyMeshAuth(pool) leases a key for every request an
httpx.Client (or AsyncClient) sends, sets its header, and releases it with
the provider's answer: a 429 cools that key down and the request goes once
more on another.  The OpenAI, Anthropic, Groq and Mistral SDKs take such a
client as http_client=.  No network here: httpx.MockTransport plays a
provider on which the first key is rate limited.
"""
import json

import httpx

from keymesh import SyncKeyPool
from keymesh.httpx import KeyMeshAuth

KEYS = ["sk-demo-aaaa1111", "sk-demo-bbbb2222"]


def provider(request: httpx.Request) -> httpx.Response:
    key = request.headers["authorization"].removeprefix("Bearer ")
    if key == KEYS[0]:
        return httpx.Response(429, headers={"retry-after": "30"},
                              json={"error": {"code": "rate_limit_exceeded"}})
    return httpx.Response(200, headers={"x-ratelimit-remaining-requests": "99"},
                          json={"choices": [{"message": {"content": "hi"}}]})


pool = SyncKeyPool(keys=KEYS, strategy="fill_first")
with httpx.Client(auth=KeyMeshAuth(pool), transport=httpx.MockTransport(provider),
                  base_url="https://llm.invalid/v1") as client:
    r = client.post("/chat/completions", json={"model": "m", "messages": []})
    print(r.status_code, r.json()["choices"][0]["message"]["content"])
    # e.g. openai.OpenAI(api_key="unused", http_client=client)

for k in pool.status()["keys"]:
    print(k["id"], k["key"], k["state"], "429s:", k["rate_limited"], "ok:", k["success"])
print(json.dumps(pool.status()["pool_metrics"]))
pool.close()
