# tests/e2e/e2e.mk - end-to-end tests: real PyTorch trainers and evaluators
# (the Python client in client/python) against a real normstatd.
#
# Each tests/e2e/test_*.py starts its own daemon from $(BUILD)/bin on an
# ephemeral 127.0.0.1 port and exits non-zero on any failed check.
# Run one: PYTHONPATH=client/python NS_BUILD=build /usr/bin/python3 tests/e2e/test_sync.py

E2E_TESTS := $(sort $(wildcard tests/e2e/test_*.py))

.PHONY: test-e2e
test-e2e: $(ALL_TARGETS)
	$(Q)failed=; for t in $(E2E_TESTS); do \
	    echo "== $$t"; \
	    PYTHONPATH=client/python NS_BUILD=$(BUILD) $(PYTHON) $$t || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "e2e tests failed:$$failed"; exit 1; fi
