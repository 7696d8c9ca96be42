"""test_deploy.py - the deployment examples agree with the daemon they deploy.

deploy/kubernetes/*.yaml, docker/compose-shards.yaml and the proxy stage of
docker/Dockerfile, parsed (python3-yaml), against the built daemon's own
tables (`normstatd --help`: flags, variables, defaults; `normstatd
--routes`) and against deploy/nginx/normstat-shards.conf:

* every NORMSTAT_* variable given to a normstatd container is one of the
  daemon's (a variable of a mode this build lacks, the relay's
  NORMSTAT_UPSTREAM, is named as such and checked once the daemon has it);
  NORMSTAT_LISTEN is 0.0.0.0 on the container's port; the store directory
  is a mounted volume (a PersistentVolumeClaim per shard); the memory
  budget is below the memory limit; the grace period covers the daemon's
  shutdown timeout; a daemon started with the shards' variables becomes
  ready;
* readiness and liveness probes are GET /readyz and /livez, routes of the
  daemon (or the proxy's own locations), on a declared container port;
* every Service selects pods of a workload and targets a port they declare;
  the StatefulSet's governing Service is headless; each shard K has a
  Service normstat-K, and those names and port are exactly the shards of
  the nginx configuration (its runs ring, its upstream per shard, its
  /shards/K/ locations);
* the proxy's ConfigMap is the shipped nginx configuration byte for byte,
  mounted where Debian's nginx includes it, on the port it listens on; the
  relays' upstream is the proxy's Service;
* the nginx configuration agrees with the daemon's numbers: its body limit
  is --max-body's default, its read timeout far above the default
  sync_timeout_ms (proto/openapi.yaml), its upstream keep-alive closed
  before normstatd's idle timeout (--idle-timeout); a shard is
  never taken out of the ring nor a request retried on another, HTTP/1.1
  to the shards, bodies unbuffered;
* the compose file's shards are the configuration's shard names, each with
  its own volume, and the proxy waits until they are healthy.

Run from the repository root: NS_BUILD=build /usr/bin/python3 tests/integration/test_deploy.py
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
import shards  # noqa: E402
import test_docker  # noqa: E402  (its Dockerfile parser)

KUBE = os.path.join(nsd.REPO, "deploy", "kubernetes")
COMPOSE = os.path.join(nsd.REPO, "docker", "compose-shards.yaml")
DAEMON_IMAGE = "normstat:latest"
PROXY_IMAGE = "normstat-proxy:latest"
# Variables of daemon modes built elsewhere: accepted only once `normstatd
# --help` lists them, named in a note until then.
# Variables of the clients, not of the daemon.
CLIENT_VARS = {"NORMSTAT_URL", "NORMSTAT_TOKEN"}
LIMIT_S = 50

fails, notes, passed = [], [], [0]


def check(cond, desc, detail=""):
    if cond:
        passed[0] += 1
        print(f"ok   {desc}")
    else:
        print(f"FAIL {desc}" + (f" -- {detail}" if detail else ""))
        fails.append(desc)
    return bool(cond)


def note(desc):
    print(f"note {desc}")
    notes.append(desc)


# ---------------------------------------------------------------- the daemon's tables


def daemon_options():
    """{variable: (flag, default or None)} from `normstatd --help`."""
    out = subprocess.run([nsd.binary_path(), "--help"], capture_output=True, text=True,
                         timeout=10).stdout
    opts = {}
    for m in re.finditer(r"^\s+--([a-z][a-z0-9-]*)[^\n]*\n\s+\[(NORMSTAT_[A-Z0-9_]+)"
                         r"(?:, default ([^\]]*))?\]", out, re.M):
        opts[m.group(2)] = (m.group(1), m.group(3))
    return opts


def daemon_get_routes():
    out = subprocess.run([nsd.binary_path(), "--routes"], capture_output=True, text=True,
                         timeout=10).stdout
    return {line.split()[1] for line in out.splitlines() if line.split()[:1] == ["GET"]}


def size_bytes(text):
    """normstatd's SIZE (K, M, G: powers of 1024) or a Kubernetes quantity."""
    m = re.fullmatch(r"(\d+)\s*(K|M|G|Ki|Mi|Gi|k)?", str(text))
    mult = {None: 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "Ki": 1 << 10, "Mi": 1 << 20,
            "Gi": 1 << 30, "k": 1000}
    return int(m.group(1)) * mult[m.group(2)] if m else None


# ---------------------------------------------------------------- manifests


def load_manifests():
    docs = []
    for path in sorted(glob.glob(os.path.join(KUBE, "*.yaml"))):
        with open(path, encoding="utf-8") as f:
            for d in yaml.safe_load_all(f):
                if d:
                    docs.append((os.path.basename(path), d))
    return docs


def workloads(docs):
    return [d for _, d in docs if d.get("kind") in ("StatefulSet", "Deployment", "DaemonSet")]


def containers(w):
    return w["spec"]["template"]["spec"]["containers"]


def env_of(c):
    return {e["name"]: e.get("value") for e in c.get("env") or []}


def port_numbers(c):
    return {p.get("name", p["containerPort"]): p["containerPort"] for p in c.get("ports") or []}


def check_probe(name, c, kind, path, routes):
    probe = c.get(kind) or {}
    get = probe.get("httpGet") or {}
    ports = port_numbers(c)
    check(get.get("path") == path and path in routes,
          f"{name}: {kind} is GET {path}, a route of what it probes", str(probe))
    check(get.get("port") in ports or get.get("port") in ports.values(),
          f"{name}: {kind} port {get.get('port')!r} is a declared container port", str(ports))


def check_daemon_container(w, c, opts, routes):
    name = f"{w['kind']} {w['metadata']['name']}/{c['name']}"
    env = env_of(c)
    for var in sorted(v for v in env if v.startswith("NORMSTAT_")):
        if var in opts:
            check(True, f"{name}: {var} is an option of normstatd (--{opts[var][0]})")
        else:
            check(False, f"{name}: {var} is an option of normstatd", "not in normstatd --help")
    listen = env.get("NORMSTAT_LISTEN", opts["NORMSTAT_LISTEN"][1])
    host, _, port = listen.rpartition(":")
    check(host == "0.0.0.0", f"{name}: NORMSTAT_LISTEN listens on every interface", listen)
    check(int(port) in port_numbers(c).values(),
          f"{name}: the container port is the --listen port {port}", str(port_numbers(c)))
    check_probe(name, c, "readinessProbe", "/readyz", routes)
    check_probe(name, c, "livenessProbe", "/livez", routes)
    data_dir = env.get("NORMSTAT_DATA_DIR", "/var/lib/normstat")  # the image's ENV
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
    check(data_dir in mounts, f"{name}: the store directory {data_dir} is a mounted volume",
          str(mounts))
    limit = size_bytes(((c.get("resources") or {}).get("limits") or {}).get("memory"))
    budget = size_bytes(env.get("NORMSTAT_MAX_MEMORY", "0"))
    if budget:
        check(limit is not None and budget < limit,
              f"{name}: NORMSTAT_MAX_MEMORY ({budget} B) is below the memory limit ({limit} B)")
    grace = w["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    shutdown = int(env.get("NORMSTAT_SHUTDOWN_TIMEOUT", opts["NORMSTAT_SHUTDOWN_TIMEOUT"][1]))
    check(grace >= shutdown / 1000 + 10, f"{name}: terminationGracePeriodSeconds ({grace}) leaves "
          f"10 s for the flush after the shutdown timeout ({shutdown} ms)")
    return mounts.get(data_dir)


def start_with_env(env, desc):
    """A daemon started from the manifest's variables (listen and data
    directory replaced by loopback and a temporary one) becomes ready."""
    tmp = tempfile.mkdtemp(prefix="normstat-deploy-")
    full = {k: v for k, v in os.environ.items() if not k.startswith("NORMSTAT_")}
    full.update(env)
    full.update({"NORMSTAT_LISTEN": "127.0.0.1:0", "NORMSTAT_DATA_DIR": tmp})
    d = nsd.Daemon(persist=True, env=full, name="deploy")
    try:
        d.start()
        check(True, f"{desc}: a normstatd started with its variables is ready")
        rc = d.stop()
        check(rc == 0, f"{desc}: ... and stops with exit status 0", str(rc))
    except RuntimeError as e:
        check(False, f"{desc}: a normstatd started with its variables is ready", str(e)[-600:])
    finally:
        d.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_services(docs):
    svcs = [d for _, d in docs if d.get("kind") == "Service"]
    works = workloads(docs)
    for s in svcs:
        sel = s["spec"].get("selector") or {}
        pod = sel.get("statefulset.kubernetes.io/pod-name")
        if pod:
            owner = next((w for w in works if w["kind"] == "StatefulSet"
                          and re.fullmatch(re.escape(w["metadata"]["name"]) + r"-(\d+)", pod)
                          and int(pod.rsplit("-", 1)[1]) < w["spec"]["replicas"]), None)
        else:
            owner = next((w for w in works
                          if selects(sel, w["spec"]["template"]["metadata"]["labels"])), None)
        name = s["metadata"]["name"]
        if not check(owner is not None, f"Service {name} selects the pods of a workload", str(sel)):
            continue
        declared = {p for c in containers(owner) for p in port_numbers(c).items()}
        for p in s["spec"]["ports"]:
            t = p.get("targetPort", p["port"])
            check(any(t in (n, num) for n, num in declared),
                  f"Service {name}: targetPort {t!r} is a port of {owner['metadata']['name']}")
    return svcs


def check_shards(docs, svcs, conf):
    sts = next(w for w in workloads(docs) if w["kind"] == "StatefulSet")
    name, replicas = sts["metadata"]["name"], sts["spec"]["replicas"]
    gov = next((s for s in svcs if s["metadata"]["name"] == sts["spec"]["serviceName"]), None)
    check(gov is not None and gov["spec"].get("clusterIP") == "None",
          f"StatefulSet {name}: its governing Service {sts['spec']['serviceName']} is headless")
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates") or []}
    per_shard = {}
    for s in svcs:
        pod = (s["spec"].get("selector") or {}).get("statefulset.kubernetes.io/pod-name")
        if pod:
            per_shard[s["metadata"]["name"]] = (pod, s["spec"]["ports"][0]["port"])
    want = {f"{name}-{k}": (f"{name}-{k}", 8750) for k in range(replicas)}
    check(per_shard == want, f"a Service per shard, named like its pod: {sorted(want)}",
          str(per_shard))
    ups = shards.upstreams(conf)
    ring = [f"{svc}:{port}" for svc, (_, port) in sorted(per_shard.items())]
    check(ups.get("normstat_runs") == ring,
          "nginx's runs ring (upstream normstat_runs) is exactly the shards' Services", str(ups))
    for k in range(replicas):
        check(ups.get(f"normstat_shard_{k}") == [ring[k]]
              and re.search(rf"location /shards/{k}/ \{{(?:(?!location ).)*?"
                            rf"proxy_pass http://normstat_shard_{k}/;", conf, re.S),
              f"nginx serves shard {k} at /shards/{k}/ (upstream normstat_shard_{k})")
    check(f"location /shards/{replicas}/" not in conf,
          f"nginx has no /shards/{replicas}/: shards are numbered 0..{replicas - 1}")
    for c in containers(sts):
        vol = check_daemon_container(sts, c, OPTS, ROUTES)
        check(vol in claims, f"StatefulSet {name}: the store is on a PersistentVolumeClaim "
              f"per shard (volumeClaimTemplates {vol})", str(claims))
        start_with_env({k: v for k, v in env_of(c).items() if v is not None},
                       f"StatefulSet {name}")


def check_proxy(docs, svcs, conf):
    cms = [d for _, d in docs if d.get("kind") == "ConfigMap"]
    dep = next(w for w in workloads(docs) if w["kind"] == "Deployment")
    c = next(c for c in containers(dep) if c["image"] == PROXY_IMAGE)
    name = f"Deployment {dep['metadata']['name']}"
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"].get("volumes") or []}
    mount = next((m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/etc/nginx/conf.d"),
                 None)
    cm_name = ((vols.get(mount["name"]) if mount else {}) or {}).get("configMap", {}).get("name")
    cm = next((m for m in cms if m["metadata"]["name"] == cm_name), None)
    check(cm is not None, f"{name}: a ConfigMap is mounted at /etc/nginx/conf.d (Debian's "
          "nginx.conf includes conf.d/*.conf)", str(mount))
    if cm is not None:
        check(cm["data"].get("normstat-shards.conf") == conf,
              f"ConfigMap {cm_name}: normstat-shards.conf is deploy/nginx/normstat-shards.conf, "
              "byte for byte", "copy the file into the ConfigMap's block scalar, every "
              "non-empty line indented by 4 spaces")
    listen = re.search(r"^\s*listen (\d+);", conf, re.M)
    check(listen and int(listen.group(1)) in port_numbers(c).values(),
          f"{name}: the container port is nginx's listen port", str(port_numbers(c)))
    own = set(re.findall(r"location = (\S+) \{\s*return 200 ", conf))
    check_probe(name, c, "readinessProbe", "/readyz", own)
    check_probe(name, c, "livenessProbe", "/livez", own)
    return next(s for s in svcs if selects(s["spec"].get("selector"),
                                           dep["spec"]["template"]["metadata"]["labels"]))


def start_relay_as_deployed(env, name):
    """The relay container's variables over the runtime image's ENV (which
    names a data directory) start a relay that forwards to a real upstream."""
    runtime = next(st for st in test_docker.parse_dockerfile(test_docker.DOCKERFILE)
                   if st[0] == "runtime")
    up = nsd.Daemon(name="deploy-upstream").start()
    full = {k: v for k, v in os.environ.items() if not k.startswith("NORMSTAT_")}
    full.update({k: v for k, v in test_docker.env_of(runtime).items() if k.startswith("NORMSTAT_")})
    full.update({k: v for k, v in env.items() if v is not None})
    full.update({"NORMSTAT_LISTEN": "127.0.0.1:0",
                 "NORMSTAT_UPSTREAM": f"http://127.0.0.1:{up.port}"})
    # started bare, as the image's entry point starts it (the harness would add --data-dir)
    tmp = tempfile.mkdtemp(prefix="normstat-relay-")
    relay = subprocess.Popen([nsd.binary_path()], env=full, cwd=tmp, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watchdog = threading.Timer(30, relay.kill)  # only a hang reaches it
    watchdog.start()
    log = []
    try:
        for raw in relay.stderr:  # ends at EOF when the relay exits
            log.append(raw.decode(errors="replace"))
            if "event=ready" in log[-1]:
                break
        ready = bool(log) and "event=ready" in log[-1]
        check(ready, f"{name}: a relay started with the image's and its own variables is ready",
              "".join(log)[-600:])
        if ready:
            relay.send_signal(signal.SIGTERM)
            relay.stderr.read()
            check(relay.wait() == 0, f"{name}: ... and stops with exit status 0")
    finally:
        watchdog.cancel()
        relay.kill()
        relay.wait()
        up.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def check_relays(docs, svcs, proxy_svc):
    ds = next(w for w in workloads(docs) if w["kind"] == "DaemonSet")
    name = f"DaemonSet {ds['metadata']['name']}"
    for c in containers(ds):
        check_daemon_container(ds, c, OPTS, ROUTES)
        up = env_of(c).get("NORMSTAT_UPSTREAM", "")
        m = re.fullmatch(r"http://([^:/]+):(\d+)", up)
        check(m and m.group(1) == proxy_svc["metadata"]["name"]
              and int(m.group(2)) == proxy_svc["spec"]["ports"][0]["port"],
              f"{name}: NORMSTAT_UPSTREAM is the proxy's Service", up)
        start_relay_as_deployed(env_of(c), name)
    local = [s for s in svcs if selects(s["spec"].get("selector"),
                                        ds["spec"]["template"]["metadata"]["labels"])]
    check(local and all(s["spec"].get("internalTrafficPolicy") == "Local" for s in local),
          f"{name}: trainers reach the relay of their own node (internalTrafficPolicy Local)")


def check_kustomization():
    with open(os.path.join(KUBE, "kustomization.yaml"), encoding="utf-8") as f:
        k = yaml.safe_load(f)
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(KUBE, "*.yaml"))
                   if not p.endswith("kustomization.yaml"))
    check(sorted(k.get("resources") or []) == files,
          "kustomization.yaml lists every manifest", f"{k.get('resources')} vs {files}")


# ---------------------------------------------------------------- nginx against the daemon


def nginx_seconds(text):
    m = re.fullmatch(r"(\d+)(s|m)?", text)
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1) if m else None


def check_nginx_conf(conf):
    """The proxy's settings that depend on the daemon's own numbers."""
    directive = dict(re.findall(r"^    ([a-z_]+) ([^;{]+);", conf, re.M))  # server level
    limit = size_bytes(directive.get("client_max_body_size", "").upper())
    max_body = size_bytes(OPTS["NORMSTAT_MAX_BODY"][1])
    check(limit == max_body, f"nginx's client_max_body_size is normstatd's --max-body default "
          f"({max_body} B)", str(directive.get("client_max_body_size")))
    with open(os.path.join(nsd.REPO, "proto", "openapi.yaml"), encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    sync_ms = spec["components"]["schemas"]["RunConfig"]["properties"]["sync_timeout_ms"]["default"]
    read = nginx_seconds(directive.get("proxy_read_timeout", "60s"))
    check(read is not None and read > sync_ms / 1000 * 2,
          f"nginx's proxy_read_timeout ({read} s) leaves a /sync far more than the default "
          f"sync_timeout_ms ({sync_ms} ms)")
    idle = int(OPTS["NORMSTAT_IDLE_TIMEOUT"][1]) / 1000  # --idle-timeout, in ms
    blocks = re.findall(r"^upstream (\S+) \{(.*?)^\}", conf, re.M | re.S)
    for name, body in blocks:
        ka = re.search(r"keepalive_timeout (\S+);", body)
        t = nginx_seconds(ka.group(1)) if ka else 60
        check(re.search(r"^\s*keepalive \d+;", body, re.M) and t < idle,
              f"upstream {name}: idle connections kept, and closed by nginx ({t} s) before "
              f"normstatd's idle timeout ({idle} s)")
        if name != "normstat_any":
            servers = re.findall(r"^\s*server (.*);", body, re.M)
            check(servers and all("max_fails=0" in s for s in servers),
                  f"upstream {name}: every shard has max_fails=0 (never taken out of the ring)")
    check(directive.get("proxy_next_upstream") == "off", "nginx never retries on another shard "
          "(proxy_next_upstream off at the server level)")
    check(directive.get("proxy_http_version") == "1.1"
          and re.search(r'^    proxy_set_header Connection "";', conf, re.M),
          "HTTP/1.1 with keep-alive to the shards (proxy_http_version 1.1, Connection \"\")")
    check(directive.get("proxy_request_buffering") == "off"
          and directive.get("proxy_buffering") == "off",
          "bodies stream through in both directions (no buffering, no temporary files)")


# ---------------------------------------------------------------- docker


def check_docker(conf):
    stages = test_docker.parse_dockerfile(test_docker.DOCKERFILE)
    names = [s[0] for s in stages]
    proxy = next((s for s in stages if s[0] == "proxy"), None)
    if not check(proxy is not None, "docker/Dockerfile has a stage 'proxy'", str(names)):
        return
    check(names[-1] == "runtime", "the runtime stage is still the last (default) one", str(names))
    check("nginx" in test_docker.apt_packages(proxy), "stage proxy installs Debian's nginx")
    check("deploy/nginx/normstat-shards.conf /etc/nginx/conf.d/normstat-shards.conf"
          in test_docker.instrs(proxy, "COPY"),
          "stage proxy copies the shipped configuration into conf.d")
    check(test_docker.instrs(proxy, "EXPOSE") == ["8750"]
          and re.search(r"^\s*listen 8750;", conf, re.M),
          "stage proxy exposes the port the configuration listens on")

    with open(COMPOSE, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    services = doc["services"]
    hosts = sorted({s.split(":")[0] for s in shards.upstreams(conf)["normstat_runs"]})
    shard_svcs = sorted(n for n, s in services.items()
                        if (s.get("build") or {}).get("target") == "runtime")
    check(shard_svcs == hosts, "compose-shards.yaml: its shards are the configuration's "
          "shard names", f"{shard_svcs} vs {hosts}")
    runtime = next(s for s in stages if s[0] == "runtime")
    data_dir = test_docker.env_of(runtime)["NORMSTAT_DATA_DIR"]
    vols = {}
    for n in shard_svcs:
        svc = services[n]
        for var in (svc.get("environment") or {}):
            check(var in OPTS, f"compose-shards.yaml {n}: {var} is an option of normstatd")
        v = [x.split(":")[0] for x in svc.get("volumes") or [] if x.split(":")[1] == data_dir]
        vols[n] = v[0] if v else None
        check(vols[n] in (doc.get("volumes") or {}),
              f"compose-shards.yaml {n}: its store {data_dir} is a declared volume", str(v))
    check(len(set(vols.values())) == len(vols), "compose-shards.yaml: a volume per shard",
          str(vols))
    px = next((s for s in services.values() if (s.get("build") or {}).get("target") == "proxy"),
              {})
    deps = px.get("depends_on") or {}
    check(sorted(deps) == shard_svcs and all(d.get("condition") == "service_healthy"
                                             for d in deps.values()),
          "compose-shards.yaml: the proxy starts once every shard is healthy", str(deps))
    check(any(str(p).endswith(":8750") for p in px.get("ports") or []),
          "compose-shards.yaml: the proxy's port 8750 is published")


# ---------------------------------------------------------------- main


def main():
    signal.signal(signal.SIGALRM, lambda *_: (print(f"FAIL test_deploy.py exceeded {LIMIT_S}s"),
                                              nsd._kill_all(), os._exit(3)))
    signal.alarm(LIMIT_S)
    os.chdir(nsd.REPO)
    global OPTS, ROUTES
    OPTS = daemon_options()
    ROUTES = daemon_get_routes()
    check(len(OPTS) >= 10 and "NORMSTAT_LISTEN" in OPTS, "normstatd --help lists its variables",
          str(sorted(OPTS))[:200])
    check({"/readyz", "/livez", "/metrics"} <= ROUTES, "normstatd --routes lists the probes")
    with open(shards.CONF, encoding="utf-8") as f:
        conf = f.read()
    docs = load_manifests()
    check_kustomization()
    svcs = check_services(docs)
    check_shards(docs, svcs, conf)
    proxy_svc = check_proxy(docs, svcs, conf)
    check_relays(docs, svcs, proxy_svc)
    images = {c["image"].split()[0] for w in workloads(docs) for c in containers(w)}
    check(images == {DAEMON_IMAGE, PROXY_IMAGE}, "the manifests run the two images of "
          "docker/Dockerfile (targets runtime and proxy)", str(images))
    check_nginx_conf(conf)
    check_docker(conf)
    nsd._kill_all()
    print(f"{'PASS' if not fails else 'FAIL'} test_deploy.py: {passed[0] + len(fails)} checks, "
          f"{len(fails)} failed, {len(notes)} notes")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
