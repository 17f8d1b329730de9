<?php

declare(strict_types=1);

namespace KeyMesh;

use FFI\CData;

/**
 * One key, lent to this process until it is released: Pool::acquire()
 * returns it, Pool::release() (or $lease->release()) gives it back with
 * what the provider answered.
 *
 * $secret is a copy of the key's secret, for the request's Authorization
 * header.  It is left out of var_dump(), print_r(), json_encode() and
 * string conversion (the key id and a masked secret are shown), and a
 * lease cannot be serialized: it means nothing in another process.
 * (var_export() shows every property: PHP gives no hook to change that.)
 *
 * A lease the program never releases is released as cancelled (its token
 * estimate comes back; the request still counts toward request limits)
 * when the object is destroyed, or at the end of the request if a fatal
 * error skipped destructors; a process that dies holding one leaves it to
 * a reaper, which counts it as abandoned.  Release explicitly, with the
 * outcome: that is what keeps the pool's limits and health right.
 */
final class Lease implements \Stringable, \JsonSerializable
{
    /** the key's id in the pool configuration */
    public readonly string $keyId;
    /** the key's secret (hidden from dumps) */
    public readonly string $secret;
    /** the key's metadata (configuration "meta"), e.g. ['org' => 'org-1'] */
    public readonly array $meta;
    /** the model asked for, or null */
    public readonly ?string $model;
    /** the token estimate charged at acquire */
    public readonly int $tokens;
    /** the process that acquired it */
    public readonly int $pid;

    /** @internal the C lease */
    public CData $c;
    /** @internal */
    public ?Pool $pool;
    /** @internal */
    public bool $done = false;
    /** @internal its key in Pool's list of leases out */
    public int $id = 0;

    /** @internal made by Pool::acquire() */
    public function __construct(Pool $pool, CData $c, string $keyId, string $secret, array $meta,
                                ?string $model, int $tokens, int $pid)
    {
        $this->pool = $pool;
        $this->c = $c;
        $this->keyId = $keyId;
        $this->secret = $secret;
        $this->meta = $meta;
        $this->model = $model;
        $this->tokens = $tokens;
        $this->pid = $pid;
    }

    /**
     * Release with what the provider answered: see Pool::release().
     *
     * @param iterable<mixed>|null $headers
     */
    public function release(?int $status = null, ?iterable $headers = null, ?int $tokens = null,
                            ?string $body = null, ?int $inputTokens = null, ?int $outputTokens = null,
                            ?float $latency = null, ?Outcome $outcome = null, ?float $retryAfter = null,
                            ?object $response = null): bool
    {
        if ($this->pool === null) {
            throw new LeaseException("keymesh: lease of key '{$this->keyId}' already released", Exception::ESTALE, 'ESTALE');
        }
        return $this->pool->release($this, status: $status, headers: $headers, tokens: $tokens, body: $body,
            inputTokens: $inputTokens, outputTokens: $outputTokens, latency: $latency,
            outcome: $outcome, retryAfter: $retryAfter, response: $response);
    }

    /** Whether it was released (by the program, or as cancelled). */
    public function released(): bool
    {
        return $this->done;
    }

    /** Seconds since it was acquired. */
    public function elapsed(): float
    {
        return (Native::km()->km_now_ns() - $this->c->start_ns) / 1e9;
    }

    /** The secret masked for display ("sk-…abcd"). */
    public function maskedSecret(): string
    {
        return Pool::mask($this->secret);
    }

    public function __toString(): string
    {
        return "KeyMesh\\Lease({$this->keyId}, {$this->maskedSecret()})";
    }

    /** @return array<string, mixed> */
    public function __debugInfo(): array
    {
        return ['keyId' => $this->keyId, 'secret' => $this->maskedSecret(), 'meta' => $this->meta,
                'model' => $this->model, 'tokens' => $this->tokens, 'pid' => $this->pid,
                'released' => $this->done];
    }

    /** @return array<string, mixed> what json_encode() shows: no secret */
    public function jsonSerialize(): array
    {
        return $this->__debugInfo();
    }

    /** @return never */
    public function __serialize(): array
    {
        throw new LeaseException('keymesh: a lease cannot be serialized (it belongs to this process)');
    }

    /** @param array<mixed> $data */
    public function __unserialize(array $data): void
    {
        throw new LeaseException('keymesh: a lease cannot be unserialized');
    }

    public function __clone()
    {
        throw new LeaseException('keymesh: a lease cannot be cloned (it is released once)');
    }

    public function __destruct()
    {
        if (!$this->done && $this->pool !== null) {
            $this->pool->dropped($this);
        }
    }
}
