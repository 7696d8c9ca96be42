# normstat - one non-recursive Makefile; each folder adds its part in a fragment.
#
#   make            build every library and program under build/
#   make run        install missing packages, build, start normstatd
#   make test       install missing packages, build, run every test (CI)
#   make test-docker  build the container image and run it with podman (CI)
#   make help       list all targets and variables

.DEFAULT_GOAL := all

# ---------------------------------------------------------------- directories
PREFIX      ?= /usr/local
exec_prefix ?= $(PREFIX)
bindir      ?= $(exec_prefix)/bin
sbindir     ?= $(exec_prefix)/sbin
libdir      ?= $(exec_prefix)/lib
includedir  ?= $(PREFIX)/include
datarootdir ?= $(PREFIX)/share
mandir      ?= $(datarootdir)/man
pkgconfigdir ?= $(libdir)/pkgconfig
DESTDIR     ?=
BUILD       ?= build

# ---------------------------------------------------------------- toolchain
CC      ?= cc
AR      ?= ar
PKG_CONFIG ?= pkg-config
INSTALL ?= install
PYTHON  ?= /usr/bin/python3
CFLAGS  ?= -O2 -g
ARCH    := $(shell uname -m)

# Warnings and the language level are appended to whatever CFLAGS the user
# gives, so `make CFLAGS=-O0` still builds warning-clean C11.
NS_WARN   := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
             -Wpointer-arith -Wformat=2 -Wvla
NS_CFLAGS  = -std=c11 -D_POSIX_C_SOURCE=200809L -fPIC -fvisibility=hidden -fopenmp \
             -MMD -MP $(NS_WARN) $(CFLAGS)
NS_LDFLAGS = -fopenmp $(LDFLAGS)

ifeq ($(V),1)
Q :=
else
Q := @
endif

# pkg-config is asked lazily (only when a recipe needs the flags), so `make
# deps` can install the packages first within the same invocation.
pkg_cflags = $(shell $(PKG_CONFIG) --cflags $(1))
pkg_libs   = $(shell $(PKG_CONFIG) --libs $(1))

# ---------------------------------------------------------------- generic rules
$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(if $(Q),@echo "  CC      $<")
	$(Q)$(CC) $(NS_CFLAGS) $(NS_ISA_FLAGS) $(NS_INCLUDES) $(NS_EXTRA_CFLAGS) -c -o $@ $<

# make_static(archive, objects)
define make_static
	@mkdir -p $(dir $(1))
	$(if $(Q),@echo "  AR      $(1)")
	$(Q)rm -f $(1) && $(AR) rcs $(1) $(2)
endef

# ---------------------------------------------------------------- fragments
ALL_TARGETS :=
UNIT_LINK   :=
UNIT_LIBS   =
INSTALL_TARGETS :=
UNINSTALL_TARGETS :=
NS_INCLUDES :=

include core/core.mk
-include proto/proto.mk
-include server/server.mk
-include client/client.mk
-include client/python/python.mk
include tests/tests.mk
-include tests/bench/bench.mk
-include tests/e2e/e2e.mk
-include tests/browser/browser.mk
-include deploy/monitoring/monitoring.mk
-include tests/fuzz/fuzz.mk
-include doc/doc.mk
-include docker/docker.mk

# The .pc files spell out the install directories: remake them when those change
# (`make` then `make install PREFIX=/usr`). The stamp is rewritten only on change.
NS_DIRS_STAMP := $(BUILD)/install-dirs
$(NS_DIRS_STAMP): FORCE
	@mkdir -p $(@D)
	@echo '$(PREFIX) $(exec_prefix) $(libdir) $(includedir)' | cmp -s - $@ 2>/dev/null || \
	    echo '$(PREFIX) $(exec_prefix) $(libdir) $(includedir)' > $@
$(filter %.pc,$(ALL_TARGETS)): $(NS_DIRS_STAMP)
.PHONY: FORCE
FORCE:

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---------------------------------------------------------------- top-level targets
.SECONDARY:
.PHONY: all deps run test check test-all asan test-asan tsan bench install uninstall clean format help

all: $(ALL_TARGETS)

deps:
	$(Q)sh mk/deps.sh build

run: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)if [ -x $(BUILD)/bin/normstatd ]; then exec $(BUILD)/bin/normstatd $(ARGS); \
	else echo "normstatd is not built yet in this tree: nothing to start"; fi

# `test` is what CI runs: packages first, then a fresh make that sees them.
test:
	$(Q)sh mk/deps.sh build test
	$(Q)$(MAKE) -k --no-print-directory test-all

ASAN_CFLAGS  := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
ASAN_LDFLAGS := -fsanitize=address,undefined
asan:
	$(Q)$(MAKE) --no-print-directory BUILD=$(BUILD)/asan \
	    CFLAGS="$(ASAN_CFLAGS)" LDFLAGS="$(ASAN_LDFLAGS)" check

# The integration tests against the daemon, CLI and libraries built with
# ASan+UBSan in $(BUILD)/asan: the first report aborts the process, and the
# harness fails a test whose daemon logged one (leaks included, at exit).
# NS_SANITIZED=1 tells tests that measure memory that the shadow memory and
# quarantine of ASan make RSS meaningless.
# Python loads the sanitized libnscore.so through ctypes without the
# runtime preloaded, hence verify_asan_link_order=0.
test-asan:
	$(Q)NS_SANITIZED=1 ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    $(MAKE) --no-print-directory BUILD=$(BUILD)/asan \
	    CFLAGS="$(ASAN_CFLAGS)" LDFLAGS="$(ASAN_LDFLAGS)" test-integration-sanitized

# The threaded parts' unit tests and the integration tests against a
# ThreadSanitizer-built normstatd (tests/tests.mk, test-tsan); every report is
# written under $(BUILD)/tsan/reports and any report fails the target.
TSAN_REPORTS = $(abspath $(BUILD))/tsan/reports
tsan:
	$(Q)rm -rf $(TSAN_REPORTS) && mkdir -p $(TSAN_REPORTS)
	$(Q)TSAN_OPTIONS="log_path=$(TSAN_REPORTS)/tsan second_deadlock_stack=1 $(TSAN_OPTIONS)" \
	    $(MAKE) -k --no-print-directory BUILD=$(BUILD)/tsan \
	    CFLAGS="-O1 -g -fsanitize=thread" LDFLAGS="-fsanitize=thread" check-layers test-tsan; \
	    rc=$$?; if ls $(TSAN_REPORTS)/tsan.* >/dev/null 2>&1; then cat $(TSAN_REPORTS)/tsan.*; \
	        echo "ThreadSanitizer reported $$(ls $(TSAN_REPORTS)/tsan.* | wc -l) problem log(s)"; exit 1; fi; \
	    exit $$rc

install: $(INSTALL_TARGETS)
uninstall: $(UNINSTALL_TARGETS)

clean:
	rm -rf $(BUILD)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

help:
	@echo "normstat targets:"
	@echo "  all        build libraries and programs under $(BUILD)/ (default)"
	@echo "  deps       install missing Debian packages (apt-get, as root)"
	@echo "  run        deps + all, then start normstatd (ARGS='--listen ...')"
	@echo "  check      build and run the fast unit tests"
	@echo "  test       deps + every test: unit (each kernel), exports, integration"
	@echo "  bench      benchmarks; each prints a table of ratios"
	@echo "  bench-scale  table 9 alone: 64/256/1,024 simulated workers, direct vs relays of 8"
	@echo "  asan       the unit tests under AddressSanitizer+UBSan"
	@echo "  tsan       the unit and integration tests under ThreadSanitizer (a TSan daemon)"
	@echo "  test-asan  the integration tests against an ASan+UBSan build ($(BUILD)/asan)"
	@echo "  fuzz       libFuzzer harnesses of the decoders, FUZZ_SECONDS each (60); fuzz-ci: 30 s"
	@echo "  install    install into \$$(DESTDIR)\$$(PREFIX) (PREFIX=$(PREFIX))"
	@echo "             (with the Python package, in pythondir=$(pythondir))"
	@echo "  wheel      the Python client as a wheel in $(BUILD)/"
	@echo "  uninstall  remove what install put there"
	@echo "  format     clang-format every tracked C file"
	@echo "  docker     build the container image (needs a Docker engine)"
	@echo "  test-docker  build the image and run it and compose.yaml with podman (root)"
	@echo "  clean      remove $(BUILD)/"
	@echo "variables: CC CFLAGS LDFLAGS V=1 BUILD PREFIX DESTDIR NS_SIMD=scalar"
