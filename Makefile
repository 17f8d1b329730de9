# KeyMesh - plain Makefile.
#
#   make            build build/libkeymesh.so.$(MAJOR), build/libkeymesh.a, build/kmctl
#                   (checks its dependencies first: "Dependencies" below)
#   make deps       install what make and make demo need (as root; only what is missing)
#   make deps-test  install that and what make test needs (prove, the bindings' tests)
#   make test       build and run the TAP suite with prove (runs deps-test)
#   make demo       create a segment, run a prefork pool against it, inspect it (runs deps)
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

.PHONY: all deps test check torture soak bench demo install uninstall clean examples \
        deps-extra bench-compare man help check-layers cross-deps cross-test

# Fragments owned by the benchmark suite and the bindings: each may add
# targets and hook `deps-extra` (packages its tests or runs need) and
# `bench-compare` (baselines run by make bench).
.DEFAULT_GOAL := all
# The dependency checks come first among all's prerequisites, before any a
# fragment adds (bindings.mk adds the Python extension, which links the
# library): a missing package stops make before anything is compiled.
all: km-need-cc km-need-lib km-need-kmctl
-include bench/bench.mk
-include bindings/bindings.mk
-include tests/fuzz/fuzz.mk
-include tools/sync/sync.mk

# The checks first, so that a missing dependency stops make before it
# compiles anything.
all: km-need-cc km-need-lib km-need-kmctl $(SHLIB) $(STLIB) $(KMCTL)

# ---------------------------------------------------------------- dependencies
# What each part of the build needs: KM_NEED_<part>, one KIND:NAME:PACKAGE
# per dependency, PACKAGE being the Debian package that provides it:
#   pc:NAME    pkg-config knows module NAME    cmd:NAME   command NAME is on PATH
#   file:NAME  NAME is an executable file      deb:NAME   Debian says NAME is installed
# A rule that needs a part names `| km-need-<part>` among its prerequisites:
# a missing dependency stops make before anything is compiled or linked,
# with one message naming what to install.  `make deps` installs the parts
# of KM_DEPS_BUILD, `make deps-test` those of KM_DEPS_TEST too.  To add a
# part: define KM_NEED_<part>, add `| km-need-<part>` to the rules that
# need it, and name the part in KM_DEPS_BUILD (for what `make` builds) or
# KM_DEPS_TEST.
KM_NEED_cc    := cmd:$(firstword $(CC)):gcc cmd:pkg-config:pkg-config
KM_NEED_lib   := pc:ck:libck-dev pc:jansson:libjansson-dev pc:libsodium:libsodium-dev
# kmctl links SQLite (persist, usage), libmicrohttpd (serve), ncurses (top)
# and hiredis (sync, fleet: the fleet ledger's client, tools/sync/).
KM_NEED_kmctl := pc:sqlite3:libsqlite3-dev pc:libmicrohttpd:libmicrohttpd-dev pc:ncursesw:libncurses-dev \
                 pc:hiredis:libhiredis-dev
# make man (and make install): scdoc.
KM_NEED_man   := cmd:scdoc:scdoc
KM_NEED_prove := cmd:prove:perl
# The operator tests: a real Prometheus (and promtool) scraping kmctl serve,
# kmctl top driven under tmux.
KM_NEED_ops   := cmd:prometheus:prometheus cmd:promtool:prometheus cmd:tmux:tmux
# t_persist_kill.sh stops a persist at a chosen instruction under gdb.
KM_NEED_gdb   := cmd:gdb:gdb
# Budgets in named time zones read the system's tzdata at configuration
# time (src/tz.c); t_budget and t_kmctl.sh use it.
KM_NEED_tzdata := deb:tzdata:tzdata
KM_DEPS_BUILD := cc lib kmctl man tzdata
KM_DEPS_TEST  := prove ops gdb

# $(call km_missing,PART...): the Debian packages for what PARTs lack.
# $(call km_lacking,PART...): what they lack, for the message.
km_field    = $(word $(1),$(subst :, ,$(2)))
km_present  = $(shell case '$(call km_field,1,$(1))' in \
                (pc) pkg-config --exists '$(call km_field,2,$(1))' ;; \
                (cmd) command -v '$(call km_field,2,$(1))' ;; \
                (file) test -x '$(call km_field,2,$(1))' ;; \
                (deb) dpkg-query -W -f='$${Status}' '$(call km_field,2,$(1))' | grep -q 'ok installed' ;; \
                (*) false ;; esac >/dev/null 2>&1 && echo y)
km_absent   = $(foreach d,$(foreach p,$(1),$(KM_NEED_$(p))),$(if $(call km_present,$(d)),,$(d)))
km_missing  = $(sort $(foreach d,$(call km_absent,$(1)),$(call km_field,3,$(d))))
km_comma   := ,
km_space   := $(subst x,,x x)
km_lacking  = $(subst $(km_space),$(km_comma)$(km_space),$(strip \
                $(foreach d,$(call km_absent,$(1)),$(call km_field,2,$(d)))))

# km-need-<part>: stop with the packages to install when the part lacks
# something (pc: also check PKG_CONFIG_PATH / PKG_CONFIG_LIBDIR).
KM_NEED_TARGETS := $(patsubst KM_NEED_%,km-need-%,$(filter KM_NEED_%,$(.VARIABLES)))
.PHONY: $(KM_NEED_TARGETS)
$(KM_NEED_TARGETS): km-need-%:
	@$(if $(call km_missing,$*),\
	  printf '%s\n' 'make: $* needs $(call km_lacking,$*): not found by pkg-config or on PATH' \
	    'make: run make $(if $(filter $*,$(KM_DEPS_TEST)),deps-test,deps) (as root) or install: $(call km_missing,$*)' >&2; \
	  exit 1,:)

# $(call km_install,TARGET,PART...): install the missing packages of PARTs.
# Checked first: nothing missing, nothing done; as another user than root,
# it names them and fails.  RUNLEVEL=1: a package's postinst starts no
# service (nginx would take port 80; the tests start their own servers).
km_install = @missing='$(call km_missing,$(2))'; \
  if [ -n "$$missing" ]; then \
    if [ "$$(id -u)" != 0 ]; then echo "$(1): need root to install: $$missing" >&2; exit 1; fi; \
    echo "$(1): installing: $$missing"; \
    (apt-get update -qq -o DPkg::Lock::Timeout=600 && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive \
       apt-get install -y -qq -o DPkg::Lock::Timeout=600 $$missing >/dev/null) \
      || { echo "$(1): apt-get install $$missing failed" >&2; exit 1; }; \
  fi

# make deps: what `make` and `make demo` need.  make deps-test: that, prove,
# and deps-extra (the packages the fragments' tests need, e.g. the
# bindings': python3, gunicorn, nginx with its Lua module, curl).
deps:
	$(call km_install,deps,$(KM_DEPS_BUILD))

deps-test: deps deps-extra
	$(call km_install,deps-test,$(KM_DEPS_TEST))

# ------------------------------------------------------------------- library
$(BUILD)/obj/%.o: %.c include/keymesh.h $(wildcard shm/*.h src/*.h) | km-need-cc km-need-lib
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DKM_BUILDING_LIBRARY -fvisibility=hidden -c $< -o $@

$(BUILD)/pic/%.o: %.c include/keymesh.h $(wildcard shm/*.h src/*.h) | km-need-cc km-need-lib
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DKM_BUILDING_LIBRARY -fvisibility=hidden -fPIC -c $< -o $@

# Both libraries are written under a temporary name and renamed into place:
# a failed link or archive never leaves one behind.  The shared library is
# linked with -z defs, so a symbol its dependencies should provide and do
# not (a -l missing) fails the link instead of the first program that
# loads it.
KM_ZDEFS := -Wl,-z,defs

$(STLIB): $(LIB_OBJ) | km-need-cc km-need-lib
	@mkdir -p $(dir $@)
	rm -f $@.tmp && ar rcs $@.tmp $(LIB_OBJ) && mv -f $@.tmp $@

$(SHLIB): $(LIB_PIC) | km-need-cc km-need-lib
	$(CC) $(LDFLAGS) -shared -Wl,-soname,$(SONAME) $(KM_ZDEFS) -o $@.tmp $(LIB_PIC) $(LIBS) \
	  || { rm -f $@.tmp; exit 1; }
	mv -f $@.tmp $@
	ln -sf libkeymesh.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/libkeymesh.so

# Tools, tests, benchmarks and examples link the static library, so they run
# from the build tree without LD_LIBRARY_PATH.
# kmctl alone links SQLite (persist, usage): the library never does, and of
# kmctl's files only tools/kmctl/cmd_usage.c is compiled with its flags.
SQLITE_CFLAGS := $(shell pkg-config --cflags sqlite3 2>/dev/null)
SQLITE_LIBS   := $(shell pkg-config --libs sqlite3 2>/dev/null)
KMCTL_SRC := $(wildcard tools/kmctl/*.c)
# kmctl sync and kmctl fleet link the agent and the store client
# (tools/sync/sync.mk: SYNC_KMCTL_OBJ, SYNC_HIREDIS_LIBS).
KMCTL_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(KMCTL_SRC)) $(SYNC_KMCTL_OBJ)
$(BUILD)/tools/kmctl/%.o: tools/kmctl/%.c tools/kmctl/kmctl.h include/keymesh.h | km-need-kmctl
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
	  $(CURSES_LIBS) $(SYNC_HIREDIS_LIBS)

$(BUILD)/tests/%: tests/%.c tests/tap.h tests/testlib.h $(STLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Ishm -Isrc -o $@ $< $(STLIB) $(LDFLAGS) $(LIBS) -lm

# tests/soak.c (make soak; a short run in make test) reads the usage
# database that kmctl persist writes, so it links SQLite too.
SOAK_BIN := $(BUILD)/tests/soak
$(SOAK_BIN): tests/soak.c tests/tap.h tests/testlib.h $(STLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SQLITE_CFLAGS) -Ishm -Isrc -o $@ $< $(STLIB) $(LDFLAGS) $(LIBS) $(SQLITE_LIBS) -lm

# tests/t_fault.c and t_livepool.c link the library compiled again with -DKM_FAULT_INJECTION
# (a kill point between every two shared stores of an administrative writer,
# src/reconfig.c), in $(BUILD)/fault/: the library proper has none.
FAULT_OBJ := $(patsubst $(BUILD)/obj/%,$(BUILD)/fault/%,$(LIB_OBJ))
$(BUILD)/fault/%.o: %.c include/keymesh.h $(wildcard shm/*.h src/*.h) | km-need-cc km-need-lib
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DKM_FAULT_INJECTION -DKM_BUILDING_LIBRARY -fvisibility=hidden -c $< -o $@
$(BUILD)/tests/t_fault $(BUILD)/tests/t_livepool: $(BUILD)/tests/%: tests/%.c tests/tap.h tests/testlib.h tests/killlib.h $(FAULT_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DKM_FAULT_INJECTION -Ishm -Isrc -o $@ $< $(FAULT_OBJ) $(LDFLAGS) $(LIBS) -lm

$(BUILD)/bench/%: bench/%.c bench/bench.h $(STLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(STLIB) $(LDFLAGS) $(LIBS) -lm

$(BUILD)/examples/%: examples/%.c $(STLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(STLIB) $(LDFLAGS) $(LIBS)

examples: $(EXAMPLE_BIN)

# --------------------------------------------------------------------- tests
# Each program runs in its own process under a time limit; prove prints TAP
# and exits non-zero on any failure.
# The examples are built too, so that they compile on every run (and
# tests/t_newcomer*.sh run them).
test: deps-test
	@$(MAKE) --no-print-directory all $(TEST_BIN) $(TEST_HELPERS) $(EXAMPLE_BIN) $(SOAK_BIN)
	KM_BUILD=$(BUILD) prove -f --exec 'timeout $(TEST_TIMEOUT)' $(TEST_RUN) $(SOAK_BIN) $(TEST_SH)

check: test

# Long crash-torture runs (not part of make test): KM_TORTURE_S seconds each.
TORTURE_S ?= 30
torture: deps km-need-prove
	@$(MAKE) --no-print-directory all $(TEST_BIN) $(TEST_HELPERS)
	KM_BUILD=$(BUILD) KM_TORTURE_S=$(TORTURE_S) prove -v $(BUILD)/tests/t_crash $(BUILD)/tests/t_reconfig $(BUILD)/tests/t_fault

# The soak (tests/soak.c): SOAK_S seconds of workers and writers killed and
# stopped, live reconfiguration, persist, snapshots and a segment restart;
# its last line is the summary README quotes.  make test runs it for 20 s.
SOAK_S ?= 600
soak: deps km-need-prove
	@$(MAKE) --no-print-directory all $(SOAK_BIN)
	KM_BUILD=$(BUILD) KM_SOAK_S=$(SOAK_S) $(SOAK_BIN)

bench: deps
	@$(MAKE) --no-print-directory all $(BENCH_BIN)
	@for b in $(BENCH_BIN); do $$b --short || exit 1; done
	@$(MAKE) --no-print-directory bench-compare

demo: deps
	@$(MAKE) --no-print-directory all $(EXAMPLE_BIN)
	KM_BUILD=$(BUILD) sh examples/demo.sh

# ------------------------------------------------------------------- install
# keymesh.pc holds PREFIX, libdir, includedir and VERSION: it is made again
# whenever one of them differs from the last make (the stamp holds them and
# is rewritten only then).  Requires.private and Libs.private are what
# `pkg-config --static --libs keymesh` adds for a program that links
# libkeymesh.a: the packages of KM_NEED_lib and the -l of LIBS.
KM_PC_VALUES := $(PREFIX) $(libdir) $(includedir) $(VERSION)
$(BUILD)/keymesh.pc.values: FORCE
	@mkdir -p $(dir $@)
	@[ "$$(cat $@ 2>/dev/null)" = '$(KM_PC_VALUES)' ] || printf '%s\n' '$(KM_PC_VALUES)' > $@

$(BUILD)/keymesh.pc: $(BUILD)/keymesh.pc.values Makefile
	@mkdir -p $(dir $@)
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(libdir)' 'includedir=$(includedir)' '' \
	  'Name: keymesh' 'Description: shared-memory API key pool with lock-free acquire' \
	  'Version: $(VERSION)' 'Requires.private: ck jansson libsodium' \
	  'Libs: -L$${libdir} -lkeymesh' 'Libs.private: -lpthread -lm' 'Cflags: -I$${includedir}' > $@

# After installing the shared library, ldconfig updates the dynamic
# linker's cache and the soname link, when libdir is a directory the
# dynamic linker searches (one of KM_LDCONFIG_DIRS), DESTDIR is empty and
# make runs as root.  A staged install (DESTDIR: packaging) leaves that to
# the package's own trigger; any other libdir needs LD_LIBRARY_PATH or an
# rpath anyway.
LDCONFIG ?= ldconfig
KM_LDCONFIG_DIRS = $(shell $(LDCONFIG) -v -N -X 2>/dev/null | sed -n 's|^\(/[^:]*\):.*|\1|p')
km_ldconfig = @if [ -z '$(DESTDIR)' ] && [ "$$(id -u)" = 0 ]; then \
    d=$$(realpath -m '$(libdir)'); \
    for x in $(KM_LDCONFIG_DIRS); do \
      if [ "$$(realpath -m "$$x")" = "$$d" ]; then echo '$(LDCONFIG)'; $(LDCONFIG); break; fi; \
    done; \
  fi

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
	$(km_ldconfig)
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
	@echo 'make deps         install what make and make demo need (as root; only what is missing)'
	@echo 'make deps-test    that, and what make test needs (prove, the tests of bindings, fleet, ops)'
	@echo 'make test         build and run the TAP suite with prove (make check: the same)'
	@echo 'make torture      long crash-torture runs (TORTURE_S=30 seconds each)'
	@echo 'make soak         the soak, tests/soak.c (SOAK_S=600 seconds; any length)'
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
# compiler into build-aarch64/ and run under qemu-user (about a minute from
# clean; .ci/run runs it).  jansson, libsodium and SQLite come from Debian multiarch (make
# cross-deps, as root).  ck does not: libck-dev:amd64 and :arm64 cannot be
# installed together (their ck_md.h differ: CK_MD_TSO against CK_MD_RMO),
# and installing one removes the other, so libck-dev:arm64 is unpacked into
# build-aarch64/ck and linked statically.  pkg-config reads arm64 .pc files
# only (amd64's ck.pc adds -D__x86_64__).
CROSS       ?= aarch64-linux-gnu
CROSS_BUILD ?= build-aarch64
CROSS_PKGS  := libjansson-dev:arm64 libsodium-dev:arm64 libsqlite3-dev:arm64 \
               libmicrohttpd-dev:arm64 libncurses-dev:arm64 libhiredis-dev:arm64
CROSS_CK    := $(CROSS_BUILD)/ck
CROSS_PC    := $(abspath $(CROSS_CK))/pkgconfig:/usr/lib/$(CROSS)/pkgconfig:/usr/share/pkgconfig
# No -L /usr/$(CROSS): with it qemu runs the cross toolchain's ld.so with the
# libc of libc6:arm64 (from the host's ld.so.cache), a mismatch that hangs
# forked children.  Without it, libc6:arm64 (pulled in by CROSS_PKGS)
# provides both.
QEMU        ?= qemu-aarch64
# The fleet tests (tests/fleet/) exercise Redis and the agent's client, not
# the library's memory ordering: not cross-built.
CROSS_TESTS = $(patsubst $(BUILD)/%,$(CROSS_BUILD)/%,$(filter-out $(BUILD)/tests/fleet/%,$(TEST_RUN)))

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

# A recipe that fails leaves no half-written target behind.
.DELETE_ON_ERROR:
.PHONY: deps-test FORCE
FORCE:

# Empty unless a fragment above adds prerequisites or recipes (double-colon
# rules, so each fragment can add its own).
deps-extra::
bench-compare::
