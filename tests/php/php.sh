# tests/php/php.sh - sourced by tests/t_php*.sh after e2e_setup.
#
# php_needs_plain_library: PHP cannot run a sanitizer build of libkeymesh.
# It loads its own extensions (opcache.so, ffi.so) with RTLD_DEEPBIND, which
# the ASan and TSan runtimes refuse when preloaded (they abort: see
# https://github.com/google/sanitizers/issues/611), and without the
# runtime preloaded an instrumented library cannot be loaded at all.  Under
# `make SAN=... test` the PHP tests that load it are therefore skipped, and
# say so (TAP "# SKIP", which prove reports as skipped, not passed); they
# run in the plain build.
#   php_sanitized             true if $LIBKM is such a build
#   php_needs_plain_library   if so, "1..0 # SKIP ..." and exit
# shellcheck shell=bash

PHP_SKIP_WHY="$LIBKM is a sanitizer build, which php cannot load (php dlopens its extensions with RTLD_DEEPBIND)"

php_sanitized() { ldd "$LIBKM" 2>/dev/null | grep -q 'libasan\|libtsan'; }

php_needs_plain_library() {
    if php_sanitized; then
        echo "1..0 # SKIP $PHP_SKIP_WHY"
        exit 0
    fi
}
