<?php

declare(strict_types=1);

namespace KeyMesh;

use FFI;
use FFI\CData;

/**
 * A pool of API keys in a KeyMesh segment that every process of the host
 * shares: php-fpm's workers, CLI workers, and programs in other languages.
 *
 *   $pool  = KeyMesh\Pool::open('llm', 'openai');          // per request: cheap
 *   $lease = $pool->acquire(model: 'gpt-4o-mini', tokens: 800, timeout: 2.0);
 *   // ... call the provider with 'Authorization: Bearer ' . $lease->secret
 *   $pool->release($lease, status: $status, headers: $headers, tokens: $used);
 *
 * open() is cheap after a process's first request: the process attaches
 * to the segment once and keeps the attachment across requests (see
 * Native); it attaches again by itself after a fork() and when the
 * segment was created again.  acquire() and release() are the C library's
 * lock-free calls; rate limits, cooldowns and health hold for every process
 * together.
 */
final class Pool
{
    /** The HTTP headers km_outcome_from_http reads: Retry-After(-Ms) and
     * *ratelimit* (docs/outcomes.md); a raw line "Name: value" or a name. */
    private const HEADER_RE = '/^(?:retry-after|[^:]*ratelimit)/i';

    private const STATES = ['active', 'cooling', 'probing', 'disabled', 'invalid', 'exhausted'];
    private const OUTCOMES = ['success', 'rate_limited', 'failure', 'auth', 'quota', 'cancelled'];
    private const WINDOWS = ['rpm', 'rph', 'rpd', 'tpm', 'tph', 'tpd'];

    /** @var array<int, array{0: Pool, 1: Lease}>|null leases out in this request */
    private static ?array $out = null;

    public readonly string $segment;
    public readonly string $name;
    public readonly int $index;
    /** default of acquire()'s timeout, seconds */
    public readonly float $timeout;

    private FFI $km;
    private CData $env;
    private int $pid;
    /** the request, reused: pool set once, the rest per acquire */
    private CData $req;
    private CData $reqp;
    /** outcomes reused by release (the C library only reads them) */
    private CData $ok;
    private CData $okp;
    /** made on first use: most requests release with a status (scratch,
     * resp) and few drop a lease (cancel) */
    private ?CData $cancel = null;
    private ?CData $cancelp = null;
    private ?CData $scratch = null;
    private ?CData $scratchp = null;
    private ?CData $resp = null;
    private ?CData $respp = null;
    /** mapHttp's buffers: header names, values and the body; their pointers */
    private ?CData $hbuf = null;
    private ?CData $harr = null;
    private ?CData $harrp = null;
    private int $hbase = 0;
    private const HBUF = 4096;
    private const HMAX = 32;
    private \FFI\CType $leaseType;
    private int $outcomeSize = 0;
    private int $respSize = 0;
    /** @var array<string, array{0: CData, 1: CData}> C copies of model names and key ids, and their char * */
    private array $cstr = [];

    private function __construct(string $segment, string $name, int $index, float $timeout, CData $env)
    {
        $this->segment = $segment;
        $this->name = $name;
        $this->index = $index;
        $this->timeout = $timeout;
        $this->km = Native::km();
        $this->env = $env;
        $this->pid = getmypid();
        $this->req = $this->km->new('km_request');
        $this->req->pool = $index;
        $this->reqp = FFI::addr($this->req);
        $this->ok = $this->fixedOutcome(Outcome::Success);
        $this->okp = FFI::addr($this->ok);
        $this->leaseType = $this->km->type('km_lease');
    }

    private function fixedOutcome(Outcome $kind): CData
    {
        $o = $this->km->new('km_outcome');
        $o->kind = $kind->value;
        $o->latency_us = -1;
        $o->tokens = -1;
        $o->input_tokens = -1;
        $o->output_tokens = -1;
        return $o;
    }

    /**
     * Pool $pool (default: the segment's first) of segment $segment, attaching
     * this process if it is not yet.  $timeout: acquire()'s default wait.
     *
     * @throws SegmentException no segment of that name (ENOENT), no permission, ...
     * @throws NotFoundException no pool of that name (ENOPOOL)
     */
    public static function open(string $segment, ?string $pool = null, float $timeout = 0.0): self
    {
        self::checkTimeout($timeout);
        $segment = Native::segmentName($segment);
        $env = Native::env($segment);
        return self::make($segment, $env, $pool, $timeout);
    }

    /**
     * Create segment $segment from a configuration (JSON text, a path to a
     * JSON file, or an array) and open pool $pool of it.  $mode: permission
     * bits (0600: only this user's processes may attach).  $existOk: open the
     * segment if it exists.  For CLI programs and tests; under php-fpm the
     * segment is created before the workers start (kmctl create).
     *
     * @param string|array<mixed> $config
     * @throws ConfigException the library refuses the configuration
     * @throws SegmentException EEXIST (unless $existOk), ...
     */
    public static function create(string $segment, #[\SensitiveParameter] string|array $config,
                                  ?string $pool = null, int $mode = 0600, bool $existOk = false,
                                  float $timeout = 0.0): self
    {
        self::checkTimeout($timeout);
        $segment = Native::segmentName($segment);
        $km = Native::km();
        $cfg = $km->new('km_config *[1]');
        $err = $km->new('char[512]');
        if (is_array($config)) {
            $config = json_encode($config, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES);
        }
        if (ltrim($config) !== '' && ltrim($config)[0] === '{') {
            $rc = $km->km_config_parse($config, strlen($config), '<config>', FFI::addr($cfg[0]), $err, 512);
        } else {
            $rc = $km->km_config_parse_file($config, FFI::addr($cfg[0]), $err, 512);
        }
        if ($rc !== 0) {
            $e = Native::error($rc, 'configuration');
            throw new ConfigException($e->getMessage() . ': ' . FFI::string($err), $rc, $e->errname);
        }
        $ident = Native::segmentIdent($segment);
        $out = $km->new('km_env *[1]');
        $rc = $km->km_create($segment, $cfg[0], $mode, FFI::addr($out[0]));
        $km->km_config_free($cfg[0]);
        if ($rc === Exception::EEXIST && $existOk) {
            return self::open($segment, $pool, $timeout);
        }
        if ($rc !== 0) {
            throw Native::error($rc, "segment '$segment'");
        }
        $env = Native::adopt($segment, $out[0], $ident === '-' ? Native::segmentIdent($segment) : $ident);
        return self::make($segment, $env, $pool, $timeout);
    }

    /**
     * Remove segment $segment's name.  Processes attached keep working on it
     * until they exit; each attaches again, to a new one of that name, on
     * its next open().
     *
     * @throws SegmentException ENOENT if there is none
     */
    public static function unlink(string $segment): void
    {
        $segment = Native::segmentName($segment);
        $rc = Native::km()->km_unlink($segment);
        if ($rc !== 0) {
            throw Native::error($rc, "segment '$segment'");
        }
    }

    private static function make(string $segment, CData $env, ?string $pool, float $timeout): self
    {
        $km = Native::km();
        if ($pool === null) {
            // The first pool still in use (pool 0 until it is removed).
            $pi = $km->new('km_pool_info');
            $first = $km->km_pool_first($env);
            $rc = $first < 0 ? $first : $km->km_pool_info_get($env, $first, FFI::addr($pi));
            if ($rc !== 0) {
                throw Native::error($rc, "segment '$segment': its first pool");
            }
            $pool = FFI::string($pi->name);
        }
        $idx = $km->km_pool_find($env, $pool);
        if ($idx < 0) {
            throw Native::error($idx, "pool '$pool' in segment '$segment'");
        }
        return new self($segment, $pool, $idx, $timeout, $env);
    }

    private static function checkTimeout(float $timeout): void
    {
        if (!($timeout >= 0.0) || is_infinite($timeout) || $timeout > 4294967.0) {
            throw new InvalidArgumentException("keymesh: timeout must be 0 to 4294967 seconds (got $timeout)",
                Exception::EINVAL, 'EINVAL');
        }
    }

    /** This process's handle, attached again after a fork(). */
    private function handle(): CData
    {
        if (getmypid() !== $this->pid) {
            $this->env = Native::env($this->segment);
            $this->pid = getmypid();
        }
        return $this->env;
    }

    private function cstr(string $s): CData
    {
        $c = $this->cstr[$s] ?? null;
        if ($c === null) {
            if (count($this->cstr) >= 64) {
                $this->cstr = [];
            }
            $buf = FFI::new('char[' . (strlen($s) + 1) . ']');
            FFI::memcpy($buf, $s, strlen($s));
            $c = $this->cstr[$s] = [$buf, FFI::cast('char *', $buf)];
        }
        return $c[1];
    }

    /**
     * A key for one request: admissible under every limit, not cooling down,
     * below its in-flight cap.  $tokens: the request's token estimate,
     * charged to token limits now and settled at release.  $timeout: seconds
     * to wait for a key (0: one try; default: open()'s), sleeping in the C
     * library until a release or a window's end in any process may have
     * freed one.  $keyId: only that key.  $strategy: instead of the pool's.
     *
     * @throws NoKeyAvailableException none within the timeout (retryAfter: when one may be)
     * @throws KeysExhaustedException none can be without an operator
     * @throws NotFoundException an unknown model or key id
     * @throws InvalidArgumentException a negative token estimate, one above every key's burst (ECOST)
     */
    public function acquire(?string $model = null, int $tokens = 0, ?float $timeout = null,
                            ?string $keyId = null, ?Strategy $strategy = null): Lease
    {
        if ($tokens < 0 || $tokens > 0xFFFFFFFF) {
            throw new InvalidArgumentException("keymesh: token estimate must be 0 to 4294967295 (got $tokens)",
                Exception::EINVAL, 'EINVAL');
        }
        if ($timeout === null) {
            $timeout = $this->timeout;
        } elseif (!($timeout >= 0.0) || $timeout > 4294967.0) {
            self::checkTimeout($timeout);
        }
        // A pid that changed: this object crossed a fork(); the child attaches.
        $pid = getmypid();
        if ($pid !== $this->pid) {
            $this->env = Native::env($this->segment);
            $this->pid = $pid;
        }
        $km = $this->km;
        $req = $this->req;
        $req->tokens = $tokens;
        $req->model = $model === null ? null : $this->cstr($model);
        $req->key_id = $keyId === null ? null : $this->cstr($keyId);
        $req->strategy = $strategy === null ? 0 : $strategy->value;
        $c = $km->new($this->leaseType);
        if ($timeout > 0.0) {
            $rc = $km->km_acquire_wait($this->env, $this->reqp, FFI::addr($c), (int) ceil($timeout * 1000.0));
        } else {
            $rc = $km->km_acquire($this->env, $this->reqp, FFI::addr($c));
        }
        if ($rc !== 0) {
            throw Native::error($rc, "acquire from pool '{$this->name}'", $c->retry_at_ns);
        }
        $meta = [];
        if ($c->meta_len > 0) {
            $meta = json_decode(FFI::string($c->meta, $c->meta_len), true);
            if (!is_array($meta)) {
                $meta = [];
            }
        }
        $lease = new Lease($this, $c, FFI::string($c->key_id), FFI::string($c->secret, $c->secret_len),
            $meta, $model, $tokens, $pid);
        if (self::$out === null) {
            self::$out = [];
            register_shutdown_function([self::class, 'releaseLeftovers']);
        }
        self::$out[$lease->id = spl_object_id($lease)] = [$this, $lease];
        return $lease;
    }

    /**
     * Give a lease back with what the provider answered, mapped by the C
     * library's km_outcome_from_http (docs/outcomes.md): $status the HTTP
     * status (0: no answer, a network error), $headers the response's
     * headers (Retry-After and the rate-limit headers are read; any of
     * ['Name' => 'value'], ['Name' => ['value']] (PSR-7) or ['Name: value']),
     * $body the error body of a non-2xx answer (it tells OpenAI's
     * rate_limit_exceeded from insufficient_quota).  Or $response: a PSR-7
     * response (getStatusCode, getHeaders, getBody), instead of the three.
     * Or $outcome (and $retryAfter for RateLimited) when there is no HTTP
     * answer to map.  None of these: success.
     * $tokens: tokens the request used (null: the estimate stands);
     * $inputTokens/$outputTokens for spend; $latency seconds (null: measured
     * since acquire).
     *
     * Returns true, or false if the lease was stale: released meanwhile by
     * a reaper (kmctl reap) or its key removed and its slot reused; the
     * library counted it and nothing else changed.
     *
     * @param iterable<mixed>|null $headers
     * @throws LeaseException released already, or acquired by another process
     * @throws InvalidArgumentException a negative token count or latency
     */
    public function release(Lease $lease, ?int $status = null, ?iterable $headers = null, ?int $tokens = null,
                            ?string $body = null, ?int $inputTokens = null, ?int $outputTokens = null,
                            ?float $latency = null, ?Outcome $outcome = null, ?float $retryAfter = null,
                            ?object $response = null): bool
    {
        if ($lease->done) {
            throw new LeaseException("keymesh: lease of key '{$lease->keyId}' released twice",
                Exception::ESTALE, 'ESTALE');
        }
        if ($lease->pool !== $this) {
            $this->checkOwner($lease);
        }
        $pid = getmypid();
        if ($lease->pid !== $pid) {
            $lease->done = true;
            unset(self::$out[$lease->id]);
            throw new LeaseException("keymesh: lease of key '{$lease->keyId}' was acquired by process "
                . "{$lease->pid}, not this one ($pid): it is released there", Exception::ESTALE, 'ESTALE');
        }
        if ($status === null && $tokens === null && $outcome === null && $response === null
            && $latency === null && $inputTokens === null && $outputTokens === null) {
            $op = $this->okp;        // success, the estimate stands, latency measured
        } else {
            $op = $this->outcome($status, $headers, $tokens, $body, $inputTokens, $outputTokens, $latency,
                $outcome, $retryAfter, $response);
        }
        return $this->finish($lease, $op);
    }

    private function checkOwner(Lease $lease): void
    {
        $owner = $lease->pool;
        if ($owner === null || $owner->segment !== $this->segment || $owner->index !== $this->index) {
            throw new LeaseException("keymesh: lease of key '{$lease->keyId}' belongs to pool '"
                . ($owner?->name ?? '?') . "', not '{$this->name}'", Exception::EINVAL, 'EINVAL');
        }
    }

    /**
     * The scratch km_outcome filled from release()'s arguments.
     *
     * @param iterable<mixed>|null $headers
     */
    private function outcome(?int $status, ?iterable $headers, ?int $tokens, ?string $body, ?int $inputTokens,
                             ?int $outputTokens, ?float $latency, ?Outcome $outcome, ?float $retryAfter,
                             ?object $response): CData
    {
        if (($tokens ?? 0) < 0 || ($inputTokens ?? 0) < 0 || ($outputTokens ?? 0) < 0) {
            foreach (['tokens' => $tokens, 'inputTokens' => $inputTokens, 'outputTokens' => $outputTokens] as $n => $v) {
                if ($v !== null && $v < 0) {
                    throw new InvalidArgumentException("keymesh: $n must not be negative (got $v)",
                        Exception::EINVAL, 'EINVAL');
                }
            }
        }
        if ($latency !== null && (!($latency >= 0.0) || is_infinite($latency))) {
            throw new InvalidArgumentException('keymesh: latency must be a finite number of seconds >= 0',
                Exception::EINVAL, 'EINVAL');
        }
        if ($response !== null) {
            [$status, $headers, $body] = self::fromResponse($response);
        }
        if ($this->scratch === null) {
            $this->scratch = $this->km->new('km_outcome');
            $this->scratchp = FFI::addr($this->scratch);
            $this->outcomeSize = FFI::sizeof($this->scratch);
            $this->resp = $this->km->new('km_http_response');
            $this->respp = FFI::addr($this->resp);
            $this->respSize = FFI::sizeof($this->resp);
        }
        $o = $this->scratch;
        FFI::memset($this->scratchp, 0, $this->outcomeSize);
        $o->latency_us = $latency === null ? -1 : (int) ($latency * 1e6);
        $o->tokens = $tokens ?? -1;
        $o->input_tokens = $inputTokens ?? -1;
        $o->output_tokens = $outputTokens ?? -1;
        if ($outcome !== null) {
            $o->kind = $outcome->value;
            $o->retry_after_s = $retryAfter ?? 0.0;
        } elseif ($status !== null) {
            $this->mapHttp($status, $headers, $body);
        }
        return $this->scratchp;
    }

    /** @return array{0: int, 1: iterable<mixed>, 2: ?string} */
    private static function fromResponse(object $r): array
    {
        if (!method_exists($r, 'getStatusCode')) {
            throw new InvalidArgumentException('keymesh: response must be a PSR-7 response (getStatusCode)',
                Exception::EINVAL, 'EINVAL');
        }
        $status = (int) $r->getStatusCode();
        $headers = method_exists($r, 'getHeaders') ? $r->getHeaders() : [];
        $body = null;
        if (($status < 200 || $status >= 300) && method_exists($r, 'getBody')) {
            $b = $r->getBody();
            if (is_object($b) && method_exists($b, 'isSeekable') && $b->isSeekable()) {
                $b->rewind();
                $body = $b->read(65536);
                $b->rewind();
            } elseif (is_string($b)) {
                $body = $b;
            }
        }
        return [$status, $headers, $body];
    }

    /**
     * km_outcome_from_http into the scratch outcome.  Only the headers the
     * library reads are passed (Retry-After, Retry-After-Ms and every
     * *ratelimit* header: docs/outcomes.md), copied with the error body into
     * one C buffer, reused while they fit.
     *
     * @param iterable<mixed>|null $headers
     */
    private function mapHttp(int $status, ?iterable $headers, ?string $body): void
    {
        $resp = $this->resp;
        FFI::memset($this->respp, 0, $this->respSize);
        $resp->status = $status;
        // Names and values, NUL-terminated, one after the other in $text; their
        // offsets in $offs.  The library compares names without regard to
        // case and trims spaces and tabs around values.
        $text = '';
        $offs = [];
        if ($headers !== null && $headers !== []) {
            if (!is_array($headers)) {
                $headers = iterator_to_array($headers, true);
            }
            if (array_is_list($headers)) {          // ["Name: value", ...]
                foreach (preg_grep(self::HEADER_RE, $headers) as $line) {
                    $p = strpos($line, ':');
                    if ($p === false) {
                        continue;
                    }
                    $at = strlen($text);
                    $text .= rtrim($line, "\r\n") . "\0";
                    $text[$at + $p] = "\0";
                    $offs[] = $at;
                    $offs[] = $at + $p + 1;
                }
            } else {                                // ["Name" => "value" or ["value", ...]]
                foreach (preg_grep(self::HEADER_RE, array_map('strval', array_keys($headers))) as $name) {
                    $value = $headers[$name];
                    if (is_array($value)) {
                        $value = reset($value);
                    }
                    if (!is_scalar($value) || $value === false) {
                        continue;
                    }
                    $offs[] = strlen($text);
                    $text .= trim($name) . "\0";
                    $offs[] = strlen($text);
                    $text .= rtrim((string) $value, "\r\n") . "\0";
                }
            }
        }
        $hasBody = $body !== null && $body !== '' && ($status < 200 || $status >= 300);
        if ($offs !== [] || $hasBody) {
            $bodyAt = strlen($text);
            if ($hasBody) {
                $text .= $body;
            }
            $len = strlen($text);
            $n = count($offs);
            if ($len <= self::HBUF && $n <= self::HMAX) {
                if ($this->hbuf === null) {
                    $this->hbuf = FFI::new('char[' . self::HBUF . ']');
                    $this->harr = FFI::new('uintptr_t[' . self::HMAX . ']');
                    $this->hbase = FFI::cast('uintptr_t', FFI::cast('char *', $this->hbuf))->cdata;
                    $this->harrp = FFI::cast('const char *const *', FFI::addr($this->harr));
                }
                $buf = $this->hbuf;
                $arr = $this->harr;
                $base = $this->hbase;
                $arrp = $this->harrp;
            } else {
                $buf = FFI::new("char[$len]");
                $arr = FFI::new('uintptr_t[' . max(1, $n) . ']');
                $base = FFI::cast('uintptr_t', FFI::cast('char *', $buf))->cdata;
                $arrp = FFI::cast('const char *const *', FFI::addr($arr));
            }
            FFI::memcpy($buf, $text, $len);
            // Addresses as integers: PHP's FFI pointer arithmetic (CData + int)
            // is not reliable (8.2 refuses it after a variable 0), and an array
            // of uintptr_t is laid out as one of pointers.
            foreach ($offs as $i => $off) {
                $arr[$i] = $base + $off;
            }
            if ($n > 0) {
                $resp->headers = $arrp;
                $resp->n_headers = intdiv($n, 2);
            }
            if ($hasBody) {
                $resp->body = FFI::cast('char *', $base + $bodyAt);
                $resp->body_len = strlen($body);
            }
        }
        // ($buf and $arr are referenced until the call returns)
        $this->km->km_outcome_from_http($this->respp, $this->scratchp);
    }

    private function finish(Lease $lease, CData $op): bool
    {
        $lease->done = true;
        unset(self::$out[$lease->id]);
        $rc = $this->km->km_release($this->env, FFI::addr($lease->c), $op);
        if ($rc === 0) {
            return true;
        }
        if ($rc === Exception::ESTALE) {
            return false;
        }
        throw Native::error($rc, "release to pool '{$this->name}'");
    }

    /** @internal Lease::__destruct: a lease dropped without a release. */
    public function dropped(Lease $lease): void
    {
        if ($lease->done || $lease->pid !== getmypid()) {
            return;
        }
        if ($this->cancel === null) {
            $this->cancel = $this->fixedOutcome(Outcome::Cancelled);
            $this->cancelp = FFI::addr($this->cancel);
        }
        try {
            $this->finish($lease, $this->cancelp);
        } catch (\Throwable) {
            // a destructor must not throw; the lease is left to km_close/a reaper
        }
    }

    /**
     * @internal a shutdown function: leases still out when the request ends
     * (after a fatal error no destructor runs) are released as cancelled.
     */
    public static function releaseLeftovers(): void
    {
        foreach (self::$out ?? [] as [$pool, $lease]) {
            $pool->dropped($lease);
        }
        self::$out = [];
    }

    /**
     * Run $fn with a lease and release it: as $fn released it
     * ($lease->release(status: ...)), else as success when $fn returns, as a
     * failure when it throws an \Exception (with the status and headers of
     * the exception's HTTP response, if it carries one: Guzzle's
     * RequestException, PSR-18 clients), as cancelled for any other
     * Throwable.  Returns what $fn returns.
     *
     * @template T
     * @param callable(Lease): T $fn
     * @return T
     */
    public function withLease(callable $fn, ?string $model = null, int $tokens = 0, ?float $timeout = null,
                              ?string $keyId = null, ?Strategy $strategy = null): mixed
    {
        $lease = $this->acquire(model: $model, tokens: $tokens, timeout: $timeout, keyId: $keyId,
            strategy: $strategy);
        try {
            $r = $fn($lease);
        } catch (\Throwable $e) {
            if (!$lease->done) {
                $resp = method_exists($e, 'getResponse') ? $e->getResponse() : null;
                if (is_object($resp) && method_exists($resp, 'getStatusCode')) {
                    $this->release($lease, response: $resp);
                } else {
                    $this->release($lease, outcome: $e instanceof \Exception ? Outcome::Failure : Outcome::Cancelled);
                }
            }
            throw $e;
        }
        if (!$lease->done) {
            $this->release($lease);
        }
        return $r;
    }

    /**
     * The pool's keys as the segment sees them now: id, masked secret,
     * state, in flight, counters by outcome, and each limit window
     * (limit, available).  No secret.
     *
     * @return list<array<string, mixed>>
     */
    public function keys(): array
    {
        $km = $this->km;
        $env = $this->handle();
        $pi = $km->new('km_pool_info');
        $rc = $km->km_pool_info_get($env, $this->index, FFI::addr($pi));
        if ($rc !== 0) {
            throw Native::error($rc, "pool '{$this->name}'");
        }
        $ki = $km->new('km_key_info');
        $out = [];
        for ($i = 0; $i < $pi->n_keys; $i++) {
            $k = $km->km_pool_key($env, $this->index, $i);
            if ($k < 0 || $km->km_key_info_get($env, $k, FFI::addr($ki)) !== 0) {
                continue;
            }
            $t = ['id' => FFI::string($ki->id), 'key' => FFI::string($ki->secret_masked),
                  'state' => self::STATES[$ki->state] ?? 'unknown', 'inflight' => $ki->inflight,
                  'max_inflight' => $ki->max_inflight, 'acquired' => $ki->acquired,
                  'abandoned' => $ki->abandoned, 'stale_releases' => $ki->stale_releases,
                  'tokens_used' => $ki->tokens_used];
            foreach (self::OUTCOMES as $o => $name) {
                $t[$name] = $ki->outcomes[$o];
            }
            $t['limits'] = [];
            foreach (self::WINDOWS as $w => $name) {
                $li = $ki->limits[$w];
                if ($li->limit > 0) {
                    $t['limits'][$name] = ['limit' => $li->limit, 'available' => $li->available];
                }
            }
            $out[] = $t;
        }
        return $out;
    }

    /** Take key $id out of service for every process (leases out may finish). */
    public function disable(string $id): void
    {
        $this->setState($id, 3);
    }

    /** Put key $id back in service (clears invalid, exhausted, cooldowns). */
    public function enable(string $id): void
    {
        $this->setState($id, 0);
    }

    private function setState(string $id, int $state): void
    {
        $env = $this->handle();
        $k = $this->km->km_key_find($env, $this->index, $id);
        if ($k < 0) {
            throw Native::error($k, "key '$id' in pool '{$this->name}'");
        }
        $rc = $this->km->km_key_set_state($env, $k, $state);
        if ($rc !== 0) {
            throw Native::error($rc, "key '$id'");
        }
    }

    /** A secret masked for display: "sk-…abcd". */
    public static function mask(#[\SensitiveParameter] string $secret): string
    {
        $km = Native::km();
        $buf = $km->new('char[24]');
        $km->km_mask_secret($secret, $buf);
        return FFI::string($buf);
    }

    /** The library's version ("0.1.0"). */
    public static function libraryVersion(): string
    {
        return (string) Native::km()->km_version();
    }

    public function __toString(): string
    {
        return "KeyMesh\\Pool({$this->segment}/{$this->name})";
    }

    /** @return array<string, mixed> */
    public function __debugInfo(): array
    {
        return ['segment' => $this->segment, 'name' => $this->name, 'index' => $this->index,
                'timeout' => $this->timeout, 'pid' => $this->pid];
    }
}
