# tests/fuzz/fuzz.mk - libFuzzer targets (issue 7).  Included by the main
# Makefile (-include tests/fuzz/fuzz.mk); until then:
#   make -f Makefile -f tests/fuzz/fuzz.mk fuzz
#
#   make fuzz                  build with clang, run every target FUZZ_S s
#   make fuzz FUZZ_S=300       longer runs
#   make fuzz FUZZ_TARGETS=attach FUZZ_SKIP_KNOWN=1
#   make fuzz-build            build only (build-fuzz/fuzz_<target>)
#   make fuzz-seeds            rewrite the attach seeds (real segments)
#
# One target runs at a time, one worker each (-jobs/-workers are not used):
# the machine is shared.  New corpus entries go to build-fuzz/corpus/<t>;
# the seeds in tests/fuzz/<t> are read, never written.  Crashes go to
# tests/fuzz/crashes/ (gitignored).  Exit status: non-zero if any target
# crashed.

FUZZ_CC ?= $(shell command -v clang-14 2>/dev/null || command -v clang 2>/dev/null || echo clang-14)
FUZZ_S ?= 60
FUZZ_TARGETS ?= config provider attach restore
FUZZ_SKIP_KNOWN ?= 0
FUZZ_BUILD := build-fuzz
FUZZ_SAN := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
            -fno-omit-frame-pointer
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -O1 -g -Wall -Wextra -Wno-unused-parameter \
               -Iinclude -Ishm -Isrc $(DEPS_CFLAGS) -DKM_BUILDING_LIBRARY
FUZZ_LIBS := $(DEPS_LIBS) -lpthread -lm

FUZZ_LIB_SRC := $(wildcard shm/*.c) $(wildcard src/*.c)
FUZZ_LIB_OBJ := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(FUZZ_LIB_SRC))
FUZZ_SEED_OBJ := $(patsubst %.c,$(FUZZ_BUILD)/plain/%.o,$(FUZZ_LIB_SRC))
FUZZ_BIN := $(patsubst %,$(FUZZ_BUILD)/fuzz_%,$(FUZZ_TARGETS))
FUZZ_HDRS := include/keymesh.h $(wildcard shm/*.h src/*.h)

.PHONY: fuzz fuzz-build fuzz-seeds fuzz-deps

fuzz-deps:
	@command -v $(FUZZ_CC) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "fuzz: need clang-14 (apt-get install clang-14)" >&2; exit 1; fi; \
	  echo "fuzz: installing clang-14"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-14 >/dev/null) \
	    || { echo "fuzz: apt-get install clang-14 failed" >&2; exit 1; }; }

$(FUZZ_BUILD)/obj/%.o: %.c $(FUZZ_HDRS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -c $< -o $@

# The seed writer: the library without instrumentation.
$(FUZZ_BUILD)/plain/%.o: %.c $(FUZZ_HDRS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -O2 -c $< -o $@

$(FUZZ_BUILD)/fuzz_attach: tests/fuzz/fuzz_attach.c $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -o $@ $^ -Wl,--wrap=mmap,--wrap=munmap $(FUZZ_LIBS)

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -o $@ $^ $(FUZZ_LIBS)

$(FUZZ_BUILD)/mkseeds: tests/fuzz/mkseeds.c $(FUZZ_SEED_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -O2 -o $@ $^ $(FUZZ_LIBS)

# fuzz-deps first (prerequisites are made left to right).
fuzz-build: fuzz-deps $(FUZZ_BIN)

fuzz-seeds: fuzz-deps $(FUZZ_BUILD)/mkseeds
	$(FUZZ_BUILD)/mkseeds tests/fuzz/attach tests/fuzz/restore
	FUZZ_CC=$(FUZZ_CC) sh tests/fuzz/derive.sh

fuzz: fuzz-build
	FUZZ_S=$(FUZZ_S) FUZZ_BUILD=$(FUZZ_BUILD) KM_FUZZ_SKIP_KNOWN=$(FUZZ_SKIP_KNOWN) \
	  sh tests/fuzz/run.sh $(FUZZ_TARGETS)
