/*
 * tests/fuzz/fuzz_attach.c - libFuzzer target: attach to a segment made of
 * the input's bytes, and if that succeeds, run every read path on it.
 *
 * The input is written to a fresh POSIX shared-memory object of exactly its
 * size, which km_open() (or km_open_flags(KM_OPEN_NO_REAP)) then attaches
 * to.  Seeds are real segments made by km_create() (tests/fuzz/mkseeds.c),
 * so the header passes the magic/format/layout checks and the mutations
 * land in the body: what another process could have corrupted.
 *
 * The rule under test (issue 7): no value read from the segment may make
 * the library read or write outside it.  To see an access just past the
 * mapping, every file mapping the library makes is placed between two
 * PROT_NONE guard pages (the library's mmap/munmap calls are wrapped at
 * link time: -Wl,--wrap=mmap,--wrap=munmap); ASan reports the SEGV.
 *
 * Two bytes of header padding that the library never reads choose what the
 * harness does (so they mutate with the input): hdr.pad0 bit 0 attaches
 * with KM_OPEN_NO_REAP; hdr.pad1 chooses the strategy, the token estimate,
 * a model, a pinned key, the outcome of the release, and (bits 29-30) one
 * reconfiguration of a key (weight, remove, limits).
 *
 * Oracles besides the sanitizers: strings handed out (key ids, masked
 * secrets, metadata, lease fields, usage events) are NUL-terminated inside
 * their arrays; a lease names a key and slot inside the segment and a
 * secret whose length is secret_len; km_snapshot_json() gives valid JSON;
 * no secret of the segment (8 bytes or more) appears in km_check lines or
 * the snapshot, unless the same text is also in a field that is shown
 * (an id, metadata, a name).  The in-flight flags (one byte per lease slot,
 * a line-rounded row per key after the lease slots): a key's in-flight
 * count never exceeds its usable slots, and when attached without a reap
 * it is exactly the number of non-zero flag bytes among those slots in the
 * input, whatever their values or the padding after them.
 *
 * KM_FUZZ_SKIP_KNOWN=1 in the environment repairs, before attaching, the
 * fields behind bugs found earlier that lie outside the files of this
 * work (see tests/fuzz/README.md), so that fuzzing gets past them.
 */

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#define FUZZ_NAME "attach"
#include "fuzz_common.h"
#include "internal.h"

/* ------------------------------------------------------------ guard pages */

void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int __real_munmap(void *addr, size_t len);

#define GUARDS 16
static struct {
    char *user, *base;
    size_t total;
} guards[GUARDS];

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (addr || fd < 0 || (flags & MAP_FIXED))
        return __real_mmap(addr, len, prot, flags, fd, off);
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t rl = (len + pg - 1) / pg * pg, total = rl + 2 * pg;
    char *base = __real_mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return MAP_FAILED;
    void *p = __real_mmap(base + pg, len, prot, flags | MAP_FIXED, fd, off);
    if (p == MAP_FAILED) {
        int e = errno;
        __real_munmap(base, total);
        errno = e;
        return MAP_FAILED;
    }
    for (int i = 0; i < GUARDS; i++)
        if (!guards[i].user) {
            guards[i].user = p;
            guards[i].base = base;
            guards[i].total = total;
            break;
        }
    return p;
}

int __wrap_munmap(void *addr, size_t len);
int __wrap_munmap(void *addr, size_t len)
{
    for (int i = 0; i < GUARDS; i++)
        if (guards[i].user == addr) {
            guards[i].user = NULL;
            return __real_munmap(guards[i].base, guards[i].total);
        }
    return __real_munmap(addr, len);
}

/* ------------------------------------------------------------ oracles */

static int terminated(const char *s, size_t n) { return memchr(s, 0, n) != NULL; }

/* Secrets of the input segment, and the text of its shown fields. */
typedef struct seen {
    char secrets[16][KM_SECRET_MAX + 1];
    int n;
    const uint8_t *seg;
    size_t size;
} seen;

static void collect_secrets(seen *s, const uint8_t *data, size_t size)
{
    const km__hdr *h = (const km__hdr *)(const void *)data;
    s->n = 0;
    s->seg = data;
    s->size = size;
    if (size < sizeof(km__hdr) || h->off_keys > size || h->off_keys % KM__LINE)
        return;
    for (uint32_t ki = 0; ki < h->cap_keys && s->n < 16; ki++) {
        uint64_t off = h->off_keys + (uint64_t)ki * sizeof(km__key);
        if (off + sizeof(km__key) > size)
            break;
        const km__key *k = (const km__key *)(const void *)(data + off);
        size_t n = strnlen(k->secret, KM_SECRET_MAX);
        if (n >= 8) {
            memcpy(s->secrets[s->n], k->secret, n);
            s->secrets[s->n][n] = '\0';
            s->n++;
        }
    }
}

/* Is `t` anywhere in the segment outside the secret arrays?  Then showing
 * it is no leak (an id or metadata may hold the same text). */
static int shown_elsewhere(const seen *s, const char *t)
{
    const km__hdr *h = (const km__hdr *)(const void *)s->seg;
    size_t n = strlen(t);
    const uint8_t *p = s->seg, *end = s->seg + s->size;
    while ((p = memmem(p, (size_t)(end - p), t, n)) != NULL) {
        uint64_t off = (uint64_t)(p - s->seg);
        int in_secret = 0;
        if (off >= h->off_keys) {
            uint64_t r = (off - h->off_keys) % sizeof(km__key);
            uint64_t ki = (off - h->off_keys) / sizeof(km__key);
            in_secret = ki < h->cap_keys && r >= offsetof(km__key, secret) &&
                        r < offsetof(km__key, secret) + KM_SECRET_MAX + 1;
        }
        if (!in_secret)
            return 1;
        p++;
    }
    return 0;
}

static void no_secret_in(const seen *s, const char *text, const char *where)
{
    for (int i = 0; i < s->n; i++)
        if (strstr(text, s->secrets[i]) && !shown_elsewhere(s, s->secrets[i]))
            FAIL("a secret of the segment appears in %s: %s", where, text);
}

static seen g_seen;

static void on_check(void *ctx, const char *line)
{
    (void)ctx;
    if (!line || strlen(line) >= 512)
        FAIL("km_check line missing or too long");
    no_secret_in(&g_seen, line, "a km_check line");
}

/* In-flight flags of key `key` in the input (attach validated the header
 * and took it unchanged): its usable slots, min(max_inflight,
 * cap_inflight), and how many of their flag bytes are non-zero.  The
 * library reads the row eight bytes at a time; this reads it one by one. */
static uint32_t input_inflight(const uint8_t *seg, const km__hdr *h, uint32_t key,
                               uint32_t *slots)
{
    const km__key *k = (const km__key *)(const void *)(seg + h->off_keys) + key;
    const uint8_t *fl = seg + h->off_busy + (uint64_t)key * km__busy_stride(h->cap_inflight);
    uint32_t n = 0;
    *slots = k->max_inflight < h->cap_inflight ? k->max_inflight : h->cap_inflight;
    for (uint32_t s = 0; s < *slots; s++)
        n += fl[s] != 0;
    return n;
}

/* -------------------------------------------------- known-bug repairs */

static int skip_known;

/* Set in LLVMFuzzerInitialize from KM_FUZZ_SKIP_KNOWN.  Each repair undoes
 * the corruption behind one bug found earlier in a file outside this work
 * (tests/fuzz/README.md, "Findings"), making the field what the library
 * assumes, so the fuzzer can look for the next one.  Remove a repair once
 * its bug is fixed; its reproducer (tests/fuzz/known/) then moves into the
 * corpus as a regression input. */
static void repair_known(uint8_t *data, size_t size)
{
    km__hdr hh; /* a copy: a repair may land in a header that offsets overlap */
    const km__hdr *h = &hh;
    if (size < sizeof(km__hdr))
        return;
    memcpy(&hh, data, sizeof hh);
    /* Offsets that are not multiples of a line are refused at attach
     * anyway; skipping them keeps the structs below aligned. */
    if (!skip_known || size < sizeof(km__hdr) || h->magic != KM__MAGIC ||
        h->cap_inflight == 0 || h->cap_inflight > KM_INFLIGHT_MAX ||
        h->cap_keys > KM_KEYS_MAX ||
        (h->off_keys | h->off_pools | h->off_models | h->off_members) % KM__LINE)
        return;
    for (uint32_t ki = 0; ki < h->cap_keys; ki++) {
        uint64_t off = h->off_keys + (uint64_t)ki * sizeof(km__key);
        if (off > size || size - off < sizeof(km__key))
            break;
        km__key *k = (km__key *)(void *)(data + off);
        /* K1: max_inflight above cap_inflight (the key's in-flight flag
         * row and lease row). */
        if (k->max_inflight > h->cap_inflight)
            k->max_inflight = h->cap_inflight;
        /* K2: secret_len / meta_len copied into the lease unchecked. */
        k->secret[KM_SECRET_MAX] = k->meta[KM_META_MAX] = '\0';
        k->secret_len = (uint32_t)strlen(k->secret);
        k->meta_len = (uint32_t)strlen(k->meta);
        /* K3: an id without its NUL is copied into lease.key_id without one. */
        k->id[KM_ID_MAX] = '\0';
        /* K4: a limited window with emission 0 divides by zero (readers). */
        for (int w = 0; w < KM_WIN_COUNT; w++)
            if (k->emission_ns[w] == 0)
                k->emission_ns[w] = 1;
        /* K11: the latency EMA in signed arithmetic overflows at >= 2^63. */
        if (k->latency_ema_ns >> 62)
            k->latency_ema_ns >>= 2;
        /* K6: a key's pool index is used unchecked by remove / set-weight. */
        if (h->n_pools && k->pool >= h->n_pools)
            k->pool = 0;
    }
    if (h->cap_pools > KM_POOLS_MAX || h->cap_models > KM_MODELS_MAX)
        return;
    for (uint32_t p = 0; p < h->cap_pools; p++) {
        uint64_t off = h->off_pools + (uint64_t)p * sizeof(km__pool);
        if (off > size || size - off < sizeof(km__pool))
            break;
        km__pool *pl = (km__pool *)(void *)(data + off);
        /* K8: cooldown_s 0 makes the 429 backoff loop spin up to 2^32 times. */
        if (pl->cooldown_s == 0)
            pl->cooldown_s = 1;
        for (uint32_t m = 0; m < h->cap_models; m++) {
            uint64_t mo = h->off_models + ((uint64_t)p * h->cap_models + m) * sizeof(km__model);
            if (mo > size || size - mo < sizeof(km__model))
                break;
            km__model *md = (km__model *)(void *)(data + mo);
            for (int w = 0; w < KM_WIN_COUNT; w++) /* K4, per-model windows */
                if (md->emission_ns[w] == 0)
                    md->emission_ns[w] = 1;
            /* K9: km_model_info_get copies the name without its NUL. */
            md->name[KM_ID_MAX] = '\0';
        }
        /* K5: member key indices (and the price order) are used unchecked
         * by acquire. */
        for (uint32_t i = 0; i < 2 * h->cap_keys; i++) {
            uint64_t mo = h->off_members + ((uint64_t)p * 2 * h->cap_keys + i) * sizeof(km__member);
            if (mo > size || size - mo < sizeof(km__member))
                break;
            km__member *mb = (km__member *)(void *)(data + mo);
            if (mb->key >= h->cap_keys)
                mb->key %= h->cap_keys;
            if (mb->by_cost >= h->cap_keys)
                mb->by_cost %= h->cap_keys;
        }
    }
}

/* ------------------------------------------------------------ the target */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *s = getenv("KM_FUZZ_SKIP_KNOWN");
    skip_known = s && *s == '1';
    return 0;
}

static int on_usage(void *ctx, const km_usage_event *ev)
{
    (void)ctx;
    if (!terminated(ev->pool, sizeof ev->pool) || !terminated(ev->key_id, sizeof ev->key_id) ||
        !terminated(ev->model, sizeof ev->model))
        FAIL("usage event string not terminated");
    no_secret_in(&g_seen, ev->key_id, "a usage event");
    return 0;
}

static void read_paths(km_env *e, const km__hdr *hdr, uint32_t knobs)
{
    km_info info;
    char *snap = NULL;

    if (km_info_get(e, &info) != KM_OK)
        FAIL("km_info_get");
    uint32_t n_pools = info.n_pools < KM_POOLS_MAX ? info.n_pools : KM_POOLS_MAX;
    for (uint32_t p = 0; p < n_pools; p++) {
        km_pool_info pi;
        if (km_pool_info_get(e, (int)p, &pi) != KM_OK)
            continue;
        if (!terminated(pi.name, sizeof pi.name))
            FAIL("pool name not terminated");
        (void)km_pool_find(e, pi.name);
        (void)km_key_find(e, (int)p, "fuzz-key");
        uint32_t nk = pi.n_keys < info.cap_keys + 1 ? pi.n_keys : info.cap_keys + 1;
        for (uint32_t i = 0; i < nk && i < 256; i++) {
            int key = km_pool_key(e, (int)p, i);
            if (key < 0)
                continue;
            if ((uint32_t)key >= info.cap_keys)
                FAIL("km_pool_key %d beyond cap_keys %u", key, info.cap_keys);
            km_key_info ki;
            if (km_key_info_get(e, key, &ki) == KM_OK) {
                if (!terminated(ki.id, sizeof ki.id) ||
                    !terminated(ki.secret_masked, sizeof ki.secret_masked) ||
                    !terminated(ki.meta, sizeof ki.meta))
                    FAIL("key info string not terminated");
                no_secret_in(&g_seen, ki.secret_masked, "a masked secret");
                /* Nothing has acquired or released yet; without a reap at
                 * attach the flags are the input's. */
                uint32_t slots, want = input_inflight(g_seen.seg, hdr, (uint32_t)key, &slots);
                if (ki.inflight > slots)
                    FAIL("key %d: in-flight %u above its %u usable slots", key, ki.inflight, slots);
                if ((hdr->pad0 & 1) && ki.inflight != want)
                    FAIL("key %d: in-flight %u but %u flags set in the input", key, ki.inflight,
                         want);
            }
            uint32_t nm = pi.n_models < KM_MODELS_MAX ? pi.n_models : KM_MODELS_MAX;
            for (uint32_t m = 0; m < nm; m++) {
                char name[KM_ID_MAX + 1];
                km_limit_info lim[KM_WIN_COUNT];
                if (km_model_info_get(e, (int)p, (int)m, key, name, lim) != KM_OK)
                    break;
                if (!terminated(name, sizeof name))
                    FAIL("model name not terminated");
            }
        }
    }
    km_epoch_info ei;
    (void)km_epoch_info_get(e, &ei);
    for (uint32_t s = 0; s < info.cap_procs && s < 64; s++) {
        km_proc_info pr;
        km_reader_info ri;
        (void)km_proc_info_get(e, s, &pr);
        for (uint32_t r = 0; r < KM__RDR_PER_PROC; r++)
            (void)km_reader_info_get(e, s, r, &ri);
    }

    (void)km_check(e, on_check, NULL);
    km_usage_report ur;
    (void)km_usage_drain(e, on_usage, NULL, &ur);

    if (km_snapshot_json(e, &snap) == KM_OK) {
        json_error_t je;
        json_t *j = json_loads(snap, 0, &je);
        if (!j)
            FAIL("snapshot is not JSON: %s", je.text);
        json_decref(j);
        no_secret_in(&g_seen, snap, "the snapshot");
        free(snap);
    }

    /* acquire and release on pool 0 */
    km_request rq;
    km_lease l;
    char model[KM_ID_MAX + 1];
    memset(&rq, 0, sizeof rq);
    rq.pool = 0;
    rq.strategy = (int)(knobs & 7);
    rq.tokens = (knobs >> 3) & 1 ? 0 : (knobs >> 4) & 0xff;
    if ((knobs >> 12) & 1 &&
        km_model_info_get(e, 0, 0, 0, model, NULL) == KM_OK && terminated(model, sizeof model))
        rq.model = model;
    char pin[KM_ID_MAX + 1];
    if ((knobs >> 13) & 1) {
        int k0 = km_pool_key(e, 0, 0);
        km_key_info ki;
        if (k0 >= 0 && km_key_info_get(e, (uint32_t)k0, &ki) == KM_OK) {
            memcpy(pin, ki.id, sizeof pin);
            rq.key_id = pin;
        }
    }
    for (int round = 0; round < 2; round++) {
        int rc = km_acquire(e, &rq, &l);
        if (rc != KM_OK)
            break;
        if (l.key < 0 || (uint32_t)l.key >= hdr->cap_keys || l.slot < 0 ||
            (uint32_t)l.slot >= hdr->cap_inflight)
            FAIL("lease key %d slot %d outside the segment", l.key, l.slot);
        if (!terminated(l.key_id, sizeof l.key_id) || !terminated(l.secret, sizeof l.secret) ||
            !terminated(l.meta, sizeof l.meta))
            FAIL("lease string not terminated");
        /* The library bounds and terminates what it copies; a corrupted
         * secret may hold a NUL before its stated length. */
        if (l.secret_len > KM_SECRET_MAX || l.secret[l.secret_len] != '\0' ||
            l.meta_len > KM_META_MAX)
            FAIL("lease secret_len %u (strlen %zu); meta_len %u", l.secret_len,
                 strlen(l.secret), l.meta_len);
        km_outcome o;
        memset(&o, 0, sizeof o);
        o.kind = (int)((knobs >> 14) % KM_OUT_COUNT);
        o.latency_us = -1;
        o.tokens = (knobs >> 17) & 1 ? -1 : (int64_t)((knobs >> 18) & 0xff);
        o.retry_after_s = (knobs >> 26) & 1 ? 2.5 : 0;
        if ((knobs >> 27) & 1) {
            o.view_flags = KM_VIEW_REQUESTS | KM_VIEW_TOKENS;
            o.requests_remaining = 3;
            o.tokens_remaining = 100;
            o.requests_reset_ms = 1000;
            o.tokens_reset_ms = 60000;
        }
        (void)km_release(e, &l, (knobs >> 28) & 1 ? NULL : &o);
        (void)km_release(e, &l, &o); /* stale */
    }
    /* Reconfiguration of the first member of pool 0 (admin lock, grace
     * periods: waits cut short). */
    if ((knobs >> 29) & 3) {
        int k0 = km_pool_key(e, 0, 0);
        km_set_admin_timeout(e, 1);
        if (k0 >= 0 && ((knobs >> 29) & 3) == 1)
            (void)km_key_set_weight(e, (uint32_t)k0, 2);
        else if (k0 >= 0 && ((knobs >> 29) & 3) == 2)
            (void)km_key_remove(e, (uint32_t)k0);
        else if (k0 >= 0)
            (void)km_key_set_limits(e, (uint32_t)k0, "{\"rpm\": 7}", NULL, 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[64];
    snprintf(name, sizeof name, "/kmfz-%d", (int)getpid());
    shm_unlink(name);

    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    repair_known(copy, size);

    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
        free(copy);
        return 0;
    }
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, copy + done, size - done);
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    close(fd);

    km__hdr hdr;
    memset(&hdr, 0, sizeof hdr);
    memcpy(&hdr, copy, size < sizeof hdr ? size : sizeof hdr);
    collect_secrets(&g_seen, copy, size);

    km_env *e = NULL;
    int rc = (hdr.pad0 & 1) ? km_open_flags(name + 1, KM_OPEN_NO_REAP, &e)
                            : km_open(name + 1, &e);
    if (rc == KM_OK) {
        if (!e)
            FAIL("KM_OK without a handle");
        read_paths(e, &hdr, hdr.pad1);
        km_close(e);
    } else if (e) {
        FAIL("error %d with a handle", rc);
    }
    km_unlink(name + 1);
    free(copy);
    return 0;
}
