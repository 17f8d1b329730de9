<?php

declare(strict_types=1);

namespace KeyMesh;

/**
 * What the provider said about a request (keymesh.h km_outcome_kind), for
 * Pool::release(outcome: ...) when there is no HTTP status to map.
 */
enum Outcome: int
{
    /** 2xx */
    case Success = 0;
    /** 429: the key cools down (retryAfter: the provider's Retry-After) */
    case RateLimited = 1;
    /** transient: 5xx, timeout, network error */
    case Failure = 2;
    /** 401/403: the key is invalid until an operator enables it */
    case Auth = 3;
    /** 402, insufficient quota: the key is exhausted */
    case Quota = 4;
    /** never sent: the token reservation comes back (the request still
     * counts toward request limits) */
    case Cancelled = 5;
}
