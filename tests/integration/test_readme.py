"""test_readme.py - every command in README.md, run against a real normstatd, so the README cannot rot.

Fenced code blocks, in order:
* ```sh        run with `sh -e` (must exit 0);
* ```python    run with /usr/bin/python3 (must exit 0);
* ```console   each "$ command" (continued by trailing backslashes) is run with
               sh; its output must equal the lines that follow it;
* any of these (and ```c) preceded by a line "<!-- not run: why -->" is not
  run but checked: the make targets it names exist (`make -n`), the files it
  names exist, every normstatd flag it uses is an option, the CK_RUN_CASE it
  names is a test case, and every ns_ function of a C block is declared in
  core.h. A ```c block without the marker fails, as does any other language
  tag meant to be run (bash, shell, py).
Blocks without a language (or json/text) are not commands and are skipped.

Commands run from the repository root with PATH=$NS_BUILD/bin:/usr/bin:/bin
(so `normstat`, `normstatd` and `python3` are the built programs and
Debian's Python with torch), PYTHONPATH=client/python,
NORMSTAT_URL=http://127.0.0.1:PORT, and every "127.0.0.1:8750" or
"localhost:8750" replaced by the test daemon's ephemeral port.

Also checked: the options and metrics tables equal what doc/gen-docs.py
generates from server/src/base/options.def and the daemon's /metrics, and the
"## Benchmarks" section is there.

Run from the repository root: NS_BUILD=build /usr/bin/python3 tests/integration/test_readme.py
"""
import difflib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402

REPO = nsd.REPO
README = os.path.join(REPO, "README.md")
sys.path.insert(0, os.path.join(REPO, "doc"))
gen_docs = __import__("gen-docs")

LIMIT_S = 420  # the whole script
BLOCK_LIMIT_S = 240  # one block (the full trainer example is the longest)
RUN_TAGS = {"sh", "python", "console"}
NEVER_TAGS = {"bash", "shell", "py", "zsh", "pycon"}  # tags this test would not run

fails = []


def check(cond, desc, detail=""):
    if cond:
        print(f"ok   {desc}")
    else:
        print(f"FAIL {desc}" + (f"\n{detail}" if detail else ""))
        fails.append(desc)
    return bool(cond)


def blocks(text):
    """[(line number, tag, body, not_run reason or None)] of the fenced blocks."""
    out = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, tag = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        nr = re.match(r"^<!-- not run: (.*) -->$", lines[k]) if k >= 0 else None
        out.append((start + 1, tag, "\n".join(lines[start + 1:j]), nr.group(1) if nr else None))
        i = j + 1
    return out


def build_dir():
    b = os.environ.get("NS_BUILD", "build")
    return b if os.path.isabs(b) else os.path.join(REPO, b)


def environment(port):
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TERM", "TMPDIR")}
    env.update(PATH=os.path.join(build_dir(), "bin") + ":/usr/bin:/bin:/usr/sbin:/sbin",
               PYTHONPATH=os.path.join(REPO, "client", "python"),
               NORMSTAT_URL=f"http://127.0.0.1:{port}", NS_BUILD=build_dir(),
               OMP_NUM_THREADS="1")
    return env


def localize(text, port):
    text = re.sub(r"\b(127\.0\.0\.1|localhost):8750\b", f"127.0.0.1:{port}", text)
    return re.sub(r"(^|[\s=])build/bin/", lambda m: m.group(1) + build_dir() + "/bin/", text,
                  flags=re.M)


def run(argv, env, desc, timeout=BLOCK_LIMIT_S, stdin=None):
    try:
        return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, input=stdin)
    except subprocess.TimeoutExpired as e:
        check(False, f"{desc}: finished within {timeout}s", (e.stdout or "")[-1500:])
        return None


def show(r):
    return (f"exit {r.returncode}\n--- stdout\n{r.stdout[-2500:]}\n--- stderr\n"
            f"{r.stderr[-2500:]}")


def console_commands(body):
    """[(command, expected output)] of a console block."""
    out, cmd, expect, cont = [], None, [], False
    for line in body.split("\n"):
        if cont:
            cmd += "\n" + line
            cont = line.endswith("\\")
            continue
        if line.startswith("$ "):
            if cmd is not None:
                out.append((cmd, "\n".join(expect)))
            cmd, expect = line[2:], []
            cont = line.endswith("\\")
        elif cmd is not None:
            expect.append(line)
    if cmd is not None:
        out.append((cmd, "\n".join(expect)))
    return out


def run_block(lineno, tag, body, port):
    env = environment(port)
    code = localize(body, port)
    where = f"README.md:{lineno} ```{tag}"
    first = next((x for x in body.split("\n") if x.strip()), "")[:70]
    if tag == "sh":
        r = run(["sh", "-e", "-c", code], env, where)
        if r is not None:
            check(r.returncode == 0, f"{where} ({first}) exits 0", show(r))
    elif tag == "python":
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(code)
        try:
            r = run(["/usr/bin/python3", f.name], env, where)
        finally:
            os.unlink(f.name)
        if r is not None:
            check(r.returncode == 0, f"{where} ({first}) exits 0", show(r))
    elif tag == "console":
        cmds = console_commands(code)
        check(cmds, f"{where}: has $ commands")
        for cmd, expect in cmds:
            r = run(["sh", "-c", cmd], env, where)
            if r is None:
                continue
            got = r.stdout.rstrip("\n")
            check(r.returncode == 0 and got == expect.rstrip("\n"),
                  f"{where} $ {cmd.splitlines()[0][:70]}: output as shown",
                  f"expected:\n{expect}\ngot:\n{got}\n{r.stderr[-800:]}")


def options():
    return gen_docs.read_options()


def check_not_run(lineno, tag, body, why):
    where = f"README.md:{lineno} ```{tag} (not run: {why})"
    flags = {"--" + o["flag"] for o in options()}
    n = 0
    for line in body.replace("\\\n", " ").split("\n"):
        line = re.sub(r"\s#.*$", "", line).strip()
        if not line or line.startswith("/*") or tag == "c":
            continue
        words = shlex.split(line)
        for k, w in enumerate(words):
            if w == "make":
                targets = [t for t in words[k + 1:] if not t.startswith("-") and "=" not in t]
                for t in targets or ["all"]:
                    r = subprocess.run(["make", "-n", "--no-print-directory",
                                        f"BUILD={build_dir()}", t], cwd=REPO,
                                       capture_output=True, text=True, timeout=120)
                    check(r.returncode == 0, f"{where}: make target '{t}' exists", r.stderr[-500:])
                    n += 1
                break
            if w.endswith("normstatd"):
                for f in words[k + 1:]:
                    if f.startswith("--"):
                        check(f.split("=")[0] in flags, f"{where}: {f} is a normstatd option")
                        n += 1
            if re.match(r"^(docker|client|doc|tests|server|core|proto|mk)/", w):
                check(os.path.exists(os.path.join(REPO, w)), f"{where}: {w} exists")
                n += 1
            if w.startswith("build/bin/"):
                built = os.path.join(build_dir(), "bin", w[len("build/bin/"):])
                check(os.access(built, os.X_OK), f"{where}: {w} is built ({built})")
                n += 1
            elif w.startswith("build/"):
                src = re.sub(r"^build/", "", w) + ".c"
                check(os.path.exists(os.path.join(REPO, src)), f"{where}: {w} is built from {src}")
                n += 1
            m = re.match(r"CK_RUN_CASE=(\S+)", w)
            if m:
                prog = next((x for x in words if x.startswith("build/tests/unit/")), "")
                src = os.path.join(REPO, re.sub(r"^build/", "", prog) + ".c")
                ok = os.path.exists(src) and f'"{m.group(1)}"' in open(src).read()
                check(ok, f"{where}: {m.group(1)} is a test case of {os.path.basename(src)}")
                n += 1
            if w in ("-f", "--file") and k + 1 < len(words) and not re.match(
                    r"^(docker|client|doc|tests|server|core|proto|mk)/", words[k + 1]):
                check(os.path.exists(os.path.join(REPO, words[k + 1])),
                      f"{where}: {words[k + 1]} exists")
                n += 1
    if tag == "c":
        core_h = open(os.path.join(REPO, "core", "include", "normstat", "core.h")).read()
        for fn in sorted(set(re.findall(r"\b(ns_\w+)\s*\(", body))):
            check(re.search(r"\b%s\s*\(" % fn, core_h) is not None,
                  f"{where}: {fn} is declared in normstat/core.h")
            n += 1
        for ty in sorted(set(re.findall(r"\b(ns_\w+_t)\b", body))):
            check(ty in core_h, f"{where}: type {ty} is in normstat/core.h")
            n += 1
    check(n > 0, f"{where}: something in it was checked")


def main():
    def on_alarm(_s, _f):
        print(f"FAIL test_readme.py exceeded {LIMIT_S}s")
        nsd._kill_all()
        os._exit(3)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(LIMIT_S)
    os.chdir(REPO)
    text = open(README, encoding="utf-8").read()

    # generated tables
    exe = os.path.join(build_dir(), "bin", "normstatd")
    want = gen_docs.render_readme(text, gen_docs.readme_sections(exe))
    check(want == text, "README's options and metrics tables equal what doc/gen-docs.py "
                        "generates (run: python3 doc/gen-docs.py readme)",
          "\n".join(l for l in difflib.unified_diff(
              text.splitlines(), want.splitlines(), "README.md", "generated", lineterm=""))[:3000])
    check(re.search(r"^## Benchmarks$", text, re.M) is not None, "README has a Benchmarks section")
    for cmd in ("make run", "make test"):
        check(cmd in text, f"README tells the command `{cmd}`")

    bl = blocks(text)
    # files the README's commands write under /tmp, removed afterwards if they are new
    scratch = sorted({m for _, _, body, why in bl if why is None
                      for m in re.findall(r"/tmp/[\w.-]+", body)})
    scratch = [p for p in scratch if not os.path.exists(p)]
    daemon = nsd.Daemon().start()
    print(f"note normstatd on 127.0.0.1:{daemon.port}; {len(bl)} code blocks")
    try:
        ran = 0
        for lineno, tag, body, why in bl:
            if tag in NEVER_TAGS:
                check(False, f"README.md:{lineno}: block tagged '{tag}' (use sh, python or "
                             f"console so that it is run)")
            elif why is not None:
                check_not_run(lineno, tag, body, why)
            elif tag in RUN_TAGS:
                run_block(lineno, tag, body, daemon.port)
                ran += 1
            elif tag == "c":
                check(False, f"README.md:{lineno}: a c block must say <!-- not run: why -->")
        check(ran >= 8, f"{ran} blocks were run")
        check(daemon.alive(), "the daemon survived every README command", daemon.log_tail())
    finally:
        rc = daemon.stop()
        for p in scratch:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.lexists(p):
                os.unlink(p)
    check(rc == 0, "daemon exits 0 on SIGTERM", str(rc))
    print(f"{'PASS' if not fails else 'FAIL'} test_readme.py: {len(fails)} failed checks")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
