<?php

/*
 * tests/php/app.php - the application of the php-fpm end-to-end tests
 * (tests/t_php_fpm*.sh), behind nginx's FastCGI or cgi-fcgi.  Each request
 * opens the pool (cheap: the worker attached once), takes a key, and:
 *   /call?pool=P   calls the mock upstream (tests/e2e/upstream.py) with it
 *                  and releases it with the upstream's status, headers
 *                  and body; answers with the upstream's status (503 when
 *                  no key came within 0.3 s)
 *   /pair?pool=P   releases it at once as a success (no upstream)
 *   /hold?pool=P   writes the worker's pid to $KMT_HOLD_FILE and sleeps
 *                  60 s holding it (the test kills the worker meanwhile)
 *   /info          {"pid", "how" (preload or cdef), "library"}
 * Headers X-Worker-Pid and X-Key-Id say which worker and key served it.
 * Environment (the FPM pool's env[]): KMT_SEG, KMT_UPSTREAM, KMT_HOLD_FILE.
 */

declare(strict_types=1);

require dirname(__DIR__, 2) . '/bindings/php/src/autoload.php';

use KeyMesh\NoKeyAvailableException;
use KeyMesh\Pool;

header('Content-Type: text/plain');
header('X-Worker-Pid: ' . getmypid());
$path = (string) parse_url((string) ($_SERVER['REQUEST_URI'] ?? '/'), PHP_URL_PATH);
$seg = (string) getenv('KMT_SEG');

/** POST to the mock upstream: [status (0: no answer), header lines, body] */
function upstream(string $secret): array
{
    $ctx = stream_context_create(['http' => [
        'method' => 'POST', 'content' => '{}', 'timeout' => 10, 'ignore_errors' => true,
        'header' => "Authorization: Bearer $secret\r\nContent-Type: application/json\r\n",
    ]]);
    $body = @file_get_contents('http://127.0.0.1:' . getenv('KMT_UPSTREAM') . '/v1/chat/completions', false, $ctx);
    $lines = $http_response_header ?? [];
    $status = 0;
    if ($lines !== [] && preg_match('#^HTTP/\S+\s+(\d{3})#', $lines[0], $m)) {
        $status = (int) $m[1];
    }
    return [$status, array_slice($lines, 1), $body === false ? null : $body];
}

try {
    switch ($path) {
        case '/info':
            echo json_encode(['pid' => getmypid(), 'how' => KeyMesh\Native::how(),
                              'library' => KeyMesh\Native::path()]), "\n";
            break;
        case '/call':
        case '/pair':
        case '/hold':
            $pool = Pool::open($seg, (string) ($_GET['pool'] ?? 'llm'), timeout: 0.3);
            try {
                $lease = $pool->acquire(tokens: 15);
            } catch (NoKeyAvailableException $e) {
                http_response_code(503);
                header('X-Key-Id: -');
                if ($e->retryAfter !== null) {
                    header('Retry-After: ' . (int) ceil($e->retryAfter));
                }
                echo "no key available\n";
                break;
            }
            header('X-Key-Id: ' . $lease->keyId);
            if ($path === '/pair') {
                $pool->release($lease, status: 200, tokens: 15);
                echo "ok\n";
            } elseif ($path === '/hold') {
                $f = (string) getenv('KMT_HOLD_FILE');
                file_put_contents("$f.tmp", getmypid() . "\n");
                rename("$f.tmp", $f);
                sleep(60);
                $pool->release($lease);
                echo "held\n";
            } else {
                [$status, $headers, $body] = upstream($lease->secret);
                $pool->release($lease, status: $status, headers: $headers, body: $body,
                    tokens: $status === 200 ? 15 : null);
                http_response_code($status === 0 ? 502 : $status);
                echo $status === 200 ? "ok\n" : "upstream $status\n";
            }
            break;
        default:
            http_response_code(404);
            echo "not found\n";
    }
} catch (KeyMesh\Exception $e) {
    http_response_code(500);
    echo 'keymesh: ', get_class($e), ': ', $e->getMessage(), "\n";
}
