# bindings/node/node.mk - the Node.js binding's addon; included by
# bindings/bindings.mk.  The addon (bindings/node/src/keymesh_node.c, a
# Node-API module) is built here into $(BUILD)/node/keymesh.node when Node's
# headers are installed (node_api.h: /usr/include/node with Debian's or
# NodeSource's nodejs), with the project's warnings and sanitizers, the way
# node-gyp builds it for `npm install` (bindings/node/binding.gyp: -fPIC
# -shared against the same headers; tests/t_node.sh checks that build too,
# offline).  It does not link libkeymesh: it dlopen()s the library
# bindings/node/lib/native.js finds (KEYMESH_LIBRARY, KM_BUILD, build/).
#
#   make node-addon        the addon, for this build directory
#   make node-test-deps    the npm packages the tests use (OpenAI's and
#                          Anthropic's SDKs) into $(BUILD)/node/deps/tests,
#                          from tests/node/package-lock.json
#   make node-bench-deps   koffi, for bench/node/bench_node.mjs's comparison
#   make node-bench        bench/node/bench_node.mjs --short
#
# npm packages go to $(BUILD)/node/deps/<tests|bench>/node_modules with
# their tarballs cached in $(BUILD)/node/npm-cache (--prefer-offline: a
# second install needs no network), never into the source tree.

KM__NODE_SAVED_GOAL := $(.DEFAULT_GOAL)

NODE ?= node
NPM ?= npm
NODE_INCLUDE ?= $(firstword $(foreach d,/usr/include/node /usr/local/include/node,$(if $(wildcard $(d)/node_api.h),$(d))))
NODE_ADDON := $(BUILD)/node/keymesh.node
NODE_DEPS := $(BUILD)/node/deps

.PHONY: node-addon node-test-deps node-bench-deps node-bench
ifneq ($(NODE_INCLUDE),)
all: $(NODE_ADDON)
node-addon: $(NODE_ADDON)
else
node-addon:
	@echo "node-addon: no node_api.h in /usr/include/node or /usr/local/include/node (apt-get install nodejs; or NODE_INCLUDE=DIR)" >&2; exit 1
endif

# NAPI_VERSION 8 (keymesh_node.c defines it): Node >= 12.22, 14.17, 16.
$(NODE_ADDON): bindings/node/src/keymesh_node.c include/keymesh.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(SANFLAGS) -fPIC -shared -fvisibility=hidden \
	  -Iinclude -isystem $(NODE_INCLUDE) -o $@.tmp $< -ldl -lpthread && mv $@.tmp $@

# npm ci from a lock file into the build tree; the stamp is the lock.
$(NODE_DEPS)/%/.installed: %/node/package.json %/node/package-lock.json
	@mkdir -p $(dir $@)
	cp $^ $(dir $@)
	cd $(dir $@) && $(NPM) ci --cache $(abspath $(BUILD))/node/npm-cache --prefer-offline \
	  --no-audit --no-fund --ignore-scripts --loglevel=error
	cp $*/node/package-lock.json $@

node-test-deps: $(NODE_DEPS)/tests/.installed
node-bench-deps: $(NODE_DEPS)/bench/.installed

bench-compare:: node-bench

node-bench: $(NODE_ADDON) $(BUILD)/bench/bench_acquire
	-@$(MAKE) --no-print-directory node-bench-deps
	KM_BUILD=$(BUILD) $(NODE) bench/node/bench_node.mjs --short

.DEFAULT_GOAL := $(KM__NODE_SAVED_GOAL)
