<?php

/*
 * tests/php/layout.php KEYMESH_LAYOUT LIBC_LAYOUT - the structs of the PHP
 * binding's FFI declarations (bindings/php/src/keymesh.h and libc.h)
 * against the C compiler's layout (tests/e2e/layout.c and
 * tests/php/libc_layout.c print "struct size field offset ...").  Only the
 * declarations are parsed (FFI::cdef of the typedefs): libkeymesh is not
 * loaded.  TAP: per struct of keymesh.h its size, every field's offset and
 * the same set of fields as keymesh.h's; per struct of libc.h its size and
 * the offsets of the fields the binding reads; and that every struct
 * declared is checked.
 */

declare(strict_types=1);

require __DIR__ . '/tap.php';

$src = dirname(__DIR__, 2) . '/bindings/php/src';

function c_layout(string $file): array
{
    $c = [];
    foreach (file($file, FILE_IGNORE_NEW_LINES) as $line) {
        $w = preg_split('/\s+/', trim($line), -1, PREG_SPLIT_NO_EMPTY);
        if (count($w) < 2) {
            continue;
        }
        $fields = [];
        for ($i = 2; $i + 1 < count($w); $i += 2) {
            $fields[$w[$i]] = (int) $w[$i + 1];
        }
        $c[$w[0]] = ['size' => (int) $w[1], 'fields' => $fields];
    }
    return $c;
}

/** The typedef'd structs of a header, and an FFI that knows them. */
function declared(string $header): array
{
    $text = (string) file_get_contents($header);
    $text = (string) preg_replace('/^#define .*$/m', '', $text);
    preg_match_all('/typedef\s+struct\s+(\w+)\s*\{/', $text, $m);
    $cut = strpos($text, '/* functions */');
    if ($cut === false) { // libc.h: the prototypes follow the last typedef
        $cut = strrpos($text, '} ');
        $cut = strpos($text, ';', (int) $cut) + 1;
    }
    $ffi = FFI::cdef(substr($text, 0, $cut));
    return [$m[1], $ffi];
}

foreach ([['keymesh.h', $argv[1], true], ['libc.h', $argv[2], false]] as [$h, $layout, $exact]) {
    $c = c_layout($layout);
    [$names, $ffi] = declared("$src/$h");
    $missing = [];
    foreach ($names as $name) {
        if (!isset($c[$name])) {
            $missing[] = "$name is declared by $h, not printed by the layout program";
            continue;
        }
        $t = $ffi->type($name);
        $bad = [];
        if ($t->getSize() !== $c[$name]['size']) {
            $bad[] = "sizeof {$t->getSize()}, C {$c[$name]['size']}";
        }
        $mine = $t->getStructFieldNames();
        foreach ($c[$name]['fields'] as $f => $off) {
            if (!in_array($f, $mine, true)) {
                $bad[] = "$f: missing here";
                continue;
            }
            $o = $t->getStructFieldOffset($f);
            if ($o !== $off) {
                $bad[] = "$f: offset $o, C $off";
            }
        }
        if ($exact) {
            foreach (array_diff($mine, array_keys($c[$name]['fields'])) as $f) {
                $bad[] = "$f: declared here, not a field in C";
            }
        }
        ok($bad === [], sprintf('%s %s: size %d and %d field offsets as in C%s', $h, $name, $c[$name]['size'],
            count($c[$name]['fields']), $exact ? ', the same fields' : ''), ...$bad);
    }
    ok($names !== [] && $missing === [], sprintf('%s: every struct declared (%d) is checked', $h, count($names)),
        ...$missing);
}
done();
