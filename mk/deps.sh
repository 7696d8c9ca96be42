#!/bin/sh
# deps.sh - install the Debian packages normstat needs, only those missing.
# Usage: sh mk/deps.sh SET...   (sets: build, test, bench, docker, fuzz)
# Non-interactive; needs root (or sudo) only when something is missing.
set -eu

# normstatd links GnuTLS itself for HTTPS (libmicrohttpd does the TLS).
build_pkgs="gcc make pkg-config libmicrohttpd-dev libgnutls28-dev libjansson-dev libuv1-dev check
libsqlite3-dev libcurl4-openssl-dev python3"
# Tests and benchmarks compare against real PyTorch (Debian's python3-torch).
# The README's demo trains on scikit-learn's digits; test_install.sh makes a venv.
# test_shards.py runs deploy/nginx/normstat-shards.conf in Debian's nginx.
# The dashboard's browser test drives chromium with playwright-core (npm, `make
# browser-deps`); promtool (package prometheus) checks the alert rules. Node and
# npm from Debian unless a node with npm is already installed (e.g. NodeSource's).
# The HTTPS tests make their certificates with the openssl command and talk with curl.
test_pkgs="python3-torch python3-numpy python3-yaml python3-jsonschema python3-sklearn python3-venv
nginx chromium prometheus openssl curl"
command -v npm >/dev/null 2>&1 || test_pkgs="$test_pkgs nodejs npm"
# The trainer benchmarks train torchvision's ResNet-50 (a built-in copy when absent);
# table 2b counts the daemon's instructions under valgrind's callgrind.
bench_pkgs="python3-torch python3-numpy python3-torchvision valgrind"
# `make test-docker` builds the image with buildah on a debootstrap base and runs
# it with podman (runc: crun refuses hybrid cgroups) and podman-compose, whose
# service names resolve through the dnsname CNI plugin.
docker_pkgs="debootstrap buildah podman runc podman-compose containernetworking-plugins
golang-github-containernetworking-plugin-dnsname"
# `make fuzz` builds libFuzzer harnesses with clang; its sanitizer and fuzzer
# runtimes are only recommended by clang, so they are named here.
fuzz_pkgs="clang libclang-rt-dev libjansson-dev pkg-config make"

want=
for set in "${@:-build}"; do
    case "$set" in
    build) want="$want $build_pkgs" ;;
    test) want="$want $test_pkgs" ;;
    bench) want="$want $bench_pkgs" ;;
    docker) want="$want $docker_pkgs" ;;
    fuzz) want="$want $fuzz_pkgs" ;;
    *) echo "deps.sh: unknown set '$set' (build, test, bench, docker, fuzz)" >&2; exit 2 ;;
    esac
done

missing=
for p in $want; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

echo "deps: installing$missing"
if [ "$(id -u)" -eq 0 ]; then
    sudo=
elif command -v sudo >/dev/null 2>&1; then
    sudo=sudo
else
    echo "deps: missing packages:$missing; run as root: apt-get install$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# A fresh machine has empty package lists; refresh them once if needed.
if ! $sudo apt-get install -y -q --no-install-recommends $missing; then
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends $missing
fi
