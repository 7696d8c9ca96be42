# deploy/monitoring/monitoring.mk - what checks the operators' files: Grafana's dashboard
# schema as TypeScript (@grafana/schema) and tsc, pinned in deploy/monitoring/package-lock.json.
# tests/integration/test_monitoring.py type-checks grafana-dashboard.json with them; it
# fails, never skips, when they are missing.
#
# monitoring-deps: `npm ci` of that lock into $(BUILD)/monitoring/node_modules.

MONITORING_DIR   := $(BUILD)/monitoring
MONITORING_STAMP := $(MONITORING_DIR)/node_modules/.package-lock.json

$(MONITORING_STAMP): deploy/monitoring/package.json deploy/monitoring/package-lock.json
	@mkdir -p $(MONITORING_DIR)
	$(Q)cp deploy/monitoring/package.json deploy/monitoring/package-lock.json $(MONITORING_DIR)/
	$(Q)cd $(MONITORING_DIR) && npm ci --no-audit --no-fund --loglevel=error \
	    $(if $(wildcard /etc/ssl/certs/ca-certificates.crt),--cafile=/etc/ssl/certs/ca-certificates.crt)
	$(Q)touch $@

.PHONY: monitoring-deps
monitoring-deps: $(MONITORING_STAMP)

# the integration tests, plain and under the sanitizers, include test_monitoring.py
test-integration test-integration-sanitized test-tsan: monitoring-deps
