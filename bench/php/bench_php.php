<?php

/*
 * bench/php/bench_php.php - the PHP binding's cost per call, side by side.
 *
 *   make && php bench/php/bench_php.php [--seconds 0.5] [--reps 7] [--limits off|on] [--short]
 *
 * (libkeymesh from $KEYMESH_LIBRARY, else $KM_BUILD/ or build/; the C
 * benchmark from the same directory.)  One process, 4 keys, round robin,
 * in the same run and alternated rep by rep:
 *
 *   keymesh       $l = $pool->acquire(); $pool->release($l);
 *   keymesh_http  $l = $pool->acquire(tokens: 100);
 *                 $pool->release($l, status: 200, headers: H, tokens: 80);
 *                 H: the 12 header lines of an OpenAI answer, 4 of them
 *                 x-ratelimit-* (mapped through km_outcome_from_http)
 *   inproc        bench/php/InprocPool.php: $s = $p->acquire(); $p->release($s);
 *                 what PHP code keeps instead (nothing shared, no limits)
 *   c             build/bench/bench_acquire --procs 1 --keys 4 --strategy
 *                 round_robin --limits L --seconds S --reps 1: the C pair,
 *                 its p50 (a subprocess, run between the PHP figures)
 *
 * --limits off (default): no limit on the keys (the in-process pool has
 * none); on: rpm 10^9 and tpm 10^12 on every key, never binding, as
 * bench_acquire's --limits on.  Each PHP rep times batches of 64 operations
 * with hrtime(); a rep's figure is its median batch mean, and the figure
 * printed the median over reps (ns per acquire+release pair).
 *
 * Then what a php-fpm request pays before its first acquire, Pool::open()
 * at the start of a request (Native::reset() frees what a request's end
 * frees; the process stays attached): with the declarations preloaded
 * (ffi.preload, in a child php) and with FFI::cdef (ffi.enable=true):
 *
 *   open how=preload|cdef   p50 and p90 over --opens samples
 *
 * One SUMMARY line per figure.  The machine is shared: run it several
 * times and compare medians.
 */

declare(strict_types=1);

require __DIR__ . '/../../bindings/php/src/autoload.php';
require __DIR__ . '/InprocPool.php';

use KeyMesh\Native;
use KeyMesh\Pool;

const BATCH = 64;

$opt = getopt('', ['seconds:', 'reps:', 'limits:', 'short', 'opens:', 'part:', 'seg:', 'pool:']);
$short = isset($opt['short']);
$seconds = (float) ($opt['seconds'] ?? ($short ? 0.2 : 0.5));
$reps = (int) ($opt['reps'] ?? ($short ? 3 : 7));
$limits = (string) ($opt['limits'] ?? 'off');
$opens = (int) ($opt['opens'] ?? ($short ? 200 : 2000));
$repo = dirname(__DIR__, 2);
$build = getenv('KM_BUILD') ?: "$repo/build";
if (!str_starts_with($build, '/')) {
    $build = "$repo/$build";
}
if (!getenv('KEYMESH_LIBRARY')) {
    putenv("KEYMESH_LIBRARY=$build/libkeymesh.so.0");
}

function median(array $xs): float
{
    sort($xs);
    $n = count($xs);
    return $n % 2 ? (float) $xs[intdiv($n, 2)] : ($xs[$n / 2 - 1] + $xs[$n / 2]) / 2.0;
}

function pct(array $xs, float $p): float
{
    sort($xs);
    return (float) $xs[min(count($xs) - 1, max(0, (int) ceil($p / 100.0 * count($xs)) - 1))];
}

/** median over batches of 64 calls of $fn, for $seconds: ns per call */
function time_batches(callable $fn, float $seconds): float
{
    $means = [];
    $end = hrtime(true) + (int) ($seconds * 1e9);
    do {
        $t0 = hrtime(true);
        for ($i = 0; $i < BATCH; $i++) {
            $fn();
        }
        $t1 = hrtime(true);
        $means[] = ($t1 - $t0) / BATCH;
    } while ($t1 < $end);
    return median($means);
}

// ------------------------------------------------- part "open" (a child php)
if (($opt['part'] ?? '') === 'open') {
    $seg = (string) $opt['seg'];
    $pool = (string) $opt['pool'];
    Pool::open($seg, $pool);                  // attach once
    $xs = [];
    for ($i = 0; $i < $opens; $i++) {
        $t0 = hrtime(true);
        Native::reset();
        $p = Pool::open($seg, $pool);
        $xs[] = hrtime(true) - $t0;
    }
    $p->release($p->acquire());               // it works after all that
    printf("%s %d %d\n", Native::how(), (int) pct($xs, 50), (int) pct($xs, 90));
    exit(0);
}

// --------------------------------------------------------------- the pairs
$seg = 'kmbench-php-' . getmypid();
$lim = $limits === 'on' ? ['rpm' => 1000000000, 'tpm' => 1000000000000] : new stdClass();
$secrets = [];
$keys = [];
for ($i = 0; $i < 4; $i++) {
    $secrets[] = $s = sprintf('sk-bench-php-%04d-%s', $i, bin2hex(random_bytes(8)));
    $keys[] = ['id' => "k$i", 'secret' => $s];
}
$pool = Pool::create($seg, ['capacity' => ['processes' => 16],
    'pools' => [['name' => 'bench', 'strategy' => 'round_robin', 'limits' => $lim, 'keys' => $keys]]]);
register_shutdown_function(static function () use ($seg): void {
    try {
        Pool::unlink($seg);
    } catch (Throwable) {
    }
});
$inproc = new InprocPool($secrets);
$hdrs = [
    'date: Wed, 02 Dec 2026 10:00:00 GMT', 'content-type: application/json', 'transfer-encoding: chunked',
    'connection: keep-alive', 'openai-organization: org-bench', 'openai-processing-ms: 412',
    'openai-version: 2020-10-01', 'x-ratelimit-limit-requests: 10000', 'x-ratelimit-remaining-requests: 9999',
    'x-ratelimit-remaining-tokens: 1999000', 'x-ratelimit-reset-requests: 6ms', 'x-request-id: req_0123456789abcdef',
];
$impls = [
    'keymesh' => static function () use ($pool): void {
        $l = $pool->acquire();
        $pool->release($l);
    },
    'keymesh_http' => static function () use ($pool, $hdrs): void {
        $l = $pool->acquire(tokens: 100);
        $pool->release($l, status: 200, headers: $hdrs, tokens: 80);
    },
    'inproc' => static function () use ($inproc): void {
        $s = $inproc->acquire();
        $inproc->release($s, 200, 0.4);
    },
];
$cbin = "$build/bench/bench_acquire";
$res = array_fill_keys(array_merge(array_keys($impls), ['c']), []);
foreach ($impls as $fn) {
    time_batches($fn, 0.05);                  // warm up
}
for ($r = 0; $r < $reps; $r++) {
    $order = array_keys($impls);
    if ($r % 2) {
        $order = array_reverse($order);
    }
    foreach ($order as $name) {
        $res[$name][] = time_batches($impls[$name], $seconds);
    }
    if (is_executable($cbin)) {
        $out = shell_exec(escapeshellarg($cbin) . " --procs 1 --keys 4 --strategy round_robin --limits $limits"
            . " --seconds $seconds --reps 1 2>/dev/null");
        if (is_string($out) && preg_match('/SUMMARY acquire_release .* p50_ns=(\d+)/', $out, $m)) {
            $res['c'][] = (float) $m[1];
        }
    }
}
$k = array_sum(array_map(fn ($k) => $k['success'], $pool->keys()));
$fmt = static fn (array $xs): string => implode(',', array_map(fn ($x) => (string) (int) round($x), $xs));
foreach ($res as $name => $xs) {
    if ($xs === []) {
        echo "SUMMARY php_pair impl=$name skipped=1 (no $cbin: run make)\n";
        continue;
    }
    printf("SUMMARY php_pair impl=%s keys=4 strategy=round_robin limits=%s seconds=%s reps=%d p50_ns=%d reps_ns=%s\n",
        $name, $limits, $seconds, $reps, (int) round(median($xs)), $fmt($xs));
}
$m = median($res['keymesh']);
printf("SUMMARY php_ratio keymesh_vs_inproc=%.2f keymesh_vs_c=%s http_vs_plain=%.2f released=%d\n",
    $m / median($res['inproc']), $res['c'] ? sprintf('%.1f', $m / median($res['c'])) : 'na',
    median($res['keymesh_http']) / $m, $k);

// ------------------------------------------------ what a request pays first
$lib = (string) getenv('KEYMESH_LIBRARY');
$hdr = sys_get_temp_dir() . "/kmbench-php-$seg.h";
file_put_contents($hdr, Native::header($lib));
$modes = [
    'preload' => ['-d', "ffi.preload=$hdr:$repo/bindings/php/src/libc.h"],
    'cdef' => ['-d', 'ffi.enable=1'],
];
foreach ($modes as $how => $d) {
    $cmd = array_merge([PHP_BINARY], $d, [__FILE__, '--part', 'open', '--seg', $seg, '--pool', 'bench',
        '--opens', (string) $opens]);
    $p = proc_open($cmd, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
    $out = trim((string) stream_get_contents($pipes[1]));
    $err = trim((string) stream_get_contents($pipes[2]));
    proc_close($p);
    $f = explode(' ', $out);
    if (count($f) !== 3 || $f[0] !== $how) {
        fwrite(STDERR, "bench_php: open ($how): $out $err\n");
        exit(1);
    }
    printf("SUMMARY php_open how=%s opens=%d p50_ns=%d p90_ns=%d\n", $how, $opens, $f[1], $f[2]);
}
unlink($hdr);
