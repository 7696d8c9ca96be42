# tests/fuzz/fuzz.mk - libFuzzer harnesses of the decoders (clang; `sh mk/deps.sh fuzz`).
#
#   make fuzz [FUZZ_SECONDS=60]   run each harness that long, print its executions
#   make fuzz-ci                  each for 30 s; fails on any finding
#
# The harnesses are built with their own compiler and sanitizers from the
# sources they need (not the project's gcc objects) into $(BUILD)/fuzz/.
# Corpora grow in $(BUILD)/fuzz/corpus/<harness>/, seeded from tests/proto and
# tests/fuzz/seeds/<harness>/; a finding is left in $(BUILD)/fuzz/findings/.

FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SAN     := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS  := -std=c11 -D_POSIX_C_SOURCE=200809L -g -O1 -fno-omit-frame-pointer \
                -Wno-unknown-pragmas -Icore/include -Icore/src -Iproto/include -Iproto/src \
                -Iserver/src
# The project's sources are warning-clean for gcc (NS_WARN); the harnesses for clang too.
FUZZ_WARN    := -Wall -Wextra -Werror -Wno-unknown-pragmas
FUZZ_DIR     := $(BUILD)/fuzz

# The sources each harness links (core and proto always).
FUZZ_LIB_SRCS := $(wildcard core/src/*.c) $(wildcard proto/src/*/*.c)
FUZZ_SERVER_SRCS := $(wildcard server/src/base/*.c) $(wildcard server/src/registry/*.c)
FUZZ_NAMES := report_json report_safetensors grad_json grad_safetensors run_config query \
              checkpoint
FUZZ_BINS  := $(FUZZ_NAMES:%=$(FUZZ_DIR)/fuzz_%)

fuzz_objs = $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(1))
FUZZ_LIB_OBJS    := $(call fuzz_objs,$(FUZZ_LIB_SRCS))
FUZZ_SERVER_OBJS := $(call fuzz_objs,$(FUZZ_SERVER_SRCS))

# Library sources get coverage and sanitizers but no fuzzer main.
$(FUZZ_DIR)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(if $(Q),@echo "  FUZZCC  $<")
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_ISA) -fsanitize=fuzzer-no-link,address,undefined \
	    -fno-sanitize-recover=undefined $(call pkg_cflags,jansson) -MMD -MP -c -o $@ $<
$(FUZZ_DIR)/obj/core/src/kernel_avx2.o $(FUZZ_DIR)/obj/core/src/kernel_avx2_step.o: FUZZ_ISA := -mavx2 -mfma
$(FUZZ_DIR)/obj/proto/src/util/f32_format_avx2.o $(FUZZ_DIR)/obj/proto/src/util/f32_parse_avx2.o: \
    FUZZ_ISA := -mavx2

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c $(wildcard tests/fuzz/*.h) $(FUZZ_LIB_OBJS)
	@mkdir -p $(@D)
	$(if $(Q),@echo "  FUZZLD  $@")
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_WARN) $(FUZZ_SAN) -o $@ $< $(FUZZ_EXTRA_OBJS) $(FUZZ_LIB_OBJS) \
	    $(call pkg_libs,jansson) -lpthread -lm
# The query harness links the route table (its handlers are stubbed), the
# checkpoint one the registry (no HTTP, store or daemon).
$(FUZZ_DIR)/fuzz_query: $(call fuzz_objs,server/src/http/routes.c)
$(FUZZ_DIR)/fuzz_query: FUZZ_EXTRA_OBJS = $(call fuzz_objs,server/src/http/routes.c)
$(FUZZ_DIR)/fuzz_checkpoint: $(FUZZ_SERVER_OBJS)
$(FUZZ_DIR)/fuzz_checkpoint: FUZZ_EXTRA_OBJS = $(FUZZ_SERVER_OBJS)

.PHONY: fuzz fuzz-ci fuzz-run fuzz-build fuzz-seeds
fuzz-build: $(FUZZ_BINS)

fuzz-seeds:
	$(Q)rm -rf $(FUZZ_DIR)/seeds && mkdir -p $(FUZZ_DIR)/seeds/json $(FUZZ_DIR)/seeds/safetensors
	$(Q)for f in tests/proto/*/*/request.json; do \
	    c=$${f%/request.json}; cp $$f $(FUZZ_DIR)/seeds/json/$$(basename $$(dirname $$c))_$$(basename $$c); done
	$(Q)for f in tests/proto/*/*/request.safetensors; do \
	    c=$${f%/request.safetensors}; cp $$f $(FUZZ_DIR)/seeds/safetensors/$$(basename $$(dirname $$c))_$$(basename $$c); done

# fuzz_run(seconds): each harness in turn; every one runs even after a
# finding, and the recipe fails at the end if any found something.
define fuzz_run
	$(Q)rm -rf $(FUZZ_DIR)/findings && mkdir -p $(FUZZ_DIR)/findings; failed=; \
	for n in $(FUZZ_NAMES); do \
	    mkdir -p $(FUZZ_DIR)/corpus/$$n; \
	    seeds=; for d in tests/fuzz/seeds/$$n \
	        $$( [ $$n = report_json ] && echo $(FUZZ_DIR)/seeds/json ) \
	        $$( [ $$n = report_safetensors ] && echo $(FUZZ_DIR)/seeds/safetensors ); do \
	        [ -d $$d ] && seeds="$$seeds $$d"; done; \
	    log=$(FUZZ_DIR)/$$n.log; \
	    if $(FUZZ_DIR)/fuzz_$$n -max_total_time=$(1) -print_final_stats=1 -timeout=10 \
	           -rss_limit_mb=2048 -artifact_prefix=$(FUZZ_DIR)/findings/$$n- \
	           $(FUZZ_DIR)/corpus/$$n $$seeds >$$log 2>&1; then res=ok; \
	    else res="FINDING (see $$log and $(FUZZ_DIR)/findings/)"; failed="$$failed $$n"; fi; \
	    execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log); \
	    printf 'fuzz %-20s %12s executions in %ss  %s\n' $$n "$${execs:-?}" $(1) "$$res"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzzing found something in:$$failed"; exit 1; fi
endef

# Packages first (clang), then a make that sees them, as `make test` does.
fuzz:
	$(Q)sh mk/deps.sh build fuzz
	$(Q)$(MAKE) --no-print-directory fuzz-run FUZZ_SECONDS=$(FUZZ_SECONDS)

fuzz-ci:
	$(Q)sh mk/deps.sh build fuzz
	$(Q)$(MAKE) --no-print-directory fuzz-run FUZZ_SECONDS=30

fuzz-run: $(FUZZ_BINS) fuzz-seeds
	$(call fuzz_run,$(FUZZ_SECONDS))
