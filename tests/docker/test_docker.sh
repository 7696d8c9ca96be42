#!/bin/bash
# test_docker.sh - build docker/Dockerfile and run the image and docker/compose.yaml for real.
#
# With Debian's own tools (no Docker engine, nothing pulled from a registry):
#   1. a base image from `debootstrap --variant=minbase bookworm` with the apt
#      settings of Docker's official images, imported as docker.io/library/debian:
#      bookworm, and without documentation, man pages and locales as
#      :bookworm-slim (the Dockerfile's bases);
#   2. `buildah bud` of the targets runtime and examples (--format docker keeps
#      the HEALTHCHECK; --isolation chroot needs no nested namespaces);
#   3. podman: the daemon container with --read-only, as uid 10001, healthy
#      through its HEALTHCHECK (`podman healthcheck run`: no systemd timers
#      here), statistics reported and served through the published port and
#      equal to a float64 reference, exit 0 on `podman stop -t 30`, and the same
#      statistics from a new container on the same volume; then one serving
#      HTTPS (a certificate mounted, NORMSTAT_TLS_CERT/KEY) healthy through the
#      same HEALTHCHECK and answering curl --cacert;
#   4. podman-compose: the daemon, then the trainer and the evaluator of
#      docker/examples to completion; the evaluator's table is checked.
# Everything podman and buildah write (images, containers, volumes, network
# configuration) lives in one temporary directory, removed at the end; their
# configuration is docker/test/*.conf (CONTAINERS_CONF, ...).
#
# Where containers cannot run at all (no root, `podman info` fails, or an
# image of /bin/true cannot be imported and run, as in a chroot), it says why
# and exits 0 without claiming a pass. Every wait is bounded, and by what is
# left of LIMIT_S for the whole script (the clean-up comes after it).
# Run from the repository root as root: bash tests/docker/test_docker.sh
set -u

LIMIT_S=${NS_DOCKER_LIMIT_S:-780}  # a run takes about 5 minutes on 2 cores
PYTHON=${PYTHON:-/usr/bin/python3}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CONF=$REPO/docker/test
TAG=nstest$$
fails=0
checks=0
start_s=$(date +%s)
tmp=
COMPOSE=(podman-compose -p "$TAG" -f "$REPO/docker/compose.yaml")

say() { echo "$(date -u +%H:%M:%S) $*"; }
ok() { echo "ok   $1"; checks=$((checks + 1)); }
fail() { echo "FAIL $1"; fails=$((fails + 1)); checks=$((checks + 1)); }
check() { # check DESCRIPTION COMMAND...
    local desc=$1
    shift
    if "$@"; then ok "$desc"; else fail "$desc"; fi
}
skip_all() {
    echo "SKIP test_docker.sh: containers cannot run on this machine: $1"
    echo "     (nothing was tested; on a Debian 12 machine as root it runs for real)"
    exit 0
}
elapsed() { echo $(($(date +%s) - start_s)); }
# bounded SECONDS COMMAND...: at most SECONDS, and never past LIMIT_S
bounded() {
    local n=$1 left=$((LIMIT_S - $(date +%s) + start_s))
    shift
    if [ $left -le 0 ]; then
        echo "FAIL test_docker.sh: out of time (${LIMIT_S}s) before: $*" >&2
        return 124
    fi
    [ "$n" -gt $left ] && n=$left
    timeout "$n" "$@"
}

cleanup() {
    local rc=$?
    if [ -n "$tmp" ] && [ -d "$tmp" ]; then
        # What lives outside $tmp: running containers (with their mounts,
        # firewall rules and dnsmasq) and the networks. Images, volumes and
        # build containers are files in $tmp.
        if [ -n "${CONTAINERS_CONF:-}" ]; then
            timeout 60 "${COMPOSE[@]}" down -v >/dev/null 2>&1
            timeout 60 podman rm -af -t 0 >/dev/null 2>&1
            timeout 30 podman network rm -f "${TAG}_net" "${TAG}_default" >/dev/null 2>&1
            timeout 30 buildah rm --all >/dev/null 2>&1
            # the CNI plugins' address leases of this script's own networks
            rm -rf /var/lib/cni/networks/"${TAG}"_*
        fi
        rm -rf --one-file-system "$tmp"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 2' INT TERM

# ---------------------------------------------------------------- can containers run here?
[ "$(id -u)" -eq 0 ] || skip_all "not root (rootful podman and debootstrap need root)"
for c in podman buildah podman-compose debootstrap runc; do
    command -v $c >/dev/null 2>&1 ||
        { echo "FAIL $c is not installed (make test-docker installs it: sh mk/deps.sh docker)"; exit 1; }
done

tmp=$(mktemp -d /var/tmp/normstat-docker.XXXXXX)
mkdir -p "$tmp/cni" "$tmp/tmp"
for f in containers storage; do
    sed "s|@TMP@|$tmp|g" "$CONF/$f.conf" >"$tmp/$f.conf"
done
export CONTAINERS_CONF=$tmp/containers.conf CONTAINERS_STORAGE_CONF=$tmp/storage.conf
export CONTAINERS_REGISTRIES_CONF=$CONF/registries.conf TMPDIR=$tmp/tmp

if ! timeout 60 podman info >"$tmp/info.log" 2>&1; then
    skip_all "podman info failed: $(tail -3 "$tmp/info.log" | tr '\n' ' ')"
fi
say "podman $(podman version --format '{{.Client.Version}}'), runtime" \
    "$(podman info --format '{{.Host.OCIRuntime.Name}}'), storage" \
    "$(podman info --format '{{.Store.GraphDriverName}}') in $tmp"

# An image of /bin/true and its libraries, imported and run: if this fails,
# the machine cannot run containers at all (in a chroot the import already
# fails), and nothing of the project has been tried yet.
probe=$tmp/probe
mkdir -p "$probe/bin"
cp -L /bin/true "$probe/bin/true"
for lib in $(ldd /bin/true | grep -o '/[^ ]*'); do
    mkdir -p "$probe$(dirname "$lib")"
    cp -L "$lib" "$probe$lib"
done
if ! { tar -C "$probe" -c . | bounded 120 podman import - localhost/normstat-probe:latest &&
    bounded 120 podman run --rm --network none localhost/normstat-probe:latest /bin/true; } \
    >"$tmp/probe.log" 2>&1; then
    skip_all "a container of /bin/true does not run: $(grep -v '^ *$' "$tmp/probe.log" | tail -2 | tr '\n' ' ')"
fi
timeout 60 podman rmi localhost/normstat-probe:latest >/dev/null 2>&1
rm -rf "$probe"
ok "a container runs here (an image of /bin/true, imported and run)"

# ---------------------------------------------------------------- 1. base image
# The host's mirror and apt settings (a proxy, a snapshot's Valid-Until), so
# that the image's apt-get reaches what the host's reaches.
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' \
    /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
say "base image: debootstrap --variant=minbase bookworm from $mirror"
t0=$(date +%s)
rootfs=$tmp/rootfs
base_ok=
for attempt in 1 2; do
    rm -rf --one-file-system "$rootfs"
    if bounded 400 debootstrap --variant=minbase bookworm "$rootfs" "$mirror" \
            >"$tmp/debootstrap.log" 2>&1; then
        base_ok=1
        break
    fi
    say "debootstrap attempt $attempt failed: $(tail -2 "$tmp/debootstrap.log" | tr '\n' ' ')"
done
if [ -z "$base_ok" ]; then
    echo "FAIL debootstrap of the base image (the Debian mirror $mirror unreachable?)"
    exit 1
fi
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
    rm -f "$rootfs/etc/apt/sources.list"
fi
apt-config dump 2>/dev/null | grep -E '^Acquire::(https?::Proxy|Check-Valid-Until|Check-Date|Retries) ' \
    >"$rootfs/etc/apt/apt.conf.d/90host"
cp "$CONF/base-apt.conf" "$rootfs/etc/apt/apt.conf.d/docker-base"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
import_base() { # TAG
    tar -C "$rootfs" -c . | bounded 300 podman import --change 'CMD ["bash"]' - \
        "docker.io/library/debian:$1" >"$tmp/import.log" 2>&1 && return 0
    cat "$tmp/import.log"
    echo "FAIL podman import of the base image debian:$1"
    exit 1
}
import_base bookworm
# -slim: what dpkg will not install there is removed from the root as well
cp "$CONF/base-slim.dpkg.cfg" "$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim"
find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/groff/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/lintian/* "$rootfs"/usr/share/linda/*
import_base bookworm-slim
for t in bookworm bookworm-slim; do
    echo "     debian:$t $(podman image inspect "docker.io/library/debian:$t" --format '{{.Size}}' |
        awk '{ printf "%.0f MB", $1 / 1e6 }')"
done
rm -rf --one-file-system "$rootfs"
say "base image in $(($(date +%s) - t0)) s"

check "the base image runs (podman run --rm debian:bookworm true)" \
    bounded 120 podman run --rm --network none docker.io/library/debian:bookworm true

# ---------------------------------------------------------------- 2. build
build() { # build TARGET IMAGE
    local t0 rc
    t0=$(date +%s)
    (cd "$REPO" && bounded 900 buildah bud --isolation chroot --format docker --pull-never \
        -f docker/Dockerfile --target "$1" -t "$2" .) >"$tmp/build-$1.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
        tail -40 "$tmp/build-$1.log"
        fail "buildah bud --target $1 (exit $rc)"
        return 1
    fi
    ok "buildah bud --target $1: $2, $(podman image inspect "$2" --format '{{.Size}}' |
        awk '{ printf "%.0f MB", $1 / 1e6 }') in $(($(date +%s) - t0)) s"
}
say "building the image targets runtime and examples"
build runtime localhost/normstat:latest || exit 1
build examples localhost/normstat-examples:latest || exit 1

# ---------------------------------------------------------------- 3. the daemon container
free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
inspect() { podman inspect "$1" --format "$2" 2>/dev/null; }
# wait_healthy CONTAINER: the HEALTHCHECK (normstatd --probe) run by hand until it
# passes, within the start period plus two intervals
wait_healthy() {
    local deadline=$(($(date +%s) + 90))
    while [ "$(date +%s)" -lt $deadline ]; do
        [ "$(inspect "$1" '{{.State.Running}}')" = true ] || return 1
        bounded 30 podman healthcheck run "$1" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}
stopped_cleanly() { # CONTAINER: podman stop -t 30 within its bound, exit status 0
    local t0 code
    t0=$(date +%s)
    bounded 60 podman stop -t 30 "$1" >/dev/null 2>&1 || return 1
    code=$(inspect "$1" '{{.State.ExitCode}}')
    echo "     $1 stopped in $(($(date +%s) - t0)) s, exit status $code"
    [ "$code" = 0 ]
}
daemon_logs() { podman logs "$1" 2>&1 | tail -20 | sed 's/^/     | /'; }

image=localhost/normstat:latest
check "the image runs as uid 10001" test "$(inspect $image '{{.Config.User}}')" = 10001:10001
check "the image keeps its HEALTHCHECK (normstatd --probe)" sh -c \
    "podman image inspect $image | $PYTHON -c 'import json, sys; \
     hc = json.load(sys.stdin)[0][\"Healthcheck\"][\"Test\"]; sys.exit(hc[1:3] != [\"normstatd\", \"--probe\"])'"
check "the image declares the volume /var/lib/normstat" sh -c \
    "podman inspect $image --format '{{.Config.Volumes}}' | grep -q /var/lib/normstat"

timeout 60 podman network create "${TAG}_net" >/dev/null 2>&1 ||
    fail "podman network create ${TAG}_net"
port=$(free_port)
url=http://127.0.0.1:$port
run_daemon() { # NAME: read-only, on the volume, port published on the host's loopback
    # (podman says on stderr that it has no systemd to run the health checks)
    bounded 120 podman run -d --name "$1" --read-only --network "${TAG}_net" \
        -p "127.0.0.1:$port:8750" -v "${TAG}_data:/var/lib/normstat" "$image" \
        >"$tmp/run-$1.log" 2>&1 || { cat "$tmp/run-$1.log"; false; }
}
if check "podman run -d --read-only -p 127.0.0.1:$port:8750 -v ${TAG}_data:... normstat" \
        run_daemon "${TAG}_d1"; then
    if check "healthy through its HEALTHCHECK (podman healthcheck run)" wait_healthy "${TAG}_d1"; then
        check "it runs as uid 10001" test "$(timeout 30 podman exec "${TAG}_d1" id -u)" = 10001
        check "its root file system is read-only" \
            test "$(inspect "${TAG}_d1" '{{.HostConfig.ReadonlyRootfs}}')" = true
        check "the image's files are not writable (touch /usr/local/x fails)" \
            sh -c "! timeout 30 podman exec ${TAG}_d1 touch /usr/local/x 2>/dev/null"
        if bounded 60 "$PYTHON" "$REPO/tests/docker/traffic.py" put "$url" docker \
                "$tmp/stats.json" >"$tmp/put.log" 2>&1; then
            sed 's/^/     /' "$tmp/put.log"
            ok "reports and statistics through the published port (tests/docker/traffic.py put)"
        else
            cat "$tmp/put.log"
            fail "reports and statistics through the published port"
        fi
    else
        daemon_logs "${TAG}_d1"
    fi
    check "podman stop -t 30: exit status 0 within the grace period" stopped_cleanly "${TAG}_d1"
    if [ -f "$tmp/stats.json" ] &&
        check "a new container on the same volume" run_daemon "${TAG}_d2" &&
        check "healthy again after the restart" wait_healthy "${TAG}_d2"; then
        if bounded 60 "$PYTHON" "$REPO/tests/docker/traffic.py" same "$url" docker \
                "$tmp/stats.json" >"$tmp/same.log" 2>&1; then
            sed 's/^/     /' "$tmp/same.log"
            ok "statistics unchanged after the restart on the same volume"
        else
            cat "$tmp/same.log"
            daemon_logs "${TAG}_d2"
            fail "statistics unchanged after the restart on the same volume"
        fi
        check "the second container stops with exit status 0 too" stopped_cleanly "${TAG}_d2"
    fi
else
    daemon_logs "${TAG}_d1"
fi

# HTTPS: the same image with a certificate mounted read-only and
# NORMSTAT_TLS_CERT / NORMSTAT_TLS_KEY set; its unchanged HEALTHCHECK
# (normstatd --probe) then probes over https.
tls=$tmp/tls
run_tls_daemon() { # NAME
    bounded 120 podman run -d --name "$1" --read-only --network "${TAG}_net" \
        -p "127.0.0.1:$port:8750" -v "${TAG}_data:/var/lib/normstat" \
        -v "$tls:/run/normstat-tls:ro" -e NORMSTAT_TLS_CERT=/run/normstat-tls/cert.pem \
        -e NORMSTAT_TLS_KEY=/run/normstat-tls/key.pem "$image" \
        >"$tmp/run-$1.log" 2>&1 || { cat "$tmp/run-$1.log"; false; }
}
mkdir -p "$tls"
if check "a certificate for localhost (openssl req)" sh -c "openssl req -x509 -newkey ec \
        -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout '$tls/key.pem' \
        -out '$tls/cert.pem' >'$tmp/openssl.log' 2>&1 && chmod 0644 '$tls/key.pem' &&
        chmod 0755 '$tls'" &&
    check "podman run with NORMSTAT_TLS_CERT and NORMSTAT_TLS_KEY (mounted read-only)" \
        run_tls_daemon "${TAG}_d3"; then
    if check "healthy over https through the unchanged HEALTHCHECK" wait_healthy "${TAG}_d3"; then
        check "curl --cacert https://localhost:$port/readyz from the host" \
            bounded 30 curl -sSf -o /dev/null --cacert "$tls/cert.pem" \
            "https://localhost:$port/readyz"
    else
        daemon_logs "${TAG}_d3"
    fi
    check "the https container stops with exit status 0" stopped_cleanly "${TAG}_d3"
fi
timeout 60 podman rm -f -t 0 "${TAG}_d1" "${TAG}_d2" "${TAG}_d3" >/dev/null 2>&1

# ---------------------------------------------------------------- 4. compose
# podman-compose 1.0.3 ignores depends_on conditions (and its `run` would
# rebuild and restart the dependencies): the services are started one by one,
# in the order compose.yaml's conditions describe, each waited for.
export NORMSTAT_PORT
NORMSTAT_PORT=$(free_port)
say "podman-compose: normstatd on 127.0.0.1:$NORMSTAT_PORT, then trainer, then evaluator"
if bounded 180 "${COMPOSE[@]}" up --no-build -d normstatd >"$tmp/compose-up.log" 2>&1; then
    ok "podman-compose up -d normstatd"
    daemon=$(podman ps --filter "label=io.podman.compose.project=$TAG" --format '{{.Names}}' |
        head -1)
    if check "the compose daemon is healthy (podman healthcheck run $daemon)" \
            wait_healthy "$daemon"; then
        t0=$(date +%s)
        if bounded 300 "${COMPOSE[@]}" run --rm --no-deps -T trainer >"$tmp/trainer.log" 2>&1; then
            ok "the trainer ran to completion ($(($(date +%s) - t0)) s, 4 ranks)"
        else
            tail -30 "$tmp/trainer.log"
            fail "the trainer ran to completion"
        fi
        grep '^trained' "$tmp/trainer.log" | sed 's/^/     /'
        if bounded 180 "${COMPOSE[@]}" run --rm --no-deps -T evaluator >"$tmp/evaluator.log" 2>&1; then
            ok "the evaluator ran to completion"
        else
            tail -30 "$tmp/evaluator.log"
            fail "the evaluator ran to completion"
        fi
        tr -d '\r' <"$tmp/evaluator.log" | grep '^|' >"$tmp/table.txt"
        sed 's/^/     /' "$tmp/table.txt"
        # the table: five kinds of statistics, an accuracy per domain and the mean
        rows=$(grep -c -E '^\| [^|]+ \| [01]\.[0-9]{3} \| [01]\.[0-9]{3} \| [01]\.[0-9]{3} \|$' \
            "$tmp/table.txt")
        check "the evaluator's table has a row of accuracies for each of the 5 kinds of statistics" \
            test "$rows" = 5
        for kind in "local" "EMA, all workers" "PreciseBN, all workers" "EMA, per domain" \
            "PreciseBN, per domain"; do
            check "the table has the row '$kind'" grep -q -F "$kind" "$tmp/table.txt"
        done
        # the README's claim: with one domain per worker and a high learning rate,
        # per-domain PreciseBN is far better than one worker's own statistics
        mean_of() { grep -F "$1" "$tmp/table.txt" | awk -F'|' '{ gsub(/ /, "", $5); print $5 }'; }
        precise=$(mean_of "PreciseBN, per domain")
        local_=$(mean_of "(local)")
        check "per-domain PreciseBN beats rank 0's local statistics by 0.2 or more in mean accuracy ($precise vs $local_)" \
            awk -v a="$precise" -v b="$local_" 'BEGIN { exit !(a != "" && b != "" && a - b >= 0.2) }'
    else
        daemon_logs "$daemon"
    fi
    timeout 120 "${COMPOSE[@]}" down -v >"$tmp/compose-down.log" 2>&1
    check "podman-compose down -v" test $? -eq 0
else
    cat "$tmp/compose-up.log"
    fail "podman-compose up -d normstatd"
fi

say "done in $(elapsed) s"
if [ $fails -ne 0 ]; then
    echo "FAIL test_docker.sh: $fails of $checks checks failed"
    exit 1
fi
echo "PASS test_docker.sh: $checks checks, 0 failed"
