# tests/tests.mk - unit tests (Check), export lists, integration tests, benchmarks.
#
# Every tests/unit/<library>/test_<module>.c is one program; `make check` runs them all,
# once with the kernels this CPU supports and once with NS_SIMD=scalar.
# Run one case: CK_RUN_CASE=<case> CK_FORK=no build/tests/unit/<library>/test_<module>

UNIT_SRCS  := $(wildcard tests/unit/*/test_*.c)
UNIT_BINS  := $(UNIT_SRCS:%.c=$(BUILD)/%)
UNIT_SUPPORT_SRCS := $(filter-out $(UNIT_SRCS),$(wildcard tests/unit/*.c tests/unit/*/*.c))
UNIT_SUPPORT_OBJS := $(UNIT_SUPPORT_SRCS:%.c=$(BUILD)/%.o)

$(BUILD)/tests/unit/%.o: NS_EXTRA_CFLAGS = $(call pkg_cflags,check) -Itests/unit -Icore/src

# $+, not $^: an archive may be listed twice (libnormstat.a before and after libnsd.a).
$(UNIT_BINS): $(BUILD)/tests/unit/%: $(BUILD)/tests/unit/%.o $(UNIT_SUPPORT_OBJS) $(UNIT_LINK)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(NS_LDFLAGS) -o $@ $+ $(UNIT_LIBS) $(call pkg_libs,check) -lm

EXPORT_LISTS := $(wildcard tests/exports/*.exports)

.PHONY: check check-units check-exports check-layers test-integration bench
check: check-units check-layers

check-units: $(UNIT_BINS)
	$(Q)failed=; for t in $(UNIT_BINS); do \
	    echo "== $$t"; $$t || failed="$$failed $$t"; \
	    echo "== $$t (NS_SIMD=scalar)"; NS_SIMD=scalar $$t || failed="$$failed $$t(scalar)"; \
	done; \
	if [ -n "$$failed" ]; then echo "unit tests failed:$$failed"; exit 1; fi

# Each library's dynamic exports must equal its checked-in list.
check-exports: $(ALL_TARGETS)
	$(Q)for f in $(EXPORT_LISTS); do \
	    lib=$(BUILD)/lib/$$(basename $$f .exports).so; \
	    nm -D --defined-only $$lib | awk '$$2 == "T" { print $$3 }' | sort | \
	        diff -u $$f - || { echo "exports of $$lib differ from $$f"; exit 1; }; \
	    echo "exports of $$lib: ok"; \
	done

# Includes follow the layering: libraries and server/src's parts never include upward.
check-layers:
	$(Q)$(PYTHON) tests/layers/check_includes.py

INTEGRATION_TESTS := $(sort $(wildcard tests/integration/test_*.sh tests/integration/test_*.py))
# run_integration(tests): each against the daemon of $(BUILD), all run, failures listed.
define run_integration
	$(Q)failed=; for t in $(1); do \
	    echo "== $$t"; \
	    case $$t in *.py) NS_BUILD=$(BUILD) $(PYTHON) $$t ;; *) NS_BUILD=$(BUILD) sh $$t ;; esac \
	        || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "integration tests failed:$$failed"; exit 1; fi
endef
test-integration: $(ALL_TARGETS)
	$(call run_integration,$(INTEGRATION_TESTS))

# Under ThreadSanitizer (`make tsan`): the unit tests of the threaded parts
# (server, client; core and proto are single-threaded but for OpenMP, which an
# uninstrumented libgomp hides from TSan), once each; then every integration
# test of the daemon and the CLI, not those that load a library into Python,
# build images or install.
TSAN_UNIT_BINS := $(filter $(BUILD)/tests/unit/server/% $(BUILD)/tests/unit/client/%,$(UNIT_BINS))
TSAN_INTEGRATION_TESTS := $(filter-out %/test_core_torch.py %/test_docker.py %/test_install.sh,\
                              $(INTEGRATION_TESTS))
.PHONY: test-tsan
test-tsan: $(ALL_TARGETS) $(TSAN_UNIT_BINS) $(CLIENT_TRAINER)
	$(Q)failed=; for t in $(TSAN_UNIT_BINS); do echo "== $$t"; $$t || failed="$$failed $$t"; done; \
	if [ -n "$$failed" ]; then echo "unit tests failed:$$failed"; exit 1; fi
	$(call run_integration,$(TSAN_INTEGRATION_TESTS))

# `make test-asan` (Makefile) runs these against a sanitized build; the
# container test builds its own image from the sources, so it is left out.
SANITIZED_TESTS := $(filter-out %/test_docker.py,$(INTEGRATION_TESTS))
.PHONY: test-integration-sanitized
test-integration-sanitized: $(ALL_TARGETS) $(CLIENT_TRAINER)
	$(Q)failed=; for t in $(SANITIZED_TESTS); do \
	    echo "== $$t"; \
	    case $$t in *.py) NS_BUILD=$(BUILD) $(PYTHON) $$t ;; *) NS_BUILD=$(BUILD) sh $$t ;; esac \
	        || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "sanitized integration tests failed:$$failed"; exit 1; fi

test-all: check-units check-exports check-layers test-integration test-e2e test-browser
	@echo "all tests passed"
