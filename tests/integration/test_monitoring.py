"""test_monitoring.py - the operators' files in deploy/monitoring/ against a live normstatd.

* The Prometheus alert rules pass `promtool check rules`, and `promtool test
  rules` with normstat-alerts.test.yml: each alert fires on its condition
  and stays quiet below it (promtool is Debian's package prometheus).
* The Grafana board imports: unique panel ids, every query on the board's
  Prometheus data source variable, panels inside the 24-column grid.
* The Grafana board type-checks (TypeScript, tsc --strict) against Grafana's own
  schema, @grafana/schema: the board as a Dashboard, each panel's options and
  field config as its panel plugin's Options and FieldConfig (unknown fields,
  wrong types and unknown enum values are errors). A copy with one wrong field
  must fail the same check, so the checker is known to be looking. No Grafana
  server can be installed here (not in Debian), so no real import is done.
  `make monitoring-deps` installs both npm packages (deploy/monitoring/package.json).
* Every metric named by an alert expression or a Grafana query
  (grafana-dashboard.json: panels' targets and template variables) is in
  the /metrics of a real daemon fed with a two-domain run (steps applied,
  one pending, a rejected bad value), and every metric used with a `run`
  label has a series of that run there.

No promtool, node or the npm packages is a failure naming what to install, never a skip.
Run from the repository root: /usr/bin/python3 tests/integration/test_monitoring.py
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

import nsd
from test_api_runs import parse_metrics

DIR = os.path.join(nsd.REPO, "deploy", "monitoring")
RULES = os.path.join(DIR, "normstat-alerts.yml")
RULE_TESTS = os.path.join(DIR, "normstat-alerts.test.yml")
BOARD = os.path.join(DIR, "grafana-dashboard.json")
CMD_LIMIT_S = 30
# Grafana's schema as TypeScript (@grafana/schema) and tsc, installed by `make monitoring-deps`
SCHEMA_MODULES = os.path.abspath(os.environ.get("NS_MONITORING_NPM") or os.path.join(
    nsd.REPO, os.environ.get("NS_BUILD", "build"), "monitoring"))
# panel type: the module of @grafana/schema with its Options and (if any) FieldConfig
PANEL_SCHEMAS = {
    "timeseries": ("raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen", True),
    "stat": ("raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen", False),
}
# Grafana's JSON holds an enum's value ("list"), its TypeScript types the enum
# (LegendDisplayMode.List): Json<T> turns string enums into their values' union.
# Plugin options with a default may be left out (Grafana fills them in on import):
# Partial, at every level, for those.
TS_PRELUDE = """\
type Json<T> = T extends string ? `${T}` : T extends (infer U)[] ? Json<U>[]
  : T extends object ? { [K in keyof T]: Json<T[K]> } : T;
type Defaulted<T> = T extends string ? `${T}` : T extends (infer U)[] ? Defaulted<U>[]
  : T extends object ? { [K in keyof T]?: Defaulted<T[K]> } : T;
"""

# PromQL words that are not metric names when not followed by '('.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}


def metric_names(expr):
    """The metric names a PromQL expression (or a Grafana label_values()) selects."""
    e = re.sub(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*,[^)]*\)", r"\1", expr)
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)  # strings
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors
    e = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?\b", " ", e)  # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group(0).lower() not in KEYWORDS:
            names.add(m.group(0))
    return names


def uses_run_label(expr):
    return re.search(r"\brun\s*(=~|!~|!=|=)|\bby\s*\([^)]*\brun\b|label_values\([^)]*,\s*run\s*\)", expr) is not None


def rule_exprs():
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def board_exprs():
    with open(BOARD) as f:
        board = json.load(f)
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(board["panels"])
    for v in board.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append(("variable " + v["name"], q))
    return out


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def board_typescript(board):
    """The board as TypeScript declarations typed with Grafana's schema: tsc's errors are its mistakes."""
    lines = ['import type { Dashboard } from "@grafana/schema";']
    for kind, (module, _) in PANEL_SCHEMAS.items():
        lines.append(f'import type * as {kind} from "@grafana/schema/dist/esm/{module}";')
    lines.append(TS_PRELUDE)
    lines.append("export const board: Json<Dashboard> = " + json.dumps(board, indent=1) + ";")
    for p in walk_panels(board["panels"]):
        if p["type"] == "row":
            continue
        kind = p["type"]
        if kind not in PANEL_SCHEMAS:
            continue  # test_board_schema fails on it
        custom = p.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
        custom_type = f"Defaulted<{kind}.FieldConfig>" if PANEL_SCHEMAS[kind][1] else "Record<string, never>"
        lines.append(f"export const options_{p['id']}: Defaulted<{kind}.Options> = "
                     + json.dumps(p.get("options", {})) + ";")
        lines.append(f"export const custom_{p['id']}: {custom_type} = " + json.dumps(custom) + ";")
    return "\n".join(lines) + "\n"


def report(step, worker, domain, mean, var, count=8):
    return {"step": step, "worker": worker, "domain": domain,
            "layers": {"stem.bn": {"count": count, "mean": mean, "var": var},
                       "head.bn": {"count": count, "mean": [m * 2 for m in mean], "var": var}}}


class Monitoring(nsd.Case):

    def promtool(self, *args):
        p = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=CMD_LIMIT_S)
        return p.returncode, (p.stdout + p.stderr).strip()

    def test_parser(self):
        """The expression reader itself, on known answers."""
        self.check_eq(metric_names('histogram_quantile(0.99, sum by (le, route) '
                                   '(rate(a_seconds_bucket{route!="x"}[5m])))'), {"a_seconds_bucket"},
                      "histogram_quantile over a bucket rate names the bucket series")
        self.check_eq(metric_names("max by (run) (x_lag{run=~\"$run\"}) > 10 and on (run) y == 1"),
                      {"x_lag", "y"}, "a binary expression names both sides")
        self.check_eq(metric_names("label_values(z_total, run)"), {"z_total"}, "label_values names its metric")
        self.check(uses_run_label('sum by (run) (increase(x[5m]))') and not uses_run_label("max(x)"),
                   "the run label is recognised in by() and not elsewhere")

    def test_rules(self):
        self.require(shutil.which("promtool") is not None, "promtool is installed",
                     "install Debian's prometheus package: sh mk/deps.sh test")
        rc, out = self.promtool("check", "rules", RULES)
        self.check(rc == 0 and "SUCCESS" in out, "promtool check rules normstat-alerts.yml", out)
        rc, out = self.promtool("test", "rules", RULE_TESTS)
        self.check(rc == 0 and "SUCCESS" in out, "promtool test rules normstat-alerts.test.yml", out)
        alerts = {a for a, _ in rule_exprs()}
        for want in ("NormstatBadValues", "NormstatStoreFailing", "NormstatStepsTimingOut",
                     "NormstatWorkerLagging", "NormstatDriftHigh"):
            self.check(want in alerts, f"alert rule {want} exists")
        with open(RULE_TESTS) as f:
            tested = {t["alertname"] for case in yaml.safe_load(f)["tests"]
                      for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
        self.check_eq(tested, alerts, "every alert has a promtool test in which it fires")

    def test_board_structure(self):
        """What Grafana needs to import the board: unique panel ids, one Prometheus
        data source variable every query uses, distinct refIds within a panel."""
        with open(BOARD) as f:
            board = json.load(f)
        panels = [p for p in board["panels"]] + [q for p in board["panels"] for q in p.get("panels", [])]
        ids = [p["id"] for p in panels]
        self.check_eq(len(ids), len(set(ids)), "panel ids are unique")
        variables = {v["name"]: v for v in board["templating"]["list"]}
        self.check_eq((variables.get("datasource") or {}).get("query"), "prometheus",
                      "a Prometheus data source variable")
        for p in panels:
            if p["type"] == "row":
                continue
            refs = [t["refId"] for t in p["targets"]]
            self.check(p["targets"] and len(refs) == len(set(refs)), f"{p['title']}: distinct refIds")
            self.check(all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
                       and p["datasource"]["uid"] == "${datasource}",
                       f"{p['title']}: queries the chosen data source")
            self.check(all(k in p["gridPos"] for k in "xywh") and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24,
                       f"{p['title']}: placed within the 24-column grid")

    def tsc(self, board):
        """tsc --strict on the board's TypeScript: (exit status, its messages)."""
        with tempfile.TemporaryDirectory(dir=SCHEMA_MODULES) as tmp:  # beside node_modules
            src = os.path.join(tmp, "board.ts")
            with open(src, "w") as f:
                f.write(board_typescript(board))
            p = subprocess.run([shutil.which("node"), os.path.join(SCHEMA_MODULES, "node_modules", "typescript", "bin",
                                                                   "tsc"),
                                "--noEmit", "--strict", "--target", "es2022", "--module", "esnext",
                                "--moduleResolution", "bundler", "--skipLibCheck", src],
                               capture_output=True, text=True, timeout=CMD_LIMIT_S * 2, cwd=tmp)
            return p.returncode, (p.stdout + p.stderr).strip()

    def test_board_schema(self):
        """The board against Grafana's own dashboard and panel schema (@grafana/schema)."""
        self.require(shutil.which("node") is not None, "node is installed", "install Debian's nodejs: sh mk/deps.sh test")
        have = all(os.path.isfile(os.path.join(SCHEMA_MODULES, "node_modules", m, "package.json"))
                   for m in ("typescript", "@grafana/schema"))
        self.require(have, f"typescript and @grafana/schema are installed in {SCHEMA_MODULES}",
                     "run `make monitoring-deps` (npm ci of deploy/monitoring/package-lock.json)")
        with open(os.path.join(SCHEMA_MODULES, "node_modules", "@grafana", "schema", "package.json")) as f:
            version = json.load(f)["version"]
        with open(BOARD) as f:
            board = json.load(f)
        kinds = {p["type"] for p in walk_panels(board["panels"])} - {"row"}
        self.check(kinds <= set(PANEL_SCHEMAS), f"every panel type has its schema: {sorted(kinds)}",
                   f"no schema for {sorted(kinds - set(PANEL_SCHEMAS))}")
        rc, out = self.tsc(board)
        self.check(rc == 0, f"the board type-checks against @grafana/schema {version}", out[:3000])
        # the checker must see mistakes: each of these copies has one, and must fail
        # (what is wrong, where, the wrong value, what tsc's error must say)
        wrong = [("a string grid width", ("panels", 1, "gridPos", "w"), "12",
                  "Type 'string' is not assignable to type 'number'"),
                 ("an unknown legend display mode", ("panels", 1, "options", "legend", "displayMode"), "grid",
                  "Type '\"grid\"' is not assignable"),
                 ("an unknown dashboard field", ("refreshInterval",), "30s",
                  "'\"refreshInterval\"' does not exist in type")]
        for desc, path, value, says in wrong:
            bad = json.loads(json.dumps(board))
            node = bad
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value
            rc, out = self.tsc(bad)
            self.check(rc != 0 and says in out and out.count("error TS") == 1,
                       f"a board with {desc} fails the same check, on that one error", out[:800])

    def feed(self):
        """A two-domain run: steps 0-2 complete, step 3 pending for worker 1, one bad value."""
        run = nsd.run_name("mon")
        self.check_status(self.c.put(f"/v1/runs/{run}", {"world_size": 2, "sync_timeout_ms": 600000}),
                          201, "PUT run", must=True)
        for step in range(3):
            for w, dom in ((0, "photo"), (1, "sketch")):
                self.check_status(self.c.report(run, report(step, w, dom, [0.1 * step + w, -0.5],
                                                            [1.0 + step, 2.0])),
                                  202, f"report step {step} worker {w}", must=True)
        self.check_status(self.c.report(run, report(3, 0, "photo", [0.2, 0.1], [1.0, 1.0])), 202,
                          "report step 3 worker 0 (worker 1 never sends it)", must=True)
        self.check_status(self.c.report(run, report(4, 1, "sketch", [0.2, 0.1], [-1.0, 1.0])), 422,
                          "a negative variance is refused", code="bad_value")
        return run

    def test_queries_name_exported_metrics(self):
        run = self.feed()
        r = self.c.get("/metrics")
        self.require(r.status == 200, "GET /metrics", r.short())
        samples, types, _ = parse_metrics(r.body.decode())
        exported = {name for name, _, _ in samples}
        of_run = {name for name, labels, _ in samples if labels.get("run") == run}
        exprs = [("alert " + a, e) for a, e in rule_exprs()] + [("grafana " + t, e) for t, e in board_exprs()]
        self.check(len(exprs) >= 15, f"{len(exprs)} expressions in the rules and the board")
        for where, expr in exprs:
            names = metric_names(expr)
            self.check(names, f"{where}: names a metric", expr)
            missing = sorted(names - exported)
            self.check(not missing, f"{where}: {', '.join(sorted(names))} exported", f"not in /metrics: {missing}")
            if uses_run_label(expr):
                no_series = sorted(names - of_run)
                self.check(not no_series, f"{where}: a series with run=\"{run}\"", f"none for {no_series}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    nsd.main()
