# tools/sync/sync.mk - the fleet sync agent's store client and ledger, and
# their tests (issue 12, phase 1).  Included by the main Makefile
# (-include); uses its $(BUILD), $(CC), $(CFLAGS), $(LDFLAGS) and $(LIBS).
#
#   make test          also runs tests/fleet/t_* (a redis-server each, started
#                      by the test on 127.0.0.1 at a free port)
#   make fleet-test    only the fleet tests, verbose
#   make fleet-bench   what one sync costs the store (SUMMARY lines)
#
# The ledger (tools/sync/ledger.lua) is compiled into the client as a byte
# array (od, no xxd needed), so the agent loads exactly the text it speaks.

KM__SYNC_SAVED_GOAL := $(.DEFAULT_GOAL)

# Only what the client needs (hiredis, libsodium), asked for on its own so
# it does not depend on the library's other packages being found.
SYNC_HIREDIS_CFLAGS := $(shell pkg-config --cflags hiredis 2>/dev/null)
SYNC_HIREDIS_LIBS   := $(shell pkg-config --libs hiredis libsodium 2>/dev/null || echo -lhiredis -lsodium)
SYNC_LUA_C := $(BUILD)/tools/sync/ledger_lua.c
SYNC_OBJ   := $(BUILD)/tools/sync/store.o $(BUILD)/tools/sync/ledger_lua.o
FLEET_TESTS := $(patsubst tests/fleet/%.c,$(BUILD)/tests/fleet/%,$(wildcard tests/fleet/t_*.c))
# The fault scenarios of several hosts (about a minute): make fleet-test only.
FLEET_LONG := $(BUILD)/tests/fleet/long_faults

TEST_BIN += $(FLEET_TESTS)
TEST_RUN += $(FLEET_TESTS)

SYNC_BENCH := $(BUILD)/bench/fleet/bench_ledger

# kmctl sync / kmctl fleet: the agent and the store client, linked into
# kmctl by the main Makefile (KMCTL_OBJ).
SYNC_KMCTL_OBJ := $(BUILD)/tools/sync/agent.o $(SYNC_OBJ)
$(BUILD)/tools/sync/agent.o: tools/sync/agent.c tools/sync/agent.h tools/sync/store.h include/keymesh.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/tools/kmctl/cmd_sync.o: tools/sync/agent.h tools/sync/store.h

.PHONY: fleet-test fleet-bench

$(SYNC_LUA_C): tools/sync/ledger.lua tools/sync/sync.mk
	@mkdir -p $(dir $@)
	{ echo '/* generated from tools/sync/ledger.lua by tools/sync/sync.mk */'; \
	  echo 'extern const unsigned char kms__ledger_lua[];'; \
	  echo 'extern const unsigned long kms__ledger_lua_len;'; \
	  echo 'const unsigned char kms__ledger_lua[] = {'; \
	  od -An -v -tx1 $< | sed -e 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	  echo '0x00 };'; \
	  echo 'const unsigned long kms__ledger_lua_len = sizeof kms__ledger_lua - 1;'; } > $@

$(BUILD)/tools/sync/ledger_lua.o: $(SYNC_LUA_C)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/tools/sync/store.o: tools/sync/store.c tools/sync/store.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SYNC_HIREDIS_CFLAGS) -c $< -o $@

# A static pattern rule: explicit, so it wins over the Makefile's
# $(BUILD)/tests/% rule for tests/*.c.  The agent's tests (t_agent,
# long_faults) run kmctl sync and fork workers on the library.
$(FLEET_TESTS) $(FLEET_LONG): $(BUILD)/tests/fleet/%: tests/fleet/%.c tests/fleet/rig.h \
                tests/fleet/hosts.h tests/tap.h tools/sync/store.h $(SYNC_OBJ) $(STLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SYNC_HIREDIS_CFLAGS) -Itests -Itools/sync \
	  -DRIG_PROXY_PY='"$(CURDIR)/tests/fleet/proxy.py"' -o $@ $< $(SYNC_OBJ) $(STLIB) \
	  $(LDFLAGS) $(SYNC_HIREDIS_LIBS) $(LIBS) -lm

$(SYNC_BENCH): bench/fleet/bench_ledger.c tests/fleet/rig.h tests/fleet/sim.h tools/sync/store.h $(SYNC_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SYNC_HIREDIS_CFLAGS) -Itests -Itests/fleet -Itools/sync -o $@ $< $(SYNC_OBJ) \
	  $(LDFLAGS) $(SYNC_HIREDIS_LIBS) -lpthread -lm

# What one sync costs the store, for a few fleet sizes (see DESIGN.md).
fleet-bench: $(SYNC_BENCH)
	$(SYNC_BENCH) --hosts 10 --keys 2
	$(SYNC_BENCH) --hosts 100 --keys 2
	$(SYNC_BENCH) --hosts 100 --keys 4
	$(SYNC_BENCH) --hosts 300 --keys 2 --rounds 8
	$(SYNC_BENCH) --hosts 1000 --keys 2 --rounds 6

fleet-test: deps-test
	@$(MAKE) --no-print-directory $(FLEET_TESTS) $(FLEET_LONG) $(KMCTL)
	KM_BUILD=$(BUILD) prove -v -f --exec 'timeout $(TEST_TIMEOUT)' $(FLEET_TESTS) $(FLEET_LONG)

# What the fleet tests need: ask first, run apt-get only for what is missing.
deps-extra::
	@missing=""; \
	pkg-config --exists hiredis 2>/dev/null || missing="$$missing libhiredis-dev"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	[ -x /usr/bin/python3 ] || missing="$$missing python3"; \
	if [ -n "$$missing" ]; then \
	  echo "deps (fleet): installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "deps: need root to install:$$missing" >&2; exit 1; fi; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     -o DPkg::Lock::Timeout=600 $$missing >/dev/null) \
	    || { echo "deps: apt-get install$$missing failed" >&2; exit 1; }; \
	fi

.DEFAULT_GOAL := $(KM__SYNC_SAVED_GOAL)
