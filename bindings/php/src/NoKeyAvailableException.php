<?php

declare(strict_types=1);

namespace KeyMesh;

/**
 * No key is admissible now (EAGAIN: every key at a limit, cooling down or
 * at its in-flight cap) or none became so within the timeout (ETIMEDOUT).
 * $retryAfter: seconds until one may be, when KeyMesh knows (else null);
 * a caller answering its own client can pass it on as Retry-After.
 */
class NoKeyAvailableException extends Exception
{
    public readonly ?float $retryAfter;

    public function __construct(string $message, int $code = 0, string $errname = '',
                                ?float $retryAfter = null, ?\Throwable $previous = null)
    {
        parent::__construct($message, $code, $errname, $previous);
        $this->retryAfter = $retryAfter;
    }
}
