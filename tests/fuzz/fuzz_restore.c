/*
 * tests/fuzz/fuzz_restore.c - libFuzzer target: km_restore() on arbitrary
 * bytes, with the snapshot key the seeds were taken with.
 *
 * Seeds (tests/fuzz/restore/) are snapshots with encrypted secrets taken
 * by tests/fuzz/mkseeds.c from real segments, under the fixed key below,
 * so the key check and the decryption pass and mutations reach the
 * configuration and state that a restore writes.  A restore that succeeds
 * is checked (km_check, km_snapshot_json) and removed.
 *
 * Segments are sized from the snapshot's capacity, up to gigabytes: the
 * file size limit (RLIMIT_FSIZE, 64 MiB) makes km_create fail with an
 * error instead (SIGXFSZ ignored).
 *
 * Oracles besides the sanitizers: a failed restore leaves no segment (under
 * the name or the temporary one) and no handle; its message is one line and
 * never holds a decrypted secret (the seeds' secrets are known) that the
 * input does not hold in clear.
 */
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#define FUZZ_NAME "restore"
#include "fuzz_common.h"
#include "keymesh.h"

/* The key of the seeds (mkseeds.c): 32 bytes of 0x42. */
static unsigned char key[KM_SNAPSHOT_KEY_BYTES];
/* The seeds' secrets (mkseeds.c configurations). */
static const char *const secrets[] = {
    "sk-demo-aaaa1111", "sk-demo-bbbb2222", "sk-ant-api03-cccc3333", "sk-demo-cccc3333",
    "sk-test-aaaa1111", "sk-test-bbbb2222", "gsk_1234567890abcdef", "gsk_fedcba0987654321",
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    memset(key, 0x42, sizeof key);
    struct rlimit rl = {64u << 20, 64u << 20};
    setrlimit(RLIMIT_FSIZE, &rl);
    signal(SIGXFSZ, SIG_IGN);
    return 0;
}

static void on_check(void *ctx, const char *line) { (void)ctx; (void)line; }

/* Nothing of ours left in /dev/shm. */
static void no_leftovers(const char *prefix)
{
    DIR *d = opendir("/dev/shm");
    struct dirent *de;
    if (!d)
        return;
    while ((de = readdir(d)))
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0) {
            closedir(d);
            FAIL("a failed restore left /dev/shm/%s", de->d_name);
        }
    closedir(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[64], err[512];
    km_env *e = (km_env *)(uintptr_t)1;
    snprintf(name, sizeof name, "kmfz-r-%d", (int)getpid());
    km_unlink(name);

    int rc = km_restore(name, (const char *)data, size, key, 0600, &e, err, sizeof err);
    if (rc == KM_OK) {
        if (!e)
            FAIL("KM_OK without a handle");
        char *snap = NULL;
        (void)km_check(e, on_check, NULL);
        if (km_snapshot_json(e, &snap) == KM_OK)
            free(snap);
        km_close(e);
        km_unlink(name);
    } else {
        if (e)
            FAIL("error %d with a handle", rc);
        if (strchr(err, '\n'))
            FAIL("message not one line: %s", err);
        /* (Unless the input holds it in clear: the fuzzer learns strings
         * from comparisons, and a message may quote the input's own names.) */
        for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++)
            if (strstr(err, secrets[i]) && !memmem(data, size, secrets[i], strlen(secrets[i])))
                FAIL("message holds a decrypted secret: %s", err);
        no_leftovers(name);
    }
    return 0;
}
