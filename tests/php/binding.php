<?php

/*
 * tests/php/binding.php - the PHP binding (bindings/php) in PHP's CLI, run
 * by tests/t_php.sh twice: with FFI::cdef (KMT_HOW=cdef) and with the
 * declarations preloaded by ffi.preload (KMT_HOW=preload), as php-fpm runs
 * it.  Environment: KMCTL, KEYMESH_LIBRARY, KMT_TAG (segment names),
 * KMT_TMP (scratch directory), KMT_PHP (JSON: the php command with the same
 * -d options, for child processes).  TAP.
 *
 * What it checks: loading (how, which library, km_struct_size agreement);
 * acquire/release and the outcome mapping through km_outcome_from_http;
 * the exceptions of bad input (a segment or a pool that does not exist, a
 * lease released twice, negative token counts, ...); waiting; one
 * attachment per process across "requests"; fork; exit (the exit hook,
 * destructors, fatal errors, SIGKILL and a reap); pcntl_exec in the same
 * pid; a segment created again under a live process; no secret in what
 * PHP prints.
 */

declare(strict_types=1);

require __DIR__ . '/tap.php';
require dirname(__DIR__, 2) . '/bindings/php/src/autoload.php';

use KeyMesh\Exception as KmException;
use KeyMesh\InvalidArgumentException;
use KeyMesh\KeysExhaustedException;
use KeyMesh\LeaseException;
use KeyMesh\Native;
use KeyMesh\NoKeyAvailableException;
use KeyMesh\NotFoundException;
use KeyMesh\Outcome;
use KeyMesh\Pool;
use KeyMesh\SegmentException;

$KMCTL = (string) getenv('KMCTL');
$TAG = (string) getenv('KMT_TAG');
$TMP = (string) getenv('KMT_TMP');
$PHP = json_decode((string) getenv('KMT_PHP'), true);
$HOW = (string) getenv('KMT_HOW');
$MAIN = getmypid();
$SEGS = [];

function seg(string $name): string
{
    global $TAG, $SEGS;
    $s = "kmt-php-$TAG-$name";
    $SEGS[] = $s;
    return $s;
}

register_shutdown_function(static function (): void {
    global $SEGS, $KMCTL, $MAIN;
    if (getmypid() === $MAIN) {
        foreach ($SEGS as $s) {
            exec(escapeshellarg($KMCTL) . ' destroy ' . escapeshellarg($s) . ' >/dev/null 2>&1');
        }
    }
});

/** kmctl ARGS... --json, decoded (null on failure) */
function kmctl(string ...$args): ?array
{
    global $KMCTL;
    $cmd = escapeshellarg($KMCTL) . ' ' . implode(' ', array_map('escapeshellarg', $args)) . ' 2>/dev/null';
    $out = shell_exec($cmd);
    return is_string($out) ? json_decode($out, true) : null;
}

/** key id => inspect entry, of pool $pool */
function keys_of(string $seg, string $pool): array
{
    $s = kmctl('inspect', $seg, '--json');
    foreach ($s['pools'] ?? [] as $p) {
        if ($p['name'] === $pool) {
            return array_column($p['keys'], null, 'id');
        }
    }
    return [];
}

/** processes attached to $seg (kmctl's own left out): pid => [alive, leases] */
function procs(string $seg): array
{
    $r = [];
    foreach (kmctl('ps', $seg, '--json')['processes'] ?? [] as $p) {
        if (!$p['self']) {
            $r[$p['pid']] = [$p['alive'], $p['leases']];
        }
    }
    return $r;
}

/** run a PHP snippet in a child process (same php options); [exit status, stdout, stderr] */
function php_run(string $code, array $env = []): array
{
    global $PHP, $TMP;
    $file = "$TMP/snippet-" . bin2hex(random_bytes(4)) . '.php';
    file_put_contents($file, "<?php\nrequire " . var_export(dirname(__DIR__, 2) . '/bindings/php/src/autoload.php', true)
        . ";\n" . $code);
    $p = proc_open(array_merge($PHP, [$file]), [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null,
        array_merge(getenv(), $env));
    $out = stream_get_contents($pipes[1]);
    $err = stream_get_contents($pipes[2]);
    $rc = proc_close($p);
    return [$rc, (string) $out, (string) $err];
}

function config(array $pools, int $procs = 16): string
{
    return json_encode(['capacity' => ['keys' => 16, 'processes' => $procs], 'pools' => $pools],
        JSON_UNESCAPED_SLASHES);
}

$SECRETS = [];
function keyset(string $tag, int $n, array $extra = []): array
{
    global $SECRETS;
    $keys = [];
    for ($i = 1; $i <= $n; $i++) {
        $s = "sk-test-php-$tag-" . str_repeat((string) $i, 4) . bin2hex(random_bytes(3));
        $SECRETS["$tag$i"] = $s;
        $keys[] = ['id' => "$tag$i", 'secret' => $s] + ($extra[$i - 1] ?? []);
    }
    return $keys;
}

// ------------------------------------------------------------------ loading
is(Native::how(), $HOW, "the FFI declarations come from $HOW");
is(realpath(Native::path()), realpath((string) getenv('KEYMESH_LIBRARY')), 'the library loaded is $KEYMESH_LIBRARY');
is(Native::sizeMismatches(Native::km()), [], 'every struct of the FFI declarations has the size km_struct_size gives');
$bad = Native::sizeMismatches(Native::km(), ['km_request' => 2]);
ok(count($bad) === 1 && str_starts_with($bad[0], 'km_request: 664 bytes in libkeymesh, 64 in this binding'),
    'a struct of another size is named (km_request against KM_ST_LEASE)', ...$bad);
is(Pool::libraryVersion(), '0.1.0', 'the library version');

// -------------------------------------------------------- acquire / release
$A = seg('a');
$pool = Pool::create($A, config([
    ['name' => 'llm', 'strategy' => 'round_robin', 'keys' => keyset('k', 4, [[], ['meta' => ['org' => 'org-2']]])],
    ['name' => 'tight', 'limits' => ['rpm' => ['limit' => 2, 'burst' => 2], 'tpm' => ['limit' => 1000, 'burst' => 1000]],
     'keys' => keyset('t', 1)],
    ['name' => 'one', 'keys' => keyset('o', 1, [['max_inflight' => 1]])],
]), 'llm');
is([$pool->segment, $pool->name, $pool->index], [$A, 'llm', 0], 'Pool::create() makes the segment and opens pool llm');

$seen = [];
for ($i = 0; $i < 8; $i++) {
    $l = $pool->acquire(tokens: 10);
    $seen[] = $l->keyId;
    $okSecret = ($l->secret === $SECRETS[$l->keyId]);
    $pool->release($l, status: 200, tokens: 7);
}
$seen = array_count_values($seen);
ksort($seen);
is($seen, ['k1' => 2, 'k2' => 2, 'k3' => 2, 'k4' => 2], 'round robin: 8 pairs, each of 4 keys twice');
ok($okSecret, 'the lease carries the key\'s secret');
$l = $pool->acquire(keyId: 'k2');
is([$l->keyId, $l->meta, $l->tokens, $l->model], ['k2', ['org' => 'org-2'], 0, null], 'keyId pins a key; meta is the key\'s, decoded');
ok($pool->release($l) === true && $l->released(), 'release() returns true and the lease says so');
$k = keys_of($A, 'llm');
is([$k['k1']['counters']['success'], $k['k1']['tokens_used'], $k['k1']['inflight']], [2, 14, 0],
    'k1: 2 successes, 14 tokens settled at the actual count (7 each), in-flight 0');

// outcomes through km_outcome_from_http
$l = $pool->acquire(keyId: 'k1');
$pool->release($l, status: 429, headers: ['Retry-After: 30', 'Content-Type: application/json']);
$l = $pool->acquire(keyId: 'k3');
$pool->release($l, status: 429, headers: ['retry-after' => ['5'], 'x-other' => ['y']]);  // PSR-7 shape
$l = $pool->acquire(keyId: 'k4');
$pool->release($l, status: 429, body: '{"error":{"code":"insufficient_quota","type":"insufficient_quota"}}');
$k = keys_of($A, 'llm');
is([$k['k1']['state'], $k['k3']['state'], $k['k4']['state']], ['cooling', 'cooling', 'exhausted'],
    '429 + Retry-After cools a key (raw lines and PSR-7 arrays); insufficient_quota in the body exhausts one');
ok($k['k1']['cooldown_remaining_ms'] > 25000 && $k['k1']['cooldown_remaining_ms'] <= 30000
    && $k['k3']['cooldown_remaining_ms'] <= 5000,
    "Retry-After sets the cooldown (k1 {$k['k1']['cooldown_remaining_ms']} ms of 30 s, k3 {$k['k3']['cooldown_remaining_ms']} ms of 5 s)");
$l = $pool->acquire();
is($l->keyId, 'k2', 'only k2 is handed out while k1 and k3 cool and k4 is exhausted');
$pool->release($l, status: 401);
is(keys_of($A, 'llm')['k2']['state'], 'invalid', '401 makes a key invalid');
$e = throws(fn () => $pool->acquire());
ok($e instanceof NoKeyAvailableException && !($e instanceof KeysExhaustedException) && $e->getCode() === KmException::EAGAIN
    && $e->errname === 'EAGAIN', 'no key admissible now: NoKeyAvailableException EAGAIN ('
    . ($e ? get_class($e) . ' ' . $e->errname : 'none') . ')');
ok($e instanceof NoKeyAvailableException && $e->retryAfter !== null && $e->retryAfter > 0 && $e->retryAfter <= 5.0,
    'its retryAfter is when k3 comes back (' . var_export($e?->retryAfter ?? null, true) . ' s)');
$pool->enable('k1');
$pool->enable('k2');
$pool->enable('k3');
$pool->enable('k4');
$r = response(503, ['Retry-After' => ['1']]);
$l = $pool->acquire(keyId: 'k1');
$pool->release($l, response: $r);
is(keys_of($A, 'llm')['k1']['counters']['failure'], 1, 'a PSR-7 response (503) is mapped too: a failure');
$l = $pool->acquire(keyId: 'k1');
$pool->release($l, outcome: Outcome::RateLimited, retryAfter: 2.0);
$k = keys_of($A, 'llm')['k1'];
ok($k['state'] === 'cooling' && $k['cooldown_remaining_ms'] <= 2000, 'outcome: RateLimited with retryAfter, without HTTP');
$pool->enable('k1');

foreach ([['k1', 'disable'], ['k2', 'disable'], ['k3', 'disable'], ['k4', 'disable']] as [$id, $op]) {
    $pool->$op($id);
}
$e = throws(fn () => $pool->acquire());
ok($e instanceof KeysExhaustedException && $e->getCode() === KmException::EUNAVAIL && $e->errname === 'EUNAVAIL',
    'every key disabled: KeysExhaustedException (EUNAVAIL), a NoKeyAvailableException', $e ? get_class($e) . ': ' . $e->getMessage() : 'no exception');
foreach (['k1', 'k2', 'k3', 'k4'] as $id) {
    $pool->enable($id);
}

// ---------------------------------------------------------------- bad input
$none = "kmt-php-$TAG-none";
$e = throws(fn () => Pool::open($none, 'llm'));
ok($e instanceof SegmentException && $e->getCode() === KmException::ENOENT && $e->errname === 'ENOENT'
    && str_contains($e->getMessage(), "segment '$none'") && str_contains($e->getMessage(), 'no segment of that name'),
    'a segment that does not exist: SegmentException ENOENT naming it', $e ? get_class($e) . ': ' . $e->getMessage() : 'none');
$e = throws(fn () => Pool::open($A, 'nopool'));
ok($e instanceof NotFoundException && $e->getCode() === KmException::ENOPOOL
    && str_contains($e->getMessage(), "pool 'nopool'"),
    'a pool that does not exist: NotFoundException ENOPOOL naming it', $e ? get_class($e) . ': ' . $e->getMessage() : 'none');
$l = $pool->acquire();
$pool->release($l);
$e = throws(fn () => $pool->release($l));
ok($e instanceof LeaseException && $e->getCode() === KmException::ESTALE && str_contains($e->getMessage(), 'released twice'),
    'a lease released twice: LeaseException (ESTALE)', $e ? get_class($e) . ': ' . $e->getMessage() : 'none');
$e = throws(fn () => $l->release(status: 200));
ok($e instanceof LeaseException, 'the same through $lease->release()');
$before = keys_of($A, 'llm');
$e = throws(fn () => $pool->acquire(tokens: -1));
ok($e instanceof InvalidArgumentException && $e->getCode() === KmException::EINVAL
    && str_contains($e->getMessage(), 'token estimate'),
    'a negative token estimate: InvalidArgumentException (EINVAL)', $e ? get_class($e) . ': ' . $e->getMessage() : 'none');
is(array_sum(array_map(fn ($k) => $k['counters']['acquired'], keys_of($A, 'llm'))),
    array_sum(array_map(fn ($k) => $k['counters']['acquired'], $before)), '... and nothing was acquired');
$l = $pool->acquire(tokens: 5);
$e = throws(fn () => $pool->release($l, tokens: -3));
ok($e instanceof InvalidArgumentException && !$l->released(), 'negative tokens at release: InvalidArgumentException, lease still out');
ok($pool->release($l, tokens: 3), '... and it is released after');
$e = throws(fn () => $pool->acquire(timeout: -1.0));
ok($e instanceof InvalidArgumentException, 'a negative timeout: InvalidArgumentException');
$tight = Pool::open($A, 'tight');
$e = throws(fn () => $tight->acquire(tokens: 5000));
ok($e instanceof InvalidArgumentException && $e->getCode() === KmException::ECOST,
    'a token estimate above every key\'s burst: InvalidArgumentException (ECOST)', $e ? get_class($e) . ': ' . $e->getMessage() : 'none');
$other = Pool::open($A, 'one');
$l = $pool->acquire();
$e = throws(fn () => $other->release($l));
ok($e instanceof LeaseException && !$l->released(), 'a lease given to another pool\'s release(): LeaseException');
$pool->release($l);
$e = throws(fn () => Pool::create($A, config([['name' => 'x', 'keys' => keyset('z', 1)]])));
ok($e instanceof SegmentException && $e->getCode() === KmException::EEXIST, 'create() of an existing name: SegmentException EEXIST');
$e = throws(fn () => Pool::create(seg('bad'), '{"pools": [{"name": "p", "keys": [{"id": "a", "secret": "sk-test-php-badcfg-1"}], "strategy": "nope"}]}'));
ok($e instanceof KeyMesh\ConfigException && $e->getCode() === KmException::ECONFIG && str_contains($e->getMessage(), 'strategy')
    && !str_contains($e->getMessage(), 'sk-test-php-badcfg-1'),
    'a bad configuration: ConfigException naming the field, not the secret', $e ? $e->getMessage() : 'none');

// ------------------------------------------------------------------ waiting
$t0 = microtime(true);
$a = $tight->acquire();
$b = $tight->acquire();
$e = throws(fn () => $tight->acquire());
ok($e instanceof NoKeyAvailableException && $e->getCode() === KmException::EAGAIN && $e->retryAfter > 0
    && $e->retryAfter <= 60.0, 'rpm 2 spent: EAGAIN at once, retryAfter ' . var_export($e?->retryAfter ?? null, true) . ' s');
$t1 = microtime(true);
$e = throws(fn () => $tight->acquire(timeout: 0.25));
$dt = microtime(true) - $t1;
ok($e instanceof NoKeyAvailableException && $e->getCode() === KmException::ETIMEDOUT && $dt >= 0.24,
    sprintf('acquire(timeout: 0.25) waits, then NoKeyAvailableException ETIMEDOUT (after %.3f s)', $dt));
$tight->release($a);
$tight->release($b);

// the blocking acquire is woken by a release in another process
$one = Pool::open($A, 'one');
$held = $one->acquire();
[$rc0] = [0];
$pid = pcntl_fork();
if ($pid === 0) {
    Native::forget();
    $p = Pool::open($A, 'one');
    $t = microtime(true);
    try {
        $l2 = $p->acquire(timeout: 10.0);
        $p->release($l2);
        $w = microtime(true) - $t;
        exit($w < 9.0 && $w >= 0.2 ? 0 : 3);
    } catch (Throwable $e) {
        exit(4);
    }
}
usleep(400000);
$one->release($held);
pcntl_waitpid($pid, $st);
is(pcntl_wexitstatus($st), 0, 'a process blocked in acquire(timeout: 10) gets the key when another process releases it');

// ------------------------------------------------------ one attachment per process
$me = getmypid();
for ($i = 0; $i < 5; $i++) {
    Native::forget();    // what the end of a php-fpm request does to static state
    $p = Pool::open($A, $i % 2 ? 'llm' : 'one');
    $p->release($p->acquire());
}
$pr = procs($A);
is($pr, [$me => [true, 0]], 'five "requests" opening pools of the segment: one process slot, this process\'s');

// ---------------------------------------------------------------------- fork
$held = $pool->acquire(keyId: 'k1');
$pid = pcntl_fork();
if ($pid === 0) {
    $code = 0;
    try {
        $l2 = $pool->acquire();           // the same Pool object, in the child
        $pool->release($l2);
        $procs = procs($A);
        if (count($procs) !== 2 || !isset($procs[getmypid()])) {
            $code = 10;
        }
        try {
            $pool->release($held);        // the parent's lease
            $code = 11;
        } catch (LeaseException $e) {
        }
    } catch (Throwable $e) {
        fwrite(STDERR, "child: $e\n");
        $code = 12;
    }
    exit($code);
}
pcntl_waitpid($pid, $st);
is(pcntl_wexitstatus($st), 0, 'after fork, the child attaches for itself (2 slots), and refuses the parent\'s lease');
$pr = procs($A);
is($pr, [$me => [true, 1]], 'the child detached when it exited; the parent still holds its lease (the child\'s exit did not release it)');
ok($pool->release($held), 'the parent releases its lease');

// ---------------------------------------------------------------------- exit
$c0 = keys_of($A, 'llm')['k3']['counters'];
[$rc, $out, $err] = php_run('$p = KeyMesh\Pool::open(' . var_export($A, true) . ', "llm");
$keep = $p->acquire(keyId: "k3", tokens: 40);
echo getmypid(), "\n";');
$cpid = (int) trim($out);
$k = keys_of($A, 'llm')['k3'];
ok($rc === 0 && !isset(procs($A)[$cpid]), "a PHP process that exits holding a lease detaches (pid $cpid gone from ps)", $err);
is([$k['counters']['cancelled'] - $c0['cancelled'], $k['inflight']], [1, 0], 'its lease was released as cancelled by the destructor');
[$rc, $out, $err] = php_run('$p = KeyMesh\Pool::open(' . var_export($A, true) . ', "llm");
$GLOBALS["keep"] = $p->acquire(keyId: "k3", tokens: 40);
echo getmypid(), "\n";
ini_set("display_errors", "stderr");
trigger_error("boom", E_USER_ERROR);');
$cpid = (int) trim($out);
$k = keys_of($A, 'llm')['k3'];
ok($rc === 255 && !isset(procs($A)[$cpid]) && $k['counters']['cancelled'] - $c0['cancelled'] === 2 && $k['inflight'] === 0,
    "a fatal error (no destructor runs): the shutdown function releases the lease, the exit hook detaches (exit $rc)",
    $err, json_encode($k['counters']));
[$rc, $out, $err] = php_run('$p = KeyMesh\Pool::open(' . var_export($A, true) . ', "llm");
$GLOBALS["keep"] = $p->acquire(keyId: "k3", tokens: 40);
echo getmypid(), "\n";
posix_kill(getmypid(), SIGKILL);');
$cpid = (int) trim($out);
$pr = procs($A);
ok(isset($pr[$cpid]) && $pr[$cpid] === [false, 1], "a process killed with SIGKILL leaves its slot and lease (ps: dead, 1 lease)");
$rep = kmctl('reap', $A, '--json');
$k = keys_of($A, 'llm')['k3'];
ok(($rep['processes'] ?? -1) === 1 && ($rep['leases'] ?? -1) === 1 && $k['counters']['abandoned'] - $c0['abandoned'] === 1
    && $k['inflight'] === 0, 'kmctl reap releases it as abandoned', json_encode($rep));
[$chk] = [shell_exec(escapeshellarg($KMCTL) . ' check ' . escapeshellarg($A) . ' >/dev/null 2>&1; echo $?')];
is(trim((string) $chk), '0', 'kmctl check: no violation');

// pcntl_exec keeps the pid, not the address space: the record of the
// handle the environment carries into the new image must not be used there
// (it would point into memory that no longer exists).
file_put_contents("$TMP/exec2.php", "<?php\nrequire " . var_export(dirname(__DIR__, 2) . '/bindings/php/src/autoload.php', true)
    . ";\n\$p = KeyMesh\\Pool::open(" . var_export($A, true) . ", 'llm');\n\$p->release(\$p->acquire());\n"
    . "echo getmypid(), ' ', count(array_filter(array_keys(getenv()), fn (\$v) => str_starts_with(\$v, 'KEYMESH_PHP_') && \$v !== 'KEYMESH_PHP_CHECKED')), \"\\n\";\n");
[$rc, $out, $err] = php_run('$p = KeyMesh\Pool::open(' . var_export($A, true) . ', "llm");
$p->release($p->acquire());
echo getmypid(), "\n";
fflush(STDOUT);
pcntl_exec(PHP_BINARY, array_merge(array_slice(json_decode(getenv("KMT_PHP"), true), 1), [' . var_export("$TMP/exec2.php", true) . ']));
exit(9);');
$lines = explode("\n", trim($out));
ok($rc === 0 && count($lines) === 2 && $lines[1] === $lines[0] . ' 1',
    'pcntl_exec: the same pid, in the new image, attaches again instead of using the old address', $out, $err);
kmctl('reap', $A, '--json');   // the old image's slot: exec ran no exit hook

// ------------------------------------------------ the segment created again
$B = seg('b');
$p = Pool::create($B, config([['name' => 'llm', 'keys' => keyset('b', 2)]]));
$p->release($p->acquire());
kmctl('destroy', $B);
shell_exec(escapeshellarg($KMCTL) . ' destroy ' . escapeshellarg($B) . ' >/dev/null 2>&1');
Native::forget();
$e = throws(fn () => Pool::open($B, 'llm'));
ok($e instanceof SegmentException && $e->getCode() === KmException::ENOENT,
    'a segment destroyed under a live process: the next open() says ENOENT', $e ? $e->getMessage() : 'none');
file_put_contents("$TMP/b.json", config([['name' => 'llm', 'keys' => keyset('c', 3)]]));
exec(escapeshellarg($KMCTL) . ' create ' . escapeshellarg($B) . ' --config ' . escapeshellarg("$TMP/b.json") . ' >/dev/null', $o, $rc);
Native::forget();
$p = Pool::open($B, 'llm');
$ids = array_column($p->keys(), 'id');
is($ids, ['c1', 'c2', 'c3'], 'created again: the next open() attaches to the new segment (its keys)');
$p->release($p->acquire());
is(array_keys(procs($B)), [$me], '... with one process slot there');

// ------------------------------------------------------------------ withLease
$r = $pool->withLease(fn ($l) => $l->keyId, tokens: 3);
ok(is_string($r), 'withLease() returns what the callback returns');
$before = keys_of($A, 'llm');
$e = throws(fn () => $pool->withLease(function ($l) { throw new RuntimeException('network'); }));
$after = keys_of($A, 'llm');
$d = function (string $c) use (&$before, &$after): int {
    $sum = fn ($ks) => array_sum(array_map(fn ($k) => $k['counters'][$c], $ks));
    return $sum($after) - $sum($before);
};
ok($e instanceof RuntimeException && $d('failure') === 1, 'withLease(): an exception is released as a failure and rethrown');
$ex = new class ('429') extends RuntimeException {
    public function getResponse(): object
    {
        return response(429, ['Retry-After' => ['9']]);
    }
};
$before = keys_of($A, 'llm');
throws(fn () => $pool->withLease(function ($l) use ($ex) { throw $ex; }));
$after = keys_of($A, 'llm');
ok($d('rate_limited') === 1, 'withLease(): an exception carrying a 429 response is released as rate limited');
foreach (['k1', 'k2', 'k3', 'k4'] as $id) {
    $pool->enable($id);
}
$before = keys_of($A, 'llm');
$pool->withLease(function ($l) { $l->release(status: 500); });
$after = keys_of($A, 'llm');
ok($d('failure') === 1 && $d('success') === 0, 'withLease(): the callback\'s own release() is kept');

// ------------------------------------------------------------------- secrets
$l = $pool->acquire();
ob_start();
var_dump($l);
print_r($l);
echo $l, json_encode($l), json_encode($pool->keys());
debug_zval_dump($l);
var_dump($pool);
$shown = ob_get_clean();
$e1 = throws(fn () => serialize($l));
$pool->release($l);
$leak = array_filter($SECRETS, fn ($s) => str_contains($shown . ($e1 ? $e1->getMessage() : ''), $s));
ok($leak === [] && str_contains($shown, $l->keyId) && str_contains($shown, '…'),
    'var_dump, print_r, echo, json_encode, debug_zval_dump: the key id and a masked secret, never the secret',
    'leaked: ' . implode(',', array_keys($leak)));
ok($e1 instanceof LeaseException, 'a lease cannot be serialized');

// Every code the library names (km_err_name, from keymesh.h's list) is a
// constant of KeyMesh\Exception with the library's value.
$missing = [];
for ($rc = -1; $rc > -100; $rc--) {
    $name = (string) Native::km()->km_err_name($rc);
    if ($name === 'UNKNOWN') {
        break;
    }
    $const = KmException::class . '::' . $name;
    if (!defined($const) || constant($const) !== $rc) {
        $missing[] = "$name=$rc";
    }
}
ok($rc < -30 && $missing === [], 'Exception has a constant for every KM_E* code, with its value',
    'missing or wrong: ' . implode(',', $missing) . " (stopped at $rc)");

done();

/** a minimal PSR-7-like response */
function response(int $status, array $headers, string $body = ''): object
{
    return new class ($status, $headers, $body) {
        public function __construct(private int $s, private array $h, private string $b)
        {
        }

        public function getStatusCode(): int
        {
            return $this->s;
        }

        public function getHeaders(): array
        {
            return $this->h;
        }

        public function getBody(): string
        {
            return $this->b;
        }
    };
}
