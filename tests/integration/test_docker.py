"""test_docker.py - what can be checked of docker/ without a Docker engine.

(tests/docker/test_docker.sh, `make test-docker`, builds the image and runs
it and the compose file for real with buildah, podman and podman-compose.)

* docker/Dockerfile, parsed: a build stage on Debian bookworm that runs the
  project's make and `make install PREFIX=/usr/local`; a last (runtime) stage
  with a non-root USER, a VOLUME at NORMSTAT_DATA_DIR, EXPOSE 8750,
  NORMSTAT_LISTEN on 0.0.0.0, STOPSIGNAL SIGTERM, a HEALTHCHECK running
  `normstatd --probe` and no curl or wget; every file it copies exists (in
  the build context and not excluded by .dockerignore, or in what `make
  install` produces).
* The runtime packages: every library normstatd and normstat need (NEEDED,
  resolved with ldd and `dpkg -S`) comes from a package the runtime stage
  installs, or from the closure of their dependencies and the packages every
  Debian root has (Essential/required).
* The installed binaries (make install PREFIX=/usr/local into a temporary
  DESTDIR, as the build stage does) run as an unprivileged user (uid 65534,
  no capabilities) in a mount namespace where everything but the data
  directory is read-only, like `docker run --read-only -v data:...`: the
  daemon starts from NORMSTAT_* variables alone, serves, commits and
  snapshots its store, writes nowhere but its data directory, exits 0 on
  SIGTERM, and serves the same statistics after a restart on that
  directory; it refuses to start on a directory it cannot write;
  `normstatd --probe` exits 0 against it and 1 when nothing listens; the CLI
  works as that user.
* docker/compose.yaml parses (python3-yaml) and names only files, stages,
  services and volumes that exist; its grace period covers the daemon's
  shutdown timeout.

Run from the repository root: NS_BUILD=build /usr/bin/python3 tests/integration/test_docker.py
"""
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCKERFILE = os.path.join(REPO, "docker", "Dockerfile")
COMPOSE = os.path.join(REPO, "docker", "compose.yaml")
NOBODY = 65534
LIMIT_S = 150

sys.path.insert(0, os.path.join(REPO, "doc"))
gen_docs = __import__("gen-docs")

fails = []


def check(cond, desc, detail=""):
    if cond:
        print(f"ok   {desc}")
    else:
        print(f"FAIL {desc}" + (f" -- {detail}" if detail else ""))
        fails.append(desc)
    return bool(cond)


def skip(desc, why):
    print(f"skip {desc}: {why}")


# ---------------------------------------------------------------- Dockerfile


def parse_dockerfile(path):
    """[(stage name, base, [(INSTRUCTION, argument text)])] with continuations joined."""
    lines, cur = [], ""
    for raw in open(path, encoding="utf-8"):
        s = raw.rstrip("\n")
        if not cur and (not s.strip() or s.lstrip().startswith("#")):
            continue
        if cur and s.lstrip().startswith("#"):
            continue  # comment inside a continued instruction
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    stages = []
    for line in lines:
        m = re.match(r"\s*(\w+)\s+(.*)", line)
        instr, arg = m.group(1).upper(), m.group(2).strip()
        if instr == "FROM":
            fm = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", arg, re.I)
            stages.append((fm.group(2) or str(len(stages)), fm.group(1), []))
        else:
            stages[-1][2].append((instr, arg))
    return stages


def instrs(stage, name):
    return [a for i, a in stage[2] if i == name]


def apt_packages(stage):
    """Package names of every `apt-get install` in the stage's RUN lines."""
    pkgs = []
    for run in instrs(stage, "RUN"):
        for cmd in re.split(r"&&|;|\|\|", run):
            words = shlex.split(cmd)
            if len(words) >= 2 and words[0] == "apt-get" and "install" in words:
                pkgs += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return pkgs


def env_of(stage):
    env = {}
    for arg in instrs(stage, "ENV"):
        for w in shlex.split(arg):
            if "=" in w:
                k, v = w.split("=", 1)
                env[k] = v
    return env


def exec_form(arg):
    arg = arg.strip()
    return json.loads(arg) if arg.startswith("[") else shlex.split(arg)


def dockerignore():
    path = os.path.join(REPO, ".dockerignore")
    if not os.path.exists(path):
        return []
    return [s.strip() for s in open(path) if s.strip() and not s.startswith("#")]


def ignored(rel, patterns):
    parts = rel.split("/")
    for p in patterns:
        p = p.rstrip("/")
        for k in range(1, len(parts) + 1):
            prefix = "/".join(parts[:k])
            if fnmatch.fnmatch(prefix, p) or (p.startswith("**/") and fnmatch.fnmatch(
                    parts[k - 1], p[3:])):
                return True
    return False


def test_dockerfile(stages, install_root):
    names = [s[0] for s in stages]
    check(all(s[1].startswith("debian:bookworm") for s in stages),
          "every stage is based on debian:bookworm", str([s[1] for s in stages]))
    build = next((s for s in stages if s[0] == "build"), None)
    runtime = stages[-1]
    check(build is not None, "a stage named 'build'", str(names))
    check(runtime[0] == "runtime", "the last stage (the default target) is 'runtime'", str(names))
    if build:
        runs = " && ".join(instrs(build, "RUN"))
        check(re.search(r"(^|&&|;)\s*make(\s|$)", runs) is not None,
              "build stage runs the project's make")
        check(re.search(r"make install\b[^&;]*PREFIX=/usr/local", runs) is not None,
              "build stage runs make install PREFIX=/usr/local")
        check("mk/deps.sh build" in runs,
              "build stage installs its packages with mk/deps.sh (the list make uses)")

    env = env_of(runtime)
    check(env.get("NORMSTAT_LISTEN") == "0.0.0.0:8750", "ENV NORMSTAT_LISTEN=0.0.0.0:8750",
          str(env))
    data_dir = env.get("NORMSTAT_DATA_DIR")
    check(data_dir == "/var/lib/normstat", "ENV NORMSTAT_DATA_DIR=/var/lib/normstat", str(env))
    known = {o["env"] for o in gen_docs.read_options() if o["env"]} | {"NORMSTAT_URL"}
    check(set(k for k in env if k.startswith("NORMSTAT_")) <= known,
          "every NORMSTAT_* variable of the image is an option of normstatd (or the CLI's URL)",
          str(set(env) - known))
    vols = [v for a in instrs(runtime, "VOLUME") for v in exec_form(a)]
    check(data_dir in vols, "VOLUME at the data directory", str(vols))
    check(any("8750" in a.split() or "8750/tcp" in a.split() for a in instrs(runtime, "EXPOSE")),
          "EXPOSE 8750")
    users = instrs(runtime, "USER")
    user = users[-1].split(":")[0] if users else "root"
    check(user not in ("root", "0"), "runtime stage runs as a non-root USER", repr(user))
    check(instrs(runtime, "STOPSIGNAL") == ["SIGTERM"], "STOPSIGNAL SIGTERM")
    hc = instrs(runtime, "HEALTHCHECK")
    hc_cmd = re.sub(r"^(--\S+\s+)*CMD\s+", "", hc[-1]) if hc else ""
    check(hc and exec_form(hc_cmd)[:2] == ["normstatd", "--probe"],
          "HEALTHCHECK CMD normstatd --probe", repr(hc))
    pkgs = apt_packages(runtime)
    check(not {"curl", "wget"} & set(pkgs), "no curl or wget in the runtime image", str(pkgs))
    check(exec_form(instrs(runtime, "ENTRYPOINT")[-1])[:1] == ["normstatd"]
          if instrs(runtime, "ENTRYPOINT") else False, "ENTRYPOINT normstatd")

    # every COPY source exists
    ign = dockerignore()
    for stage in stages:
        for arg in instrs(stage, "COPY"):
            words = arg.split()
            opts = [w for w in words if w.startswith("--")]
            srcs = [w for w in words if not w.startswith("--")][:-1]
            frm = next((o.split("=", 1)[1] for o in opts if o.startswith("--from=")), None)
            for src in srcs:
                if frm == "build":
                    rel = os.path.relpath(src, "/out")
                    ok = rel.startswith("usr/local/") and os.path.exists(
                        os.path.join(install_root, rel))
                    check(ok, f"COPY --from=build {src}: made by make install "
                              f"PREFIX=/usr/local DESTDIR=/out")
                elif frm is None:
                    path = os.path.normpath(os.path.join(REPO, src))
                    rel = os.path.relpath(path, REPO)
                    check(os.path.exists(path) and (rel == "." or not ignored(rel, ign)),
                          f"COPY {src} ({stage[0]}): exists in the build context"
                          + ("" if rel == "." else ", not excluded by .dockerignore"))
                else:
                    check(frm in names, f"COPY --from={frm}: a stage of the Dockerfile")
    for must in ("build", "var", ".git"):
        check(ignored(must, ign), f".dockerignore keeps {must}/ out of the build context")
    return runtime, pkgs, data_dir


# ---------------------------------------------------------------- packages


def dpkg_owner(path):
    """Package owning a file, trying the /usr-merged spellings of the path."""
    cands = [path, os.path.realpath(path)]
    for p in list(cands):
        if p.startswith("/lib"):
            cands.append("/usr" + p)
        elif p.startswith("/usr/lib"):
            cands.append(p[4:])
    for p in cands:
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0].strip()
    return None


def ldd(path):
    out = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=30).stdout
    libs = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (\S+)", line)
        if m and m.group(2) != "not":
            libs[m.group(1)] = m.group(2)
        elif "not found" in line:
            libs[line.split()[0]] = None
    return libs


def needed(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


@functools.lru_cache(maxsize=None)
def installed(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return r.returncode == 0 and "ok installed" in r.stdout


def depends_closure(roots):
    """Installed packages reachable from 'roots' through Depends/Pre-Depends."""
    seen, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        r = subprocess.run(["dpkg-query", "-W", "-f=${Depends}, ${Pre-Depends}", p],
                           capture_output=True, text=True)
        for alt in r.stdout.split(","):
            names = [re.sub(r"[\s(].*", "", a.strip()).split(":")[0] for a in alt.split("|")]
            names = [n for n in names if n]
            pick = next((n for n in names if installed(n)), None)
            if pick:
                todo.append(pick)
    return seen


def base_packages():
    """What every Debian root (debootstrap minbase, debian:bookworm-slim) has."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Essential} ${Priority}\n"],
                         capture_output=True, text=True).stdout
    return {w[0] for w in (l.split() for l in out.splitlines())
            if len(w) >= 3 and (w[1] == "yes" or w[2] == "required")}


def test_packages(pkgs, binaries):
    for p in pkgs:
        check(installed(p), f"runtime package {p} is a Debian package (installed here by make deps)")
    closure = depends_closure(set(pkgs) | base_packages())
    used = set()
    for b in binaries:
        libs = ldd(b)
        name = os.path.basename(b)
        check(libs and None not in libs.values(), f"ldd {name}: every library resolves",
              str([k for k, v in libs.items() if v is None]))
        direct = needed(b)
        for lib in direct:
            if lib.startswith("ld-linux") or lib not in libs:
                continue
            owner = dpkg_owner(libs[lib])
            used.add(owner)
            check(owner in pkgs or owner == "libc6",
                  f"{name} needs {lib}: its package {owner} is "
                  + ("libc6, in every Debian root" if owner == "libc6" else "in the runtime stage"),
                  f"runtime packages: {pkgs}")
        missing = []
        for lib, path in libs.items():
            owner = dpkg_owner(path) if path else None
            if owner not in closure:
                missing.append(f"{lib} ({owner})")
        check(not missing, f"{name}: all {len(libs)} libraries of ldd come with the runtime "
                           f"packages or the base system", ", ".join(missing))
    unused = [p for p in pkgs if p not in used]
    if unused:
        print(f"note runtime packages no binary links directly (yet): {unused}")


# ---------------------------------------------------------------- unprivileged run


def free_port_of(log_path, proc, limit=10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with open(log_path, errors="replace") as f:
            m = re.search(r"event=listening addr=\"?127\.0\.0\.1:(\d+)", f.read())
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def http(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def can_unshare():
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        return False
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return r.returncode == 0


# A root directory others cannot search (a chroot unpacked from a tar of a
# mktemp -d directory, mode 0700) lets no unprivileged user run anything; there
# the unprivileged processes keep CAP_DAC_READ_SEARCH, which bypasses read and
# search permissions but not write permission.
ROOT_CLOSED = (os.stat("/").st_mode & 0o005) != 0o005
CAP_DAC_READ_SEARCH = 1 << 2


def as_nobody(argv, env, rw_dir, read_only):
    """argv as uid/gid 65534 without capabilities; with read_only, inside a
    mount namespace where every mount but rw_dir is read-only."""
    priv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if ROOT_CLOSED:
        # only read and search everywhere: writing is still checked like any user's
        priv += ["--inh-caps=-all,+dac_read_search", "--ambient-caps=-all,+dac_read_search",
                 "--bounding-set=-all,+dac_read_search"]
    else:
        priv += ["--inh-caps=-all", "--bounding-set=-all"]
    if not read_only:
        return priv + argv
    script = ('set -e; mount --bind "$0" "$0"; '
              'awk \'{print $5}\' /proc/self/mountinfo | while read -r mp; do '
              '[ "$mp" = "$0" ] || mount -o remount,bind,ro "$mp" 2>/dev/null || true; done; '
              'exec "$@"')
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, rw_dir] + priv + argv


def test_unprivileged(root):
    if os.geteuid() != 0:
        skip("run as uid 65534", "needs root to change user (the tests run as root in CI)")
        return
    sbin = os.path.join(root, "usr/local/sbin/normstatd")
    cli = os.path.join(root, "usr/local/bin/normstat")
    read_only = can_unshare()
    if not read_only:
        skip("read-only root", "unshare -m is not permitted here; running as uid 65534 only")
    if ROOT_CLOSED:
        print("note / is not searchable by others (mode %o): uid 65534 keeps CAP_DAC_READ_SEARCH"
              % (os.stat("/").st_mode & 0o777))
    top = tempfile.mkdtemp(prefix="normstat-docker-test-")
    os.chmod(top, 0o755)
    data = os.path.join(top, "data")  # the volume
    os.mkdir(data, 0o750)
    os.chown(data, NOBODY, NOBODY)
    log = os.path.join(top, "daemon.log")
    marker = os.path.join(top, "marker")
    open(marker, "w").close()
    # configured only through the environment, as in the image
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent",
           "NORMSTAT_LISTEN": "127.0.0.1:0", "NORMSTAT_DATA_DIR": data,
           "NORMSTAT_LOG_LEVEL": "info", "NORMSTAT_SNAPSHOT_INTERVAL": "50"}
    cwd = "/"
    if ROOT_CLOSED:
        # access(2) ignores capabilities: name the volume relative to the working directory
        env["NORMSTAT_DATA_DIR"], cwd = ".", data

    def start():
        with open(log, "w") as lf:
            return subprocess.Popen(as_nobody([sbin], env, data, read_only), env=env, cwd=cwd,
                                    stdin=subprocess.DEVNULL, stdout=lf, stderr=lf)

    proc = None
    try:
        proc = start()
        port = free_port_of(log, proc)
        if not check(port is not None, "normstatd starts as uid 65534 from NORMSTAT_* variables"
                     + (" on a read-only root" if read_only else ""), open(log).read()[-2000:]):
            return
        status = open(f"/proc/{proc.pid}/status").read()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        cap = re.search(r"^CapEff:\s+(\S+)", status, re.M).group(1)
        caps = CAP_DAC_READ_SEARCH if ROOT_CLOSED else 0
        check(uids == [str(NOBODY)] * 4 and int(cap, 16) == caps,
              "the daemon process has uid 65534 and no capabilities"
              + (" but CAP_DAC_READ_SEARCH (/ is not searchable by others here)"
                 if ROOT_CLOSED else ""), f"Uid {uids} CapEff {cap}")
        # some traffic, so a persisting daemon writes its store
        st, _ = http(port, "PUT", "/v1/runs/docker-test", {"world_size": 1, "momentum": 0.1})
        check(st in (200, 201), "PUT a run", str(st))
        for step in range(3):
            st, body = http(port, "POST", "/v1/runs/docker-test/sync", {
                "step": step, "worker": 0,
                "layers": {"bn": {"count": 4, "mean": [0.5, 1.5], "var": [1.0, 2.0]}}})
            check(st == 200, f"/sync step {step}", f"{st} {body[:200]!r}")
        st, body = http(port, "GET", "/v1/runs/docker-test/stats")
        check(st == 200 and json.loads(body)["layers"]["bn"]["num_batches_tracked"] == 3,
              "statistics served", f"{st} {body[:200]!r}")
        # with a store, its commits and a snapshot must succeed on the read-only root
        # (SQLite must not need a temporary directory outside the volume)
        metrics = {}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            st, body = http(port, "GET", "/metrics")
            metrics = dict(re.findall(r"^(normstat_store_\w+) (\S+)$", body.decode(), re.M))
            if metrics.get("normstat_store_enabled") != "1" or \
                    float(metrics.get("normstat_store_snapshots_total", 0)) >= 1:
                break
            time.sleep(0.05)
        if metrics.get("normstat_store_enabled") == "1":
            check(float(metrics.get("normstat_store_snapshots_total", 0)) >= 1
                  and float(metrics.get("normstat_store_commits_total", 0)) >= 1,
                  "the store committed and snapshotted (NORMSTAT_SNAPSHOT_INTERVAL=50)",
                  str(metrics))
            check(float(metrics.get("normstat_store_commit_failures_total", 1)) == 0
                  and metrics.get("normstat_store_failing") == "0",
                  "no store commit failed", str(metrics))
        else:
            skip("store commits on a read-only root", "this build has no store metrics")
        # the self-probe, as the HEALTHCHECK runs it: configured by NORMSTAT_LISTEN
        penv = dict(env, NORMSTAT_LISTEN=f"0.0.0.0:{port}")
        r = subprocess.run(as_nobody([sbin, "--probe"], penv, data, False), env=penv,
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 0, "normstatd --probe (NORMSTAT_LISTEN=0.0.0.0:PORT) exits 0 "
                                 "against the live daemon", r.stderr)
        r = subprocess.run(as_nobody([cli, "--url", f"http://127.0.0.1:{port}", "health"],
                                     env, data, read_only), env=env, capture_output=True,
                           text=True, timeout=30)
        check(r.returncode == 0, "normstat health as uid 65534", r.stdout + r.stderr)
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, "SIGTERM: exit status 0", f"{rc}; log:\n{open(log).read()[-1500:]}")
        r = subprocess.run([sbin, "--probe"], env=penv, capture_output=True, text=True,
                           timeout=30)
        check(r.returncode == 1, "normstatd --probe exits 1 when nothing listens",
              f"exit {r.returncode}")
        r = subprocess.run([sbin, "--probe", f"http://127.0.0.1:{port}/readyz"],
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 1, "normstatd --probe URL exits 1 when nothing listens",
              f"exit {r.returncode}")
        # written only in the data directory
        stray = []
        for d in ("/tmp", "/var/tmp", "/dev/shm", "/run", "/var/lib"):
            if os.path.isdir(d):
                out = subprocess.run(["find", d, "-xdev", "-user", str(NOBODY), "-newer", marker,
                                      "-not", "-path", data, "-not", "-path", data + "/*"],
                                     capture_output=True, text=True, timeout=60).stdout
                stray += out.split()
        check(not stray, "uid 65534 wrote nothing outside the data directory", str(stray[:10]))
        stored = os.listdir(data)
        print(f"note data directory after shutdown: {sorted(stored)}")
        if not stored:
            skip("an unwritable volume is refused", "this build writes nothing to the data "
                 "directory yet")
            return
        # a restarted container finds its statistics in the volume
        proc = start()
        port = free_port_of(log, proc)
        if check(port is not None, "normstatd restarts on the same volume",
                 open(log).read()[-1500:]):
            st, body = b"", b""
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # /readyz turns 200 after the replay
                st, body = http(port, "GET", "/readyz")
                if st == 200:
                    break
                time.sleep(0.05)
            st, body = http(port, "GET", "/v1/runs/docker-test/stats")
            check(st == 200 and json.loads(body)["layers"]["bn"]["num_batches_tracked"] == 3,
                  "after the restart the run's statistics are served from the volume",
                  f"{st} {body[:300]!r}")
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, "SIGTERM after the restart: exit status 0", str(rc))
        # a volume the user cannot write is refused at start, with a message
        os.chown(data, 0, 0)
        proc = start()
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc not in (None, 0), "a data directory uid 65534 cannot write: normstatd exits "
                                   "non-zero at start", f"exit {rc}; {open(log).read()[-800:]}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(top, ignore_errors=True)


# ---------------------------------------------------------------- compose


def seconds(text):
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(text))
    return (int(m.group(1) or 0) * 60 + float(m.group(2) or 0)) if m else None


def test_compose(stages, runtime):
    import yaml

    doc = yaml.safe_load(open(COMPOSE, encoding="utf-8"))
    check(isinstance(doc, dict) and isinstance(doc.get("services"), dict),
          "docker/compose.yaml parses, with services")
    services = doc["services"]
    base = os.path.dirname(COMPOSE)
    names = [s[0] for s in stages]
    volumes = set((doc.get("volumes") or {}).keys())
    for name, svc in services.items():
        b = svc.get("build")
        if b is not None:
            b = {"context": b} if isinstance(b, str) else b
            ctx = os.path.normpath(os.path.join(base, b.get("context", ".")))
            df = os.path.join(ctx, b.get("dockerfile", "Dockerfile"))
            check(os.path.isdir(ctx), f"{name}: build context {b.get('context')} exists")
            check(os.path.samefile(df, DOCKERFILE) if os.path.exists(df) else False,
                  f"{name}: dockerfile is docker/Dockerfile", df)
            if "target" in b:
                check(b["target"] in names, f"{name}: build target '{b['target']}' is a stage")
        for v in svc.get("volumes") or []:
            src = v.split(":")[0] if isinstance(v, str) else v.get("source")
            if src.startswith((".", "/")):
                check(os.path.exists(os.path.join(base, src)), f"{name}: bind mount {src} exists")
            else:
                check(src in volumes, f"{name}: volume {src} is declared")
        for dep in (svc.get("depends_on") or {}):
            check(dep in services, f"{name}: depends on service {dep}, which exists")
        url = (svc.get("environment") or {}).get("NORMSTAT_URL")
        if url:
            host = re.match(r"https?://([^:/]+)", url).group(1)
            check(host in services, f"{name}: NORMSTAT_URL names the service {host}")
        cmd = svc.get("command")
        if cmd:
            cmd = cmd if isinstance(cmd, list) else shlex.split(cmd)
            stage = next((s for s in stages if s[0] == (b or {}).get("target")), None)
            if stage is None:  # same image as a service that builds it
                img = svc.get("image")
                stage = next((s for s in stages for o in services.values()
                              if o.get("image") == img and o.get("build")
                              and o["build"].get("target") == s[0]), None)
            if stage is not None and exec_form((instrs(stage, "ENTRYPOINT") or ["[]"])[-1]) \
                    == ["python3"]:
                script = os.path.join(REPO, "docker", "examples", cmd[0])
                check(os.path.isfile(script), f"{name}: runs {cmd[0]}, which is in docker/examples")
    daemon = next((s for s in services.values() if (s.get("build") or {}).get("target")
                   == runtime[0]), None)
    check(daemon is not None, "a service runs the runtime image")
    if daemon:
        vols = [v.split(":")[1] for v in daemon.get("volumes") or [] if isinstance(v, str)]
        check(env_of(runtime)["NORMSTAT_DATA_DIR"] in vols,
              "the daemon's data directory is a volume", str(vols))
        check(any(str(p).endswith(":8750") for p in daemon.get("ports") or []),
              "the daemon's port 8750 is published")
        grace = seconds(daemon.get("stop_grace_period", "10s"))
        shutdown = next(int(o["default"]) for o in gen_docs.read_options()
                        if o["flag"] == "shutdown-timeout") / 1000.0
        check(grace is not None and grace >= shutdown + 10,
              f"stop_grace_period ({grace}s) leaves 10s for the flush after the "
              f"--shutdown-timeout ({shutdown}s)")


# ---------------------------------------------------------------- main


def main():
    def on_alarm(_s, _f):
        print(f"FAIL test_docker.py exceeded {LIMIT_S}s")
        os._exit(3)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(LIMIT_S)
    os.chdir(REPO)
    build = os.environ.get("NS_BUILD", "build")
    tmp = tempfile.mkdtemp(prefix="normstat-docker-install-")
    try:
        os.chmod(tmp, 0o755)
        r = subprocess.run(["make", "--no-print-directory", f"BUILD={build}", "install",
                            "PREFIX=/usr/local", f"DESTDIR={tmp}"], capture_output=True,
                           text=True, timeout=600)
        if not check(r.returncode == 0, "make install PREFIX=/usr/local DESTDIR=... (as the "
                                        "build stage does)", r.stdout[-2000:] + r.stderr[-2000:]):
            return 1
        stages = parse_dockerfile(DOCKERFILE)
        runtime, pkgs, data_dir = test_dockerfile(stages, tmp)
        test_packages(pkgs, [os.path.join(tmp, "usr/local/sbin/normstatd"),
                             os.path.join(tmp, "usr/local/bin/normstat")])
        test_unprivileged(tmp)
        test_compose(stages, runtime)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'PASS' if not fails else 'FAIL'} test_docker.py: {len(fails)} failed checks")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
