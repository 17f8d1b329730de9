<?php

/*
 * bindings/php/src/autoload.php - the binding's classes without Composer:
 * require this file once (Composer's autoloader does the same from
 * composer.json's "autoload").
 */

declare(strict_types=1);

spl_autoload_register(static function (string $class): void {
    if (str_starts_with($class, 'KeyMesh\\')) {
        $file = __DIR__ . '/' . str_replace('\\', '/', substr($class, 8)) . '.php';
        if (is_file($file)) {
            require $file;
        }
    }
});
