/*
 * tests/fuzz/mkseeds.c - write the seed corpus of fuzz_attach: real
 * segments made by km_create(), in a few states, copied byte for byte from
 * /dev/shm, and snapshots of some of them for fuzz_restore.  Usage:
 * mkseeds ATTACH-DIR RESTORE-DIR.  Capacities are small so that each seed
 * is a few tens of kilobytes.  tests/fuzz/derive.sh then derives inputs
 * from these with segedit.py.
 */

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

static const char *outdir, *restoredir;
static unsigned char snapkey[KM_SNAPSHOT_KEY_BYTES];

static void die(const char *what, int rc)
{
    fprintf(stderr, "mkseeds: %s: %s\n", what, km_strerror(rc));
    exit(1);
}

static km_env *make(const char *name, const char *json)
{
    km_config *cfg;
    km_env *e;
    char err[256];
    int rc = km_config_parse(json, strlen(json), name, &cfg, err, sizeof err);
    if (rc)
        die(err, rc);
    km_unlink(name);
    if ((rc = km_create(name, cfg, 0600, &e)))
        die("create", rc);
    km_config_free(cfg);
    return e;
}

/* Copy the object's bytes; `edit` may change them first (in the copy). */
static void dump(const char *name, const char *file, void (*edit)(uint8_t *, size_t))
{
    char path[512], shm[256];
    snprintf(shm, sizeof shm, "/dev/shm/%s", name);
    snprintf(path, sizeof path, "%s/%s", outdir, file);
    int fd = open(shm, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st))
        die("open shm", KM_ESYS);
    uint8_t *buf = malloc((size_t)st.st_size);
    if (read(fd, buf, (size_t)st.st_size) != st.st_size)
        die("read shm", KM_ESYS);
    close(fd);
    if (edit)
        edit(buf, (size_t)st.st_size);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size || fclose(f))
        die(path, KM_ESYS);
    free(buf);
    printf("%s: %lld bytes\n", path, (long long)st.st_size);
}

/* A snapshot with encrypted secrets (key: 32 bytes of 0x42), for the
 * restore target. */
static void snap(km_env *e, const char *file)
{
    char path[512], *js = NULL;
    int rc = km_snapshot_json_ex(e, KM_SNAPSHOT_SECRETS, snapkey, &js);
    if (rc)
        die("snapshot", rc);
    snprintf(path, sizeof path, "%s/%s", restoredir, file);
    FILE *f = fopen(path, "w");
    if (!f || fputs(js, f) < 0 || fclose(f))
        die(path, KM_ESYS);
    printf("%s: %zu bytes\n", path, strlen(js));
    free(js);
}

/* A child attaches, takes `n` leases and dies without detaching. */
static void die_holding(const char *name, int pool, int n, uint32_t tokens)
{
    pid_t pid = fork();
    if (pid == 0) {
        km_env *c;
        if (km_open(name, &c))
            _exit(1);
        km_request rq = {.pool = pool, .tokens = tokens};
        km_lease l;
        for (int i = 0; i < n; i++)
            km_acquire(c, &rq, &l);
        _exit(0);
    }
    waitpid(pid, NULL, 0);
}

/* The first held lease slot left mid-acquire (ADMITTING). */
static void edit_admitting(uint8_t *b, size_t size)
{
    km__hdr *h = (km__hdr *)(void *)b;
    km__lease *ls = (km__lease *)(void *)(b + h->off_leases);
    for (size_t i = 0; i < (size_t)h->cap_keys * h->cap_inflight; i++)
        if (ls[i].owner && (uint8_t *)&ls[i] < b + size) {
            ls[i].phase = KM__LP_ADMITTING;
            return;
        }
}

/* Leases taken and released by a second thread: their usage events go to
 * ring 1 of the process slot (ring 0 is the first acquiring thread's).
 * Pool 1: pool 0's keys are cooling by then. */
static void *second_thread(void *arg)
{
    km_env *e = arg;
    km_request rq = {.pool = 1, .tokens = 10};
    km_outcome o = {.kind = KM_OUT_SUCCESS, .latency_us = 500, .tokens = 8,
                    .input_tokens = -1, .output_tokens = -1};
    km_lease l;
    for (int i = 0; i < 3; i++)
        if (km_acquire(e, &rq, &l) == KM_OK)
            km_release(e, &l, &o);
    return NULL;
}

static const char *cfg_basic =
    "{\"capacity\": {\"keys\": 4, \"processes\": 4, \"pools\": 2, \"inflight_per_key\": 8, \"usage_events\": 8,"
    " \"models\": 2},"
    " \"pools\": [{\"name\": \"openai\", \"strategy\": \"round_robin\","
    "  \"limits\": {\"rpm\": {\"limit\": 600, \"burst\": 20}, \"tpm\": {\"limit\": 240000, \"burst\": 5000}},"
    "  \"keys\": [{\"id\": \"key-a\", \"secret\": \"sk-demo-aaaa1111\", \"meta\": {\"org\": \"org-1\"}},"
    "            {\"id\": \"key-b\", \"secret\": \"sk-demo-bbbb2222\", \"weight\": 3}]},"
    "  {\"name\": \"anthropic\", \"strategy\": \"least_busy\","
    "   \"keys\": [{\"id\": \"ant-1\", \"secret\": \"sk-ant-api03-cccc3333\","
    "              \"limits\": {\"rph\": 100, \"tph\": {\"limit\": 100000, \"mode\": \"sliding\"}}}]}]}";

static const char *cfg_models =
    "{\"capacity\": {\"keys\": 3, \"processes\": 2, \"pools\": 1, \"inflight_per_key\": 8, \"usage_events\": 8,"
    " \"models\": 2},"
    " \"pools\": [{\"name\": \"openai\", \"strategy\": \"weighted\", \"model_limits\": \"per_model\","
    "  \"models\": {\"gpt-4o\": {\"rpm\": 500, \"tpm\": {\"limit\": 30000, \"mode\": \"sliding\"}},"
    "              \"gpt-4o-mini\": {}},"
    "  \"limits\": {\"rpm\": 60, \"tpd\": 1000000},"
    "  \"price\": {\"input_per_1k\": 0.0025, \"output_per_1k\": 0.01},"
    "  \"budget\": {\"usd\": 100.0, \"hard\": true},"
    "  \"keys\": [{\"id\": \"a\", \"secret\": \"sk-test-aaaa1111\", \"weight\": 2},"
    "            {\"id\": \"b\", \"secret\": \"sk-test-bbbb2222\", \"max_inflight\": 4,"
    "             \"budget\": {\"usd\": 5, \"hard\": false}}]}]}";

/* 100 lease slots per key: each key's in-flight flag row is two lines (128
 * bytes), 28 of them padding past cap_inflight; g1's 90 usable slots end
 * inside an eight-byte word (the flags are read eight at a time). */
static const char *cfg_wide =
    "{\"capacity\": {\"keys\": 2, \"processes\": 2, \"pools\": 1, \"inflight_per_key\": 100, \"usage_events\": 4,"
    " \"models\": 1},"
    " \"pools\": [{\"name\": \"groq\", \"strategy\": \"cost\","
    "  \"keys\": [{\"id\": \"g1\", \"secret\": \"gsk_1234567890abcdef\", \"max_inflight\": 90,"
    "              \"price\": {\"output_per_1k\": 0.02}},"
    "            {\"id\": \"g2\", \"secret\": \"gsk_fedcba0987654321\"}]}]}";

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: mkseeds ATTACH-DIR RESTORE-DIR\n");
        return 2;
    }
    outdir = argv[1];
    restoredir = argv[2];
    mkdir(outdir, 0755);
    mkdir(restoredir, 0755);
    memset(snapkey, 0x42, sizeof snapkey);
    const char *nm = "kmfz-seed";
    km_env *e;
    km_request rq = {.pool = 0, .tokens = 100};
    km_lease l;
    km_outcome o = {.kind = KM_OUT_SUCCESS, .latency_us = 800, .tokens = 90,
                    .input_tokens = -1, .output_tokens = -1};

    /* 1. fresh */
    e = make(nm, cfg_basic);
    km_close(e);
    dump(nm, "seg-fresh", NULL);

    /* 2. used: leases released with every outcome, a cooldown, a disabled
     *    key; usage events in both rings of the process slot (4 events
     *    per ring: ring 0 gets 5, one overwritten; ring 1 gets 3) */
    e = make(nm, cfg_basic);
    for (int i = 0; i < 6; i++) {
        if (km_acquire(e, &rq, &l) == KM_OK) {
            o.kind = i % KM_OUT_COUNT == KM_OUT_AUTH ? KM_OUT_SUCCESS : i % KM_OUT_COUNT;
            o.view_flags = i == 2 ? KM_VIEW_REQUESTS | KM_VIEW_TOKENS : 0;
            o.requests_remaining = 5;
            o.tokens_remaining = 1000;
            km_release(e, &l, &o);
        }
    }
    pthread_t th;
    if (pthread_create(&th, NULL, second_thread, e) || pthread_join(th, NULL))
        die("pthread", KM_ESYS);
    km_key_set_state(e, 2, KM_KEY_DISABLED);
    snap(e, "snap-used.json");
    km_close(e);
    dump(nm, "seg-used", NULL);

    /* 3. a dead process holds leases (reaped at attach) */
    e = make(nm, cfg_basic);
    km_close(e);
    die_holding(nm, 0, 3, 50);
    dump(nm, "seg-dead-active", NULL);
    dump(nm, "seg-dead-admitting", edit_admitting);

    /* 4. reconfigured: a key removed, one added, weights and limits changed
     *    (the other member list is current) */
    e = make(nm, cfg_basic);
    km_key_remove(e, 0);
    char err[256];
    km_key_add(e, 0, "{\"id\": \"key-c\", \"secret\": \"sk-demo-cccc3333\", \"limits\": {\"rpd\": 5000}}",
               err, sizeof err);
    km_key_set_weight(e, 1, 7);
    km_key_set_limits(e, 1, "{\"rpm\": 30, \"tpm\": null}", err, sizeof err);
    snap(e, "snap-reconfig.json");
    km_close(e);
    dump(nm, "seg-reconfig", NULL);

    /* 5. per-model limits, prices, budgets; a lease out by a dead process */
    e = make(nm, cfg_models);
    rq.model = "gpt-4o";
    for (int i = 0; i < 3; i++)
        if (km_acquire(e, &rq, &l) == KM_OK)
            km_release(e, &l, &o);
    rq.model = NULL;
    snap(e, "snap-models.json");
    km_close(e);
    die_holding(nm, 0, 1, 10);
    dump(nm, "seg-models", NULL);

    /* 6. wide rows: 100 lease slots per key, each key's flag row two lines;
     *    a dead process holds 105 leases: all 100 slots of g2 (the cheaper
     *    key, every flag word full) and 5 of g1 */
    e = make(nm, cfg_wide);
    snap(e, "snap-wide.json");
    km_close(e);
    die_holding(nm, 0, 105, 0);
    dump(nm, "seg-wide", NULL);

    km_unlink(nm);
    return 0;
}
