# KeyMesh - plain Makefile.
#
#   make            build build/libkeymesh.so.$(MAJOR), build/libkeymesh.a, build/kmctl
#                   (checks its dependencies first: "Dependencies" below)
#   make deps       install what make and make demo need (as root; only what is missing)
#   make deps-test  install that and what make test needs (prove, the bindings' tests)
#   make test       build and run the TAP suite with prove (runs deps-test)
#   make demo       create a segment, run a prefork pool against it, inspect it (runs deps)
#   make bench      short benchmark run (SUMMARY lines)
#   make install    PREFIX=/usr/local DESTDIR= libdir= includedir=
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
# Helpers other tests start; built with the tests, not run by prove.
TEST_HELPERS := $(BUILD)/tests/t_hold
TEST_RUN := $(filter-out $(TEST_HELPERS),$(TEST_BIN))
TEST_SH  := $(wildcard tests/t_*.sh)
BENCH_SRC := $(wildcard bench/bench_*.c)
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))
EXAMPLE_SRC := $(wildcard examples/*.c)
EXAMPLE_BIN := $(patsubst examples/%.c,$(BUILD)/examples/%,$(EXAMPLE_SRC))

# Per-test time limit (seconds); prove runs each program under it.
TEST_TIMEOUT ?= 300

.PHONY: all deps test check torture bench demo install uninstall clean examples \
        deps-extra bench-compare

# Fragments owned by the benchmark suite and the bindings: each may add
# targets and hook `deps-extra` (packages its tests or runs need) and
# `bench-compare` (baselines run by make bench).
.DEFAULT_GOAL := all
-include bench/bench.mk
-include bindings/bindings.mk
-include tests/fuzz/fuzz.mk

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
KM_NEED_kmctl := pc:sqlite3:libsqlite3-dev
KM_NEED_prove := cmd:prove:perl
# Parts still to come, each to be wired where its targets land: the Redis
# baseline of bench/ (bench.mk's bench-deps installs it today), an HTTP
# endpoint and a terminal view in kmctl.
KM_NEED_redis := pc:hiredis:libhiredis-dev
KM_NEED_http  := pc:libmicrohttpd:libmicrohttpd-dev
KM_NEED_tui   := pc:ncursesw:libncurses-dev
KM_DEPS_BUILD := cc lib kmctl
KM_DEPS_TEST  := prove

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
KMCTL_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(KMCTL_SRC))
$(BUILD)/tools/kmctl/%.o: tools/kmctl/%.c tools/kmctl/kmctl.h include/keymesh.h | km-need-kmctl
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/tools/kmctl/cmd_usage.o: CFLAGS += $(SQLITE_CFLAGS)
$(KMCTL): $(KMCTL_OBJ) $(STLIB)
	$(CC) $(CFLAGS) -o $@ $(KMCTL_OBJ) $(STLIB) $(LDFLAGS) $(LIBS) $(SQLITE_LIBS)

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
# The examples are built too, so that they compile on every run (and
# tests/t_newcomer*.sh run them).
test: deps-test
	@$(MAKE) --no-print-directory all $(TEST_BIN) $(EXAMPLE_BIN)
	KM_BUILD=$(BUILD) prove -f --exec 'timeout $(TEST_TIMEOUT)' $(TEST_RUN) $(TEST_SH)

check: test

# Long crash-torture runs (not part of make test): KM_TORTURE_S seconds each.
TORTURE_S ?= 30
torture: deps km-need-prove
	@$(MAKE) --no-print-directory all $(TEST_BIN)
	KM_BUILD=$(BUILD) KM_TORTURE_S=$(TORTURE_S) prove -v $(BUILD)/tests/t_crash $(BUILD)/tests/t_reconfig

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

install: all $(BUILD)/keymesh.pc
	install -d $(DESTDIR)$(libdir) $(DESTDIR)$(includedir) $(DESTDIR)$(bindir) $(DESTDIR)$(pkgconfigdir)
	install -m 0755 $(SHLIB) $(DESTDIR)$(libdir)/
	ln -sf libkeymesh.so.$(VERSION) $(DESTDIR)$(libdir)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(libdir)/libkeymesh.so
	install -m 0644 $(STLIB) $(DESTDIR)$(libdir)/
	$(km_ldconfig)
	install -m 0644 include/keymesh.h $(DESTDIR)$(includedir)/
	install -m 0755 $(KMCTL) $(DESTDIR)$(bindir)/
	install -m 0644 $(BUILD)/keymesh.pc $(DESTDIR)$(pkgconfigdir)/

uninstall:
	rm -f $(DESTDIR)$(libdir)/libkeymesh.so.$(VERSION) $(DESTDIR)$(libdir)/$(SONAME) \
	      $(DESTDIR)$(libdir)/libkeymesh.so $(DESTDIR)$(libdir)/libkeymesh.a \
	      $(DESTDIR)$(includedir)/keymesh.h $(DESTDIR)$(bindir)/kmctl \
	      $(DESTDIR)$(pkgconfigdir)/keymesh.pc

clean:
	rm -rf build build-san build-*

# A recipe that fails leaves no half-written target behind.
.DELETE_ON_ERROR:
.PHONY: deps-test FORCE
FORCE:

# Empty unless a fragment above adds prerequisites or recipes (double-colon
# rules, so each fragment can add its own).
deps-extra::
bench-compare::
