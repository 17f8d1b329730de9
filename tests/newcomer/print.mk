# tests/newcomer/print.mk - read after the Makefile
# (make -s -f Makefile -f tests/newcomer/print.mk km-print-deps) by
# tests/t_newcomer_build.sh: the Debian packages each list of the
# Makefile's "Dependencies" names, one list a line.
km_pkgs = $(sort $(foreach p,$(1),$(foreach d,$(KM_NEED_$(p)),$(call km_field,3,$(d)))))
km-print-deps:
	@echo 'deps $(call km_pkgs,$(KM_DEPS_BUILD))'
	@echo 'deps-test $(call km_pkgs,$(KM_DEPS_TEST))'
