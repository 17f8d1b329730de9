<?php

/*
 * tests/php/tap.php - TAP for the PHP tests (tests/t_php*.sh run them):
 *   ok($cond, $name, ...$diag)   "ok N - name" / "not ok N - name" and diag lines
 *   is($got, $want, $name)       ok($got === $want), both shown on failure
 *   diag(...$lines)              "# line"
 *   done()                       the plan, and the exit status
 */

declare(strict_types=1);

$GLOBALS['tap_n'] = 0;
$GLOBALS['tap_failed'] = 0;

function ok(bool $cond, string $name, string ...$diag): bool
{
    $n = ++$GLOBALS['tap_n'];
    echo ($cond ? 'ok ' : 'not ok ') . "$n - " . str_replace("\n", ' ', $name) . "\n";
    if (!$cond) {
        $GLOBALS['tap_failed']++;
        diag(...$diag);
    }
    return $cond;
}

function is(mixed $got, mixed $want, string $name): bool
{
    return ok($got === $want, $name, 'got:  ' . var_export($got, true), 'want: ' . var_export($want, true));
}

function diag(string ...$lines): void
{
    foreach ($lines as $l) {
        foreach (explode("\n", $l) as $x) {
            echo "# $x\n";
        }
    }
}

/** The exception $fn throws (null if none). */
function throws(callable $fn): ?Throwable
{
    try {
        $fn();
    } catch (Throwable $e) {
        return $e;
    }
    return null;
}

function done(): never
{
    echo '1..' . $GLOBALS['tap_n'] . "\n";
    exit($GLOBALS['tap_failed'] === 0 ? 0 : 1);
}
