# bindings/bindings.mk - included by the main Makefile (-include).
# The Python binding (bindings/python/keymesh) and the LuaJIT one
# (bindings/lua/keymesh.lua) load libkeymesh.so.0 at run time.  The Python
# binding's hot path also has a C extension (keymesh._ext), built here into
# $(BUILD)/python/keymesh/ when Python's headers are installed (python3-dev;
# `make deps-extra` installs it, as `make deps-test` and so `make test` do;
# plain `make deps` does not): keymesh finds it there beside the library it
# was built with, and falls back to ctypes without it.  Their end-to-end
# tests (tests/t_py*.sh, t_gunicorn*.sh, t_nginx*.sh) need Debian packages,
# installed by `make deps-extra` below (run by `make deps-test`, which
# `make test` runs) only when missing.
# apt-get runs with RUNLEVEL=1 so that the nginx package's postinst does not
# start a system nginx on port 80 (the tests start their own on 127.0.0.1).
#
#   make python-ext       the extension, for this build directory
#   make python-install   pip-install bindings/python (the extension built
#                         against $(DESTDIR)$(includedir) and $(libdir), as
#                         `make install` put them) for $(PYTHON)
#
#   The Node binding (bindings/node/node.mk) needs node, npm and Node's
#   headers (Debian's libnode-dev; NodeSource's nodejs has them itself).
#
#   tests/t_lua_layout.sh runs luajit: Debian's luajit2 (OpenResty's branch,
#   the one libnginx-mod-http-lua uses), not luajit, whose install removes the
#   nginx module; --no-remove makes any such install fail instead.

# This file is read before the Makefile's first target: keep `all` the
# default goal whatever the rules below define.
KM__BINDINGS_SAVED_GOAL := $(.DEFAULT_GOAL)

PYTHON ?= /usr/bin/python3
PY_INCLUDE := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)
PY_EXT_SUFFIX := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))' 2>/dev/null)
PYEXT := $(BUILD)/python/keymesh/_ext$(PY_EXT_SUFFIX)

.PHONY: python-ext python-install
ifneq ($(wildcard $(PY_INCLUDE)/Python.h),)
all: $(PYEXT)
python-ext: $(PYEXT)
else
python-ext:
	@echo "python-ext: no Python.h for $(PYTHON) (apt-get install python3-dev)" >&2; exit 1
endif

# The project's warnings, as errors under WERROR=1, like the library.  No
# rpath: keymesh._lib loads libkeymesh first (its discovery rules) and this
# module's libkeymesh.so.0 binds to that copy.
$(PYEXT): bindings/python/keymesh/_ext.c include/keymesh.h $(SHLIB)
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(SANFLAGS) -fPIC -shared -fvisibility=hidden \
	  -Iinclude -isystem $(PY_INCLUDE) -o $@ $< -L$(BUILD) -lkeymesh

python-install:
	cd bindings/python && KEYMESH_INCLUDE="$(DESTDIR)$(includedir)" \
	  KEYMESH_LIBDIR="$(DESTDIR)$(libdir)" \
	  $(PYTHON) -m pip install --no-build-isolation --no-index --no-deps \
	  $(PIP_FLAGS) .

deps-extra::
	@missing=""; \
	have_pkg() { dpkg-query -W -f='$${Status}' "$$1" 2>/dev/null | grep -q 'ok installed'; }; \
	[ -x /usr/bin/python3 ]               || missing="$$missing python3"; \
	have_pkg python3-dev                  || missing="$$missing python3-dev"; \
	have_pkg python3-pytest               || missing="$$missing python3-pytest"; \
	have_pkg python3-httpx                || missing="$$missing python3-httpx"; \
	have_pkg python3-setuptools           || missing="$$missing python3-setuptools"; \
	have_pkg python3-pip                  || missing="$$missing python3-pip"; \
	[ -x /usr/bin/gunicorn ]              || missing="$$missing gunicorn"; \
	[ -x /usr/sbin/nginx ]                || missing="$$missing nginx"; \
	have_pkg libnginx-mod-http-lua        || missing="$$missing libnginx-mod-http-lua"; \
	command -v curl >/dev/null            || missing="$$missing curl"; \
	command -v luajit >/dev/null          || missing="$$missing luajit2"; \
	command -v gcc >/dev/null             || missing="$$missing gcc"; \
	command -v node >/dev/null            || missing="$$missing nodejs"; \
	command -v npm >/dev/null             || missing="$$missing npm"; \
	[ -f /usr/include/node/node_api.h ] || [ -f /usr/local/include/node/node_api.h ] \
	                                      || missing="$$missing libnode-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "deps (bindings): need root to install:$$missing" >&2; exit 1; fi; \
	  echo "deps (bindings): installing:$$missing"; \
	  (apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive \
	     apt-get install -y -qq --no-remove $$missing >/dev/null) \
	    || { echo "deps: apt-get install$$missing failed" >&2; exit 1; }; \
	fi

# PHP (bindings/php; tests/t_php*.sh): Debian's php8.2 (the CLI, with FFI
# and pcntl, and FPM) and cgi-fcgi (libfcgi-bin); nginx, curl and gcc come
# with the list above.  RUNLEVEL=1: php8.2-fpm's postinst starts no service.
deps-extra::
	@missing=""; \
	[ -x /usr/bin/php8.2 ]                || missing="$$missing php8.2-cli"; \
	[ -x /usr/sbin/php-fpm8.2 ]           || missing="$$missing php8.2-fpm"; \
	command -v cgi-fcgi >/dev/null        || missing="$$missing libfcgi-bin"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "deps (php): need root to install:$$missing" >&2; exit 1; fi; \
	  echo "deps (php): installing:$$missing"; \
	  (apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive \
	     apt-get install -y -qq --no-remove -o DPkg::Lock::Timeout=600 $$missing >/dev/null) \
	    || { echo "deps: apt-get install$$missing failed" >&2; exit 1; }; \
	fi

# make bench: the PHP binding's short run (bench/php/bench_php.php --short).
bench-compare::
	KM_BUILD=$(BUILD) php bench/php/bench_php.php --short

# make bench: the Python binding's short run (bench/py/bench_py.py --short).
bench-compare:: $(PYEXT)
	KEYMESH_LIBRARY=$(abspath $(BUILD))/libkeymesh.so.0 PYTHONPATH=bindings/python \
	  $(PYTHON) bench/py/bench_py.py --short

# The Node.js binding: its addon, npm packages of its tests, its bench.
-include bindings/node/node.mk

.DEFAULT_GOAL := $(KM__BINDINGS_SAVED_GOAL)
