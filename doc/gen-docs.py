#!/usr/bin/env python3
"""gen-docs.py - normstatd's man page and the README's tables, generated from their sources.

    gen-docs.py man OUT                  normstatd(8) from server/src/base/options.def
    gen-docs.py readme [--check]         README.md's options table (options.def) and
                                         metrics table (a live normstatd's /metrics)

The README sections sit between "<!-- BEGIN name ... -->" and "<!-- END name -->"
lines and are rewritten in place; --check rewrites nothing and exits 1 with a
diff when README.md is not what this script would write. The metrics table needs
a built daemon: $NS_BUILD/bin/normstatd (default build/bin/normstatd), started
on an ephemeral loopback port with --no-persist and stopped with SIGTERM.
"""
import difflib
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OPTIONS_DEF = os.path.join(REPO, "server", "src", "base", "options.def")
CORE_H = os.path.join(REPO, "core", "include", "normstat", "core.h")
README = os.path.join(REPO, "README.md")

FIELDS = ("id", "flag", "env", "default", "metavar", "type", "min", "max", "help")


# ---------------------------------------------------------------- options.def


def _strip_comments(text):
    """C comments removed, string literals kept intact."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("/*", i):
            i = text.index("*/", i) + 2
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = len(text) if i < 0 else i
        elif text[i] == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _split_args(body):
    """Top-level comma-separated arguments of a macro call (strings may hold commas)."""
    args, cur, depth, i = [], [], 0, 0
    while i < len(body):
        ch = body[i]
        if ch == '"':
            j = i + 1
            while body[j] != '"':
                j += 2 if body[j] == "\\" else 1
            cur.append(body[i:j + 1])
            i = j + 1
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    args.append("".join(cur).strip())
    return args


def _c_value(arg):
    """A C argument as Python: adjacent string literals joined, NULL as None, else the text."""
    if arg == "NULL":
        return None
    lits = re.findall(r'"((?:[^"\\]|\\.)*)"', arg)
    if lits and re.fullmatch(r'(\s*"(?:[^"\\]|\\.)*"\s*)+', arg):
        esc = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "'": "'"}
        return "".join(re.sub(r"\\(.)", lambda m: esc.get(m.group(1), m.group(0)), s)
                       for s in lits)
    return arg


def read_options(path=OPTIONS_DEF):
    """Every NSD_OPTION row of options.def, in order, as a dict of FIELDS."""
    text = _strip_comments(open(path, encoding="utf-8").read())
    rows = []
    for m in re.finditer(r"\bNSD_OPTION\s*\(", text):
        i, depth = m.end(), 1
        j = i
        while depth:
            if text[j] == '"':
                j += 1
                while text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
            elif text[j] == "(":
                depth += 1
            elif text[j] == ")":
                depth -= 1
            j += 1
        args = _split_args(text[i:j - 1])
        if len(args) != len(FIELDS):
            raise ValueError(f"{path}: NSD_OPTION with {len(args)} arguments: {args[:2]}")
        rows.append(dict(zip(FIELDS, (_c_value(a) for a in args))))
    if not rows:
        raise ValueError(f"{path}: no NSD_OPTION rows")
    return rows


def version():
    m = re.search(r'#define NS_VERSION_STRING "([^"]*)"', open(CORE_H, encoding="utf-8").read())
    return m.group(1) if m else "unknown"


def usage(o):
    """--flag METAVAR, as --help shows it."""
    return f"--{o['flag']}" + (f" {o['metavar']}" if o["metavar"] else "")


# ---------------------------------------------------------------- man page


def _roff(s):
    s = s.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", s, flags=re.M)


def man_page(opts):
    v = version()
    out = [
        f'.TH NORMSTATD 8 "" "normstat {v}" "System Administration"',
        ".SH NAME",
        "normstatd \\- the normstat BatchNorm statistics service",
        ".SH SYNOPSIS",
        ".B normstatd",
        "[\\fIOPTION\\fR]...",
        ".SH DESCRIPTION",
        "Distributed trainers send",
        ".B normstatd",
        "each step's per-channel BatchNorm statistics (count, mean, variance) over HTTP.",
        "It combines the workers of a step into the global statistics SyncBatchNorm computes,",
        "keeps population statistics (PyTorch's EMA, PreciseBN, per domain),",
        "stores them in an SQLite database in the data directory,",
        "and serves them to trainers and evaluators.",
        "The HTTP API is described in proto/openapi.yaml of the source tree;",
        "Prometheus metrics are served at /metrics.",
        ".SH OPTIONS",
        "Every option that has an environment variable may be set by it;",
        "command-line flags override the environment.",
    ]
    for o in opts:
        out.append(".TP")
        out.append(f"\\fB\\-\\-{_roff(o['flag'])}\\fR" + (f" \\fI{_roff(o['metavar'])}\\fR"
                                                        if o["metavar"] else ""))
        text = _roff(o["help"][:1].upper() + o["help"][1:]) + "."
        extra = []
        if o["env"]:
            extra.append(f"environment \\fB{_roff(o['env'])}\\fR")
        if o["default"]:
            extra.append(f"default \\fB{_roff(o['default'])}\\fR")
        if extra:
            text += " (" + ", ".join(extra) + ")"
        out.append(text)
    out += [".SH ENVIRONMENT", ".TP"]
    envs = [o for o in opts if o["env"]]
    for k, o in enumerate(envs):
        out.append(f"\\fB{_roff(o['env'])}\\fR")
        out.append(f"Same as \\fB\\-\\-{_roff(o['flag'])}\\fR.")
        if k + 1 < len(envs):
            out.append(".TP")
    out += [
        ".SH SIGNALS",
        ".TP", "\\fBSIGTERM\\fR, \\fBSIGINT\\fR",
        "Stop accepting connections, let in-flight requests finish (at most",
        "\\fB\\-\\-shutdown\\-timeout\\fR), flush the store and exit 0.",
        "Waiting /sync requests are answered 503 shutting_down.",
        ".TP", "\\fBSIGHUP\\fR",
        "Reopen the log file (\\fB\\-\\-log\\-file\\fR).",
        ".SH FILES",
        ".TP", "\\fIDATA_DIR\\fR (\\fB\\-\\-data\\-dir\\fR, default ./var)",
        "The persistent store. The only place the daemon writes to.",
        ".SH EXIT STATUS",
        "0 after a clean shutdown;",
        "non-zero when the options are invalid or the daemon cannot start.",
        "With \\fB\\-\\-probe\\fR: 0 when GET /readyz answers 200, 1 otherwise.",
        ".SH EXAMPLES",
        ".nf",
        "normstatd \\-\\-listen 127.0.0.1:8750 \\-\\-data\\-dir /var/lib/normstat",
        "NORMSTAT_LISTEN=0.0.0.0:8750 normstatd",
        "normstatd \\-\\-probe && echo ready",
        ".fi",
        ".SH LICENSE",
        "Apache License, Version 2.0 (Apache\\-2.0): the file LICENSE of the sources.",
        ".SH SEE ALSO",
        ".BR normstat (1)",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------- README tables


def options_table(opts):
    lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for o in opts:
        lines.append("| `{}` | {} | {} | {} |".format(
            usage(o), f"`{o['env']}`" if o["env"] else "—",
            f"`{o['default']}`" if o["default"] else "—", o["help"].replace("|", "\\|")))
    return lines


def daemon_metrics(exe):
    """(name, type, help, labels) of every metric family a fresh normstatd exports."""
    with tempfile.TemporaryDirectory(prefix="normstat-gen-docs-") as tmp:
        exe = os.path.abspath(exe)
        p = subprocess.Popen([exe, "--listen", "127.0.0.1:0", "--no-persist", "--data-dir", tmp],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, cwd=tmp)
        try:
            # writes are refused (503 not_ready) between event=listening and
            # event=ready, so the report below waits for the latter
            port = None
            for raw in p.stderr:  # ends at EOF if the daemon dies
                m = re.search(rb"event=ready addr=\"?[0-9.]+:(\d+)", raw)
                if m:
                    port = int(m.group(1))
                if port is not None and b"event=ready" in raw:
                    break  # listening comes first; reports are refused (503) until ready
            else:
                port = None
            if port is None:
                raise RuntimeError(f"{exe} did not start")
            # one report, so the per-run families (normstat_run_*) show their labels
            body = b'{"step": 0, "worker": 0, "layers": {"bn": {"count": 8, "mean": [0.5], "var": [1]}}}'
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/runs/docs/batches", data=body,
                headers={"Content-Type": "application/json"}), timeout=10).read()
            # the second scrape also shows the request counters' labels: a request is
            # counted when its answer is queued, before the client can read it
            for _ in range(2):
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                              timeout=10).read()
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stderr.close()
    fams, order = {}, []
    for line in text.decode().splitlines():
        m = re.match(r"# (HELP|TYPE) (\S+) (.*)", line)
        if m:
            f = fams.setdefault(m.group(2), {"labels": []})
            if m.group(2) not in order:
                order.append(m.group(2))
            f[m.group(1)] = m.group(3)
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*?)(_bucket|_sum|_count)?\{(.*)\}", line)
        if m:
            name = m.group(1) if m.group(1) in fams else m.group(1) + (m.group(2) or "")
            for k in re.findall(r'(\w+)="', m.group(3)):
                if name in fams and k != "le" and k not in fams[name]["labels"]:
                    fams[name]["labels"].append(k)
    return [(n, fams[n].get("TYPE", ""), fams[n].get("HELP", ""), fams[n]["labels"])
            for n in order]


def metrics_table(metrics):
    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name, typ, help_, labels in metrics:
        lines.append("| `{}` | {} | {} | {} |".format(
            name, typ, ", ".join(f"`{x}`" for x in labels) or "—", help_.replace("|", "\\|")))
    return lines


def daemon_path():
    build = os.environ.get("NS_BUILD", "build")
    return os.path.join(build if os.path.isabs(build) else os.path.join(REPO, build),
                        "bin", "normstatd")


def render_readme(text, sections):
    """README text with each generated section replaced."""
    for name, lines in sections.items():
        rx = re.compile(r"(<!-- BEGIN %s\b[^\n]*-->\n).*?(<!-- END %s -->)" % (name, name), re.S)
        if not rx.search(text):
            raise ValueError(f"README.md has no '<!-- BEGIN {name} ... -->' section")
        text = rx.sub(lambda m: m.group(1) + "\n".join(lines) + "\n" + m.group(2), text)
    return text


def readme_sections(exe=None):
    return {"options": options_table(read_options()),
            "metrics": metrics_table(daemon_metrics(exe or daemon_path()))}


def main(argv):
    if len(argv) == 2 and argv[0] == "man":
        page = man_page(read_options())
        os.makedirs(os.path.dirname(os.path.abspath(argv[1])), exist_ok=True)
        with open(argv[1], "w", encoding="utf-8") as f:
            f.write(page)
        return 0
    if argv[:1] == ["readme"] and argv[1:] in ([], ["--check"]):
        old = open(README, encoding="utf-8").read()
        new = render_readme(old, readme_sections())
        if argv[1:] == ["--check"]:
            if old != new:
                sys.stdout.writelines(difflib.unified_diff(
                    old.splitlines(True), new.splitlines(True), "README.md", "generated"))
                print("README.md is out of date: run python3 doc/gen-docs.py readme")
                return 1
            return 0
        if old != new:
            with open(README, "w", encoding="utf-8") as f:
                f.write(new)
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
