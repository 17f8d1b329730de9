/*
 * tools/kmctl/cmd_serve.c - kmctl serve: /metrics and /healthz over HTTP
 * for Prometheus, with libmicrohttpd (Debian's libmicrohttpd-dev).
 *
 * One thread of libmicrohttpd's answers every request in turn (internal
 * polling thread), so the exporter's state below has one user at a time;
 * the main thread only waits for SIGTERM/SIGINT and stops the server.
 *
 * The segment may vanish and come back while serve runs (kmctl destroy,
 * then create or restore): before each scrape the watcher (watch.c) looks
 * at the name; gone, and /metrics answers 503 saying so; replaced, and
 * serve attaches to the new one.  It never creates, changes or unlinks
 * anything.  It attaches read-only, without a process slot (watch.c,
 * WATCH_OPEN).
 */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <microhttpd.h>

#include "kmctl.h"

const char usage_serve[] = 
    "Usage: kmctl serve NAME [--listen ADDR:PORT]\n"
    "\n"
    "Serve the statistics of segment NAME over HTTP for a Prometheus\n"
    "scraper, until SIGTERM or SIGINT:\n"
    "  /metrics   the exposition of `kmctl metrics NAME`, read at each scrape\n"
    "  /healthz   \"ok\" (200) while the segment can be read, else 503 and why\n"
    "  /          a page linking both\n"
    "If the segment vanishes while serve runs, /metrics answers 503 with a\n"
    "line saying so, and serve attaches again once a segment of that name is\n"
    "back.  serve starts even if the segment does not exist yet.  It changes\n"
    "nothing in the segment.\n"
    "\n"
    "Options:\n"
    "  -l, --listen ADDR:PORT   address to listen on (default 127.0.0.1:9464;\n"
    "                           [::1]:9464 for IPv6, :9464 for every address)\n"
    "  -h, --help               show this help\n"
    "\n"
    "Exit status: 0 stopped by a signal; 1 cannot listen (the address is in\n"
    "use, ...); 2 usage error.\n"
    "\n"
    "Example:\n"
    "  kmctl serve llm --listen 127.0.0.1:9464 &\n"
    "  curl -s http://127.0.0.1:9464/metrics | grep keymesh_key_requests_total\n";

typedef struct exporter {
    seg_watch w;
    uint64_t scrapes, errors;
} exporter;

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             char *body, size_t len, int owned)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_MUST_COPY);
    if (!r) {
        if (owned)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result text(struct MHD_Connection *c, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum MHD_Result text(struct MHD_Connection *c, unsigned status, const char *fmt, ...)
{
    char b[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    return reply(c, status, "text/plain; charset=utf-8", b,
                 (size_t)n < sizeof b ? (size_t)n : sizeof b - 1, 0);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
    exporter *x = cls;
    (void)version;
    (void)upload;
    (void)upload_size;
    (void)con_cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    if (strcmp(url, "/metrics") == 0) {
        x->scrapes++;
        if (watch_attach(&x->w, NULL) != 0) {
            x->errors++;
            return text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                        "kmctl serve: %s; serving again once it is back\n", x->w.why);
        }
        char *body;
        size_t len;
        int rc = metrics_text(x->w.env, x->w.name, &body, &len);
        if (rc != KM_OK) {
            x->errors++;
            int e = errno;
            return text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "kmctl serve: segment '%s': %s\n",
                        x->w.name, err_text(rc, e));
        }
        return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body, len, 1);
    }
    if (strcmp(url, "/healthz") == 0) {
        if (watch_attach(&x->w, NULL) != 0)
            return text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "%s\n", x->w.why);
        return text(c, MHD_HTTP_OK, "ok\n");
    }
    if (strcmp(url, "/") == 0)
        return text(c, MHD_HTTP_OK,
                    "kmctl serve: KeyMesh segment '%s'\n/metrics  Prometheus exposition\n"
                    "/healthz  200 while the segment can be read\n",
                    x->w.name);
    return text(c, MHD_HTTP_NOT_FOUND, "not found: try /metrics or /healthz\n");
}

/* "127.0.0.1:9464", "[::1]:9464", ":9464" -> a listening socket, or -1
 * after an error line naming the address. */
static int listen_on(const char *spec)
{
    char host[256];
    const char *colon = strrchr(spec, ':'), *port;
    if (!colon || !colon[1] || (size_t)(colon - spec) >= sizeof host)
        return usage_error("--listen: '%s' is not ADDR:PORT (e.g. 127.0.0.1:9464)", spec), -2;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    port = colon + 1;
    char *h = host;
    size_t hl = strlen(h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h[hl - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *ai = NULL;
    int gai = getaddrinfo(*h ? h : NULL, port, &hints, &ai);
    if (gai != 0) {
        errline("--listen %s: %s", spec, gai_strerror(gai));
        return -1;
    }
    int fd = -1, e = 0;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 64) != 0) {
            e = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0)
        errline("--listen %s: %s", spec, strerror(e));
    return fd;
}

typedef struct serve_opts {
    const char *listen;
} serve_opts;

static const opt_spec serve_optv[] = {OPT_STR("listen", 'l', 1, serve_opts, listen)};

const cmd_syntax serve_syntax = {usage_serve, "NAME", serve_optv, N_OPTS(serve_optv)};

int cmd_serve(int argc, char **argv)
{
    serve_opts o = {"127.0.0.1:9464"};
    exporter x;
    int rc;

    if ((rc = parse_args(&serve_syntax, argc, argv, &o)) >= 0)
        return rc;
    memset(&x, 0, sizeof x);
    if (watch_init(&x.w, argv[optind]) != 0)
        return usage_error("NAME: '%s' is not a segment name", argv[optind]);

    int fd = listen_on(o.listen);
    if (fd < 0)
        return fd == -2 ? EX_USAGE : EX_FAILED;

    /* Signals go to the main thread only: block them before the server's
     * thread starts (it inherits the mask), then wait for one. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    if (watch_attach(&x.w, NULL) != 0)
        errline("warning: %s; serving 503 until it exists", x.w.why);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, handle, &x, MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    if (!d) {
        errline("--listen %s: cannot start the HTTP server", o.listen);
        close(fd);
        watch_detach(&x.w);
        return EX_FAILED;
    }
    printf("kmctl serve: segment '%s' on http://%s/metrics\n", x.w.name, o.listen);
    fflush(stdout);
    int sig = 0;
    sigwait(&stop, &sig);
    MHD_stop_daemon(d);
    close(fd);
    watch_detach(&x.w);
    printf("kmctl serve: stopped by %s after %" PRIu64 " scrapes (%" PRIu64 " answered 503)\n",
           sig == SIGTERM ? "SIGTERM" : "SIGINT", x.scrapes, x.errors);
    return flush_stdout(EX_SUCCESS);
}
