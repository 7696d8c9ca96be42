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

.PHONY: bench bench-core bench-server bench-profile bench-trainer bench-scale
# Packages first, then a fresh make that sees them (as `make test` does); the
# benchmarks one after the other, never in parallel (they share 2 cores).
bench:
	$(Q)sh mk/deps.sh build bench
	$(Q)$(MAKE) --no-print-directory bench-core
	$(Q)$(MAKE) --no-print-directory bench-server
	$(Q)$(MAKE) --no-print-directory bench-profile
	$(Q)$(MAKE) --no-print-directory bench-trainer
	$(Q)$(MAKE) --no-print-directory bench-scale

bench-core: $(BENCH_CORE)
	$(Q)$(BENCH_CORE) --reps $(BENCH_REPS) --rounds $(BENCH_ROUNDS) \
	    --python $(PYTHON) --script tests/bench/torch_var_mean.py

# ---------------------------------------------------------------- server benchmarks
# Tables 2-5 (ingest, sync, scale, durability): tests/bench/bench_server.py
# drives normstatd, the bare libmicrohttpd server, the load generator and the
# torch.distributed gloo peer (tests/bench/sync_gloo.py).
BENCH_LOADGEN := $(BUILD)/bench/loadgen
BENCH_BARE    := $(BUILD)/bench/bare_server
BENCH_SECONDS ?= 3
BENCH_TABLES  ?= 2,3,4,5

$(BUILD)/tests/bench/loadgen.o: NS_EXTRA_CFLAGS = $(call pkg_cflags,libuv jansson)
$(BUILD)/tests/bench/bare_server.o: NS_EXTRA_CFLAGS = $(call pkg_cflags,libmicrohttpd)

$(BENCH_LOADGEN): $(BUILD)/tests/bench/loadgen.o $(PROTO_A) $(CORE_A)
	@mkdir -p $(@D)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(NS_LDFLAGS) -o $@ $^ $(call pkg_libs,libuv jansson) -lm

$(BENCH_BARE): $(BUILD)/tests/bench/bare_server.o
	@mkdir -p $(@D)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(NS_LDFLAGS) -o $@ $^ $(call pkg_libs,libmicrohttpd) -lpthread

# Reports applied to one run by 1, 2 and 4 threads in process (table 4e):
# the registry's API, linked from libnsd.a.
BENCH_REGISTRY := $(BUILD)/bench/bench_registry
$(BUILD)/tests/bench/bench_registry.o: NS_EXTRA_CFLAGS = -Iserver/src $(call pkg_cflags,$(NSD_PKGS))

$(BENCH_REGISTRY): $(BUILD)/tests/bench/bench_registry.o $(NSD_A) $(PROTO_A) $(CORE_A)
	@mkdir -p $(@D)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(NS_LDFLAGS) -o $@ $^ $(NSD_LIBS)

.PHONY: bench-server
bench-server: $(BENCH_LOADGEN) $(BENCH_BARE) $(BENCH_REGISTRY) $(NSD_BIN)
	$(Q)$(PYTHON) tests/bench/bench_server.py --build $(BUILD) --seconds $(BENCH_SECONDS) \
	    --tables $(BENCH_TABLES) --python $(PYTHON)

# Table 2b, where a report's server time goes: normstatd under callgrind
# (instructions, reproducible on a shared machine) and under an allocation
# counter (tests/bench/malloc_count.c, LD_PRELOAD), per report and channel.
BENCH_MALLOC_COUNT := $(BUILD)/bench/malloc_count.so
$(BENCH_MALLOC_COUNT): tests/bench/malloc_count.c
	@mkdir -p $(@D)
	$(if $(Q),@echo "  CC      $@")
	$(Q)$(CC) -O2 -fPIC -shared -o $@ $<

.PHONY: bench-profile
bench-profile: $(BENCH_LOADGEN) $(BENCH_MALLOC_COUNT) $(NSD_BIN)
	$(Q)$(PYTHON) tests/bench/bench_profile.py --build $(BUILD)

# ---------------------------------------------------------------- trainer benchmarks
# Tables 6-7: what StatsReporter adds to a CPU training step
# (tests/bench/bench_trainer.py) and SyncBatchNorm's per-layer round trips
# over normstat next to gloo (tests/bench/bench_syncbn.py); each starts its
# own normstatd. The GPU table is tests/bench/gpu_trainer.py, run by hand on
# a machine with a CUDA GPU.
BENCH_TRAINER_ROUNDS ?= 5
BENCH_SYNCBN_ITERS   ?= 300

bench-trainer: $(NSD_BIN)
	$(Q)$(PYTHON) tests/bench/bench_trainer.py --build $(BUILD) --rounds $(BENCH_TRAINER_ROUNDS)
	$(Q)$(PYTHON) tests/bench/bench_syncbn.py --build $(BUILD) --iters $(BENCH_SYNCBN_ITERS)

# ---------------------------------------------------------------- scale benchmark
# Table 9: one run of 64, 256 and 1,024 simulated workers (the load generator's
# keep-alive connections, ResNet-50 reports to /sync), directly to one normstatd and
# through relays of 8 (normstatd --upstream), CPU, bytes and memory per process
# (tests/bench/bench_scale.py; a minute or so here).
BENCH_SCALE_WORKERS ?= 64,256,1024

bench-scale: $(BENCH_LOADGEN) $(NSD_BIN)
	$(Q)$(PYTHON) tests/bench/bench_scale.py --build $(BUILD) --workers $(BENCH_SCALE_WORKERS)
