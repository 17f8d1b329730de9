/*
 * tools/kmctl/cmd_top.c - kmctl top: a live view of a segment in the
 * terminal (ncurses), refreshed every second, like htop or redis-cli
 * --stat: per key its state, leases in flight, requests and tokens per
 * second (from the difference of two readings), the use of each limit
 * window as a bar, and the cooldown left; the pool's totals above.
 *
 * Columns are laid out by priority: the terminal's width decides how many
 * fit (a 20x10 terminal still shows each key's id and state), and the
 * height how many keys (the rest scroll).  The segment may vanish and come
 * back: top says so and attaches again, like serve.
 */
#include <errno.h>
#include <inttypes.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curses.h>

#include "kmctl.h"

const char usage_top[] =
    "Usage: kmctl top NAME [--pool P] [--interval SECONDS]\n"
    "\n"
    "A live view of segment NAME, refreshed every second (ncurses): the\n"
    "pool's totals, then one row per key:\n"
    "  KEY      key id               STATE    active, cooling, ...\n"
    "  INFL     leases out/allowed   REQ/S    requests per second\n"
    "  TOK/S    tokens per second    COOL_MS  milliseconds of cooldown left\n"
    "  RPM, TPM, ...  each limit window's use (used / burst) as a bar\n"
    "Columns that do not fit the terminal's width are left out; keys that\n"
    "do not fit its height scroll.\n"
    "\n"
    "Keys:\n"
    "  q            quit\n"
    "  TAB, n, p    next / previous pool (also right and left arrows)\n"
    "  s            sort by the next column (KEY, STATE, INFL, REQ/S, TOK/S,\n"
    "               USE: the fullest window, COOL_MS); r reverses the order\n"
    "  up, down, PgUp, PgDn   scroll the keys\n"
    "\n"
    "Options:\n"
    "  -p, --pool P          start on pool P\n"
    "  -i, --interval S      refresh every S seconds (1..3600, default 1)\n"
    "  -h, --help            show this help\n"
    "\n"
    "Exit status: 0 quit with q; 1 failure (not a terminal, ...); 2 usage\n"
    "error; 3 no such segment or pool at the start.\n";

enum sort_by { BY_ID, BY_STATE, BY_INFL, BY_REQ, BY_TOK, BY_USE, BY_COOL, BY_COUNT };

static const char *const sort_name[BY_COUNT] = {"KEY", "STATE", "INFL", "REQ/S",
                                                "TOK/S", "USE", "COOL_MS"};

/* One key as shown: its stats and its rates since the last reading. */
typedef struct row {
    const km_key_stats *k;
    double req_s, tok_s; /* < 0: no earlier reading yet */
    double use;          /* the fullest window, used / burst, 0..1 */
} row;

typedef struct top_state {
    seg_watch w;
    seg_stats cur;
    int have;
    /* Per key slot (by index; gen tells a reused slot from the same key):
     * the previous reading and the rates derived at the last refresh. */
    uint32_t cap;
    uint32_t *pgen;
    uint64_t *preq, *ptok, *pns;
    uint8_t *pvalid;
    double *rreq, *rtok; /* < 0: no earlier reading yet */
    uint32_t pool;       /* shown */
    int sort, reverse;
    int scroll;
    uint32_t interval_s;
} top_state;

/* Whether key index i (an int, as keymesh.h gives every index) is one of
 * the n rows the rate history holds. */
static int below(int i, uint32_t n)
{
    return i >= 0 && (uint32_t)i < n;
}

static int g_sort_reverse;
static int g_sort;

static int row_cmp(const void *a, const void *b)
{
    const row *x = a, *y = b;
    double d = 0;
    switch (g_sort) {
    case BY_STATE: d = x->k->state - y->k->state; break;
    case BY_INFL: d = (double)x->k->inflight - (double)y->k->inflight; break;
    case BY_REQ: d = x->req_s - y->req_s; break;
    case BY_TOK: d = x->tok_s - y->tok_s; break;
    case BY_USE: d = x->use - y->use; break;
    case BY_COOL: d = (double)x->k->cooldown_remaining_ms - (double)y->k->cooldown_remaining_ms; break;
    default: break;
    }
    /* Numbers: largest first; ties and KEY: by id. */
    int c = d > 0 ? -1 : d < 0 ? 1 : strcmp(x->k->id, y->k->id);
    if (g_sort == BY_ID || g_sort == BY_STATE)
        c = d > 0 ? 1 : d < 0 ? -1 : strcmp(x->k->id, y->k->id);
    return g_sort_reverse ? -c : c;
}

static void free_hist(top_state *t)
{
    free(t->pgen);
    free(t->preq);
    free(t->ptok);
    free(t->pns);
    free(t->pvalid);
    free(t->rreq);
    free(t->rtok);
    t->pgen = NULL;
    t->preq = t->ptok = t->pns = NULL;
    t->pvalid = NULL;
    t->rreq = t->rtok = NULL;
    t->cap = 0;
}

/* Read the segment (following it by name) and derive each key's rates
 * from the previous reading. */
static void refresh_data(top_state *t)
{
    int changed;
    if (t->have)
        collect_free(&t->cur);
    t->have = 0;
    if (watch_attach(&t->w, &changed) != 0)
        return;
    int rc = collect(t->w.env, 0, &t->cur);
    if (rc != KM_OK) {
        snprintf(t->w.why, sizeof t->w.why, "segment '%s': %s", t->w.name, err_text(rc, errno));
        watch_detach(&t->w);
        return;
    }
    t->have = 1;
    if (changed || t->cur.info.cap_keys > t->cap) {
        /* A new segment (or a first reading): no earlier counts. */
        uint32_t cap = t->cur.info.cap_keys;
        free_hist(t);
        t->pgen = calloc(cap, sizeof *t->pgen);
        t->preq = calloc(cap, sizeof *t->preq);
        t->ptok = calloc(cap, sizeof *t->ptok);
        t->pns = calloc(cap, sizeof *t->pns);
        t->pvalid = calloc(cap, 1);
        t->rreq = calloc(cap, sizeof *t->rreq);
        t->rtok = calloc(cap, sizeof *t->rtok);
        if (t->pgen && t->preq && t->ptok && t->pns && t->pvalid && t->rreq && t->rtok)
            t->cap = cap;
        else
            free_hist(t);
    }
    for (uint32_t p = 0; p < t->cur.n_pools; p++)
        for (uint32_t i = 0; i < t->cur.pools[p].n_keys; i++) {
            const km_key_stats *k = &t->cur.pools[p].keys[i];
            int x = k->key;
            if (!below(x, t->cap))
                continue;
            t->rreq[x] = t->rtok[x] = -1;
            if (t->pvalid[x] && t->pgen[x] == k->gen && k->taken_ns > t->pns[x]) {
                double dt = (double)(k->taken_ns - t->pns[x]) / 1e9;
                t->rreq[x] = (double)(k->counters.requests - t->preq[x]) / dt;
                t->rtok[x] = (double)(k->counters.tokens - t->ptok[x]) / dt;
            }
            t->pvalid[x] = 1;
            t->pgen[x] = k->gen;
            t->preq[x] = k->counters.requests;
            t->ptok[x] = k->counters.tokens;
            t->pns[x] = k->taken_ns;
        }
    if (t->pool >= t->cur.n_pools)
        t->pool = 0;
}

/* Rows of the shown pool, sorted; the pool's rates summed. */
static row *make_rows(const top_state *t, const pool_view *v, double *req_s, double *tok_s)
{
    row *r = calloc(v->n_keys ? v->n_keys : 1, sizeof *r);
    int have_rates = 0;
    *req_s = *tok_s = 0;
    if (!r)
        return NULL;
    for (uint32_t i = 0; i < v->n_keys; i++) {
        const km_key_stats *k = &v->keys[i];
        r[i].k = k;
        r[i].req_s = below(k->key, t->cap) ? t->rreq[k->key] : -1;
        r[i].tok_s = below(k->key, t->cap) ? t->rtok[k->key] : -1;
        if (r[i].req_s >= 0) {
            *req_s += r[i].req_s;
            *tok_s += r[i].tok_s;
            have_rates = 1;
        }
        for (int w = 0; w < KM_WIN_COUNT; w++)
            if (k->windows[w].burst) {
                double u = (double)k->windows[w].used / (double)k->windows[w].burst;
                if (u > r[i].use)
                    r[i].use = u;
            }
    }
    if (!have_rates)
        *req_s = *tok_s = -1;
    g_sort = t->sort;
    g_sort_reverse = t->reverse;
    qsort(r, v->n_keys, sizeof *r, row_cmp);
    return r;
}

/* ------------------------------------------------------------- drawing */

enum col { C_KEY, C_STATE, C_INFL, C_REQ, C_TOK, C_COOL, C_WIN0, C_COUNT = C_WIN0 + KM_WIN_COUNT };

static void fmt_rate(double v, char *b, size_t n)
{
    if (v < 0)
        snprintf(b, n, "-");
    else if (v >= 1e6)
        snprintf(b, n, "%.1fM", v / 1e6);
    else if (v >= 1e4)
        snprintf(b, n, "%.0fk", v / 1e3);
    else
        snprintf(b, n, "%.1f", v);
}

/* A bar of used/burst in `w` cells: "####......" then the percentage
 * where it fits. */
static void bar(const km_window_stats *x, int w, char *b)
{
    if (!x->limit) {
        snprintf(b, (size_t)w + 1, "%-*s", w, "-");
        return;
    }
    double u = x->burst ? (double)x->used / (double)x->burst : 0;
    unsigned pct = u >= 1 ? 100 : (unsigned)(u * 100 + 0.5);
    int cells = w > 8 ? w - 5 : w;
    int fill = (int)(u * cells + 0.5);
    if (fill > cells)
        fill = cells;
    for (int i = 0; i < cells; i++)
        b[i] = i < fill ? '#' : '.';
    if (w > 8)
        snprintf(b + cells, 6, " %3u%%", pct % 1000);
    b[w] = '\0';
}

static void draw(top_state *t)
{
    int H, W;
    getmaxyx(stdscr, H, W);
    erase();
    char head[512], tm[16];
    time_t now = time(NULL);
    strftime(tm, sizeof tm, "%H:%M:%S", localtime(&now));
    if (!t->have) {
        mvaddnstr(0, 0, "kmctl top", W);
        mvaddnstr(1, 0, t->w.why, W);
        mvaddnstr(2, 0, "waiting for it to come back", W);
        mvaddnstr(H - 1, 0, "q quit", W);
        refresh();
        return;
    }
    const pool_view *v = &t->cur.pools[t->pool];
    const km_pool_stats *p = &v->ps;
    double req_s, tok_s;
    row *rows = make_rows(t, v, &req_s, &tok_s);

    snprintf(head, sizeof head, "%s  pool %s (%u/%u)  %s", t->w.name, p->name, t->pool + 1,
             t->cur.n_pools, tm);
    attron(A_BOLD);
    mvaddnstr(0, 0, head, W);
    attroff(A_BOLD);
    char rq[16], tk[16];
    fmt_rate(rows ? req_s : -1, rq, sizeof rq);
    fmt_rate(rows ? tok_s : -1, tk, sizeof tk);
    int n = snprintf(head, sizeof head, "keys %" PRIu32 ":", p->n_keys);
    for (int s = 0; s < KM_KEY_STATE_COUNT; s++)
        if (p->keys_by_state[s])
            n += snprintf(head + n, sizeof head - (size_t)n, " %" PRIu32 " %s",
                          p->keys_by_state[s], km_key_state_name(s));
    snprintf(head + n, sizeof head - (size_t)n,
             "  infl %" PRIu32 "/%" PRIu32 "  req/s %s  tok/s %s  wait %" PRIu32, p->inflight,
             p->max_inflight, rq, tk, p->waiters);
    mvaddnstr(1, 0, head, W);
    n = snprintf(head, sizeof head, "total req %" PRIu64 "  ok %" PRIu64 "  429 %" PRIu64
                 "  fail %" PRIu64, p->counters.requests, p->counters.outcomes[KM_OUT_SUCCESS],
                 p->counters.outcomes[KM_OUT_RATE_LIMITED],
                 p->counters.outcomes[KM_OUT_FAILURE] + p->counters.outcomes[KM_OUT_AUTH] +
                     p->counters.outcomes[KM_OUT_QUOTA]);
    if (p->budget_microusd || p->spent_microusd) {
        char u1[32], u2[32];
        fmt_usd(p->spent_microusd, u1, sizeof u1);
        n += snprintf(head + n, sizeof head - (size_t)n, "  spent $%s", u1);
        if (p->budget_microusd) {
            fmt_usd(p->budget_microusd, u2, sizeof u2);
            snprintf(head + n, sizeof head - (size_t)n, " of $%s", u2);
        }
    }
    mvaddnstr(2, 0, head, W);

    /* Columns by priority, as many as the width holds. */
    int idw = 3;
    for (uint32_t i = 0; i < v->n_keys; i++) {
        int l = (int)strlen(v->keys[i].id);
        if (l > idw)
            idw = l;
    }
    if (idw > 20)
        idw = 20;
    int width[C_COUNT] = {idw, 9, 7, 7, 8, 7}; /* COOL_MS: up to 3600000 */
    const char *title[C_COUNT] = {"KEY", "STATE", "INFL", "REQ/S", "TOK/S", "COOL_MS"};
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        width[C_WIN0 + w] = 14;
        title[C_WIN0 + w] = NULL;
    }
    static const int prio[C_COUNT] = {C_KEY, C_STATE, C_REQ, C_INFL, C_WIN0 + KM_WIN_RPM,
                                      C_WIN0 + KM_WIN_TPM, C_TOK, C_COOL, C_WIN0 + KM_WIN_RPH,
                                      C_WIN0 + KM_WIN_RPD, C_WIN0 + KM_WIN_TPH,
                                      C_WIN0 + KM_WIN_TPD};
    int show[C_COUNT] = {0}, used = 0;
    char wt[KM_WIN_COUNT][8];
    for (int i = 0; i < C_COUNT; i++) {
        int c = prio[i];
        if (c >= C_WIN0 && !p->keys_limited[c - C_WIN0])
            continue;
        if (c >= C_WIN0) {
            snprintf(wt[c - C_WIN0], sizeof wt[0], "%s", km_window_name(c - C_WIN0));
            for (char *s = wt[c - C_WIN0]; *s; s++)
                *s = (char)(*s - 32 * (*s >= 'a' && *s <= 'z'));
            title[c] = wt[c - C_WIN0];
        }
        int need = width[c] + (used ? 1 : 0);
        if (used + need > W) {
            if (c == C_KEY || (c == C_STATE && W - used > 2)) {
                width[c] = W - used - (used ? 1 : 0);
                need = W - used;
            } else {
                continue;
            }
        }
        show[c] = 1;
        used += need;
    }
    int y = 4, x = 0;
    attron(A_REVERSE);
    mvhline(3, 0, ' ', W);
    for (int c = 0; c < C_COUNT; c++) {
        if (!show[c])
            continue;
        char cell[64];
        int sorted = (c == C_KEY && t->sort == BY_ID) || (c == C_STATE && t->sort == BY_STATE) ||
                     (c == C_INFL && t->sort == BY_INFL) || (c == C_REQ && t->sort == BY_REQ) ||
                     (c == C_TOK && t->sort == BY_TOK) || (c == C_COOL && t->sort == BY_COOL);
        snprintf(cell, sizeof cell, "%s%s", title[c], sorted ? (t->reverse ? "^" : "v") : "");
        mvaddnstr(3, x, cell, width[c]);
        x += width[c] + 1;
    }
    attroff(A_REVERSE);

    int rows_fit = H - 5;
    if (rows_fit < 1)
        rows_fit = 1;
    int maxscroll = (int)v->n_keys - rows_fit;
    if (t->scroll > maxscroll)
        t->scroll = maxscroll;
    if (t->scroll < 0)
        t->scroll = 0;
    for (uint32_t i = (uint32_t)t->scroll; rows && i < v->n_keys && y < H - 1; i++, y++) {
        const km_key_stats *k = rows[i].k;
        x = 0;
        for (int c = 0; c < C_COUNT; c++) {
            if (!show[c])
                continue;
            char cell[64];
            switch (c) {
            case C_KEY: snprintf(cell, sizeof cell, "%s", k->id); break;
            case C_STATE: snprintf(cell, sizeof cell, "%s", km_key_state_name(k->state)); break;
            case C_INFL:
                snprintf(cell, sizeof cell, "%" PRIu32 "/%" PRIu32, k->inflight, k->max_inflight);
                break;
            case C_REQ: fmt_rate(rows[i].req_s, cell, sizeof cell); break;
            case C_TOK: fmt_rate(rows[i].tok_s, cell, sizeof cell); break;
            case C_COOL:
                if (k->cooldown_remaining_ms)
                    snprintf(cell, sizeof cell, "%" PRIu64, k->cooldown_remaining_ms);
                else
                    snprintf(cell, sizeof cell, "-");
                break;
            default: bar(&k->windows[c - C_WIN0], width[c] < 63 ? width[c] : 63, cell);
            }
            int attr = c == C_STATE && k->state != KM_KEY_ACTIVE ? A_BOLD : 0;
            if (attr)
                attron(attr);
            mvaddnstr(y, x, cell, width[c]);
            if (attr)
                attroff(attr);
            x += width[c] + 1;
        }
    }
    char foot[160];
    snprintf(foot, sizeof foot, "q quit  TAB pool  s sort:%s  r reverse  %d-%d of %" PRIu32,
             sort_name[t->sort], v->n_keys ? t->scroll + 1 : 0,
             t->scroll + (y - 4), v->n_keys);
    attron(A_REVERSE);
    mvhline(H - 1, 0, ' ', W);
    mvaddnstr(H - 1, 0, foot, W);
    attroff(A_REVERSE);
    free(rows);
    refresh();
}

/* ---------------------------------------------------------------- main */

typedef struct top_opts {
    const char *pool;
    opt_u32 interval;
} top_opts;

static const opt_spec top_optv[] = {
    OPT_STR("pool", 'p', 1, top_opts, pool),
    OPT_U32("interval", 'i', 1, top_opts, interval, 1, 3600),
};

const cmd_syntax top_syntax = {usage_top, "NAME", top_optv, N_OPTS(top_optv)};

int cmd_top(int argc, char **argv)
{
    top_opts o = {NULL, {1, 0}};
    top_state t;
    int rc;

    if ((rc = parse_args(&top_syntax, argc, argv, &o)) >= 0)
        return rc;
    memset(&t, 0, sizeof t);
    if (watch_init(&t.w, argv[optind]) != 0)
        return usage_error("NAME: '%s' is not a segment name", argv[optind]);
    t.interval_s = o.interval.v;
    t.sort = BY_ID;
    if (!isatty(STDOUT_FILENO) || !isatty(STDIN_FILENO)) {
        errline("standard input and output must be a terminal (try `kmctl stats`)");
        return EX_FAILED;
    }
    /* The segment and the pool must exist at the start: a typo is an
     * error, not an empty screen.  Later they may vanish and come back. */
    if (watch_attach(&t.w, NULL) != 0) {
        km_env *e;
        return open_seg(t.w.name, &e); /* the same error as every command */
    }
    if (o.pool) {
        int p = km_pool_find(t.w.env, o.pool);
        if (p < 0) {
            errline("pool '%s': %s", o.pool, km_strerror(p));
            watch_detach(&t.w);
            return exit_for(p);
        }
        t.pool = (uint32_t)p;
    }
    setlocale(LC_ALL, "");
    if (!initscr()) {
        errline("cannot initialise the terminal");
        watch_detach(&t.w);
        return EX_FAILED;
    }
    cbreak();
    noecho();
    keypad(stdscr, TRUE);
    curs_set(0);
    timeout(100);
    uint64_t next = 0;
    for (int quit = 0; !quit;) {
        uint64_t now = km_now_ns();
        int redraw = 0;
        if (now >= next) {
            refresh_data(&t);
            next = now + (uint64_t)t.interval_s * 1000000000u;
            redraw = 1;
        }
        int ch = getch();
        uint32_t np = t.have ? t.cur.n_pools : 1;
        switch (ch) {
        case 'q':
        case 'Q':
            quit = 1;
            break;
        case '\t':
        case 'n':
        case KEY_RIGHT:
            t.pool = (t.pool + 1) % np;
            t.scroll = 0;
            redraw = 1;
            break;
        case 'p':
        case KEY_BTAB:
        case KEY_LEFT:
            t.pool = (t.pool + np - 1) % np;
            t.scroll = 0;
            redraw = 1;
            break;
        case 's':
            t.sort = (t.sort + 1) % BY_COUNT;
            redraw = 1;
            break;
        case 'r':
            t.reverse = !t.reverse;
            redraw = 1;
            break;
        case KEY_DOWN:
            t.scroll++;
            redraw = 1;
            break;
        case KEY_UP:
            t.scroll--;
            redraw = 1;
            break;
        case KEY_NPAGE:
            t.scroll += LINES - 5;
            redraw = 1;
            break;
        case KEY_PPAGE:
            t.scroll -= LINES - 5;
            redraw = 1;
            break;
        case KEY_RESIZE:
            redraw = 1;
            break;
        default:
            break;
        }
        /* Keys redraw from the last reading (its rates were derived when
         * it was taken); only the timer reads the segment again. */
        if (redraw && !quit)
            draw(&t);
    }
    endwin();
    if (t.have)
        collect_free(&t.cur);
    watch_detach(&t.w);
    free_hist(&t);
    return EX_SUCCESS;
}
