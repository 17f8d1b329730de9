<?php

/*
 * bench/php/InprocPool.php - what a PHP application keeps instead of
 * KeyMesh: the keys in an array, handed out round robin by a loop that
 * skips keys cooling down (after a 429), failing too often or at their
 * in-flight cap, with per-key counters and a latency average.  No lock:
 * PHP runs one request at a time per process.  Our own code, modelled on
 * what such classes in PHP applications do; the baseline bench_php.php
 * compares the binding with.
 *
 * It shares nothing: under php-fpm each worker (and, unless it is kept in
 * APCu or Redis, each request) has its own copy, so N workers send N times
 * what a key allows, and a 429 seen by one worker cools the key for that
 * worker only.  It keeps no rate limit at all.
 */

declare(strict_types=1);

final class InprocPool
{
    /** @var list<array{secret: string, cooldown_until: float, active: int, max_active: int,
     *              ok: int, failed: int, rate_limited: int, latency_avg: float, last_used: float}> */
    private array $keys = [];
    private int $cursor = 0;
    /** @var array<string, int> secret => index */
    private array $index = [];
    private int $acquires = 0;
    private int $releases = 0;

    /** @param list<string> $secrets */
    public function __construct(array $secrets, private int $maxFailures = 10, int $maxActive = 64)
    {
        foreach ($secrets as $i => $s) {
            $this->keys[] = ['secret' => $s, 'cooldown_until' => 0.0, 'active' => 0, 'max_active' => $maxActive,
                             'ok' => 0, 'failed' => 0, 'rate_limited' => 0, 'latency_avg' => 0.0, 'last_used' => 0.0];
            $this->index[$s] = $i;
        }
    }

    /** A key's secret; RuntimeException if none is free. */
    public function acquire(): string
    {
        $n = count($this->keys);
        $now = hrtime(true) / 1e9;
        for ($j = 0; $j < $n; $j++) {
            $i = ($this->cursor + $j) % $n;
            $k = &$this->keys[$i];
            if ($k['cooldown_until'] <= $now && $k['failed'] < $this->maxFailures && $k['active'] < $k['max_active']) {
                $k['active']++;
                $k['last_used'] = $now;
                $this->cursor = $i + 1;
                $this->acquires++;
                return $k['secret'];
            }
            unset($k);
        }
        throw new RuntimeException('no key available');
    }

    /** $status 429 cools the key down for $retryAfter seconds; >= 500 counts a failure. */
    public function release(string $secret, int $status = 200, float $latency = 0.0, float $retryAfter = 60.0): void
    {
        $i = $this->index[$secret] ?? throw new InvalidArgumentException('unknown key');
        $k = &$this->keys[$i];
        $k['active'] = max(0, $k['active'] - 1);
        if ($status === 429) {
            $k['rate_limited']++;
            $k['cooldown_until'] = hrtime(true) / 1e9 + $retryAfter;
        } elseif ($status >= 500 || $status === 0) {
            $k['failed']++;
        } else {
            $k['ok']++;
            $k['latency_avg'] = $k['latency_avg'] == 0.0 ? $latency : 0.2 * $latency + 0.8 * $k['latency_avg'];
        }
        $this->releases++;
    }
}
