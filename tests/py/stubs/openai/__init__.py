"""A stand-in for the OpenAI SDK (not packaged by Debian), for
tests/py/test_readme.py only: just enough of its surface for the usage
examples of the in-process key-pool library to run unchanged against the
mock provider: OpenAI / AsyncOpenAI(api_key=, base_url=, http_client=),
.with_options(api_key=), .chat.completions.create(model=, messages=,
extra_headers=), RateLimitError / APIStatusError carrying status_code and
response.  base_url defaults to $OPENAI_BASE_URL, as in the SDK."""
import os
import types

import httpx

__all__ = ["OpenAI", "AsyncOpenAI", "APIStatusError", "RateLimitError",
           "AuthenticationError"]


class APIStatusError(Exception):
    def __init__(self, message, response):
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code


class RateLimitError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


def _wrap(data):
    if isinstance(data, dict):
        return types.SimpleNamespace(**{k: _wrap(v) for k, v in data.items()})
    if isinstance(data, list):
        return [_wrap(v) for v in data]
    return data


def _check(r):
    if r.status_code == 429:
        raise RateLimitError("Error code: 429 - %s" % r.text, r)
    if r.status_code in (401, 403):
        raise AuthenticationError("Error code: %d" % r.status_code, r)
    if r.status_code >= 400:
        raise APIStatusError("Error code: %d" % r.status_code, r)
    return _wrap(r.json())


class _Base:
    def __init__(self, api_key=None, base_url=None, http_client=None):
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL")
                         or "https://api.openai.com/v1").rstrip("/")
        self._http = http_client
        self.chat = types.SimpleNamespace(completions=types.SimpleNamespace(
            create=self._create))

    def with_options(self, api_key=None):
        return type(self)(api_key=api_key or self.api_key, base_url=self.base_url,
                          http_client=self._http)

    def _request(self, model, messages, extra_headers):
        headers = {"Authorization": "Bearer %s" % self.api_key}
        headers.update(extra_headers or {})
        return dict(url=self.base_url + "/chat/completions", headers=headers,
                    json={"model": model, "messages": messages})


class OpenAI(_Base):
    def _create(self, model, messages, extra_headers=None, **kw):
        client = self._http or httpx.Client()
        try:
            return _check(client.post(**self._request(model, messages, extra_headers)))
        finally:
            if self._http is None:
                client.close()


class AsyncOpenAI(_Base):
    async def _create(self, model, messages, extra_headers=None, **kw):
        client = self._http or httpx.AsyncClient()
        try:
            return _check(await client.post(**self._request(model, messages, extra_headers)))
        finally:
            if self._http is None:
                await client.aclose()
