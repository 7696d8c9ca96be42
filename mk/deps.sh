#!/bin/sh
# deps.sh - install the Debian packages normstat needs, only those missing.
# Usage: sh mk/deps.sh build|bench
# Non-interactive; needs root (or sudo) only when something is missing.
set -eu

build_pkgs="gcc make pkg-config libmicrohttpd-dev libjansson-dev libuv1-dev check
libsqlite3-dev libcurl4-openssl-dev python3"
bench_pkgs="python3-torch python3-numpy"

case "${1:-build}" in
build) want=$build_pkgs ;;
bench) want=$bench_pkgs ;;
*) echo "deps.sh: unknown set '$1' (build, bench)" >&2; exit 2 ;;
esac

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
