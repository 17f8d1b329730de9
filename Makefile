# KeyMesh - plain Makefile.
#
#   make            build build/libkeymesh.so.$(MAJOR), build/libkeymesh.a, build/kmctl
#   make test       build and run the TAP suite with prove (installs missing deps)
#   make demo       create a segment, run a prefork pool against it, inspect it
#   make bench      short benchmark run (SUMMARY lines)
#   make install    PREFIX=/usr/local DESTDIR= libdir= includedir= mandir=
#   make man        the man pages kmctl(1), keymesh(3), keymesh-config(5)
#   make help       every target, one line each
#   make SAN=address,undefined test   sanitizer build (separate build dir)
#   make WERROR=1   warnings are errors (CI)

MAJOR   := 0
VERSION := 0.1.0

PREFIX     ?= /usr/local
DESTDIR    ?=
libdir     ?= $(PREFIX)/lib
includedir ?= $(PREFIX)/include
bindir     ?= $(PREFIX)/bin
pkgconfigdir ?= $(libdir)/pkgconfig
datadir    ?= $(PREFIX)/share
mandir     ?= $(datadir)/man
bashcompdir ?= $(datadir)/bash-completion/completions

CC      ?= cc
PKGS    := ck jansson libsodium
DEPS_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
DEPS_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wformat=2 -Wno-format-nonliteral -Wpointer-arith -Wcast-align=strict \
        -Wvla -Wundef
ifeq ($(WERROR),1)
WARN += -Werror
endif

OPT ?= -O2 -g
ifneq ($(SAN),)
BUILD ?= build-san
SANFLAGS := -fsanitize=$(SAN) -fno-sanitize-recover=all -fno-omit-frame-pointer
# Iteration counts in tests are lowered under sanitizers.
SANFLAGS += -DKM_TEST_SANITIZER=1
else
BUILD ?= build
SANFLAGS :=
endif

CFLAGS  ?=
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(SANFLAGS) -Iinclude $(DEPS_CFLAGS)
LDFLAGS += $(SANFLAGS)
LIBS    := $(DEPS_LIBS) -lpthread -lm

LIB_SRC := $(wildcard shm/*.c) $(wildcard src/*.c)
LIB_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(LIB_SRC))
LIB_PIC := $(patsubst %.c,$(BUILD)/pic/%.o,$(LIB_SRC))
# The provider presets, compiled in as a generated C string (no path is
# looked up at run time; docs/config.md, "Presets").  Its objects come from
# the library's own pattern rules, under $(BUILD)/obj/$(BUILD)/gen/.
PRESETS_C := $(BUILD)/gen/presets_json.c
LIB_OBJ += $(BUILD)/obj/$(PRESETS_C:.c=.o)
LIB_PIC += $(BUILD)/pic/$(PRESETS_C:.c=.o)
$(PRESETS_C): presets/presets.json presets/embed.sh
	@mkdir -p $(dir $@)
	sh presets/embed.sh presets/presets.json km__presets_builtin > $@.tmp && mv $@.tmp $@

SONAME  := libkeymesh.so.$(MAJOR)
SHLIB   := $(BUILD)/libkeymesh.so.$(VERSION)
STLIB   := $(BUILD)/libkeymesh.a
KMCTL   := $(BUILD)/kmctl

TEST_SRC := $(wildcard tests/t_*.c)
TEST_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
# Helpers other tests start (tests/helpers/): built with the tests, not run
# by prove.
TEST_HELPERS := $(BUILD)/tests/helpers/hold $(BUILD)/tests/helpers/loadgen
TEST_RUN := $(TEST_BIN)
TEST_SH  := $(wildcard tests/t_*.sh)
BENCH_SRC := $(wildcard bench/bench_*.c)
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))
EXAMPLE_SRC := $(wildcard examples/*.c)
EXAMPLE_BIN := $(patsubst examples/%.c,$(BUILD)/examples/%,$(EXAMPLE_SRC))

# Per-test time limit (seconds); prove runs each program under it.
TEST_TIMEOUT ?= 300

.PHONY: all deps test check torture bench demo install uninstall clean examples \
        deps-extra bench-compare man help check-layers cross-deps cross-test

# Fragments owned by the benchmark suite and the bindings: each may add
# targets and hook `deps-extra` (packages its tests or runs need) and
# `bench-compare` (baselines run by make bench).
.DEFAULT_GOAL := all
-include bench/bench.mk
-include bindings/bindings.mk
-include tests/fuzz/fuzz.mk
-include tools/sync/sync.mk

all: $(SHLIB) $(STLIB) $(KMCTL)

# ---------------------------------------------------------------- dependencies
# Ask pkg-config first; run apt-get only for what is missing.
deps: deps-extra
	@missing=""; \
	pkg-config --exists ck      2>/dev/null || missing="$$missing libck-dev"; \
	pkg-config --exists liburcu 2>/dev/null || missing="$$missing liburcu-dev"; \
	pkg-config --exists jansson 2>/dev/null || missing="$$missing libjansson-dev"; \
	pkg-config --exists libsodium 2>/dev/null || missing="$$missing libsodium-dev"; \
	pkg-config --exists sqlite3 2>/dev/null || missing="$$missing libsqlite3-dev"; \
	pkg-config --exists libmicrohttpd 2>/dev/null || missing="$$missing libmicrohttpd-dev"; \
	pkg-config --exists ncursesw 2>/dev/null || missing="$$missing libncurses-dev"; \
	command -v scdoc >/dev/null      || missing="$$missing scdoc"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v tmux >/dev/null       || missing="$$missing tmux"; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	command -v prove >/dev/null      || missing="$$missing perl"; \
	command -v $(CC) >/dev/null      || missing="$$missing gcc"; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "deps: need root to install:$$missing" >&2; exit 1; fi; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	    || { echo "deps: apt-get install$$missing failed" >&2; exit 1; }; \
	fi

# ------------------------------------------------------------------- library
$(BUILD)/obj/%.o: %.c include/keymesh.h $(wildcard shm/*.h src/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DKM_BUILDING_LIBRARY -fvisibility=hidden -c $< -o $@

$(BUILD)/pic/%.o: %.c include/keymesh.h $(wildcard shm/*.h src/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DKM_BUILDING_LIBRARY -fvisibility=hidden -fPIC -c $< -o $@

$(STLIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(SHLIB): $(LIB_PIC)
	$(CC) $(LDFLAGS) -shared -Wl,-soname,$(SONAME) -o $@ $^ $(LIBS)
	ln -sf libkeymesh.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/libkeymesh.so

# Tools, tests, benchmarks and examples link the static library, so they run
# from the build tree without LD_LIBRARY_PATH.
# kmctl alone links SQLite (persist, usage): the library never does, and of
# kmctl's files only tools/kmctl/cmd_usage.c is compiled with its flags.
SQLITE_CFLAGS := $(shell pkg-config --cflags sqlite3 2>/dev/null)
SQLITE_LIBS   := $(shell pkg-config --libs sqlite3 2>/dev/null)
KMCTL_SRC := $(wildcard tools/kmctl/*.c)
KMCTL_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(KMCTL_SRC))
$(BUILD)/tools/kmctl/%.o: tools/kmctl/%.c tools/kmctl/kmctl.h include/keymesh.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/tools/kmctl/cmd_usage.o: CFLAGS += $(SQLITE_CFLAGS)
# kmctl serve alone links libmicrohttpd, kmctl top alone ncurses.
MHD_CFLAGS := $(shell pkg-config --cflags libmicrohttpd 2>/dev/null)
MHD_LIBS   := $(shell pkg-config --libs libmicrohttpd 2>/dev/null)
$(BUILD)/tools/kmctl/cmd_serve.o: CFLAGS += $(MHD_CFLAGS)
CURSES_CFLAGS := $(shell pkg-config --cflags ncursesw 2>/dev/null)
CURSES_LIBS   := $(shell pkg-config --libs ncursesw 2>/dev/null || echo -lncursesw)
$(BUILD)/tools/kmctl/cmd_top.o: CFLAGS += $(CURSES_CFLAGS)
$(KMCTL): $(KMCTL_OBJ) $(STLIB)
	$(CC) $(CFLAGS) -o $@ $(KMCTL_OBJ) $(STLIB) $(LDFLAGS) $(LIBS) $(SQLITE_LIBS) $(MHD_LIBS) \
	  $(CURSES_LIBS)

$(BUILD)/tests/%: tests/%.c tests/tap.h tests/testlib.h $(STLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Ishm -Isrc -o $@ $< $(STLIB) $(LDFLAGS) $(LIBS) -lm

$(BUILD)/bench/%: bench/%.c $(STLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(STLIB) $(LDFLAGS) $(LIBS) -lm

$(BUILD)/examples/%: examples/%.c $(STLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(STLIB) $(LDFLAGS) $(LIBS)

examples: $(EXAMPLE_BIN)

# --------------------------------------------------------------------- tests
# Each program runs in its own process under a time limit; prove prints TAP
# and exits non-zero on any failure.
test: deps
	@$(MAKE) --no-print-directory all $(TEST_BIN) $(TEST_HELPERS)
	KM_BUILD=$(BUILD) prove -f --exec 'timeout $(TEST_TIMEOUT)' $(TEST_RUN) $(TEST_SH)

check: test

# Long crash-torture runs (not part of make test): KM_TORTURE_S seconds each.
TORTURE_S ?= 30
torture: deps
	@$(MAKE) --no-print-directory all $(TEST_BIN) $(TEST_HELPERS)
	KM_BUILD=$(BUILD) KM_TORTURE_S=$(TORTURE_S) prove -v $(BUILD)/tests/t_crash $(BUILD)/tests/t_reconfig

bench: deps
	@$(MAKE) --no-print-directory all $(BENCH_BIN)
	@for b in $(BENCH_BIN); do $$b --short || exit 1; done
	@$(MAKE) --no-print-directory bench-compare

demo: deps
	@$(MAKE) --no-print-directory all $(EXAMPLE_BIN)
	KM_BUILD=$(BUILD) sh examples/demo.sh

# ------------------------------------------------------------------- install
$(BUILD)/keymesh.pc: Makefile
	@mkdir -p $(dir $@)
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(libdir)' 'includedir=$(includedir)' '' \
	  'Name: keymesh' 'Description: shared-memory API key pool with lock-free acquire' \
	  'Version: $(VERSION)' 'Requires.private: ck jansson libsodium' \
	  'Libs: -L$${libdir} -lkeymesh' 'Libs.private: -lpthread' 'Cflags: -I$${includedir}' > $@

# ---------------------------------------------------------------- man pages
# From scdoc sources in docs/man/ (NAME.SECTION.scd -> NAME.SECTION).
MAN_SRC := $(wildcard docs/man/*.scd)
MAN_OUT := $(patsubst docs/man/%.scd,$(BUILD)/man/%,$(MAN_SRC))
man: $(MAN_OUT)
$(BUILD)/man/%: docs/man/%.scd
	@mkdir -p $(dir $@)
	@command -v scdoc >/dev/null || { echo "man: scdoc not found: run make deps (as root) or apt-get install scdoc" >&2; exit 1; }
	scdoc <$< >$@.tmp && mv $@.tmp $@

install: all $(BUILD)/keymesh.pc man
	install -d $(DESTDIR)$(libdir) $(DESTDIR)$(includedir) $(DESTDIR)$(bindir) $(DESTDIR)$(pkgconfigdir)
	install -m 0755 $(SHLIB) $(DESTDIR)$(libdir)/
	ln -sf libkeymesh.so.$(VERSION) $(DESTDIR)$(libdir)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(libdir)/libkeymesh.so
	install -m 0644 $(STLIB) $(DESTDIR)$(libdir)/
	install -m 0644 include/keymesh.h $(DESTDIR)$(includedir)/
	install -m 0755 $(KMCTL) $(DESTDIR)$(bindir)/
	install -m 0644 $(BUILD)/keymesh.pc $(DESTDIR)$(pkgconfigdir)/
	for m in $(MAN_OUT); do s=$${m##*.}; install -d $(DESTDIR)$(mandir)/man$$s && \
	  install -m 0644 $$m $(DESTDIR)$(mandir)/man$$s/ || exit 1; done
	install -d $(DESTDIR)$(bashcompdir)
	install -m 0644 tools/kmctl/kmctl.bash $(DESTDIR)$(bashcompdir)/kmctl

uninstall:
	rm -f $(DESTDIR)$(libdir)/libkeymesh.so.$(VERSION) $(DESTDIR)$(libdir)/$(SONAME) \
	      $(DESTDIR)$(libdir)/libkeymesh.so $(DESTDIR)$(libdir)/libkeymesh.a \
	      $(DESTDIR)$(includedir)/keymesh.h $(DESTDIR)$(bindir)/kmctl \
	      $(DESTDIR)$(pkgconfigdir)/keymesh.pc $(DESTDIR)$(bashcompdir)/kmctl
	for m in $(notdir $(MAN_OUT)); do rm -f $(DESTDIR)$(mandir)/man$${m##*.}/$$m; done

clean:
	rm -rf build build-san build-*

help:
	@echo 'make              build the library (shared and static) and kmctl in $(BUILD)/'
	@echo 'make deps         install what is missing to build and test (as root; apt-get)'
	@echo 'make test         build and run the TAP suite with prove (make check: the same)'
	@echo 'make torture      long crash-torture runs (TORTURE_S=30 seconds each)'
	@echo 'make bench        short benchmark run (SUMMARY lines), then bench-compare'
	@echo 'make demo         create a segment, run a prefork pool against it, inspect it'
	@echo 'make examples     build examples/*.c'
	@echo 'make man          the man pages kmctl(1), keymesh(3), keymesh-config(5) (scdoc)'
	@echo 'make install      library, header, kmctl, keymesh.pc, man pages, bash completion'
	@echo '                  (PREFIX=$(PREFIX) DESTDIR= libdir= includedir= bindir= mandir=)'
	@echo 'make uninstall    remove what install put there'
	@echo 'make clean        remove the build directories'
	@echo 'make check-layers shm/ below src/, tools/ and bindings/ on keymesh.h only'
	@echo 'make cross-test   the library and C tests for aarch64 under qemu-user (cross-deps: as root)'
	@echo 'make help         this list'
	@echo 'Fragments: make bench-full (long comparisons, bench/bench.mk), make fuzz and'
	@echo '  fuzz-build (libFuzzer targets, tests/fuzz/fuzz.mk), deps-extra (bindings/bindings.mk)'
	@echo 'Options: WERROR=1 (warnings are errors), SAN=address,undefined (sanitizers, in build-san/)'

# ------------------------------------------------------------------ layering
# shm/ below src/, tools/ and bindings/ on keymesh.h only (.ci/check-layers.sh:
# one line per edge, non-zero if any).  Reads the objects of $(BUILD)/obj and
# compiles tools/ itself, with CFLAGS less -Isrc -Ishm.
check-layers: all
	CC='$(CC)' CFLAGS='$(CFLAGS) $(SQLITE_CFLAGS)' bash .ci/check-layers.sh $(BUILD)

# ------------------------------------------------------------------- aarch64
# make cross-test: the library and the C tests built with Debian's cross
# compiler into build-aarch64/ and run under qemu-user (about 35 s from
# clean; .ci/run runs it).  jansson, libsodium and SQLite come from Debian multiarch (make
# cross-deps, as root).  ck does not: libck-dev:amd64 and :arm64 cannot be
# installed together (their ck_md.h differ: CK_MD_TSO against CK_MD_RMO),
# and installing one removes the other, so libck-dev:arm64 is unpacked into
# build-aarch64/ck and linked statically.  pkg-config reads arm64 .pc files
# only (amd64's ck.pc adds -D__x86_64__).
CROSS       ?= aarch64-linux-gnu
CROSS_BUILD ?= build-aarch64
CROSS_PKGS  := libjansson-dev:arm64 libsodium-dev:arm64 libsqlite3-dev:arm64
CROSS_CK    := $(CROSS_BUILD)/ck
CROSS_PC    := $(abspath $(CROSS_CK))/pkgconfig:/usr/lib/$(CROSS)/pkgconfig:/usr/share/pkgconfig
# No -L /usr/$(CROSS): with it qemu runs the cross toolchain's ld.so with the
# libc of libc6:arm64 (from the host's ld.so.cache), a mismatch that hangs
# forked children.  Without it, libc6:arm64 (pulled in by CROSS_PKGS)
# provides both.
QEMU        ?= qemu-aarch64
CROSS_TESTS := $(patsubst $(BUILD)/%,$(CROSS_BUILD)/%,$(TEST_RUN))

cross-deps:
	@missing=""; \
	command -v $(CROSS)-gcc >/dev/null || missing="$$missing gcc-$(CROSS)"; \
	command -v $(firstword $(QEMU)) >/dev/null || missing="$$missing qemu-user"; \
	for p in $(CROSS_PKGS); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "cross-deps: installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "cross-deps: need root to install:$$missing" >&2; exit 1; fi; \
	  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64; \
	  (apt-get update -qq -o DPkg::Lock::Timeout=600 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     -o DPkg::Lock::Timeout=600 --no-remove $$missing >/dev/null) \
	    || { echo "cross-deps: apt-get install$$missing failed" >&2; exit 1; }; \
	fi

# libck-dev:arm64 unpacked, its ck.pc pointed there, libck.a only.
$(CROSS_CK)/pkgconfig/ck.pc: | cross-deps
	rm -rf $(CROSS_CK) && mkdir -p $(CROSS_CK)/pkgconfig
	cd $(CROSS_CK) && apt-get download -qq -o APT::Sandbox::User=root libck-dev:arm64
	dpkg-deb -x $(CROSS_CK)/libck-dev_*_arm64.deb $(CROSS_CK)/root
	rm -f $(CROSS_CK)/root/usr/lib/$(CROSS)/libck.so
	sed 's|=/usr|=$(abspath $(CROSS_CK))/root/usr|' \
	  $(CROSS_CK)/root/usr/lib/$(CROSS)/pkgconfig/ck.pc >$@
	printf '#include <ck_md.h>\n#ifndef CK_MD_RMO\n#error ck_md.h is not arm64 (RMO)\n#endif\n' | \
	  $(CROSS)-gcc $$(PKG_CONFIG_LIBDIR=$(CROSS_PC) pkg-config --cflags ck) -E -x c - >/dev/null \
	  || { rm -f $@; exit 1; }

# The programs link tests/helpers/qemu_procstat.c (qemu's own /proc/self/stat
# is a tick off the kernel's; see there).  Tests exec kmctl through a script
# that starts it under qemu (no binfmt_misc here).
CROSS_SHIM := $(CROSS_BUILD)/tests/helpers/qemu_procstat.o
$(CROSS_SHIM): tests/helpers/qemu_procstat.c | cross-deps
	@mkdir -p $(dir $@)
	$(CROSS)-gcc -std=c11 -D_GNU_SOURCE -O2 $(WARN) -c $< -o $@

# Rebuilt when the shim or the unpacked ck changes.
$(CROSS_TESTS) $(CROSS_BUILD)/kmctl: $(CROSS_SHIM)
$(CROSS_TESTS) $(CROSS_BUILD)/kmctl $(patsubst $(BUILD)/%,$(CROSS_BUILD)/%,$(LIB_OBJ)): \
  $(CROSS_CK)/pkgconfig/ck.pc

cross-test: $(CROSS_SHIM) $(CROSS_CK)/pkgconfig/ck.pc
	PKG_CONFIG_LIBDIR=$(CROSS_PC) $(MAKE) --no-print-directory BUILD=$(CROSS_BUILD) \
	  CC=$(CROSS)-gcc SAN= LDFLAGS='-Wl,--wrap=fopen $(CROSS_SHIM)' $(CROSS_BUILD)/kmctl $(CROSS_TESTS)
	@mkdir -p $(CROSS_BUILD)/qemu
	printf '#!/bin/sh\nexec %s %s/kmctl "$$@"\n' '$(QEMU)' '$(abspath $(CROSS_BUILD))' >$(CROSS_BUILD)/qemu/kmctl
	chmod +x $(CROSS_BUILD)/qemu/kmctl
	KM_BUILD=$(CROSS_BUILD)/qemu prove -f --exec 'timeout $(TEST_TIMEOUT) $(QEMU)' $(CROSS_TESTS)

# Empty unless a fragment above adds prerequisites or recipes (double-colon
# rules, so each fragment can add its own).
deps-extra::
bench-compare::
