/*
 * tests/fuzz/fuzz_common.h - the prologue the libFuzzer targets share.
 *
 *   #define FUZZ_NAME "attach"   before the include: the target's name in
 *                                oracle messages
 *   FAIL(fmt, ...)               an oracle does not hold: print
 *                                "fuzz_<name>: oracle: <message>" and abort(),
 *                                so libFuzzer keeps the input as a crash
 *
 * The two entry points libFuzzer calls are declared here: every target
 * defines LLVMFuzzerTestOneInput, and LLVMFuzzerInitialize if it needs
 * set-up (environment, limits) once per process.
 */
#ifndef KM_FUZZ_COMMON_H
#define KM_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FUZZ_NAME
#error "define FUZZ_NAME before including fuzz_common.h"
#endif

#define FAIL(...)                                                              \
    do {                                                                       \
        fprintf(stderr, "fuzz_" FUZZ_NAME ": oracle: " __VA_ARGS__);           \
        fputc('\n', stderr);                                                   \
        abort();                                                               \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif /* KM_FUZZ_COMMON_H */
