# bench/bench.mk - the comparison benchmarks (KeyMesh against a mutex pool,
# Redis and pure-Python pools; goodput against a simulated provider).
# Included by the main Makefile; uses its $(BUILD), $(CC), $(CFLAGS),
# $(LDFLAGS), $(STLIB) and $(LIBS).  See bench/README.md.
#
#   make bench                        bench_acquire --short, then bench-compare:
#                                     cmp_latency --short and goodput --short (with
#                                     and without 1 ms of headroom)
#   make bench-full                   the same comparisons in long mode
#   make $(BUILD)/bench/cmp_latency $(BUILD)/bench/goodput   build only

# Rules defined here must not become the Makefile's default goal: remember
# it and put it back at the end.
KM_BENCH_SAVED_GOAL := $(.DEFAULT_GOAL)

CMP_DIR      := bench/baselines
CMP_BIN      := $(BUILD)/bench/cmp_latency $(BUILD)/bench/goodput
HIREDIS_CFLAGS := $(shell pkg-config --cflags hiredis 2>/dev/null)
HIREDIS_LIBS   := $(shell pkg-config --libs hiredis 2>/dev/null || echo -lhiredis)
# Absolute paths baked in, so the programs run from any directory.
CMP_PATHS := -DCMP_LUA_PATH='"$(CURDIR)/$(CMP_DIR)/redis_pool.lua"' \
             -DCMP_PYPOOL_PATH='"$(CURDIR)/$(CMP_DIR)/pypool.py"'

.PHONY: bench-full bench-deps

# Packages the comparisons need: ask first (pkg-config, command -v), run
# apt-get only for what is missing.  Only the benchmarks need them, so
# `make test` does not install them.
bench-deps:
	@missing=""; \
	pkg-config --exists hiredis 2>/dev/null || missing="$$missing libhiredis-dev"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	[ -x /usr/bin/python3 ] || missing="$$missing python3"; \
	if [ -n "$$missing" ]; then \
	  echo "bench-deps: installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "bench-deps: need root to install:$$missing" >&2; exit 1; fi; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	    || { echo "bench-deps: apt-get install$$missing failed" >&2; exit 1; }; \
	fi

$(BUILD)/bench/cmp_latency: bench/cmp_latency.c $(CMP_DIR)/mutex_pool.c $(CMP_DIR)/redis_pool.c \
                            $(CMP_DIR)/mutex_pool.h $(CMP_DIR)/redis_pool.h $(CMP_DIR)/cmp_common.h $(STLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(HIREDIS_CFLAGS) -Ibench $(CMP_PATHS) -o $@ bench/cmp_latency.c \
	  $(CMP_DIR)/mutex_pool.c $(CMP_DIR)/redis_pool.c $(STLIB) $(LDFLAGS) $(LIBS) $(HIREDIS_LIBS) -lm

$(BUILD)/bench/goodput: bench/goodput.c $(CMP_DIR)/cmp_common.h $(STLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Ibench -o $@ bench/goodput.c $(STLIB) $(LDFLAGS) $(LIBS) -lm

# Short mode: a smoke test of every comparison (a few minutes).
bench-compare:: bench-deps
	@$(MAKE) --no-print-directory $(CMP_BIN)
	$(BUILD)/bench/cmp_latency --short
	$(BUILD)/bench/goodput --short
	$(BUILD)/bench/goodput --short --modes keymesh --headroom-ms 1

# Long mode, for the figures in bench/README.md.
bench-full: deps bench-deps
	@$(MAKE) --no-print-directory $(CMP_BIN)
	$(BUILD)/bench/cmp_latency
	$(BUILD)/bench/goodput
	$(BUILD)/bench/goodput --procs 32
	$(BUILD)/bench/goodput --procs 32 --modes keymesh --headroom-ms 1

.DEFAULT_GOAL := $(KM_BENCH_SAVED_GOAL)
