# bindings/bindings.mk - included by the main Makefile (-include).
# The Python binding (bindings/python/keymesh) and the LuaJIT one
# (bindings/lua/keymesh.lua) need no build step: they load libkeymesh.so.0
# at run time.  Their end-to-end tests (tests/t_py*.sh, t_gunicorn*.sh,
# t_nginx*.sh) need Debian packages, installed by `make deps` (which `make
# test` runs) only when missing.  apt-get runs with RUNLEVEL=1 so that the
# nginx package's postinst does not start a system nginx on port 80 (the
# tests start their own on 127.0.0.1).

# This file is read before the Makefile's first target: keep `all` the
# default goal whatever the rules below define.
KM__BINDINGS_SAVED_GOAL := $(.DEFAULT_GOAL)

deps-extra::
	@missing=""; \
	have_pkg() { dpkg-query -W -f='$${Status}' "$$1" 2>/dev/null | grep -q 'ok installed'; }; \
	[ -x /usr/bin/python3 ]               || missing="$$missing python3"; \
	[ -x /usr/bin/gunicorn ]              || missing="$$missing gunicorn"; \
	[ -x /usr/sbin/nginx ]                || missing="$$missing nginx"; \
	have_pkg libnginx-mod-http-lua        || missing="$$missing libnginx-mod-http-lua"; \
	command -v curl >/dev/null            || missing="$$missing curl"; \
	command -v gcc >/dev/null             || missing="$$missing gcc"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "deps (bindings): need root to install:$$missing" >&2; exit 1; fi; \
	  echo "deps (bindings): installing:$$missing"; \
	  (apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive \
	     apt-get install -y -qq $$missing >/dev/null) \
	    || { echo "deps: apt-get install$$missing failed" >&2; exit 1; }; \
	fi

.DEFAULT_GOAL := $(KM__BINDINGS_SAVED_GOAL)
