<?php

declare(strict_types=1);

namespace KeyMesh;

use FFI;
use FFI\CData;

/**
 * The FFI side of the binding: loading libkeymesh, and the one handle
 * (km_env) each process holds per segment.
 *
 * Requests and processes.  PHP frees everything a request made when it
 * ends, static properties included; a php-fpm worker serves many requests.
 * KeyMesh wants one attachment per process (a process table slot, held for
 * the process's life), not one per request.  So the handle lives in C
 * memory, and what PHP must find again at the next request is its address.
 * The C library's environment keeps it: a variable
 * KEYMESH_PHP_<hex of the segment name> = "PID NONCE ADDRESS INODE", set
 * with setenv() (not putenv(), which PHP undoes at the end of a request).
 * It holds no secret.  The address is used only when
 *   PID   is this process's (a child after fork() inherits the variable and
 *         the parent's handle; it attaches for itself: km_close and the
 *         library refuse to let a child release what the parent holds),
 *   NONCE is the 16 random bytes the kernel gave this exec (getauxval
 *         AT_RANDOM): pcntl_exec() keeps the pid but not the address space,
 *         and a stale address must never be dereferenced,
 *   INODE is still that of /dev/shm/<segment> (statx, once per request):
 *         a segment destroyed and created again (kmctl destroy, create) is
 *         attached again on the worker's next request, as every new process
 *         would; the old handle stays mapped, unused, until the process
 *         exits.  A segment destroyed and not created again gives
 *         SegmentException (ENOENT).
 * Otherwise the process attaches (km_open) and records the new handle.
 *
 * The handle is closed when the process exits: the first attachment pins
 * libkeymesh in memory (dlopen RTLD_NODELETE, so PHP's FFI unloading it at
 * the end of a request or at shutdown never unmaps the code), and each
 * handle is given to __cxa_atexit() with km_close as the function.  So a
 * php-fpm worker that exits (pm.max_requests, a reload, a scale-down)
 * deregisters and releases whatever it still held, as abandoned; a worker
 * killed with SIGKILL is reaped by the next process that attaches, by an
 * acquire that finds no key, or by `kmctl reap`.  (km_close returns int and
 * __cxa_atexit calls a void function of a pointer: the return value is
 * dropped in a register, as on every ABI Linux runs on.)  PHP code never
 * calls km_close itself: that would leave the exit hook a freed pointer.
 *
 * Thread safety: written for PHP's NTS builds (php-fpm, CLI), one request
 * at a time per process.
 *
 * @internal
 */
final class Native
{
    public const SCOPE = 'KEYMESH';
    public const LIBC_SCOPE = 'KEYMESH_LIBC';

    /** km_struct_id (keymesh.h) of every struct keymesh.h here declares. */
    public const STRUCT_IDS = [
        'km_request' => 1, 'km_lease' => 2, 'km_outcome' => 3, 'km_http_response' => 4,
        'km_info' => 5, 'km_limit_info' => 6, 'km_pool_info' => 7, 'km_key_info' => 8,
    ];

    private const RTLD_NOW = 2;
    private const RTLD_NOLOAD = 4;
    private const RTLD_NODELETE = 0x1000;
    private const AT_RANDOM = 25;
    private const AT_FDCWD = -100;
    private const STATX_INO = 0x100;

    private static ?FFI $km = null;
    private static ?FFI $libc = null;
    /** 'preload' (scopes from ffi.preload) or 'cdef' */
    private static string $how = '';
    private static string $path = '';
    private static ?string $library = null;
    private static ?string $nonce = null;
    /** @var array<string, array{0: CData, 1: int}> segment => [km_env*, pid] */
    private static array $envs = [];

    /**
     * Load this library instead of searching (before the first use in a
     * request; a scope preloaded through ffi.preload wins over it).
     */
    public static function useLibrary(string $path): void
    {
        self::$library = $path;
    }

    public static function km(): FFI
    {
        return self::$km ?? self::load();
    }

    public static function libc(): FFI
    {
        if (self::$libc === null) {
            self::load();
        }
        return self::$libc;
    }

    /** 'preload' or 'cdef': how this request's FFI was made. */
    public static function how(): string
    {
        self::km();
        return self::$how;
    }

    /** The path of the libkeymesh this process runs. */
    public static function path(): string
    {
        if (self::$path === '') {
            self::$path = self::libraryOf(self::km(), self::$libc);
        }
        return self::$path;
    }

    /** The declarations for FFI::cdef(): the header without its #define lines. */
    public static function declarations(string $file): string
    {
        $text = @file_get_contents(__DIR__ . '/' . $file);
        if ($text === false) {
            throw new Exception("keymesh: cannot read " . __DIR__ . "/$file");
        }
        return (string) preg_replace('/^#define .*$/m', '', $text);
    }

    /**
     * keymesh.h with FFI_LIB set to $library: for ffi.preload of a library
     * the dynamic linker does not find by name.
     */
    public static function header(string $library): string
    {
        $text = (string) file_get_contents(__DIR__ . '/keymesh.h');
        return (string) preg_replace('/^#define FFI_LIB .*$/m',
            '#define FFI_LIB ' . json_encode($library, JSON_UNESCAPED_SLASHES), $text, 1);
    }

    /** @return list<string> where the library is looked for, in order */
    public static function candidates(): array
    {
        $c = [];
        if (self::$library !== null) {
            $c[] = self::$library;
        }
        foreach (['KEYMESH_LIBRARY' => '', 'KM_BUILD' => '/libkeymesh.so.0'] as $var => $tail) {
            // local_only: the process's environment, never a FastCGI parameter
            $v = getenv($var, true);
            if (is_string($v) && $v !== '') {
                $c[] = $v . $tail;
            }
        }
        $c[] = 'libkeymesh.so.0';
        return array_values(array_unique($c));
    }

    private static function load(): FFI
    {
        try {
            $km = FFI::scope(self::SCOPE);
            $libc = FFI::scope(self::LIBC_SCOPE);
            $how = 'preload';
        } catch (\FFI\Exception $e) {
            $restricted = str_contains($e->getMessage(), 'ffi.enable');
            if ($restricted) {
                throw new Exception('keymesh: PHP\'s FFI is restricted here (ffi.enable='
                    . ini_get('ffi.enable') . '): preload the binding with ffi.preload='
                    . __DIR__ . '/keymesh.h:' . __DIR__ . '/libc.h (see bindings/php/README.md),'
                    . ' or set ffi.enable=true');
            }
            [$km, $libc] = self::cdef();
            $how = 'cdef';
        }
        // Preloaded declarations and their library are fixed from PHP's start
        // to the process's exit (a forked child keeps them; an exec starts
        // PHP again): checked once per exec, a record in the environment
        // saying so.  FFI::cdef loads whatever the candidates say now.
        $checked = $how === 'preload' ? 'KEYMESH_PHP_CHECKED' : null;
        $rec = $checked !== null ? $libc->getenv($checked) : null;
        if ($rec === null || FFI::string($rec) !== self::nonceOf($libc)) {
            $bad = self::sizeMismatches($km);
            if ($bad !== []) {
                throw new Exception('keymesh: ' . self::libraryOf($km, $libc) . ' does not match this binding ('
                    . implode('; ', $bad) . '): use the binding and the library of one version');
            }
            if ($checked !== null) {
                $libc->setenv($checked, self::nonceOf($libc), 1);
            }
        }
        self::$km = $km;
        self::$libc = $libc;
        self::$how = $how;
        return $km;
    }

    /** @return array{0: FFI, 1: FFI} */
    private static function cdef(): array
    {
        $decls = self::declarations('keymesh.h');
        $tried = [];
        $km = null;
        foreach (self::candidates() as $cand) {
            try {
                $km = FFI::cdef($decls, $cand);
                break;
            } catch (\FFI\Exception $e) {
                $tried[] = "$cand (" . $e->getMessage() . ')';
            }
        }
        if ($km === null) {
            throw new Exception('keymesh: libkeymesh not found; tried: ' . implode('; ', $tried)
                . ' (set KEYMESH_LIBRARY, or install it: make install)');
        }
        try {
            $libc = FFI::cdef(self::declarations('libc.h'), 'libc.so.6');
        } catch (\FFI\Exception $e) {
            throw new Exception('keymesh: cannot load the C library\'s calls: ' . $e->getMessage());
        }
        return [$km, $libc];
    }

    /**
     * The structs whose FFI size differs from the library's km_struct_size(),
     * as text (empty: all agree).
     *
     * @param array<string, int>|null $ids struct => km_struct_id (default STRUCT_IDS)
     * @return list<string>
     */
    public static function sizeMismatches(FFI $km, ?array $ids = null): array
    {
        $bad = [];
        foreach ($ids ?? self::STRUCT_IDS as $name => $id) {
            $lib = (int) $km->km_struct_size($id);
            $mine = FFI::sizeof($km->type($name));
            if ($lib !== $mine) {
                $bad[] = "$name: $lib bytes in libkeymesh, $mine in this binding";
            }
        }
        sort($bad);
        return $bad;
    }

    private static function libraryOf(FFI $km, FFI $libc): string
    {
        $info = $libc->new('kmphp_dl_info');
        if ($libc->dladdr(FFI::cast('void *', $km->km_version), FFI::addr($info)) !== 0
            && $info->dli_fname !== null) {
            return (string) $info->dli_fname;
        }
        return 'libkeymesh';
    }

    /** "EAGAIN: what: no key is admissible now; ..." */
    public static function message(int $rc, string $what = ''): string
    {
        $km = self::km();
        return $km->km_err_name($rc) . ': ' . ($what !== '' ? "$what: " : '') . $km->km_strerror($rc);
    }

    /** The exception for a KM_E* code (retry_at_ns: KM_EAGAIN's hint). */
    public static function error(int $rc, string $what, int $retryAtNs = 0): Exception
    {
        $msg = self::message($rc, $what);
        $name = (string) self::km()->km_err_name($rc);
        switch ($rc) {
            case Exception::EAGAIN:
            case Exception::ETIMEDOUT:
                $ra = null;
                if ($retryAtNs > 0) {
                    $ra = max(0.0, ($retryAtNs - self::km()->km_now_ns()) / 1e9);
                }
                return new NoKeyAvailableException($msg, $rc, $name, $ra);
            case Exception::EUNAVAIL:
            case Exception::EBUDGET:
                return new KeysExhaustedException($msg, $rc, $name, null);
            case Exception::ENOPOOL:
            case Exception::ENOKEY:
            case Exception::ENOMODEL:
                return new NotFoundException($msg, $rc, $name);
            case Exception::EINVAL:
            case Exception::ECOST:
                return new InvalidArgumentException($msg, $rc, $name);
            case Exception::ESTALE:
                return new LeaseException($msg, $rc, $name);
            case Exception::ECONFIG:
                return new ConfigException($msg, $rc, $name);
            case Exception::ENOENT:
            case Exception::EEXIST:
            case Exception::EACCES:
            case Exception::ENOTKM:
            case Exception::EFORMAT:
            case Exception::ELAYOUT:
            case Exception::ETRUNC:
            case Exception::ENOTREADY:
            case Exception::EPROCS:
            case Exception::ENAME:
            case Exception::ECORRUPT:
                return new SegmentException($msg, $rc, $name);
        }
        return new Exception($msg, $rc, $name);
    }

    /** "name" for "/name"; the library accepts both, the records use one. */
    public static function segmentName(string $segment): string
    {
        return ltrim($segment, '/');
    }

    /**
     * This process's handle on $segment: the one recorded for it if still
     * valid (see the class comment), else a new attachment.
     */
    public static function env(string $segment): CData
    {
        $pid = getmypid();
        $e = self::$envs[$segment] ?? null;
        if ($e !== null && $e[1] === $pid) {
            return $e[0];
        }
        $km = self::km();
        $libc = self::$libc;
        $var = self::anchorName($segment);
        $ident = self::segmentIdent($segment);
        $rec = $libc->getenv($var);
        if ($rec !== null) {
            $f = explode(' ', FFI::string($rec));
            if (count($f) === 4 && (int) $f[0] === $pid && $f[1] === self::nonce()) {
                // ('': statx could not tell this time; the record stands)
                if ($f[3] === $ident || $ident === '') {
                    $env = $km->cast('km_env *', (int) $f[2]);
                    self::$envs[$segment] = [$env, $pid];
                    return $env;
                }
                if ($ident === '-') {
                    // Gone since this process attached: the handle would go on
                    // working apart from every process that attaches now.
                    throw Native::error(Exception::ENOENT, "segment '$segment' (removed since this process attached)");
                }
            }
        }
        $out = $km->new('km_env *[1]');
        $rc = $km->km_open($segment, FFI::addr($out[0]));
        if ($rc !== 0) {
            throw self::error($rc, "segment '$segment'");
        }
        return self::adopt($segment, $out[0], $ident);
    }

    /**
     * Record a handle this process just attached (km_open or km_create):
     * the exit hook, then the environment record.  $ident is the segment's
     * inode as read before attaching (read after, a segment replaced in
     * between would be recorded with the old handle and never noticed; read
     * before, it costs at most one more attach).
     */
    public static function adopt(string $segment, CData $env, string $ident): CData
    {
        $km = self::km();
        $libc = self::$libc;
        self::pin($km, $libc);
        $fn = FFI::cast('void (*)(void *)', $km->km_close);
        $arg = FFI::cast('void *', $env);
        if ($libc->__cxa_atexit($fn, $arg, null) !== 0) {
            // Out of memory in the C library: the process still works; a
            // reaper frees its slot after it exits.
            trigger_error('keymesh: cannot register the exit hook: the process table slot '
                . 'is freed by a reaper after this process exits', E_USER_WARNING);
        }
        $addr = FFI::cast('uintptr_t', $env)->cdata;
        $pid = getmypid();
        $libc->setenv(self::anchorName($segment), "$pid " . self::nonce() . " $addr $ident", 1);
        $env = $km->cast('km_env *', $addr);
        self::$envs[$segment] = [$env, $pid];
        return $env;
    }

    /** Keep libkeymesh mapped until the process exits (RTLD_NODELETE). */
    private static function pin(FFI $km, FFI $libc): void
    {
        $path = self::libraryOf($km, $libc);
        $h = $libc->dlopen($path, self::RTLD_NOW | self::RTLD_NOLOAD | self::RTLD_NODELETE);
        if ($h === null) {
            $err = $libc->dlerror();
            throw new Exception("keymesh: cannot pin $path in memory: "
                . ($err !== null ? FFI::string($err) : 'dlopen failed'));
        }
        // The handle is never closed: its reference and RTLD_NODELETE keep the
        // code the exit hooks call.
    }

    private static function anchorName(string $segment): string
    {
        return 'KEYMESH_PHP_' . bin2hex($segment);
    }

    /** This exec's AT_RANDOM bytes, as hex. */
    private static function nonce(): string
    {
        return self::nonceOf(self::$libc ?? self::libc());
    }

    private static function nonceOf(FFI $libc): string
    {
        if (self::$nonce === null) {
            $p = $libc->getauxval(self::AT_RANDOM);
            self::$nonce = $p !== 0 ? bin2hex(FFI::string(FFI::cast('char *', $p), 16)) : 'none';
        }
        return self::$nonce;
    }

    /**
     * "DEV_MAJOR:DEV_MINOR:INODE" of /dev/shm/<segment>, where glibc's
     * shm_open keeps it; "-" if there is none; "" if it cannot be told.
     */
    public static function segmentIdent(string $segment): string
    {
        $libc = self::$libc ?? self::libc();
        $st = $libc->new('kmphp_statx');
        if ($libc->statx(self::AT_FDCWD, '/dev/shm/' . $segment, 0, self::STATX_INO, FFI::addr($st)) !== 0) {
            $errno = $libc->__errno_location()[0];
            return ($errno === 2 || $errno === 20) ? '-' : ''; // ENOENT, ENOTDIR
        }
        if (($st->stx_mask & self::STATX_INO) === 0) {
            return '';
        }
        return $st->stx_dev_major . ':' . $st->stx_dev_minor . ':' . $st->stx_ino;
    }

    /** Forget this request's handles (tests: after pcntl_fork in a child). */
    public static function forget(): void
    {
        self::$envs = [];
    }

    /**
     * Forget everything the end of a request frees (the FFI instances too),
     * so the next call starts as a new php-fpm request does: tests and
     * bench/php measure that path with it.
     */
    public static function reset(): void
    {
        self::$km = null;
        self::$libc = null;
        self::$how = '';
        self::$path = '';
        self::$nonce = null;
        self::$envs = [];
    }
}
