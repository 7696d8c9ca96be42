# tests/bench/bench.mk - benchmarks; `make bench` installs the PyTorch peer if
# missing, builds, and prints each benchmark's markdown table.

BENCH_CORE     := $(BUILD)/bench/bench_core
BENCH_CORE_OBJ := $(BUILD)/tests/bench/bench_core.o
BENCH_REPS     ?= 7
BENCH_ROUNDS   ?= 4

# -O3 for the read-bandwidth reference loop (its AVX2 version has its own
# target attribute and is chosen at run time), so the bandwidth the core is
# measured against is not understated. The library keeps the project's flags.
$(BENCH_CORE_OBJ): NS_EXTRA_CFLAGS = -O3

$(BENCH_CORE): $(BENCH_CORE_OBJ) $(CORE_A)
	@mkdir -p $(@D)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(NS_LDFLAGS) -o $@ $^ -lm

.PHONY: bench bench-core
# Packages first, then a fresh make that sees them (as `make test` does).
bench:
	$(Q)sh mk/deps.sh build bench
	$(Q)$(MAKE) --no-print-directory bench-core

bench-core: $(BENCH_CORE)
	$(Q)$(BENCH_CORE) --reps $(BENCH_REPS) --rounds $(BENCH_ROUNDS) \
	    --python $(PYTHON) --script tests/bench/torch_var_mean.py
