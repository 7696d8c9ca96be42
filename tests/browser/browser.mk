# tests/browser/browser.mk - the dashboard in a real browser: Debian's chromium driven by
# playwright-core (npm, pinned in tests/browser/package-lock.json), against a real
# normstatd fed by a real PyTorch trainer. `make test` runs it; it fails, never skips,
# when node, chromium (sh mk/deps.sh test) or the npm packages are missing.
#
# browser-deps: `npm ci` of tests/browser's lock into $(BUILD)/browser/node_modules.
# Run the test alone: make browser-deps && PYTHONPATH=client/python NS_BUILD=build \
#     /usr/bin/python3 tests/browser/test_dashboard.py

BROWSER_DIR   := $(BUILD)/browser
# npm trusts the system's CA bundle (where a machine adds its own CAs), not only
# the roots built into Node.
SYSTEM_CA     := $(wildcard /etc/ssl/certs/ca-certificates.crt)
BROWSER_STAMP := $(BROWSER_DIR)/node_modules/.package-lock.json

$(BROWSER_STAMP): tests/browser/package.json tests/browser/package-lock.json
	@mkdir -p $(BROWSER_DIR)
	$(Q)cp tests/browser/package.json tests/browser/package-lock.json $(BROWSER_DIR)/
	$(Q)cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --loglevel=error $(if $(SYSTEM_CA),--cafile=$(SYSTEM_CA))
	$(Q)touch $@

.PHONY: browser-deps test-browser
browser-deps: $(BROWSER_STAMP)

test-browser: $(ALL_TARGETS) browser-deps
	$(Q)echo "== tests/browser/test_dashboard.py"; \
	PYTHONPATH=client/python NS_BUILD=$(BUILD) NS_PLAYWRIGHT=$(BROWSER_DIR) \
	    $(PYTHON) tests/browser/test_dashboard.py
