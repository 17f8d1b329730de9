/*
 * t_fleet_seg.c - fleet-wide limits, the segment side (issue 12 item 3,
 * tools/sync/DESIGN.md sections 3-4): "fleet" in the configuration; the
 * agent's role (claim, release, a dead agent's role taken over); collect
 * and apply (spent, left, returned, refused, want, adj, exact to the unit);
 * admission against credit across 4 processes never above the credit
 * granted nor the local limits; a lapsed deadline; the fallback share;
 * policy stop vs local; a grant for a changed key skipped; health changes
 * and the fleet's verdict applied; status and key info for inspect.
 * Model windows of a per_model pool's fleet keys (test_models): slots and
 * grants per (key, model, window), admission on the model's credit exact
 * across 4 processes and within the local limits, lapse, fallback and
 * policy, live limit changes, the bye, inspect.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ck_pr.h>
#include <jansson.h>

#include "testlib.h"

/* Pool "p": key "f" under the fleet (rpm 6000, tpm 600000, rph 100000),
 * key "g" not; pool "q": key "h" under the fleet with a small local burst. */
static const char *CFG =
    "{\"capacity\":{\"processes\":16},"
    " \"pools\":[{\"name\":\"p\",\"strategy\":\"fill_first\",\"keys\":["
    "  {\"id\":\"f\",\"secret\":\"sk-fleet-aaaaaaaa\",\"fleet\":{\"id\":\"acme.f\"},"
    "   \"limits\":{\"rpm\":{\"limit\":6000,\"burst\":6000,\"mode\":\"token_bucket\"},"
    "              \"tpm\":{\"limit\":600000,\"burst\":600000,\"mode\":\"token_bucket\"},"
    "              \"rph\":100000}},"
    "  {\"id\":\"g\",\"secret\":\"sk-fleet-bbbbbbbb\",\"fleet\":false,"
    "   \"limits\":{\"rpm\":6000}}]},"
    "  {\"name\":\"q\",\"keys\":[{\"id\":\"h\",\"secret\":\"sk-fleet-cccccccc\",\"fleet\":true,"
    "   \"limits\":{\"rpm\":{\"limit\":600,\"burst\":5,\"mode\":\"sliding\"}}}]}]}";

static km_env *env;
static int P, Q, KF, KG, KH;
static const char *req_model; /* the model acq_pin's requests name (test_models) */

static int acq_pin(km_env *e, int pool, const char *id, uint32_t tokens, km_lease *l)
{
    km_request r = {.pool = pool, .tokens = tokens, .key_id = id, .model = req_model};
    memset(l, 0, sizeof *l);
    return km_acquire(e, &r, l);
}

static void rel_ok(km_env *e, km_lease *l, int64_t tokens)
{
    if (release_with(e, l, KM_OUT_SUCCESS, 1000, tokens, 0) != KM_OK)
        bail_out("release failed");
}

static km_fleet_slot *slot_of(km_fleet_slot *s, size_t n, int key, int w)
{
    for (size_t i = 0; i < n; i++)
        if ((int)s[i].key == key && s[i].model == 0 && s[i].window == w)
            return &s[i];
    return NULL;
}

static km_fleet_slot slots[64];
static size_t nslots;

static void collect(uint64_t now)
{
    int rc = km_fleet_collect(env, now, slots, 64, &nslots);
    if (rc != KM_OK)
        bail_out("km_fleet_collect: %s", E(rc));
}

static km_fleet_slot *S(int key, int w)
{
    km_fleet_slot *s = slot_of(slots, nslots, key, w);
    if (!s)
        bail_out("no slot for key %d window %d", key, w);
    return s;
}

static int grant(int key, int w, uint64_t units, uint64_t deadline)
{
    km_key_info ki = info(env, key);
    km_fleet_grant g = {.key = (uint32_t)key, .key_gen = ki.gen, .window = w, .grant = units,
                        .deadline_ns = deadline};
    return km_fleet_apply(env, &g, 1);
}

static void test_config(void)
{
    const char *bad[] = {
        "{\"pools\":[{\"name\":\"p\",\"keys\":[{\"id\":\"a\",\"secret\":\"sk-x-aaaaaaaa\",\"fleet\":1}]}]}",
        "{\"pools\":[{\"name\":\"p\",\"keys\":[{\"id\":\"a\",\"secret\":\"sk-x-aaaaaaaa\",\"fleet\":{\"id\":\"a b\"}}]}]}",
        "{\"pools\":[{\"name\":\"p\",\"keys\":[{\"id\":\"a\",\"secret\":\"sk-x-aaaaaaaa\",\"fleet\":{\"nope\":1}}]}]}",
        "{\"fleet\":{\"policy\":\"maybe\"},\"pools\":[{\"name\":\"p\",\"keys\":[{\"id\":\"a\",\"secret\":\"sk-x-aaaaaaaa\"}]}]}",
        "{\"capacity\":{\"fleet\":\"yes\"},\"pools\":[{\"name\":\"p\",\"keys\":[{\"id\":\"a\",\"secret\":\"sk-x-aaaaaaaa\"}]}]}",
    };
    const char *why[] = {"fleet: must be true", "fleet.id: must be", "unknown field",
                         "fleet.policy", "capacity.fleet"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        km_config *c = NULL;
        char err[256] = "";
        int rc = km_config_parse(bad[i], strlen(bad[i]), "t", &c, err, sizeof err);
        ok(rc == KM_ECONFIG && strstr(err, why[i]), "config refused (%s): %s", why[i], err);
        km_config_free(c);
    }
    /* A segment without fleet keys has no fleet region. */
    km_env *e = mkseg("{\"pools\":[{\"name\":\"p\",\"keys\":[{\"id\":\"a\",\"secret\":\"sk-x-aaaaaaaa\"}]}]}");
    km_fleet_status st;
    km_fleet_key_info fi;
    is_int(km_fleet_claim(e, KM_FLEET_STOP), KM_EINVAL, "no fleet keys: claim is KM_EINVAL");
    is_int(km_fleet_status_get(e, &st), KM_OK, "no fleet keys: status_get answers");
    is_int(st.store_state, KM_FLEET_STORE_NONE, "  store state none");
    is_int(km_fleet_key_info_get(e, 0, &fi), KM_OK, "no fleet keys: key info answers");
    is_int((int)fi.mask, 0, "  mask 0");
    rmseg(e);
    /* The segment-wide switch: every key but one saying false. */
    e = mkseg("{\"fleet\":{\"all\":true,\"policy\":\"local\"},\"pools\":[{\"name\":\"p\",\"keys\":["
              "{\"id\":\"a\",\"secret\":\"sk-x-aaaaaaaa\",\"limits\":{\"rpm\":60}},"
              "{\"id\":\"b\",\"secret\":\"sk-x-bbbbbbbb\",\"fleet\":false,\"limits\":{\"rpm\":60}}]}]}");
    km_fleet_key_info_get(e, 0, &fi);
    is_int((int)fi.mask, 1 << KM_WIN_RPM, "\"fleet\": {\"all\": true}: key a under the fleet (rpm)");
    km_fleet_key_info_get(e, 1, &fi);
    is_int((int)fi.mask, 0, "  key b says false: not");
    km_lease l;
    is_int(acquire_with(e, 0, 0, 0, &l), KM_OK, "  policy local from the config: admitted before any agent");
    rmseg(e);
}

/* Role: claim, a second claimant refused, a dead agent's role taken over. */
static void test_claim(void)
{
    int up[2], down[2]; /* child -> parent "claimed", parent -> child "go" */
    if (pipe(up) || pipe(down))
        bail_out("pipe");
    pid_t c = fork();
    if (c == 0) { /* a live agent holds the role until told */
        km_env *e;
        char b = 0;
        if (km_open(seg, &e) || km_fleet_claim(e, KM_FLEET_STOP))
            _exit(1);
        if (write(up[1], "x", 1) != 1 || read(down[0], &b, 1) != 1)
            _exit(2);
        _exit(0); /* killed in effect: no release, no close */
    }
    char b;
    if (read(up[0], &b, 1) != 1)
        bail_out("child");
    is_int(km_fleet_claim(env, KM_FLEET_STOP), KM_EBUSY, "claim while a live agent holds it: KM_EBUSY");
    is_int(km_fleet_release(env, 0), KM_EINVAL, "release by a non-holder: KM_EINVAL");
    size_t n;
    is_int(km_fleet_collect(env, km_now_ns(), slots, 64, &n), KM_EINVAL, "collect by a non-holder: KM_EINVAL");
    if (write(down[1], "x", 1) != 1)
        bail_out("pipe");
    int st;
    waitpid(c, &st, 0);
    close(up[0]);
    close(up[1]);
    close(down[0]);
    close(down[1]);
    is_int(WEXITSTATUS(st), 0, "the first agent exited without releasing");
    is_int(km_fleet_claim(env, KM_FLEET_STOP), KM_OK, "its role is taken over once it is dead");
    is_int(km_fleet_claim(env, KM_FLEET_STOP), KM_OK, "claiming again is a no-op");
    is_int(km_fleet_release(env, 0), KM_OK, "release");
    is_int(km_fleet_claim(env, KM_FLEET_STOP), KM_OK, "claim again after release");
}

static void test_policy(void)
{
    km_lease l;
    km_fleet_status st = {.next_sync_ns = km_now_ns() + 250 * MS, .store_state = KM_FLEET_STORE_OK,
                          .epoch = 7, .seq = 11, .ack = 10, .last_sync_ns = km_now_ns(),
                          .n_hosts = 3};
    is_int(km_fleet_status_set(env, &st), KM_OK, "status_set");
    int rc = acq_pin(env, P, "f", 0, &l);
    is_int(rc, KM_EAGAIN, "policy stop, no credit: KM_EAGAIN");
    is_u64(l.retry_at_ns, st.next_sync_ns, "  retry at the next sync");
    is_int(acq_pin(env, P, "g", 0, &l), KM_OK, "a key outside the fleet is admitted");
    rel_ok(env, &l, -1);
    km__fhdr *fh = km__fleet(env);
    is_int((int)ck_pr_load_32(&fh->kick), 1, "the refusal kicked the agent");
    km_fleet_status got;
    km_fleet_status_get(env, &got);
    ok(got.epoch == 7 && got.seq == 11 && got.ack == 10 && got.n_hosts == 3 &&
           got.store_state == KM_FLEET_STORE_OK && got.next_sync_ns == st.next_sync_ns,
       "status_get gives back what status_set stored");
    km_fleet_status_set(env, &st);
    is_int((int)ck_pr_load_32(&fh->kick), 0, "a sync (status_set) clears the kick");

    is_int(km_fleet_claim(env, KM_FLEET_LOCAL), KM_OK, "claim again with policy local");
    is_int(acq_pin(env, P, "f", 0, &l), KM_OK, "policy local, no credit: the local limits alone");
    rel_ok(env, &l, -1);
    km_fleet_claim(env, KM_FLEET_STOP);
    collect(km_now_ns()); /* reset the counters */
}

/* Collect and apply, exact to the unit. */
static void test_collect_apply(void)
{
    uint64_t now = km_now_ns(), dl = now + 60 * NS;
    km_lease l[8];

    collect(now);
    is_u64(nslots, 4, "collect: one slot per fleet (key, window): f rpm, rph, tpm; h rpm");
    km_fleet_slot *s = S(KF, KM_WIN_RPM);
    ok(s->limit == 6000 && s->period_ms == 60000 && s->mode == KM_MODE_TOKEN_BUCKET &&
           strcmp(s->key_id, "f") == 0 && strcmp(s->pool, "p") == 0 &&
           strcmp(s->fleet_id, "acme.f") == 0 && s->model == 0 && !s->strict,
       "  the slot describes its limit, key, pool and configured fleet id");
    is_str(S(KH, KM_WIN_RPM)->fleet_id, "", "  no configured id: \"\"");

    is_int(grant(KF, KM_WIN_RPM, 5, dl), KM_OK, "apply 5 rpm");
    grant(KF, KM_WIN_RPH, 100, dl);
    grant(KF, KM_WIN_TPM, 1000, dl);
    int n = 0;
    for (int i = 0; i < 8; i++)
        if (acq_pin(env, P, "f", 10, &l[n]) == KM_OK)
            n++;
    is_int(n, 5, "5 units of rpm credit admit exactly 5");
    km_lease x;
    is_int(acq_pin(env, P, "f", 10, &x), KM_EAGAIN, "the 6th is refused (policy stop)");
    km_fleet_key_info fi;
    km_fleet_key_info_get(env, (uint32_t)KF, &fi);
    ok(fi.credit[KM_WIN_RPM] == 0 && fi.credit[KM_WIN_RPH] == 95 && fi.credit[KM_WIN_TPM] == 950,
       "refused on rpm: rph and tpm were given back exactly (rpm %llu rph %llu tpm %llu)",
       (unsigned long long)fi.credit[KM_WIN_RPM], (unsigned long long)fi.credit[KM_WIN_RPH],
       (unsigned long long)fi.credit[KM_WIN_TPM]);
    is_u64(fi.deadline_ns, dl, "key info: the deadline");
    is_int((int)fi.mask, (1 << KM_WIN_RPM) | (1 << KM_WIN_RPH) | (1 << KM_WIN_TPM), "key info: the mask");
    for (int i = 0; i < n; i++)
        rel_ok(env, &l[i], i == 0 ? 30 : -1); /* one lease used 20 tokens above its estimate */

    collect(km_now_ns());
    s = S(KF, KM_WIN_RPM);
    ok(s->spent == 5 && s->left == 0 && s->returned == 0 && s->refused == 8 - 5 + 1 && s->want == 1,
       "collect rpm: spent 5 left 0 returned 0 refused 4 want 1 (got %llu %llu %llu %llu %llu)",
       (unsigned long long)s->spent, (unsigned long long)s->left, (unsigned long long)s->returned,
       (unsigned long long)s->refused, (unsigned long long)s->want);
    s = S(KF, KM_WIN_TPM);
    ok(s->spent == 50 && s->left == 950 && s->refused == 40 && s->want == 10 && s->adj == 20,
       "collect tpm: spent 50 left 950 refused 40 want 10 adj +20 (got %llu %llu %llu %llu %lld)",
       (unsigned long long)s->spent, (unsigned long long)s->left, (unsigned long long)s->refused,
       (unsigned long long)s->want, (long long)s->adj);
    is_int((int)S(KF, KM_WIN_RPM)->adj, 0, "  adj only on token windows");
    s = S(KF, KM_WIN_RPH);
    ok(s->spent == 5 && s->left == 95, "collect rph: spent 5 left 95");

    collect(km_now_ns());
    s = S(KF, KM_WIN_TPM);
    ok(s->spent == 0 && s->left == 950 && s->refused == 0 && s->want == 0 && s->adj == 0,
       "a second collect: nothing new, the credit still held");

    /* A token request larger than the token credit: refused, its size is
     * the largest waiting (want). */
    grant(KF, KM_WIN_RPM, 10, dl);
    is_int(acq_pin(env, P, "f", 2000, &x), KM_EAGAIN, "2000 tokens against 950: refused");
    collect(km_now_ns());
    is_u64(S(KF, KM_WIN_TPM)->want, 2000, "  want 2000");
    is_u64(S(KF, KM_WIN_RPM)->left, 10, "  the request unit given back (rpm left 10)");
}

/* The low-water mark: credit left below about a quarter of what the last
 * apply left (a power of two: 2^floor(log2(held / 4))) kicks the agent. */
static void test_kick(void)
{
    km__fhdr *fh = km__fleet(env);
    km_fleet_status st = {.next_sync_ns = km_now_ns() + 250 * MS, .store_state = KM_FLEET_STORE_OK,
                          .epoch = 7, .seq = 12, .ack = 11, .last_sync_ns = km_now_ns(), .n_hosts = 3};
    collect(km_now_ns());
    uint64_t held = S(KF, KM_WIN_RPM)->left + 40, dl = km_now_ns() + 60 * NS;
    grant(KF, KM_WIN_RPM, 40, dl);
    grant(KF, KM_WIN_RPH, 100, dl);
    km_fleet_status_set(env, &st); /* kick 0 */
    uint64_t mark = 1;
    while (mark * 2 <= held / 4)
        mark *= 2;
    km_lease l;
    int bad = 0;
    for (uint64_t i = 0; i < held - mark; i++) {
        bad |= acq_pin(env, P, "f", 0, &l) != KM_OK;
        rel_ok(env, &l, -1);
    }
    ok(!bad && ck_pr_load_32(&fh->kick) == 0, "credit down to the mark (%llu of %llu): no kick",
       (unsigned long long)mark, (unsigned long long)held);
    bad |= acq_pin(env, P, "f", 0, &l) != KM_OK;
    rel_ok(env, &l, -1);
    ok(!bad && ck_pr_load_32(&fh->kick) == 1, "one below it: the agent is kicked");
    is_int(km_fleet_kicked(env), 1, "km_fleet_kicked: the agent sees the kick");
    is_int(km_fleet_kicked(env), 0, "  and took it: the next poll finds none");
    is_int((int)ck_pr_load_32(&fh->kick), 0, "  the kick word is clear");
    collect(km_now_ns());
}

/* A grant for a key whose generation changed is skipped. */
static void test_gen(void)
{
    km_key_info ki = info(env, KH);
    km_fleet_grant g = {.key = (uint32_t)KH, .key_gen = ki.gen + 1, .window = KM_WIN_RPM,
                        .grant = 50, .deadline_ns = km_now_ns() + 60 * NS};
    is_int(km_fleet_apply(env, &g, 1), KM_OK, "apply with a stale key_gen");
    km_fleet_key_info fi;
    km_fleet_key_info_get(env, (uint32_t)KH, &fi);
    is_u64(fi.credit[KM_WIN_RPM], 0, "  skipped: no credit");
    g.key_gen = ki.gen;
    km_fleet_apply(env, &g, 1);
    km_fleet_key_info_get(env, (uint32_t)KH, &fi);
    is_u64(fi.credit[KM_WIN_RPM], 50, "  with the key's gen: applied");
    /* Local rules still hold: burst 5 sliding admits 5 at once whatever
     * the credit. */
    km_lease l[10];
    int n = 0;
    for (int i = 0; i < 10; i++)
        if (acq_pin(env, Q, "h", 0, &l[n]) == KM_OK)
            n++;
    is_int(n, 5, "credit 50, local burst 5: 5 admitted (local rules and credit both)");
    for (int i = 0; i < n; i++)
        rel_ok(env, &l[i], -1);
    collect(km_now_ns());
    ok(S(KH, KM_WIN_RPM)->spent == 5 && S(KH, KM_WIN_RPM)->left == 45,
       "  the local refusals took no credit: spent 5, left 45");
}

static const char *jstr(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

/* kmctl inspect shows the fleet: the agent's status, per fleet key the
 * credit per window, deadline and fallback (human and --json). */
static void test_inspect(void)
{
    const char *b = getenv("KM_BUILD") ? getenv("KM_BUILD") : "build";
    char cmd[256], line[512];
    snprintf(cmd, sizeof cmd, "%s/kmctl inspect %s", b, seg);
    FILE *f = popen(cmd, "r");
    int head = 0, keyh = 0, keyg = 0;
    while (f && fgets(line, sizeof line, f)) {
        head |= strstr(line, "fleet: store ok, epoch 7, 3 hosts, last sync ") != NULL;
        keyh |= strstr(line, "  q/h: credit rpm 45, deadline in ") != NULL;
        keyg |= strstr(line, "/g:") != NULL;
    }
    if (f)
        pclose(f);
    ok(head, "kmctl inspect: the fleet's store state, epoch and hosts");
    ok(keyh, "kmctl inspect: key h's credit and deadline");
    ok(!keyg, "kmctl inspect: a key outside the fleet is not listed there");
    snprintf(cmd, sizeof cmd, "%s/kmctl inspect --json %s", b, seg);
    f = popen(cmd, "r");
    json_error_t je;
    json_t *d = f ? json_loadf(f, 0, &je) : NULL;
    if (f)
        pclose(f);
    json_t *fl = json_object_get(d, "fleet"), *ks = json_object_get(fl, "keys"), *h = NULL;
    size_t i;
    json_t *k;
    json_array_foreach(ks, i, k)
        if (strcmp(jstr(k, "key"), "h") == 0)
            h = k;
    ok(fl && strcmp(jstr(fl, "store_state"), "ok") == 0 &&
           json_integer_value(json_object_get(fl, "epoch")) == 7 &&
           json_integer_value(json_object_get(fl, "hosts")) == 3,
       "kmctl inspect --json: fleet.store_state, epoch, hosts");
    json_int_t dl = json_integer_value(json_object_get(h, "deadline_in_ms"));
    ok(h && json_integer_value(json_object_get(json_object_get(h, "credit"), "rpm")) == 45 &&
           dl > 50000 && dl <= 60000 && json_array_size(ks) == 2,
       "kmctl inspect --json: key h's credit (45) and deadline (%lld ms)", (long long)dl);
    json_decref(d);
}

/* snapshot and restore keep the fleet configuration (not the credit). */
static void test_restore(void)
{
    char *js = NULL, err[256] = "", name[80];
    snprintf(name, sizeof name, "%s-r", seg);
    km_unlink(name);
    char hex[2 * KM_SNAPSHOT_KEY_BYTES + 1];
    unsigned char key[KM_SNAPSHOT_KEY_BYTES];
    if (km_snapshot_keygen(hex) || km_snapshot_key_parse(hex, strlen(hex), key))
        bail_out("snapshot key");
    is_int(km_snapshot_json_ex(env, KM_SNAPSHOT_SECRETS, key, &js), KM_OK, "snapshot");
    ok(js && strstr(js, "\"fleet\""), "  names the fleet");
    km_env *r = NULL;
    int rc = js ? km_restore(name, js, strlen(js), key, 0, &r, err, sizeof err) : KM_EINVAL;
    is_int(rc, KM_OK, "restore: %s", err);
    km_fleet_key_info fi;
    int kf = r ? km_key_find(r, km_pool_find(r, "p"), "f") : -1;
    ok(kf >= 0 && km_fleet_key_info_get(r, (uint32_t)kf, &fi) == KM_OK && fi.mask &&
           fi.credit[KM_WIN_RPM] == 0,
       "  the restored key f is a fleet key, without credit");
    int kg = r ? km_key_find(r, km_pool_find(r, "p"), "g") : -1;
    ok(kg >= 0 && km_fleet_key_info_get(r, (uint32_t)kg, &fi) == KM_OK && !fi.mask,
       "  key g is not");
    char *js2 = NULL;
    if (r)
        km_snapshot_json(r, &js2);
    ok(js2 && strstr(js2, "\"acme.f\"") != NULL, "  f keeps its fleet id");
    if (r)
        km_close(r);
    km_unlink(name);
    free(js);
    free(js2);
}

/* A deadline lapses: stop refuses; collect voids the credit (returned). */
static void test_lapse(void)
{
    uint64_t now = km_now_ns();
    collect(now);
    grant(KH, KM_WIN_RPM, 0, now + 100 * MS); /* 45 held, deadline in 100 ms */
    km_lease l;
    sleep_until(now + 150 * MS);
    is_int(acq_pin(env, Q, "h", 0, &l), KM_EAGAIN, "credit past its deadline: refused (stop)");
    collect(km_now_ns());
    km_fleet_slot *s = S(KH, KM_WIN_RPM);
    ok(s->returned == 45 && s->left == 0 && s->spent == 0,
       "collect voids lapsed credit: returned 45 left 0 spent 0 (got %llu %llu %llu)",
       (unsigned long long)s->returned, (unsigned long long)s->left, (unsigned long long)s->spent);
    km_fleet_key_info fi;
    km_fleet_key_info_get(env, (uint32_t)KH, &fi);
    is_u64(fi.credit[KM_WIN_RPM], 0, "  the word is 0");
    collect(km_now_ns());
    is_u64(S(KH, KM_WIN_RPM)->returned, 0, "  returned once only");
}

/* The fallback share: a GCRA at fb_ppm of the rate, burst fb_burst, only
 * inside its window and once credit lapsed. */
static void test_fallback(void)
{
    uint64_t now = km_now_ns();
    km_key_info ki = info(env, KF);
    /* f's rpm: 6000/min = T 10 ms; half the rate: 20 ms per unit, burst 3.
     * rph and tpm: no share (fb_ppm 0) -> only rpm windows... so give every
     * window of f a share. */
    km_fleet_grant g[3];
    int ws[3] = {KM_WIN_RPM, KM_WIN_RPH, KM_WIN_TPM};
    for (int i = 0; i < 3; i++)
        g[i] = (km_fleet_grant){.key = (uint32_t)KF, .key_gen = ki.gen, .window = ws[i],
                                .grant = 0, .deadline_ns = now - 1, .fb_ppm = 500000,
                                .fb_burst = 3, .fb_from_ns = now, .fb_until_ns = now + 2 * NS};
    is_int(km_fleet_apply(env, g, 3), KM_OK, "apply: credit lapsed, a fallback share of 50 %% burst 3");
    collect(now + 1); /* voids what was left */
    km_lease l[6];
    int n = 0;
    for (int i = 0; i < 6; i++)
        if (acq_pin(env, P, "f", 0, &l[n]) == KM_OK)
            n++;
    is_int(n, 3, "on fallback: the share's burst (3) admitted at once");
    km_lease x;
    is_int(acq_pin(env, P, "f", 0, &x), KM_EAGAIN, "  then refused");
    ok(x.retry_at_ns > km_now_ns() && x.retry_at_ns <= km_now_ns() + 25 * MS,
       "  retry at the share's next unit (~20 ms): %.1f ms",
       (double)(int64_t)(x.retry_at_ns - km_now_ns()) / 1e6);
    /* rph is the binding share: 100000/h at 50 %% is 72 ms a unit, burst 3
     * (216 ms): 165 ms on, two more fit (rpm's share has refilled). */
    sleep_until(km_now_ns() + 165 * MS);
    int m = 0;
    for (int i = 0; i < 3; i++)
        if (acq_pin(env, P, "f", 0, &l[n + m]) == KM_OK)
            m++;
    ok(m >= 2 && m <= 3, "165 ms later: 2 more on the binding (rph) share (got %d)", m);
    for (int i = 0; i < n + m; i++)
        rel_ok(env, &l[i], -1);
    collect(km_now_ns());
    is_u64(S(KF, KM_WIN_RPM)->fb_spent, (uint64_t)(n + m), "collect: fb_spent counts them");
    is_u64(S(KF, KM_WIN_RPM)->spent, 0, "  and no credit spent");
    km_fleet_key_info fi;
    km_fleet_key_info_get(env, (uint32_t)KF, &fi);
    ok(fi.fb_ppm == 500000 && fi.fb_until_ns == now + 2 * NS, "key info: the share and its end");
    /* Past the fallback window: stop again. */
    for (int i = 0; i < 3; i++)
        g[i].fb_until_ns = km_now_ns() - 1;
    km_fleet_apply(env, g, 3);
    is_int(acq_pin(env, P, "f", 0, &x), KM_EAGAIN, "fallback window over: refused (stop)");

    /* Sleepers are woken by a reply that opens a fallback share without
     * credit (a reply after an outage), not only by credit: one counted
     * sleeper stands in for a km_acquire_wait caller (km__wake bumps the
     * futex word only when someone sleeps). */
    km__pool *pool = &km__pools(env)[km__keys(env)[KF].pool];
    ck_pr_inc_32(&pool->waiters);
    uint32_t w0 = ck_pr_load_32(&pool->wake_seq);
    for (int i = 0; i < 3; i++) {
        g[i].fb_from_ns = km_now_ns() + 60 * NS; /* not open yet */
        g[i].fb_until_ns = g[i].fb_from_ns + 2 * NS;
    }
    km_fleet_apply(env, g, 3);
    is_int((int)(ck_pr_load_32(&pool->wake_seq) - w0), 0, "a share that opens later wakes nobody");
    for (int i = 0; i < 3; i++) {
        g[i].fb_from_ns = km_now_ns();
        g[i].fb_until_ns = g[i].fb_from_ns + 2 * NS;
    }
    km_fleet_apply(env, g, 3);
    ok(ck_pr_load_32(&pool->wake_seq) != w0, "a share open now, no credit: the sleepers are woken");
    ck_pr_dec_32(&pool->waiters);
    for (int i = 0; i < 3; i++)
        g[i].fb_until_ns = km_now_ns() - 1;
    km_fleet_apply(env, g, 3);
}

/* km_fleet_release(1): credit voided (returned at the next collect),
 * fallback ended. */
static void test_release_void(void)
{
    uint64_t now = km_now_ns();
    grant(KH, KM_WIN_RPM, 30, now + 60 * NS);
    collect(now);
    is_int(km_fleet_release(env, 1), KM_OK, "release, voiding the credit");
    km_lease l;
    is_int(acq_pin(env, Q, "h", 0, &l), KM_EAGAIN, "  acquirers stop at once");
    is_int(km_fleet_claim(env, KM_FLEET_STOP), KM_OK, "a new agent claims");
    collect(km_now_ns());
    ok(S(KH, KM_WIN_RPM)->returned == 30 && S(KH, KM_WIN_RPM)->left == 0,
       "  its first collect reports the voided credit as returned (30)");
}

/* Exact admission against credit, 4 processes, while the agent tops up:
 * never more than granted, and what collect reports spent is what was
 * admitted. */
#define WORKERS 4
typedef struct crew {
    pid_t kids[WORKERS];
    uint64_t *admitted; /* shared with the workers: one count each */
} crew;

/* WORKERS processes acquiring key `id` of `pool` (tokens each) and
 * releasing at once until `end`, each counting what it was admitted. */
static void crew_start(crew *c, int pool, const char *id, uint32_t tokens, uint64_t end)
{
    c->admitted = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (c->admitted == MAP_FAILED)
        bail_out("mmap");
    for (int w = 0; w < WORKERS; w++) {
        if ((c->kids[w] = fork()) == 0) {
            km_env *e;
            if (km_open(seg, &e))
                _exit(1);
            uint64_t mine = 0;
            km_lease l;
            while (km_now_ns() < end)
                if (acq_pin(e, pool, id, tokens, &l) == KM_OK) {
                    mine++;
                    release_with(e, &l, KM_OUT_SUCCESS, 10, -1, 0);
                }
            ck_pr_add_64(&c->admitted[w], mine);
            km_close(e);
            _exit(0);
        }
    }
}

/* Wait for the crew; the sum of what its workers were admitted. */
static uint64_t crew_wait(crew *c)
{
    uint64_t total = 0;
    for (int w = 0; w < WORKERS; w++) {
        int st;
        waitpid(c->kids[w], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st))
            bail_out("worker %d failed", w);
        total += c->admitted[w];
    }
    munmap(c->admitted, 4096);
    return total;
}

static void test_multiproc(void)
{
    collect(km_now_ns());
    uint64_t t0 = km_now_ns(), end = t0 + 400 * MS, granted = 0, spent = 0, left = 0;
    crew c;
    crew_start(&c, P, "f", 3, end + 50 * MS);
    /* The agent: 40 units of every window per 10 ms round, deadline far. */
    while (km_now_ns() < end) {
        grant(KF, KM_WIN_RPM, 40, end + 10 * NS);
        grant(KF, KM_WIN_RPH, 40, end + 10 * NS);
        grant(KF, KM_WIN_TPM, 120, end + 10 * NS);
        granted += 40;
        collect(km_now_ns());
        spent += S(KF, KM_WIN_RPM)->spent;
        sleep_until(km_now_ns() + 10 * MS);
    }
    uint64_t total = crew_wait(&c);
    collect(km_now_ns());
    spent += S(KF, KM_WIN_RPM)->spent;
    left = S(KF, KM_WIN_RPM)->left;
    diag("%d workers: %llu admitted of %llu granted, %llu left", WORKERS,
         (unsigned long long)total, (unsigned long long)granted, (unsigned long long)left);
    is_u64(total + left, granted, "admitted + left == granted: no unit spent twice or lost");
    is_u64(spent, total, "the collects' spent sums to what was admitted");
    ok(total > 0 && left == 0, "the workers spent all of it");
    is_u64(S(KF, KM_WIN_TPM)->left + 3 * total, 3 * granted, "tpm: 3 per request, exact");
}

/* The local rules bind while credit is plenty: 4 processes on key h
 * (sliding 600 rpm, burst 5) with 1000 units of credit admit no more than
 * the local bound, and every unit the local limits refused went back into
 * the credit word exactly (F3): left = 1000 - admitted. */
static void test_multiproc_local(void)
{
    km_fleet_health_set(env, (uint32_t)KH, KM_KEY_ACTIVE, 0);
    collect(km_now_ns());
    uint64_t t0 = km_now_ns();
    grant(KH, KM_WIN_RPM, 1000, t0 + 60 * NS);
    crew c;
    crew_start(&c, Q, "h", 0, t0 + 250 * MS);
    uint64_t total = crew_wait(&c), el = km_now_ns() - t0;
    /* sliding 600/min, burst 5: T = 60 s / 596 (src/limits.c) */
    uint64_t bound = 5 + el / (60 * NS / 596) + 1;
    collect(km_now_ns());
    diag("key h: %llu admitted in %.0f ms (local bound %llu), credit left %llu",
         (unsigned long long)total, (double)el / 1e6, (unsigned long long)bound,
         (unsigned long long)S(KH, KM_WIN_RPM)->left);
    ok(total >= 5 && total <= bound, "4 processes: admitted within the local bound");
    is_u64(S(KH, KM_WIN_RPM)->left, 1000 - total, "credit left = 1000 - admitted: refusals gave it back exactly");
    is_u64(S(KH, KM_WIN_RPM)->spent, total, "  spent = admitted");
}

/* On the fallback share, the local limits refuse most of 4 processes'
 * requests on key h (burst 5), and each refusal takes its unit back from
 * the share's count while the agent collects (and zeroes) that count in a
 * loop: a count taken back after a collect must not wrap below zero (the
 * ledger refuses a report with such a figure whole, losing every key's
 * spending in it). */
static void test_fallback_undo_race(void)
{
    km_fleet_health_set(env, (uint32_t)KH, KM_KEY_ACTIVE, 0);
    uint64_t t0 = km_now_ns();
    km_key_info ki = info(env, KH);
    km_fleet_grant g = {.key = (uint32_t)KH, .key_gen = ki.gen, .window = KM_WIN_RPM,
                        .grant = 0, .deadline_ns = t0 - 1, .fb_ppm = 1000000,
                        .fb_burst = 1000000000, .fb_from_ns = t0, .fb_until_ns = t0 + 60 * NS};
    km_fleet_apply(env, &g, 1);
    collect(t0 + 1); /* voids the credit left: the share alone admits */
    /* One acquirer (as several, but a single one makes the count's dips
     * below the collect's zero show: nobody else's admission fills them). */
    uint64_t *adm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (adm == MAP_FAILED)
        bail_out("mmap");
    fflush(stdout);
    pid_t kid = fork();
    if (kid == 0) {
        km_env *e;
        if (km_open(seg, &e))
            _exit(1);
        km_lease l;
        while (km_now_ns() < t0 + 1000 * MS && ++adm[1])
            if (acq_pin(e, Q, "h", 0, &l) == KM_OK) {
                adm[0]++;
                release_with(e, &l, KM_OUT_SUCCESS, 10, -1, 0);
            }
        km_close(e);
        _exit(0);
    }
    uint64_t worst = 0, sum = 0, collects = 0;
    while (km_now_ns() < t0 + 1000 * MS) {
        collect(km_now_ns());
        uint64_t f = S(KH, KM_WIN_RPM)->fb_spent;
        worst = f > worst ? f : worst;
        sum += f < (UINT64_C(1) << 50) ? f : 0;
        collects++;
    }
    int st;
    waitpid(kid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st))
        bail_out("acquirer failed");
    uint64_t total = adm[0];
    diag("attempts %llu", (unsigned long long)adm[1]);
    munmap(adm, 4096);
    collect(km_now_ns());
    uint64_t f = S(KH, KM_WIN_RPM)->fb_spent;
    worst = f > worst ? f : worst;
    sum += f < (UINT64_C(1) << 50) ? f : 0;
    diag("key h on its share: %llu admitted, %llu collects, fb_spent summed %llu, largest %llu",
         (unsigned long long)total, (unsigned long long)collects, (unsigned long long)sum,
         (unsigned long long)worst);
    ok(worst < (UINT64_C(1) << 50), "fallback count never wraps below zero while collected");
    ok(sum >= total, "fb_spent summed covers what was admitted (never under; refusals taken back)");
    g.fb_until_ns = km_now_ns() - 1;
    km_fleet_apply(env, &g, 1);
}

/* Health: changes made here are listed once; the fleet's verdict is not. */
static void test_health(void)
{
    km_fleet_health h[8];
    size_t n;
    km_fleet_health_changes(env, h, 8, &n); /* drain what earlier tests did */
    km_lease l;
    grant(KF, KM_WIN_RPM, 10, km_now_ns() + 60 * NS);
    grant(KF, KM_WIN_RPH, 10, km_now_ns() + 60 * NS);
    if (acq_pin(env, P, "f", 0, &l) != KM_OK)
        bail_out("acquire f");
    release_with(env, &l, KM_OUT_RATE_LIMITED, 1000, -1, 2.0);
    is_int(km_fleet_health_changes(env, h, 8, &n), KM_OK, "health_changes");
    ok(n == 1 && (int)h[0].key == KF && h[0].kind == KM_FLEET_EV_RATE_LIMITED &&
           h[0].arg_ms > 1500 && h[0].arg_ms <= 2000,
       "a 429 with Retry-After 2 s: listed, rate limited, %llu ms", n ? (unsigned long long)h[0].arg_ms : 0ULL);
    km_fleet_health_changes(env, h, 8, &n);
    is_u64(n, 0, "listed once");
    /* A key outside the fleet is never listed. */
    if (acq_pin(env, P, "g", 0, &l) != KM_OK)
        bail_out("acquire g");
    release_with(env, &l, KM_OUT_AUTH, 1000, -1, 0);
    km_fleet_health_changes(env, h, 8, &n);
    is_u64(n, 0, "a key outside the fleet: not listed");
    km_key_set_state(env, KH, KM_KEY_DISABLED);
    km_fleet_health_changes(env, h, 8, &n);
    ok(n == 1 && (int)h[0].key == KH && h[0].kind == KM_FLEET_EV_DISABLE, "an operator's disable: listed");
    km_key_set_state(env, KH, KM_KEY_ACTIVE);
    km_fleet_health_changes(env, h, 8, &n);
    ok(n == 1 && h[0].kind == KM_FLEET_EV_ENABLE, "an operator's enable: listed");
    /* The fleet's verdicts. */
    is_int(km_fleet_health_set(env, (uint32_t)KH, KM_KEY_DISABLED, 0), KM_OK, "health_set disabled");
    is_int(info(env, KH).state, KM_KEY_DISABLED, "  the key is disabled");
    is_int(km_fleet_health_set(env, (uint32_t)KH, KM_KEY_ACTIVE, 0), KM_OK, "health_set active");
    is_int(info(env, KH).state, KM_KEY_ACTIVE, "  the key is active");
    is_int(km_fleet_health_set(env, (uint32_t)KH, KM_KEY_COOLING, 3000), KM_OK, "health_set cooling 3 s");
    km_key_info ki = info(env, KH);
    ok(ki.state == KM_KEY_COOLING && ki.cooldown_until_ns > km_now_ns() + 2500 * MS,
       "  the key cools for 3 s");
    is_int(km_fleet_health_set(env, (uint32_t)KH, KM_KEY_INVALID, 0), KM_OK, "health_set invalid");
    is_int(info(env, KH).state, KM_KEY_INVALID, "  the key is invalid");
    km_fleet_health_changes(env, h, 8, &n);
    is_u64(n, 0, "the fleet's verdicts are not listed as changes here");
    is_int(km_fleet_health_set(env, 9999, KM_KEY_ACTIVE, 0), KM_ENOKEY, "health_set on no key: KM_ENOKEY");
}

/* Fleet-wide spend budgets (post-paid, DESIGN.md section 8): collect
 * reports the spend since the last collect with its period's name; the
 * other hosts' spend, applied, counts in the acquire's check (hard:
 * refused; a figure of another period: not counted) and in the settle's
 * soft warning; a key outside the fleet keeps its budget local. */
static const char *SPEND_CFG =
    "{\"pools\":[{\"name\":\"s\",\"strategy\":\"fill_first\",\"keys\":["
    "  {\"id\":\"a\",\"secret\":\"sk-spend-aaaaaaaa\",\"fleet\":true,"
    "   \"price\":{\"output_per_1k\":1.0},"
    "   \"budget\":{\"usd\":1.0,\"mode\":\"hard\",\"period\":\"day\",\"tz\":\"UTC\"}},"
    "  {\"id\":\"b\",\"secret\":\"sk-spend-bbbbbbbb\",\"fleet\":true,"
    "   \"price\":{\"output_per_1k\":1.0},"
    "   \"budget\":{\"usd\":1.0,\"mode\":\"soft\"}},"
    "  {\"id\":\"c\",\"secret\":\"sk-spend-cccccccc\","
    "   \"price\":{\"output_per_1k\":1.0},"
    "   \"budget\":{\"usd\":1.0,\"mode\":\"hard\"}}]}]}";

static km_fleet_budget *bud_of(km_fleet_budget *b, size_t n, int key)
{
    for (size_t i = 0; i < n; i++)
        if ((int)b[i].key == key)
            return &b[i];
    return NULL;
}

static void test_spend(void)
{
    km_env *e = mkseg(SPEND_CFG);
    int ps = pool_of(e, "s"), ka = key_of(e, ps, 0), kb = key_of(e, ps, 1), kc = key_of(e, ps, 2);
    km_fleet_budget b[8];
    size_t n = 0;
    km_lease l;

    is_int(km_fleet_spend_collect(e, b, 8, &n), KM_EINVAL, "spend collect: the agent's role only");
    if (km_fleet_claim(e, KM_FLEET_STOP) != KM_OK)
        bail_out("claim");
    /* Key a spends 250 tokens x 1 USD / 1k = 250 000 micro-USD. */
    if (acq_pin(e, ps, "a", 0, &l) != KM_OK || release_with(e, &l, KM_OUT_SUCCESS, 1000, 250, 0))
        bail_out("spend on a");
    is_int(km_fleet_spend_collect(e, b, 1, &n), KM_EINVAL, "spend collect: cap too small");
    is_int((int)n, 2, "  says 2 (the fleet keys with a budget; c is not a fleet key)");
    is_int(km_fleet_spend_collect(e, b, 8, &n), KM_OK, "spend collect");
    km_fleet_budget *x = bud_of(b, n, ka);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t day = (uint64_t)ts.tv_sec / 86400 * 86400;
    ok(x && x->spent == 250000 && x->local == 250000 && x->others == 0 && x->hard == 1 &&
           x->period == KM_BUDGET_DAY && x->period_start_s == day &&
           x->period_end_ns == (day + 86400) * 1000000000ull && strcmp(x->key_id, "a") == 0,
       "key a: 250000 spent since the last collect, the period named by its UTC start");
    x = bud_of(b, n, kb);
    ok(x && x->spent == 0 && x->period == KM_BUDGET_LIFETIME && x->period_start_s == 0 &&
           x->period_end_ns == UINT64_MAX,
       "key b (lifetime): period 0, end UINT64_MAX");
    km_fleet_spend_collect(e, b, 8, &n);
    x = bud_of(b, n, ka);
    ok(x && x->spent == 250000 && x->local == 250000,
       "the next collect, nothing answered: the same 250000 again (an agent killed loses none)");
    is_int(km_fleet_spend_reported(e, (uint32_t)ka, x ? x->key_gen : 0, x ? x->period_end_ns : 1,
                                   250000),
           KM_OK, "spend reported: the ledger answered a report of 250000");
    km_fleet_spend_collect(e, b, 8, &n);
    x = bud_of(b, n, ka);
    ok(x && x->spent == 0 && x->local == 250000, "the next collect: nothing new since");
    is_int(km_fleet_spend_reported(e, (uint32_t)kc, info(e, kc).gen, UINT64_MAX, 1), KM_ENOKEY,
           "spend reported for a key outside the fleet: KM_ENOKEY");
    /* kmctl reset-spend, then as much spent again before the next
     * collect: the 250000 after the reset are reported (counting from the
     * record alone, it was back at what had been reported: 0 went out). */
    uint64_t was = 0;
    is_int(km_spend_reset(e, ka, &was), KM_OK, "reset-spend on a fleet key (was %llu)",
           (unsigned long long)was);
    if (acq_pin(e, ps, "a", 0, &l) != KM_OK || release_with(e, &l, KM_OUT_SUCCESS, 1000, 250, 0))
        bail_out("spend on a after the reset");
    km_fleet_spend_collect(e, b, 8, &n);
    x = bud_of(b, n, ka);
    ok(x && x->spent == 250000 && x->local == 500000,
       "  the spend after it is reported whole: spent %llu, local with the reset %llu",
       x ? (unsigned long long)x->spent : 0ull, x ? (unsigned long long)x->local : 0ull);
    km_fleet_spend_reported(e, (uint32_t)ka, x ? x->key_gen : 0, x ? x->period_end_ns : 1,
                            x ? x->local : 0);
    km_fleet_spend_collect(e, b, 8, &n);
    x = bud_of(b, n, ka);
    ok(x && x->spent == 0, "  and once answered, nothing again");

    /* The other hosts spent 749 999: 1 micro-USD left fleet-wide. */
    km_key_info ki = info(e, ka);
    uint64_t end = (day + 86400) * 1000000000ull;
    is_int(km_fleet_spend_apply(e, (uint32_t)ka, ki.gen, end, 749999), KM_OK, "spend apply");
    km_fleet_key_info fi;
    km_fleet_key_info_get(e, (uint32_t)ka, &fi);
    ok(fi.spend_others_microusd == 749999, "key info shows the others' spend: %llu",
       (unsigned long long)fi.spend_others_microusd);
    is_int(acq_pin(e, ps, "a", 0, &l), KM_OK, "local 250000 + others 749999 < 1 USD: admitted");
    release_with(e, &l, KM_OUT_SUCCESS, 1000, 0, 0);
    km_fleet_spend_apply(e, (uint32_t)ka, ki.gen, end, 750000);
    ok(acq_pin(e, ps, "a", 0, &l) != KM_OK, "others 750000: the hard budget is spent fleet-wide, refused");
    km_fleet_spend_apply(e, (uint32_t)ka, ki.gen, end, 10);
    km_fleet_key_info_get(e, (uint32_t)ka, &fi);
    ok(fi.spend_others_microusd == 750000 && acq_pin(e, ps, "a", 0, &l) != KM_OK,
       "a smaller figure for the same period: the last one is the floor");
    km_fleet_spend_apply(e, (uint32_t)ka, ki.gen, end + 86400000000000ull, 999999);
    km_fleet_key_info_get(e, (uint32_t)ka, &fi);
    ok(fi.spend_others_microusd == 0 && acq_pin(e, ps, "a", 0, &l) == KM_OK,
       "a figure of another period does not count in this one");
    release_with(e, &l, KM_OUT_SUCCESS, 1000, 0, 0);
    is_int(km_fleet_spend_apply(e, (uint32_t)ka, ki.gen + 1, end, 1), KM_ENOKEY,
           "apply for a changed key (gen): KM_ENOKEY");
    is_int(km_fleet_spend_apply(e, (uint32_t)kc, info(e, kc).gen, UINT64_MAX, 1), KM_ENOKEY,
           "apply for a key outside the fleet: KM_ENOKEY");

    /* Soft, lifetime: crossing the budget fleet-wide warns at the settle. */
    km_fleet_spend_apply(e, (uint32_t)kb, info(e, kb).gen, UINT64_MAX, 995000);
    if (acq_pin(e, ps, "b", 0, &l) != KM_OK || release_with(e, &l, KM_OUT_SUCCESS, 1000, 10, 0))
        bail_out("spend on b");
    ki = info(e, kb);
    ok(ki.budget.warnings == 1 && ki.budget.over == 0,
       "soft: a settle that takes the fleet's spend over warns (warnings %u)", ki.budget.warnings);
    is_int(acq_pin(e, ps, "b", 0, &l), KM_OK, "  and a soft budget still admits (the only key left)");
    release_with(e, &l, KM_OUT_SUCCESS, 1000, 0, 0);
    /* Key c, outside the fleet: only its own spend counts. */
    is_int(acq_pin(e, ps, "c", 0, &l), KM_OK, "a key outside the fleet: its budget is local");
    release_with(e, &l, KM_OUT_SUCCESS, 1000, 0, 0);
    km_fleet_release(e, 1);
    rmseg(e);
}

/* Pool budgets under the fleet (the top-level "fleet": {"all": true}): a
 * hard daily one (pool "fp") and a soft lifetime one ("fs"); keys without
 * budgets of their own. */
static const char *POOL_SPEND_CFG =
    "{\"fleet\":{\"all\":true},\"capacity\":{\"pools\":2},\"pools\":["
    " {\"name\":\"fp\",\"budget\":{\"usd\":1.0,\"mode\":\"hard\",\"period\":\"day\",\"tz\":\"UTC\"},"
    "  \"keys\":[{\"id\":\"a\",\"secret\":\"sk-pool-aaaaaaaa\",\"price\":{\"output_per_1k\":1.0}}]},"
    " {\"name\":\"fs\",\"budget\":{\"usd\":1.0,\"mode\":\"soft\"},"
    "  \"keys\":[{\"id\":\"s\",\"secret\":\"sk-pool-ssssssss\",\"price\":{\"output_per_1k\":1.0}}]}]}";
/* A pool budget outside the fleet: its key is a fleet key, the top-level
 * "all" is not set. */
static const char *POOL_LOCAL_CFG =
    "{\"pools\":[{\"name\":\"lp\",\"budget\":{\"usd\":1.0,\"mode\":\"hard\"},"
    "  \"keys\":[{\"id\":\"x\",\"secret\":\"sk-pool-xxxxxxxx\",\"fleet\":true,"
    "            \"price\":{\"output_per_1k\":1.0}}]}]}";

static km_fleet_budget *pbud_of(km_fleet_budget *b, size_t n, int pool)
{
    for (size_t i = 0; i < n; i++)
        if (b[i].key == (KM_FLEET_BUDGET_POOL | (uint32_t)pool))
            return &b[i];
    return NULL;
}

static void test_pool_spend(void)
{
    km_env *e = mkseg(POOL_SPEND_CFG);
    int pp = pool_of(e, "fp"), psf = pool_of(e, "fs");
    km_fleet_budget b[8];
    size_t n = 0;
    km_lease l;
    km_pool_info pi;

    if (km_fleet_claim(e, KM_FLEET_STOP) != KM_OK)
        bail_out("claim");
    if (acq_pin(e, pp, "a", 0, &l) != KM_OK || release_with(e, &l, KM_OUT_SUCCESS, 1000, 250, 0))
        bail_out("spend on fp");
    is_int(km_fleet_spend_collect(e, b, 8, &n), KM_OK, "pool budgets: collect");
    is_int((int)n, 2, "  two budgets: the pools' (their keys have none)");
    km_fleet_budget *x = pbud_of(b, n, pp);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t day = (uint64_t)ts.tv_sec / 86400 * 86400, end = (day + 86400) * 1000000000ull;
    ok(x && x->pool_budget == 1 && x->pool_index == (uint32_t)pp && strcmp(x->pool, "fp") == 0 &&
           x->key_id[0] == '\0' && x->spent == 250000 && x->local == 250000 && x->hard == 1 &&
           x->period == KM_BUDGET_DAY && x->period_start_s == day && x->period_end_ns == end,
       "pool fp: key KM_FLEET_BUDGET_POOL | index, 250000 spent, the period named by its UTC start");
    uint32_t gen = x ? x->key_gen : 0;
    is_int(km_fleet_spend_reported(e, KM_FLEET_BUDGET_POOL | (uint32_t)pp, gen, end, 250000), KM_OK,
           "pool spend reported");
    km_fleet_spend_collect(e, b, 8, &n);
    x = pbud_of(b, n, pp);
    ok(x && x->spent == 0 && x->local == 250000, "  the next collect: nothing new since");
    is_int(km_fleet_spend_apply(e, KM_FLEET_BUDGET_POOL | (uint32_t)pp, gen + 1, end, 1), KM_ENOKEY,
           "pool apply with another gen (another pool in the row): KM_ENOKEY");
    is_int(km_fleet_spend_apply(e, KM_FLEET_BUDGET_POOL | 7u, 0, end, 1), KM_ENOKEY,
           "pool apply for no such pool: KM_ENOKEY");

    /* The other hosts spent 749 999: 1 micro-USD left fleet-wide. */
    is_int(km_fleet_spend_apply(e, KM_FLEET_BUDGET_POOL | (uint32_t)pp, gen, end, 749999), KM_OK,
           "pool spend apply");
    km_fleet_spend_collect(e, b, 8, &n);
    x = pbud_of(b, n, pp);
    ok(x && x->others == 749999, "  collect shows the others' spend");
    is_int(acq_pin(e, pp, "a", 0, &l), KM_OK, "pool: local 250000 + others 749999 < 1 USD: admitted");
    release_with(e, &l, KM_OUT_SUCCESS, 1000, 0, 0);
    km_fleet_spend_apply(e, KM_FLEET_BUDGET_POOL | (uint32_t)pp, gen, end, 750000);
    is_int(acq_pin(e, pp, "a", 0, &l), KM_EBUDGET,
           "pool: others 750000, the hard pool budget is spent fleet-wide: KM_EBUDGET");
    km_fleet_spend_apply(e, KM_FLEET_BUDGET_POOL | (uint32_t)pp, gen, end + 86400000000000ull, 999999);
    is_int(acq_pin(e, pp, "a", 0, &l), KM_OK, "  a figure of another period does not count in this one");
    release_with(e, &l, KM_OUT_SUCCESS, 1000, 0, 0);

    /* reset-spend on the pool: the agent still counts what it removed. */
    uint64_t was = 0;
    int rrc = km_pool_spend_reset(e, pp, &was);
    ok(rrc == KM_OK && was == 250000, "reset-spend on a fleet pool: rc %d, was %llu", rrc,
       (unsigned long long)was);
    km_fleet_spend_collect(e, b, 8, &n);
    x = pbud_of(b, n, pp);
    ok(x && x->local == 250000 && x->spent == 0,
       "  the next collect: the reset 250000 still counted here, nothing new to report");
    x = pbud_of(b, n, psf);

    /* Soft, lifetime: crossing the pool's budget fleet-wide warns. */
    x = pbud_of(b, n, psf);
    is_int(km_fleet_spend_apply(e, KM_FLEET_BUDGET_POOL | (uint32_t)psf, x ? x->key_gen : 0,
                                UINT64_MAX, 995000),
           KM_OK, "soft pool budget: apply");
    if (acq_pin(e, psf, "s", 0, &l) != KM_OK || release_with(e, &l, KM_OUT_SUCCESS, 1000, 10, 0))
        bail_out("spend on fs");
    km_pool_info_get(e, psf, &pi);
    ok(pi.budget.warnings == 1, "soft pool: a settle that takes the fleet's spend over warns (warnings %u)",
       pi.budget.warnings);
    is_int(acq_pin(e, psf, "s", 0, &l), KM_OK, "  and a soft pool budget still admits");
    release_with(e, &l, KM_OUT_SUCCESS, 1000, 0, 0);
    /* A late reply for a pool removed and added again under the same name
     * in the same row: not this pool's (the row's generation moved), so it
     * cannot set the new pool's reported base. */
    size_t m = 0;
    km_fleet_spend_collect(e, b, 8, &m);
    km_fleet_budget *old = pbud_of(b, m, pp), gone = old ? *old : (km_fleet_budget){0};
    char perr[256];
    int prc = km_pool_remove(e, pp, 1000, 0);
    int np = km_pool_add(e,
                         "{\"name\":\"fp\",\"budget\":{\"usd\":1.0,\"mode\":\"hard\","
                         "\"period\":\"day\",\"tz\":\"UTC\"},\"keys\":[{\"id\":\"a2\","
                         "\"secret\":\"sk-pool-a2a2a2a2\",\"price\":{\"output_per_1k\":1.0}}]}",
                         perr, sizeof perr);
    ok(old && prc == KM_OK && np == pp, "pool re-added under its name in its row (%d, was %d: %s)", np,
       pp, np < 0 ? perr : "");
    is_int(km_fleet_spend_reported(e, gone.key, gone.key_gen, gone.period_end_ns, 600000), KM_ENOKEY,
           "  the removed pool's late reply: KM_ENOKEY");
    if (acq_pin(e, np, "a2", 0, &l) != KM_OK || release_with(e, &l, KM_OUT_SUCCESS, 1000, 250, 0))
        bail_out("spend on the new fp");
    km_fleet_spend_collect(e, b, 8, &m);
    old = pbud_of(b, m, np);
    ok(old && old->spent == 250000 && old->key_gen != gone.key_gen,
       "  the new pool's spend is reported whole (%llu)", old ? (unsigned long long)old->spent : 0ull);
    km_fleet_release(e, 1);
    rmseg(e);

    /* A pool outside the fleet: its budget stays this host's. */
    e = mkseg(POOL_LOCAL_CFG);
    int pl = pool_of(e, "lp");
    if (km_fleet_claim(e, KM_FLEET_STOP) != KM_OK)
        bail_out("claim");
    is_int(km_fleet_spend_collect(e, b, 8, &n), KM_OK, "local pool: collect");
    is_int((int)n, 0, "  no budget: the pool is not under the fleet (no top-level all)");
    is_int(km_fleet_spend_apply(e, KM_FLEET_BUDGET_POOL | (uint32_t)pl, 0, UINT64_MAX, 999999),
           KM_ENOKEY, "  apply for it: KM_ENOKEY");
    is_int(acq_pin(e, pl, "x", 0, &l), KM_OK, "  its budget counts the local spend only");
    release_with(e, &l, KM_OUT_SUCCESS, 1000, 0, 0);
    km_fleet_release(e, 1);
    rmseg(e);
}

/* Spend n units of key f's credit (requests, 0 tokens). */
static void spend_f(int n)
{
    for (int i = 0; i < n; i++) {
        km_lease l;
        if (acq_pin(env, P, "f", 0, &l) != KM_OK)
            bail_out("spend_f: not admitted");
        rel_ok(env, &l, -1);
    }
}

static km_fleet_slot rslots[64];

/* The report in the segment (issue 12: a report unanswered must survive
 * its agent): what collects take stays pending until the report stamped
 * with it is acknowledged, a collect while it is stamped gives it again
 * and resets nothing, and a new role holder finds both. */
static void test_report(void)
{
    uint64_t now = km_now_ns();
    km_fleet_report rep = {.seq = 100};
    size_t n = 0;
    collect(now);
    is_int(km_fleet_report_take(env, &rep, rslots, 64, &n), 0, "report: take stamps the pending counts (0)");
    is_int(km_fleet_report_ack(env, 100), KM_OK, "  ack of its seq: forgotten");
    is_int(km_fleet_report_ack(env, 100), KM_EINVAL, "  ack with none stamped: KM_EINVAL");
    is_int(km_fleet_report_undo(env), KM_EINVAL, "  undo with none stamped: KM_EINVAL");
    rep.seq = 0;
    is_int(km_fleet_report_take(env, &rep, rslots, 64, &n), KM_EINVAL, "  take with seq 0: KM_EINVAL");

    grant(KF, KM_WIN_RPM, 20, now + 60 * NS);
    grant(KF, KM_WIN_RPH, 20, now + 60 * NS);
    spend_f(3);
    collect(now);
    is_u64(S(KF, KM_WIN_RPM)->spent, 3, "  collect still gives what was spent since the last (3)");
    spend_f(2);
    collect(now);
    is_u64(S(KF, KM_WIN_RPM)->spent, 2, "  and again (2)");
    rep = (km_fleet_report){.seq = 200, .ack = 100, .epoch = 7, .t_send_ns = now, .flags = 0};
    int rc = km_fleet_report_take(env, &rep, rslots, 64, &n);
    km_fleet_slot *x = slot_of(rslots, n, KF, KM_WIN_RPM);
    ok(rc == 0 && x && x->spent == 5 && x->left == 15 && x->limit == 6000 && !strcmp(x->key_id, "f"),
       "  take: the report holds both collects (spent 5, left 15) and the key's description");
    spend_f(4);
    collect(now);
    ok(S(KF, KM_WIN_RPM)->spent == 5 && S(KF, KM_WIN_RPM)->left == 15,
       "  a collect while it is stamped returns it again, unchanged (spent %llu left %llu)",
       (unsigned long long)S(KF, KM_WIN_RPM)->spent, (unsigned long long)S(KF, KM_WIN_RPM)->left);
    km_fleet_report again = {.seq = 300};
    rc = km_fleet_report_take(env, &again, rslots, 64, &n);
    x = slot_of(rslots, n, KF, KM_WIN_RPM);
    ok(rc == 1 && again.seq == 200 && again.ack == 100 && again.epoch == 7 && again.t_send_ns == now &&
           x && x->spent == 5,
       "  take while stamped: 1, the report as stamped (seq %llu)", (unsigned long long)again.seq);
    is_int(km_fleet_report_ack(env, 199), KM_EINVAL, "  ack of another seq: KM_EINVAL");

    /* A new role holder: the agent dies with report 200 unanswered. */
    is_int(km_fleet_release(env, 0), KM_OK, "  the agent gives its role up (as if killed)");
    pid_t c = fork();
    if (c == 0) {
        km_env *e;
        km_fleet_report r = {.seq = 900};
        size_t m = 0;
        if (km_open(seg, &e) || km_fleet_claim(e, KM_FLEET_STOP))
            _exit(10);
        if (km_fleet_report_take(e, &r, rslots, 64, &m) != 1 || r.seq != 200 || r.t_send_ns != now)
            _exit(11);
        km_fleet_slot *y = slot_of(rslots, m, KF, KM_WIN_RPM);
        if (!y || y->spent != 5 || y->left != 15)
            _exit(12);
        if (km_fleet_report_ack(e, 200) != KM_OK)
            _exit(13);
        /* its first collect after the ack: the 4 spent while stamped */
        if (km_fleet_collect(e, km_now_ns(), rslots, 64, &m) != KM_OK)
            _exit(14);
        y = slot_of(rslots, m, KF, KM_WIN_RPM);
        if (!y || y->spent != 4 || y->left != 11)
            _exit(15);
        _exit(0); /* killed in effect: no release, no report stamped */
    }
    int st;
    waitpid(c, &st, 0);
    is_int(WIFEXITED(st) ? WEXITSTATUS(st) : -1, 0,
           "  a new holder takes report 200 back as stamped, acks it, collects the 4 spent since");
    is_int(km_fleet_claim(env, KM_FLEET_STOP), KM_OK, "  its role is taken over once it is dead");
    rep = (km_fleet_report){.seq = 400};
    rc = km_fleet_report_take(env, &rep, rslots, 64, &n);
    x = slot_of(rslots, n, KF, KM_WIN_RPM);
    ok(rc == 0 && x && x->spent == 4 && x->left == 11,
       "  what it collected and did not report yet is still pending: the next take has it (spent 4)");
    is_int(km_fleet_report_undo(env), KM_OK, "  undo: the stamp taken off");
    spend_f(1);
    collect(now);
    is_u64(S(KF, KM_WIN_RPM)->spent, 1, "  collects go on");
    rep = (km_fleet_report){.seq = 500};
    rc = km_fleet_report_take(env, &rep, rslots, 64, &n);
    x = slot_of(rslots, n, KF, KM_WIN_RPM);
    ok(rc == 0 && x && x->spent == 5 && x->left == 10,
       "  the next take carries the undone report and what came after (spent 4 + 1)");
    is_int(km_fleet_report_ack(env, 500), KM_OK, "  ack");
    collect(now);
    is_u64(S(KF, KM_WIN_RPM)->spent, 0, "  nothing counted twice");
}

/* ------------------------------------------------------- model windows */

/* Pool "m" (per_model): model gpt (token bucket rpm 6000, tpm 600000) and
 * mini (sliding rpm 600, burst 5); fleet key a (no limits of its own),
 * fleet key b (its own rpm, and its own gpt rpm 3000), key c not a fleet
 * key. */
static const char *MCFG =
    "{\"capacity\":{\"processes\":16},"
    " \"pools\":[{\"name\":\"m\",\"strategy\":\"fill_first\",\"model_limits\":\"per_model\","
    "  \"models\":{\"gpt\":{\"rpm\":{\"limit\":6000,\"burst\":6000,\"mode\":\"token_bucket\"},"
    "                      \"tpm\":{\"limit\":600000,\"burst\":600000,\"mode\":\"token_bucket\"}},"
    "             \"mini\":{\"rpm\":{\"limit\":600,\"burst\":5,\"mode\":\"sliding\"}}},"
    "  \"keys\":[{\"id\":\"a\",\"secret\":\"sk-model-aaaaaaaa\",\"fleet\":true},"
    "   {\"id\":\"b\",\"secret\":\"sk-model-bbbbbbbb\",\"fleet\":true,\"limits\":{\"rpm\":60000},"
    "    \"models\":{\"gpt\":{\"rpm\":{\"limit\":3000,\"burst\":3000,\"mode\":\"token_bucket\"}}}},"
    "   {\"id\":\"c\",\"secret\":\"sk-model-cccccccc\",\"fleet\":false}]}]}";
static int PM, KA, KB, KC;
enum { GPT = 1, MINI = 2 }; /* km_fleet_slot.model: index + 1 */

static km_fleet_slot *MSL(int key, uint32_t model, int w)
{
    for (size_t i = 0; i < nslots; i++)
        if ((int)slots[i].key == key && slots[i].model == model && slots[i].window == w)
            return &slots[i];
    bail_out("no slot for key %d model %u window %d", key, model, w);
}

static int mgrant(int key, uint32_t model, int w, uint64_t units, uint64_t deadline)
{
    km_fleet_grant g = {.key = (uint32_t)key, .key_gen = info(env, key).gen, .model = model,
                        .window = w, .grant = units, .deadline_ns = deadline};
    return km_fleet_apply(env, &g, 1);
}

static km_fleet_key_info minfo(int key, uint32_t model)
{
    km_fleet_key_info fi;
    if (km_fleet_model_info_get(env, (uint32_t)key, model - 1, &fi) != KM_OK)
        bail_out("km_fleet_model_info_get");
    return fi;
}

/* n attempts on key id naming model (tokens each): how many admitted, the
 * leases in l (at most 16). */
static int attempts(const char *id, const char *model, uint32_t tokens, int n, km_lease *l)
{
    int got = 0;
    req_model = model;
    for (int i = 0; i < n; i++)
        if (acq_pin(env, PM, id, tokens, &l[got]) == KM_OK)
            got++;
    req_model = NULL;
    return got;
}

static void rel_all(km_lease *l, int n)
{
    for (int i = 0; i < n; i++)
        rel_ok(env, &l[i], -1);
}

static void test_model_collect_apply(void)
{
    uint64_t now = km_now_ns(), dl = now + 60 * NS;
    km_lease l[16];
    collect(now);
    is_u64(nslots, 7, "models: a gpt rpm, tpm, mini rpm; b rpm, gpt rpm, tpm, mini rpm");
    km_fleet_slot *s = MSL(KA, GPT, KM_WIN_RPM);
    ok(s->limit == 6000 && s->mode == KM_MODE_TOKEN_BUCKET && s->period_ms == 60000 &&
           strcmp(s->model_name, "gpt") == 0 && strcmp(s->key_id, "a") == 0 &&
           strcmp(s->pool, "m") == 0,
       "a model slot: model 1, its name, the pool's limit of the model");
    is_u64(MSL(KB, GPT, KM_WIN_RPM)->limit, 3000, "  key b's own limit of gpt (3000)");
    is_u64(MSL(KB, GPT, KM_WIN_TPM)->limit, 600000, "  and the pool's tpm of gpt");
    is_u64(MSL(KA, MINI, KM_WIN_RPM)->limit, 600, "  mini: 600");

    is_int(attempts("a", "gpt", 0, 1, l), 0, "no model credit yet: refused (policy stop)");
    int n = attempts("a", NULL, 0, 1, l);
    is_int(n, 1, "a request naming no model: the key has no fleet window of its own, admitted");
    rel_all(l, n);
    n = attempts("c", "gpt", 0, 1, l);
    is_int(n, 1, "key c, not a fleet key: admitted on gpt without credit");
    rel_all(l, n);

    is_int(mgrant(KA, GPT, KM_WIN_RPM, 5, dl), KM_OK, "apply 5 units of a's gpt rpm");
    mgrant(KA, GPT, KM_WIN_TPM, 1000, dl);
    n = attempts("a", "gpt", 10, 8, l);
    is_int(n, 5, "5 units of gpt credit admit exactly 5 requests naming gpt");
    km_fleet_key_info fi = minfo(KA, GPT);
    ok(fi.mask == ((1u << KM_WIN_RPM) | (1u << KM_WIN_TPM)) && fi.credit[KM_WIN_RPM] == 0 &&
           fi.credit[KM_WIN_TPM] == 950 && fi.deadline_ns == dl,
       "model info: mask, rpm 0, tpm 950 (refusals gave back exactly), deadline");
    is_int(attempts("a", "mini", 0, 1, l + n), 0, "  mini has no credit: refused");
    rel_all(l, n);

    /* Key b: its own rpm credit and gpt's; refused on gpt, the key's own
     * unit goes back. */
    grant(KB, KM_WIN_RPM, 100, dl);
    mgrant(KB, GPT, KM_WIN_RPM, 2, dl);
    mgrant(KB, GPT, KM_WIN_TPM, 1000, dl);
    n = attempts("b", "gpt", 1, 5, l);
    is_int(n, 2, "key b: 2 units of gpt credit admit 2");
    km_fleet_key_info kf;
    km_fleet_key_info_get(env, (uint32_t)KB, &kf);
    is_u64(kf.credit[KM_WIN_RPM], 98, "  the key's own rpm credit: 100 - 2 (refused on gpt: given back)");
    rel_all(l, n);

    collect(km_now_ns());
    s = MSL(KA, GPT, KM_WIN_RPM);
    ok(s->spent == 5 && s->left == 0 && s->returned == 0 && s->refused == 1 + 3 && s->want == 1,
       "collect a/gpt rpm: spent 5 left 0 refused 4 want 1 (got %llu %llu %llu %llu)",
       (unsigned long long)s->spent, (unsigned long long)s->left,
       (unsigned long long)s->refused, (unsigned long long)s->want);
    s = MSL(KA, GPT, KM_WIN_TPM);
    ok(s->spent == 50 && s->left == 950 && s->adj == 0, "  tpm: spent 50 left 950, adj 0 (per key)");
    ok(MSL(KA, MINI, KM_WIN_RPM)->refused == 1, "  mini rpm: 1 refused (got %llu)",
       (unsigned long long)MSL(KA, MINI, KM_WIN_RPM)->refused);
    ok(S(KB, KM_WIN_RPM)->spent == 2 && S(KB, KM_WIN_RPM)->left == 98 &&
           MSL(KB, GPT, KM_WIN_RPM)->spent == 2 && MSL(KB, GPT, KM_WIN_RPM)->refused == 3,
       "  b: own rpm spent 2 left 98; gpt rpm spent 2 refused 3 (got %llu %llu %llu %llu)",
       (unsigned long long)S(KB, KM_WIN_RPM)->spent, (unsigned long long)S(KB, KM_WIN_RPM)->left,
       (unsigned long long)MSL(KB, GPT, KM_WIN_RPM)->spent,
       (unsigned long long)MSL(KB, GPT, KM_WIN_RPM)->refused);

    /* Grants skipped: a window the model does not limit, another key gen,
     * a model past the pool's. */
    mgrant(KA, MINI, KM_WIN_TPM, 7, dl);
    km_fleet_grant g = {.key = (uint32_t)KA, .key_gen = info(env, KA).gen + 1, .model = GPT,
                        .window = KM_WIN_RPM, .grant = 7, .deadline_ns = dl};
    km_fleet_apply(env, &g, 1);
    mgrant(KA, 5, KM_WIN_RPM, 7, dl);
    ok(minfo(KA, MINI).credit[KM_WIN_TPM] == 0 && minfo(KA, GPT).credit[KM_WIN_RPM] == 0,
       "grants for an unlimited model window, a changed key, no such model: skipped");
    collect(km_now_ns());
}

/* 4 processes on key a naming gpt while the agent tops up: admitted +
 * left == granted, exactly; then on mini (sliding 600, burst 5) with
 * plenty of credit: within the local bound, refusals given back. */
static void test_model_multiproc(void)
{
    uint64_t t0 = km_now_ns(), end = t0 + 400 * MS, granted = 0, spent = 0;
    uint64_t tpm0 = minfo(KA, GPT).credit[KM_WIN_TPM];
    crew c;
    req_model = "gpt";
    crew_start(&c, PM, "a", 3, end + 50 * MS);
    while (km_now_ns() < end) {
        mgrant(KA, GPT, KM_WIN_RPM, 40, end + 10 * NS);
        mgrant(KA, GPT, KM_WIN_TPM, 120, end + 10 * NS);
        granted += 40;
        collect(km_now_ns());
        spent += MSL(KA, GPT, KM_WIN_RPM)->spent;
        sleep_until(km_now_ns() + 10 * MS);
    }
    uint64_t total = crew_wait(&c);
    collect(km_now_ns());
    spent += MSL(KA, GPT, KM_WIN_RPM)->spent;
    uint64_t left = MSL(KA, GPT, KM_WIN_RPM)->left;
    diag("gpt: %llu admitted of %llu granted, %llu left", (unsigned long long)total,
         (unsigned long long)granted, (unsigned long long)left);
    is_u64(total + left, granted, "4 processes on a model: admitted + left == granted");
    is_u64(spent, total, "  the collects' spent sums to what was admitted");
    ok(total > 0 && left == 0, "  the workers spent all of it");
    is_u64(MSL(KA, GPT, KM_WIN_TPM)->left + 3 * total, tpm0 + 3 * granted,
           "  gpt tpm: 3 per request, exact");

    collect(km_now_ns());
    t0 = km_now_ns();
    mgrant(KA, MINI, KM_WIN_RPM, 1000, t0 + 60 * NS);
    req_model = "mini";
    crew_start(&c, PM, "a", 0, t0 + 250 * MS);
    total = crew_wait(&c);
    req_model = NULL;
    uint64_t el = km_now_ns() - t0, bound = 5 + el / (60 * NS / 596) + 1;
    collect(km_now_ns());
    diag("mini: %llu admitted in %.0f ms (local bound %llu)", (unsigned long long)total,
         (double)el / 1e6, (unsigned long long)bound);
    ok(total >= 5 && total <= bound, "mini: 4 processes within the model's local bound");
    is_u64(MSL(KA, MINI, KM_WIN_RPM)->left, 1000 - total, "  credit left = 1000 - admitted (exact)");
}

/* Lapse, fallback share and policy on a model's windows. */
static void test_model_lapse_fallback(void)
{
    km_lease l[16];
    uint64_t now = km_now_ns();
    uint64_t held = minfo(KA, MINI).credit[KM_WIN_RPM];
    mgrant(KA, MINI, KM_WIN_RPM, 0, now + 100 * MS);
    sleep_until(now + 150 * MS);
    is_int(attempts("a", "mini", 0, 1, l), 0, "model credit past its deadline: refused (stop)");
    collect(km_now_ns());
    ok(MSL(KA, MINI, KM_WIN_RPM)->returned == held && MSL(KA, MINI, KM_WIN_RPM)->left == 0,
       "  collect voids it: returned %llu (held %llu)",
       (unsigned long long)MSL(KA, MINI, KM_WIN_RPM)->returned, (unsigned long long)held);

    /* gpt rpm 6000: T 10 ms; a share of 50 %%: 20 ms a unit, burst 3. */
    now = km_now_ns();
    km_fleet_grant g = {.key = (uint32_t)KA, .key_gen = info(env, KA).gen, .model = GPT,
                        .window = KM_WIN_RPM, .deadline_ns = now - 1, .fb_ppm = 500000,
                        .fb_burst = 3, .fb_from_ns = now, .fb_until_ns = now + 2 * NS};
    km_fleet_apply(env, &g, 1);
    collect(now + 1);
    int n = attempts("a", "gpt", 0, 6, l);
    is_int(n, 3, "model on fallback: the share's burst (3) admitted");
    rel_all(l, n);
    collect(km_now_ns());
    is_u64(MSL(KA, GPT, KM_WIN_RPM)->fb_spent, 3, "  fb_spent 3");
    km_fleet_key_info fi = minfo(KA, GPT);
    ok(fi.fb_ppm == 500000 && fi.fb_until_ns == now + 2 * NS, "  model info: the share and its end");

    g.fb_until_ns = km_now_ns() - 1;
    km_fleet_apply(env, &g, 1);
    is_int(attempts("a", "gpt", 0, 1, l), 0, "credit and share lapsed, policy stop: refused");
    km_fleet_claim(env, KM_FLEET_LOCAL);
    n = attempts("a", "gpt", 0, 1, l);
    is_int(n, 1, "  policy local: admitted on the local limits");
    rel_all(l, n);
    km_fleet_claim(env, KM_FLEET_STOP);
    collect(km_now_ns());
}

/* A model's limits changed live, by the key (set-limits --model) and by the
 * pool: the slot follows, the counts stay exact across the change. */
static void test_model_live(void)
{
    km_lease l[16];
    char err[256];
    uint64_t dl = km_now_ns() + 60 * NS;
    mgrant(KA, GPT, KM_WIN_RPM, 100, dl);
    mgrant(KA, GPT, KM_WIN_TPM, 100000, dl);
    int n = attempts("a", "gpt", 1, 10, l);
    rel_all(l, n);
    is_int(km_key_set_model_limits(env, KA, "gpt",
                                   "{\"rpm\":{\"limit\":3000,\"burst\":3000,\"mode\":\"token_bucket\"}}",
                                   err, sizeof err),
           KM_OK, "set-limits --model gpt rpm 3000 on key a: %s", err);
    int m = attempts("a", "gpt", 1, 5, l);
    rel_all(l, m);
    collect(km_now_ns());
    km_fleet_slot *s = MSL(KA, GPT, KM_WIN_RPM);
    ok(n == 10 && m == 5 && s->limit == 3000 && s->spent == 15 && s->left == 85,
       "  the slot says 3000; spent 15 left 85 across the change (got %d+%d, %llu %llu)", n, m,
       (unsigned long long)s->spent, (unsigned long long)s->left);
    is_int(km_pool_set(env, PM, "{\"models\":{\"mini\":{\"rpm\":1200}}}", err, sizeof err), KM_OK,
           "set-pool: mini rpm 1200: %s", err);
    mgrant(KA, MINI, KM_WIN_RPM, 4, dl);
    n = attempts("a", "mini", 0, 6, l);
    rel_all(l, n);
    collect(km_now_ns());
    s = MSL(KA, MINI, KM_WIN_RPM);
    ok(n == 4 && s->limit == 1200 && s->spent == 4 && s->left == 0,
       "  mini's slot says 1200; 4 granted, 4 admitted and spent (got %d, %llu)", n,
       (unsigned long long)s->spent);
    ok(MSL(KB, MINI, KM_WIN_RPM)->limit == 1200, "  on key b too");
}

/* kmctl's standard output of `kmctl ARGS <segment>` into out (cap bytes). */
static void kmctl_out(const char *args, char *out, size_t cap)
{
    const char *b = getenv("KM_BUILD") ? getenv("KM_BUILD") : "build";
    char cmd[256];
    size_t k = 0, r;
    snprintf(cmd, sizeof cmd, "%s/kmctl %s %s", b, args, seg);
    FILE *f = popen(cmd, "r");
    while (f && k + 1 < cap && (r = fread(out + k, 1, cap - 1 - k, f)) > 0)
        k += r;
    out[k] = '\0';
    if (f)
        pclose(f);
}

/* inspect (human and --json) lists a key's model credit. */
static void test_model_inspect(void)
{
    static char out[65536];
    kmctl_out("inspect", out, sizeof out);
    ok(strstr(out, "\n  m/a: credit,") && strstr(out, "\n    model gpt: credit rpm 85 tpm "),
       "kmctl inspect: key a and its gpt credit");
    kmctl_out("inspect --json", out, sizeof out);
    json_t *d = json_loads(out, 0, NULL), *a = NULL, *g = NULL, *x;
    size_t i;
    json_array_foreach(json_object_get(json_object_get(d, "fleet"), "keys"), i, x)
        if (strcmp(jstr(x, "key"), "a") == 0)
            a = x;
    json_array_foreach(json_object_get(a, "models"), i, x)
        if (strcmp(jstr(x, "model"), "gpt") == 0)
            g = x;
    ok(g && json_integer_value(json_object_get(json_object_get(g, "credit"), "rpm")) == 85,
       "kmctl inspect --json: keys[a].models[gpt].credit.rpm 85");
    json_decref(d);
}

/* The bye voids the model credit too. */
static void test_model_release(void)
{
    uint64_t held = minfo(KA, GPT).credit[KM_WIN_RPM];
    is_int(km_fleet_release(env, 1), KM_OK, "release, voiding");
    ok(held == 85 && minfo(KA, GPT).credit[KM_WIN_RPM] == 0 && minfo(KA, GPT).deadline_ns == 0,
       "  the model's credit and deadline are gone");
    km_fleet_claim(env, KM_FLEET_STOP);
    collect(km_now_ns());
    is_u64(MSL(KA, GPT, KM_WIN_RPM)->returned, held, "  the next collect returns it (85)");
    /* A holder killed inside a model block's fb_write leaves its count odd
     * (every reader then refuses the share and policy local); the next
     * claim evens it, as a key block's. */
    km__fkey *fm = km__fkeys(env, km__fmodel_ix(env, (uint32_t)KA, GPT - 1));
    ck_pr_store_32(&fm->fb_seq, ck_pr_load_32(&fm->fb_seq) | 1);
    km_fleet_release(env, 0);
    km_fleet_claim(env, KM_FLEET_STOP);
    ok((ck_pr_load_32(&fm->fb_seq) & 1) == 0 && ck_pr_load_64(&fm->fb_until) == 0,
       "  a model block's share left mid-write: the next claim ends it and evens its count");
}

/* A model block's counts go through the report in the segment as a key's
 * do: pending across collects, the stamped report returned unchanged while
 * it is in flight, cleared by its ack. */
static km_fleet_slot *mslot_of(km_fleet_slot *a, size_t n, int key, uint32_t model, int w)
{
    for (size_t i = 0; i < n; i++)
        if ((int)a[i].key == key && a[i].model == model && a[i].window == w)
            return &a[i];
    return NULL;
}

static void test_model_report(void)
{
    km_fleet_slot rs[64];
    size_t n = 0;
    km_lease l[8];
    uint64_t now = km_now_ns(), dl = now + 60 * NS;
    km_fleet_report rep = {.seq = 600};
    collect(now);
    if (km_fleet_report_take(env, &rep, rs, 64, &n) != 0 || km_fleet_report_ack(env, 600) != KM_OK)
        bail_out("model report: clearing what earlier tests left pending");
    mgrant(KA, GPT, KM_WIN_RPM, 10, dl);
    mgrant(KA, GPT, KM_WIN_TPM, 1000, dl);
    int got = attempts("a", "gpt", 10, 3, l);
    rel_all(l, got);
    collect(now);
    is_u64(MSL(KA, GPT, KM_WIN_RPM)->spent, 3, "model report: a/gpt spent 3 since the last collect");
    uint64_t lim = MSL(KA, GPT, KM_WIN_RPM)->limit;
    rep = (km_fleet_report){.seq = 700, .ack = 600, .t_send_ns = now};
    int rc = km_fleet_report_take(env, &rep, rs, 64, &n);
    km_fleet_slot *x = mslot_of(rs, n, KA, GPT, KM_WIN_RPM);
    ok(rc == 0 && x && x->spent == 3 && x->limit == lim && lim && !strcmp(x->model_name, "gpt"),
       "  take: the model's slot in the report (spent 3, its limit and name; rc %d, spent %llu, "
       "limit %llu of %llu)", rc, x ? (unsigned long long)x->spent : 0ull,
       x ? (unsigned long long)x->limit : 0ull, (unsigned long long)lim);
    got = attempts("a", "gpt", 10, 2, l);
    rel_all(l, got);
    collect(now);
    is_u64(MSL(KA, GPT, KM_WIN_RPM)->spent, 3, "  a collect while it is stamped: the model's 3 again");
    is_int(km_fleet_report_ack(env, 700), KM_OK, "  ack");
    collect(now);
    is_u64(MSL(KA, GPT, KM_WIN_RPM)->spent, 2, "  then the 2 spent while it was in flight, once");
}

static void test_models(void)
{
    env = mkseg(MCFG);
    PM = pool_of(env, "m");
    KA = key_of(env, PM, 0);
    KB = key_of(env, PM, 1);
    KC = key_of(env, PM, 2);
    (void)KC;
    if (km_fleet_claim(env, KM_FLEET_STOP) != KM_OK)
        bail_out("claim");
    test_model_collect_apply();
    test_model_multiproc();
    test_model_lapse_fallback();
    test_model_live();
    test_model_inspect();
    test_model_release();
    test_model_report();
    rmseg(env);
}

int main(void)
{
    plan(156 + 42 + 6 + 21 + 3);
    fixtures_init("fleet_seg");
    test_config();
    env = mkseg(CFG);
    P = pool_of(env, "p");
    Q = pool_of(env, "q");
    KF = key_of(env, P, 0);
    KG = key_of(env, P, 1);
    KH = key_of(env, Q, 0);
    (void)KG;
    test_claim();
    test_policy();
    test_collect_apply();
    test_kick();
    test_gen();
    test_inspect();
    test_restore();
    test_lapse();
    test_fallback();
    test_release_void();
    test_multiproc();
    test_multiproc_local();
    test_fallback_undo_race();
    test_report();
    test_health();
    test_spend();
    test_pool_spend();
    rmseg(env);
    test_models();
    return exit_status();
}
