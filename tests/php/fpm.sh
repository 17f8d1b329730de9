# tests/php/fpm.sh - helpers of the php-fpm end-to-end tests
# (tests/t_php_fpm*.sh).  Sourced after tests/lib.sh, tests/e2e/e2e.sh,
# `begin` and e2e_setup:
#
#   free_port                  a free TCP port on 127.0.0.1, the kernel's pick
#                              (a small race with other programs: a server
#                              that cannot bind it bails out)
#   fpm_conf TAG               begin $TMP/php-fpm$TAG.conf (its global section)
#   fpm_pool TAG NAME PORT WORKERS SEG [LINE...]
#                              append a pool: WORKERS static workers on PORT,
#                              env KMT_SEG=SEG, extra pool lines (php_admin_value...)
#   PRELOAD                    php-fpm's -d options that preload the binding:
#                              ffi.preload (a header naming $LIBKM, written by
#                              bin/keymesh-ffi-header) and opcache.preload
#   start_fpm VAR TAG [OPT...] php-fpm8.2 -F on that config with OPTs (-d ...);
#                              VAR = the master's pid; waits for every pool's ping
#   fpm_workers MASTER         its workers' pids, sorted, one a line
#   fcgi PORT URI              one request through cgi-fcgi to tests/php/app.php:
#                              its response (CGI headers, a blank line, the body)
#   start_nginx_fcgi FPM_PORT  nginx (one worker) in front of it: NGX_PID, URL
#   attached                   "ALIVE DEAD": processes attached to $SEG (kmctl ps)
# shellcheck shell=bash

FPM_BIN=/usr/sbin/php-fpm8.2
PHP_APP="$REPO/tests/php/app.php"
FPM_ROOT=()
[ "$(id -u)" = 0 ] && FPM_ROOT=(-R)

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

fpm_conf() { # fpm_conf TAG
    sed -e "s|@TMP@|$TMP|g; s|@TAG@|$1|g" "$REPO/tests/php/php-fpm.conf.in" >"$TMP/php-fpm$1.conf"
}

fpm_pool() { # fpm_pool TAG NAME PORT WORKERS SEG [LINE...]
    local tag=$1 user=
    # As root, php-fpm runs with -R and its workers as root too (the segment
    # is mode 0600, owned by its creator).
    [ "$(id -u)" = 0 ] && user=$'user = root\ngroup = root'
    "$PY" - "$REPO/tests/php/fpm-pool.conf.in" "$TMP/php-fpm$tag.conf" "$2" "$3" "$4" "$5" \
        "${UP_PORT:-0}" "$TMP" "$user" "${@:6}" <<'PYEOF'
import sys
src, dst, name, port, workers, seg, up, tmp, user = sys.argv[1:10]
t = open(src).read()
for k, v in {"@POOL@": name, "@PORT@": port, "@WORKERS@": workers, "@SEG@": seg,
             "@UPSTREAM@": up, "@TMP@": tmp, "@USER@": user,
             "@EXTRA@": "\n".join(sys.argv[10:])}.items():
    t = t.replace(k, v)
open(dst, "a").write(t)
PYEOF
}

if ! php "$REPO/bindings/php/bin/keymesh-ffi-header" --lib "$LIBKM" -o "$TMP/keymesh-ffi.h"; then
    echo "Bail out! bin/keymesh-ffi-header failed"
    exit 1
fi
PRELOAD=(-d "ffi.preload=$TMP/keymesh-ffi.h:$REPO/bindings/php/src/libc.h"
    -d "opcache.preload=$REPO/bindings/php/preload.php")
[ "$(id -u)" = 0 ] && PRELOAD+=(-d opcache.preload_user=root)

fcgi() { # fcgi PORT URI
    local uri=$2 q=
    case "$uri" in *\?*) q=${uri#*\?} ;; esac
    env -i SCRIPT_FILENAME="$PHP_APP" SCRIPT_NAME=/app.php REQUEST_METHOD=GET REQUEST_URI="$uri" \
        QUERY_STRING="$q" SERVER_PROTOCOL=HTTP/1.1 GATEWAY_INTERFACE=CGI/1.1 \
        cgi-fcgi -bind -connect "127.0.0.1:$1" 2>/dev/null
}

fpm_ping() { # fpm_ping PORT
    env -i SCRIPT_FILENAME=/fpm-ping SCRIPT_NAME=/fpm-ping REQUEST_METHOD=GET \
        cgi-fcgi -bind -connect "127.0.0.1:$1" 2>/dev/null | grep -q pong
}

start_fpm() { # start_fpm VAR TAG [OPT...]
    local var=$1 tag=$2 port ready=1
    shift 2
    bg_start "$var" "${SANENV[@]}" "$FPM_BIN" -F "${FPM_ROOT[@]}" -y "$TMP/php-fpm$tag.conf" "$@" \
        2>>"$TMP/php-fpm$tag.stderr"
    for _ in $(seq 200); do
        ready=0
        for port in $(sed -n 's/^listen = 127.0.0.1:\([0-9]*\)$/\1/p' "$TMP/php-fpm$tag.conf"); do
            fpm_ping "$port" || ready=1
        done
        [ "$ready" = 0 ] && break
        sleep 0.05
    done
    if [ "$ready" != 0 ]; then
        echo "Bail out! php-fpm did not start: $(tail -n 20 "$TMP/php-fpm$tag.log" "$TMP/php-fpm$tag.stderr" 2>/dev/null)"
        exit 1
    fi
}

fpm_workers() { ps -o pid= --ppid "$1" | tr -d ' ' | sort -n; }

start_nginx_fcgi() { # start_nginx_fcgi FPM_PORT
    local port user=
    port=$(free_port)
    [ "$(id -u)" = 0 ] && user="user root;"
    sed -e "s|@USER@|$user|; s|@TMP@|$TMP|g; s|@REPO@|$REPO|g; s|@PORT@|$port|g; s|@FPM_PORT@|$1|g" \
        "$REPO/tests/php/nginx.conf.in" >"$TMP/nginx.conf"
    bg_start NGX_PID /usr/sbin/nginx -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log"
    URL="http://127.0.0.1:$port"
    for _ in $(seq 100); do
        curl -sf -o /dev/null "$URL/ping" && return 0
        sleep 0.05
    done
    echo "Bail out! nginx did not start: $(tail -n 20 "$TMP/nginx-error.log")"
    exit 1
}

attached() { # "ALIVE DEAD" processes attached to $SEG, kmctl itself left out
    "$KMCTL" ps "$SEG" --json | "$PY" -c '
import json, sys
p = [x for x in json.load(sys.stdin)["processes"] if not x["self"]]
print(sum(1 for x in p if x["alive"]), sum(1 for x in p if not x["alive"]))'
}
