<?php

/*
 * examples/laravel-style.php - KeyMesh in a Laravel-style application: a
 * service bound in the container, injected into a controller, leasing a
 * key for each call to an OpenAI-compatible API and reporting what the
 * API answered, so that every php-fpm worker shares one pool of keys and
 * one view of their limits.
 *
 * Runnable as is, without Laravel and without the network (the "API" is a
 * function that answers like OpenAI, a 429 now and then):
 *
 *     make
 *     KEYMESH_LIBRARY=build/libkeymesh.so.0 php examples/laravel-style.php
 *     build/kmctl inspect keymesh-laravel-example
 *
 * It creates segment keymesh-laravel-example ($KEYMESH_SEGMENT), from the
 * CONFIG below, if there is none; in production the segment is made before php-fpm starts:
 * `kmctl create llm --config /etc/keymesh/pool.json` (see
 * bindings/php/README.md, "php-fpm").
 *
 * In a Laravel application the same pieces go:
 *
 *   // app/Providers/AppServiceProvider.php, register():
 *   $this->app->singleton(LlmKeys::class, fn () => new LlmKeys(
 *       KeyMesh\Pool::open(config('services.keymesh.segment'), 'openai', timeout: 2.0)));
 *
 *   // the transport, with Laravel's HTTP client:
 *   $send = function (string $secret, array $payload): array {
 *       $r = Http::withToken($secret)->timeout(60)
 *           ->post('https://api.openai.com/v1/chat/completions', $payload);
 *       return [$r->status(), $r->headers(), $r->body()];  // headers: name => [values]
 *   };
 *
 * The singleton lives for one request under php-fpm (Laravel builds its
 * container per request); Pool::open() is cheap there, because the worker
 * attached to the segment on its first request and keeps that attachment
 * (bindings/php/README.md, "The worker lifecycle").
 */

declare(strict_types=1);

require __DIR__ . '/../bindings/php/src/autoload.php';

use KeyMesh\Lease;
use KeyMesh\NoKeyAvailableException;
use KeyMesh\Pool;

define('SEGMENT', getenv('KEYMESH_SEGMENT') ?: 'keymesh-laravel-example');
const CONFIG = [
    'capacity' => ['keys' => 8, 'processes' => 64],
    'pools' => [[
        'name' => 'openai', 'strategy' => 'least_busy',
        'limits' => ['rpm' => 500, 'tpm' => ['limit' => 90000, 'mode' => 'sliding']],
        'keys' => [
            ['id' => 'team-a', 'secret_env' => 'EXAMPLE_KEY_A', 'meta' => ['org' => 'org-a']],
            ['id' => 'team-b', 'secret_env' => 'EXAMPLE_KEY_B', 'meta' => ['org' => 'org-b']],
        ],
    ]],
];

/** The service: one call to the API with a leased key. */
final class LlmKeys
{
    /** @param callable(string, array): array{0: int, 1: array, 2: string} $send */
    public function __construct(private Pool $pool, private mixed $send = null)
    {
    }

    /**
     * @return array{0: int, 1: array|null} the API's status and decoded answer
     * @throws NoKeyAvailableException no key within the pool's timeout
     */
    public function chat(string $model, array $messages, int $maxTokens = 256): array
    {
        $estimate = $maxTokens + 4 * (int) ceil(strlen(json_encode($messages)) / 4);
        $lease = $this->pool->acquire(model: $model, tokens: $estimate);
        try {
            [$status, $headers, $body] = ($this->send)($lease->secret, [
                'model' => $model, 'messages' => $messages, 'max_tokens' => $maxTokens,
            ] + (isset($lease->meta['org']) ? ['user' => $lease->meta['org']] : []));
        } catch (\Throwable $e) {
            // the request never got an answer: a transient failure
            $this->pool->release($lease, status: 0);
            throw $e;
        }
        $answer = json_decode($body, true);
        $usage = $answer['usage'] ?? [];
        $this->pool->release($lease, status: $status, headers: $headers, body: $body,
            tokens: $usage['total_tokens'] ?? null, inputTokens: $usage['prompt_tokens'] ?? null,
            outputTokens: $usage['completion_tokens'] ?? null);
        return [$status, is_array($answer) ? $answer : null];
    }
}

/** A controller action: 503 with Retry-After when the pool has no key. */
final class ChatController
{
    public function __construct(private LlmKeys $llm)
    {
    }

    /** @return array{0: int, 1: array<string, string>, 2: string} status, headers, body */
    public function __invoke(string $question): array
    {
        try {
            [$status, $answer] = $this->llm->chat('gpt-4o-mini', [['role' => 'user', 'content' => $question]]);
        } catch (NoKeyAvailableException $e) {
            return [503, ['Retry-After' => (string) (int) ceil($e->retryAfter ?? 1)], 'busy, retry later'];
        }
        if ($status !== 200) {
            return [502, [], "upstream answered $status"];
        }
        return [200, ['Content-Type' => 'text/plain'], $answer['choices'][0]['message']['content'] ?? ''];
    }
}

/** A stand-in for the API: OpenAI's answer shape, a 429 every seventh call. */
function fake_openai(string $secret, array $payload): array
{
    static $n = 0;
    $n++;
    $headers = ['x-ratelimit-remaining-requests' => ['499'], 'x-ratelimit-reset-requests' => ['120ms']];
    if ($n % 7 === 0) {
        return [429, $headers + ['retry-after' => ['2']],
                '{"error":{"type":"requests","code":"rate_limit_exceeded","message":"slow down"}}'];
    }
    return [200, $headers, json_encode([
        'choices' => [['message' => ['role' => 'assistant', 'content' => 'hello from ' . $payload['model']]]],
        'usage' => ['prompt_tokens' => 12, 'completion_tokens' => 5, 'total_tokens' => 17],
    ])];
}

// ------------------------------------------------------------ "the framework"
if (getenv('EXAMPLE_KEY_A') === false) {
    putenv('EXAMPLE_KEY_A=sk-example-aaaa1111');   // placeholders: the fake API takes anything
    putenv('EXAMPLE_KEY_B=sk-example-bbbb2222');
}
try {
    $pool = Pool::open(SEGMENT, 'openai', timeout: 2.0);
} catch (KeyMesh\SegmentException $e) {
    if ($e->getCode() !== KeyMesh\Exception::ENOENT) {
        throw $e;
    }
    $pool = Pool::create(SEGMENT, CONFIG, 'openai', existOk: true, timeout: 2.0);
    echo 'created segment ', SEGMENT, "\n";
}
$controller = new ChatController(new LlmKeys($pool, 'fake_openai'));
foreach (range(1, 10) as $i) {
    [$status, $headers, $body] = $controller("question $i");
    printf("request %2d: %d %s\n", $i, $status, $body);
}
foreach ($pool->keys() as $k) {
    printf("key %-6s %-8s acquired %d, success %d, rate limited %d\n", $k['id'], $k['state'],
        $k['acquired'], $k['success'], $k['rate_limited']);
}
