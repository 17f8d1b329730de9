"""httpx integration: KeyMeshAuth(pool), an httpx.Auth that leases a key
for every request.

    import httpx, keymesh
    from keymesh.httpx import KeyMeshAuth

    pool = keymesh.SyncKeyPool.open("llm", "openai")
    client = httpx.Client(auth=KeyMeshAuth(pool))
    openai_client = OpenAI(api_key="unused", http_client=client)

For each request it acquires a key (waiting up to the pool's
acquire_timeout; in an AsyncClient without blocking the loop), sets the
key's header (Authorization: Bearer, or x-api-key / x-goog-api-key by
`provider` or `header`), and when the response's headers arrive releases
the lease with its status, error body (read only for errors, so a streamed
success stays streamed) and rate-limit headers through
km_outcome_from_http: a 429 cools the key for its Retry-After, 401/403
invalidate it, insufficient quota exhausts it, x-ratelimit-* tighten its
windows.  After a 429 the request is sent once more on another key when
one is free now and the body can be sent again (bytes, JSON, form data; not
a generator).  A transport error (connection, timeout) counts as a failure;
a cancelled request as cancelled.

The OpenAI, Anthropic, Groq and Mistral SDKs take http_client=, so one
integration serves them all.  OpenAIHandler and AsyncOpenAIHandler are
httpx clients built on it, with the constructor of the in-process
library's handlers (keys=..., strategy=...).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncGenerator, Generator, Optional, Sequence

import httpx

from ._pool import KeyPool, NoAvailableKeyError, SchedulerStrategy, SyncKeyPool, _aacquire

__all__ = ["KeyMeshAuth", "OpenAIHandler", "AsyncOpenAIHandler", "PROVIDER_HEADERS"]

# provider -> (header, scheme): how each sends its key.
PROVIDER_HEADERS = {
    "openai": ("authorization", "Bearer"),
    "azure": ("api-key", ""),
    "anthropic": ("x-api-key", ""),
    "gemini": ("x-goog-api-key", ""),
    "google": ("x-goog-api-key", ""),
    "groq": ("authorization", "Bearer"),
    "mistral": ("authorization", "Bearer"),
    "together": ("authorization", "Bearer"),
    "deepseek": ("authorization", "Bearer"),
    "openrouter": ("authorization", "Bearer"),
}


def _replayable(request: httpx.Request) -> bool:
    return isinstance(request.stream, httpx.ByteStream)


class KeyMeshAuth(httpx.Auth):
    """httpx.Auth leasing a key of `pool` (SyncKeyPool or KeyPool, in a
    Client or an AsyncClient alike) per request.

    provider    "openai" (default), "anthropic", "gemini", ... (PROVIDER_HEADERS)
    header      the header name, overriding the provider's ("authorization",
                "x-api-key", "x-goog-api-key", ...); scheme: "Bearer" or ""
    model, estimated_tokens, key_id, strategy: as in pool.lease()
    timeout     seconds to wait for a key (default: the pool's acquire_timeout)
    retry_429   send once more on another key after a 429 (default True)
    """

    requires_request_body = False
    requires_response_body = False

    def __init__(self, pool: Any, *, provider: str = "openai", header: Optional[str] = None,
                 scheme: Optional[str] = None, model: Optional[str] = None,
                 estimated_tokens: int = 0, key_id: Optional[str] = None,
                 strategy: Any = None, timeout: Optional[float] = None,
                 retry_429: bool = True) -> None:
        if provider not in PROVIDER_HEADERS and header is None:
            raise ValueError("provider %r: unknown; give header= (known: %s)"
                             % (provider, ", ".join(sorted(PROVIDER_HEADERS))))
        h, sch = PROVIDER_HEADERS.get(provider, ("authorization", "Bearer"))
        if header is not None:
            h = header.lower()
            sch = "Bearer" if h == "authorization" else ""
        self.pool = pool
        self.header = h
        self.scheme = sch if scheme is None else scheme
        self.model = model
        self.estimated_tokens = int(estimated_tokens)
        if self.estimated_tokens < 0:
            raise ValueError("estimated_tokens must be >= 0")
        self.key_id = key_id
        self.strategy = strategy
        self.timeout = timeout
        self.retry_429 = bool(retry_429)

    def _apply(self, request: httpx.Request, lease: Any) -> None:
        key = lease.key
        request.headers[self.header] = "%s %s" % (self.scheme, key) if self.scheme else key

    @staticmethod
    def _settle(lease: Any, response: httpx.Response, body: Optional[bytes]) -> int:
        # One call: the status and the raw header pairs (bytes, no
        # decoding) to km_outcome_from_http, then km_release (in C with
        # keymesh._ext).
        return lease._release_http(response.status_code, response.headers.raw, body)

    def _args(self) -> tuple:
        return (self.model, self.estimated_tokens, self.key_id, self.strategy, False)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response,
                                                                    None]:
        lease = self.pool._acquire_lease(self.timeout, *self._args())
        retried = False
        while True:
            self._apply(request, lease)
            try:
                response = yield request
            except GeneratorExit:
                # httpx closes the flow when sending failed (connect error,
                # timeout, an interrupt): the key may be at fault.
                if not lease.done:
                    lease.fail(None)
                raise
            except BaseException as e:
                if not lease.done:
                    lease.fail(e)
                raise
            body = None
            if response.status_code >= 400:
                body = response.read()
            self._settle(lease, response, body)
            if response.status_code != 429 or retried or not self.retry_429 or \
                    not _replayable(request):
                return
            try:
                lease = self.pool._acquire_lease(0, *self._args())
            except NoAvailableKeyError:
                return  # no other key free now: the caller sees the 429
            retried = True

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request,
                                                                               httpx.Response]:
        lease = await _aacquire(self.pool, self.timeout, *self._args())
        retried = False
        while True:
            self._apply(request, lease)
            try:
                response = yield request
            except GeneratorExit:
                if not lease.done:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        lease.cancel()
                    else:
                        lease.fail(None)
                raise
            except BaseException as e:
                if not lease.done:
                    lease.fail(e)
                raise
            body = None
            if response.status_code >= 400:
                body = await response.aread()
            self._settle(lease, response, body)
            if response.status_code != 429 or retried or not self.retry_429 or \
                    not _replayable(request):
                return
            try:
                lease = await _aacquire(self.pool, 0, *self._args())
            except NoAvailableKeyError:
                return
            retried = True


class OpenAIHandler(httpx.Client):
    """An httpx.Client whose requests each lease a key of its own
    SyncKeyPool (KeyMeshAuth): pass it as http_client= to an SDK.  The
    constructor is the in-process library's; other keywords go to
    httpx.Client.  .pool is the pool; close() closes both."""

    def __init__(self, keys: Sequence[str], *,
                 strategy: SchedulerStrategy = SchedulerStrategy.LEAST_BUSY,
                 default_cooldown: float = 60.0, max_failures: int = 10,
                 acquire_timeout: float = 30.0, provider: str = "openai",
                 **httpx_kwargs: Any) -> None:
        self._pool = SyncKeyPool(keys=keys, strategy=strategy, default_cooldown=default_cooldown,
                                 max_failures=max_failures, acquire_timeout=acquire_timeout)
        super().__init__(auth=KeyMeshAuth(self._pool, provider=provider), **httpx_kwargs)

    @property
    def pool(self) -> SyncKeyPool:
        return self._pool

    def close(self) -> None:
        super().close()
        self._pool.close()


class AsyncOpenAIHandler(httpx.AsyncClient):
    """OpenAIHandler for asyncio: an httpx.AsyncClient on a KeyPool."""

    def __init__(self, keys: Sequence[str], *,
                 strategy: SchedulerStrategy = SchedulerStrategy.LEAST_BUSY,
                 default_cooldown: float = 60.0, max_failures: int = 10,
                 acquire_timeout: float = 30.0, provider: str = "openai",
                 **httpx_kwargs: Any) -> None:
        self._pool = KeyPool(keys=keys, strategy=strategy, default_cooldown=default_cooldown,
                             max_failures=max_failures, acquire_timeout=acquire_timeout)
        super().__init__(auth=KeyMeshAuth(self._pool, provider=provider), **httpx_kwargs)

    @property
    def pool(self) -> KeyPool:
        return self._pool

    async def aclose(self) -> None:
        await super().aclose()
        await self._pool.close()


