<?php

/*
 * bindings/php/preload.php - for opcache.preload: compiles the binding's
 * classes once, in php-fpm's master, so that no request compiles them.
 *
 * The FFI declarations are preloaded separately, by ffi.preload (PHP's
 * own, read when the FFI extension starts):
 *
 *   ffi.preload = /path/to/bindings/php/src/keymesh.h:/path/to/bindings/php/src/libc.h
 *   opcache.preload = /path/to/bindings/php/preload.php
 *   opcache.preload_user = www-data      ; when the master runs as root
 *
 * (opcache.preload could not do both: FFI::load() refuses to run under
 * opcache.preload_user, which a master running as root needs.)  Nothing
 * here attaches to a segment: the master must not hold a process slot its
 * workers would inherit.
 */

declare(strict_types=1);

foreach (glob(__DIR__ . '/src/*.php') ?: [] as $file) {
    if (basename($file) !== 'autoload.php') {
        opcache_compile_file($file);
    }
}
