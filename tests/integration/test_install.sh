#!/bin/sh
# test_install.sh - `make install` into a temporary DESTDIR, build a program against it, `make uninstall`.
#
# Installs with PREFIX=/usr into a fresh DESTDIR and checks every file a user
# expects (programs, libraries, headers, .pc files naming /usr, man pages that
# document every option of `normstatd --help` and every command of `normstat
# --help` and name the licence, the Python package in Debian's dist-packages,
# importable from there), builds the wheel (`make wheel`) and installs it, and
# then the source directory, into a fresh venv with `pip --no-index` (no
# package index, nothing written into client/python), compiles a small C
# program with pkg-config against the installed libnormstat and libnscore
# only, runs it against the installed normstatd, and checks that
# `make uninstall` leaves no file behind.
# Run from the repository root: NS_BUILD=build sh tests/integration/test_install.sh
set -u

BUILD=${NS_BUILD:-build}
MAKE=${MAKE:-make}
PYTHON=${PYTHON:-/usr/bin/python3}
tmp=$(mktemp -d /tmp/normstat-install-test.XXXXXX)
dest=$tmp/dest
daemon_pid=
fails=0

cleanup() {
    if [ -n "$daemon_pid" ]; then
        kill "$daemon_pid" 2>/dev/null
        wait "$daemon_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

ok() { echo "ok   $1"; }
fail() { echo "FAIL $1"; fails=$((fails + 1)); }
check() { # check DESCRIPTION COMMAND...
    desc=$1; shift
    if "$@"; then ok "$desc"; else fail "$desc"; fi
}

# ---------------------------------------------------------------- install
if ! $MAKE --no-print-directory BUILD="$BUILD" install PREFIX=/usr DESTDIR="$dest" \
        >"$tmp/install.log" 2>&1; then
    cat "$tmp/install.log"
    echo "FAIL make install PREFIX=/usr DESTDIR=... failed"
    exit 1
fi
ok "make install PREFIX=/usr DESTDIR=$dest"

for f in usr/sbin/normstatd usr/bin/normstat; do
    check "$f installed, executable" test -x "$dest/$f"
done
for lib in libnscore libnsproto libnormstat; do
    check "usr/lib/$lib.so.0 is a shared object" sh -c \
        "file -L '$dest/usr/lib/$lib.so.0' 2>/dev/null | grep -q 'shared object' || \
         readelf -h '$dest/usr/lib/$lib.so.0' 2>/dev/null | grep -q DYN"
    check "usr/lib/$lib.so -> $lib.so.0" test "$(readlink "$dest/usr/lib/$lib.so")" = "$lib.so.0"
    check "usr/lib/$lib.a installed" test -f "$dest/usr/lib/$lib.a"
    pc=$dest/usr/lib/pkgconfig/$lib.pc
    check "$lib.pc installed" test -f "$pc"
    check "$lib.pc says prefix=/usr" grep -qx 'prefix=/usr' "$pc"
done
for h in core.h errors.h export.h proto.h wire_errors.h client.h; do
    check "usr/include/normstat/$h installed" test -f "$dest/usr/include/normstat/$h"
done

# ---------------------------------------------------------------- man pages
# roff source as plain text: \- is '-', font changes dropped.
plain() { sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' -e 's/\\e/\\/g' "$1"; }
m8=$dest/usr/share/man/man8/normstatd.8
m1=$dest/usr/share/man/man1/normstat.1
check "man page normstatd(8) installed" test -s "$m8"
check "man page normstat(1) installed" test -s "$m1"
for m in "$m8" "$m1"; do
    check "$(basename "$m") names the licence (Apache-2.0)" sh -c \
        "sed -n '/^\.SH LICENSE/,/^\.SH/p' '$m' | sed 's/\\\\-/-/g' | grep -q 'Apache-2.0'"
done
if [ -s "$m8" ]; then
    plain "$m8" >"$tmp/m8.txt"
    "$dest/usr/sbin/normstatd" --help >"$tmp/help8.txt" 2>&1
    missing=
    for w in $(grep -o -e '--[a-z][a-z-]*' -e 'NORMSTAT_[A-Z_]*' "$tmp/help8.txt" | sort -u); do
        grep -q -e "$w" "$tmp/m8.txt" || missing="$missing $w"
    done
    check "normstatd(8) documents every flag and variable of normstatd --help${missing:+ (missing:$missing)}" \
        test -z "$missing"
    if command -v man >/dev/null 2>&1; then
        check "normstatd(8) renders" sh -c "MANWIDTH=80 man -l '$m8' 2>/dev/null | grep -q 'normstatd'"
    fi
fi
if [ -s "$m1" ]; then
    plain "$m1" >"$tmp/m1.txt"
    "$dest/usr/bin/normstat" --help >"$tmp/help1.txt" 2>&1
    # the commands are the indented words of the "commands:" paragraph
    cmds=$(sed -n '/^commands:/,/^$/p' "$tmp/help1.txt" | awk 'NR > 1 && NF { print $1 }')
    check "normstat --help lists commands" test -n "$cmds"
    missing=
    for c in $cmds $(grep -o -e '--[a-z][a-z-]*' "$tmp/help1.txt" | sort -u); do
        grep -q -e "$c" "$tmp/m1.txt" || missing="$missing $c"
    done
    check "normstat(1) documents every command and option of normstat --help${missing:+ (missing:$missing)}" \
        test -z "$missing"
fi

# ---------------------------------------------------------------- the Python client
# installed for the system's Python (PREFIX=/usr: Debian's dist-packages),
# imported from another directory with nothing but that directory on the path
site=$dest/usr/lib/python3/dist-packages
for f in normstat/__init__.py normstat/client.py normstat/torch/__init__.py \
    normstat/torch/reporter.py normstat-*.dist-info/METADATA; do
    # shellcheck disable=SC2086 # the glob names the versioned dist-info
    check "usr/lib/python3/dist-packages/$f installed" test -f $site/$f
done
check "the package's metadata names its licence (Apache-2.0)" \
    grep -qx 'License: Apache-2.0' "$site"/normstat-*.dist-info/METADATA
check "installed package imports from another directory, from DESTDIR" sh -c \
    "cd '$tmp' && PYTHONPATH='$site' PYTHONDONTWRITEBYTECODE=1 $PYTHON -c \
     'import normstat, normstat.client; assert normstat.__file__.startswith(\"$site/\"), normstat.__file__'"
check "make install writes no .pyc and nothing else beside the package" sh -c \
    "[ -z \"\$(ls '$site' | grep -v -x -e normstat -e 'normstat-.*\.dist-info')\" ] && \
     [ -z \"\$(find '$site' -name '*.pyc')\" ]"

# the wheel, into a fresh virtual environment without a package index
wheel=$($MAKE --no-print-directory -s BUILD="$BUILD" wheel >"$tmp/wheel.log" 2>&1 &&
    ls "$BUILD"/normstat-*-py3-none-any.whl 2>/dev/null | head -1)
check "make wheel builds $BUILD/normstat-VERSION-py3-none-any.whl" test -n "$wheel"
if [ -n "$wheel" ]; then
    check "the wheel holds normstat, normstat.torch and the licence" sh -c \
        "$PYTHON -m zipfile -l '$wheel' >'$tmp/wheel.txt' && \
         grep -q 'normstat/torch/precise.py' '$tmp/wheel.txt' && \
         grep -q 'normstat-.*dist-info/LICENSE' '$tmp/wheel.txt'"
fi
if $PYTHON -m venv "$tmp/venv" >"$tmp/venv.log" 2>&1; then
    ok "a fresh virtual environment (python3 -m venv)"
    vpy=$tmp/venv/bin/python
    if [ -n "$wheel" ]; then
        check "pip install --no-index the wheel into it" sh -c \
            "'$vpy' -m pip install -q --no-index '$wheel' >'$tmp/pip1.log' 2>&1 || \
             { cat '$tmp/pip1.log'; false; }"
        check "it imports normstat from the environment, in another directory" sh -c \
            "cd '$tmp' && '$vpy' -c 'import normstat, sys; \
             assert normstat.__file__.startswith(sys.prefix), normstat.__file__; \
             print(\"     normstat\", normstat.__version__, \"from\", normstat.__file__)'"
        "$vpy" -m pip uninstall -q -y normstat >/dev/null 2>&1
    fi
    # from the source directory, offline: the build backend needs no package
    # index, and writes nothing into the source tree
    before=$(cd client/python && find . | sort)
    check "pip install --no-index client/python (offline, from source)" sh -c \
        "'$vpy' -m pip install -q --no-index client/python >'$tmp/pip2.log' 2>&1 || \
         { cat '$tmp/pip2.log'; false; }"
    check "that import works from another directory" sh -c \
        "cd '$tmp' && '$vpy' -c 'import normstat.client, sys; \
         assert normstat.client.__file__.startswith(sys.prefix)'"
    after=$(cd client/python && find . | sort)
    new=$(printf '%s\n' "$after" | grep -v -x -F -e "$before" | grep -v __pycache__)
    check "nothing but __pycache__ is left in client/python by the builds${new:+ (new: $(echo $new))}" \
        test -z "$new"
else
    cat "$tmp/venv.log"
    fail "a fresh virtual environment (python3 -m venv; Debian: python3-venv)"
fi

# ---------------------------------------------------------------- a program against the installed library
cat >"$tmp/hello.c" <<'EOF'
/* Prints the core's version and asks a normstatd for readiness and its version. */
#include <stdio.h>
#include <string.h>

#include <normstat/client.h>
#include <normstat/core.h>

int main(int argc, char **argv)
{
    ns_client_options_t opts;
    ns_client_options_default(&opts);
    opts.url = argc > 1 ? argv[1] : NULL;
    opts.timeout_ms = 10000;
    ns_client_t *c = NULL;
    ns_error_detail_t err;
    memset(&err, 0, sizeof(err));
    printf("core %s kernel %s\n", ns_core_version(), ns_core_kernel());
    if (ns_client_create(&c, &opts, &err) != 0)
        return 1;
    ns_buf_t buf;
    ns_buf_init(&buf, 0);
    int rc = ns_client_health(c, 1, NULL, &err);
    if (rc == 0)
        rc = ns_client_version(c, &buf, &err);
    if (rc == 0)
        printf("server %.*s\n", (int)buf.len, (const char *)buf.data);
    else
        printf("error %d: %s\n", rc, err.message);
    ns_buf_free(&buf);
    ns_client_free(c);
    return rc == 0 ? 0 : 3;
}
EOF
pcflags=$(PKG_CONFIG_PATH=$dest/usr/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$dest \
    pkg-config --cflags --libs libnormstat libnscore 2>"$tmp/pc.err")
check "pkg-config --cflags --libs libnormstat libnscore (from DESTDIR)" test $? -eq 0
echo "     flags: $pcflags"
case " $pcflags " in
*" -I$dest/usr/include "*) ok "Cflags point into the installed include directory" ;;
*) fail "Cflags point into the installed include directory (got: $pcflags)" ;;
esac
# shellcheck disable=SC2086 # the flags are words
if cc -std=c11 -Wall -Werror -o "$tmp/hello" "$tmp/hello.c" $pcflags 2>"$tmp/cc.err"; then
    ok "a program builds against the installed libnormstat"
else
    cat "$tmp/cc.err"
    fail "a program builds against the installed libnormstat"
fi
check "the program needs the installed libnormstat.so.0" sh -c \
    "readelf -d '$tmp/hello' | grep -q 'NEEDED.*libnormstat.so.0'"

# the installed daemon, on an ephemeral loopback port
mkdir -p "$tmp/data"
"$dest/usr/sbin/normstatd" --listen 127.0.0.1:0 --no-persist --data-dir "$tmp/data" \
    2>"$tmp/daemon.log" &
daemon_pid=$!
port=
i=0
while [ $i -lt 100 ] && [ -z "$port" ]; do
    # ready, not merely listening: /readyz answers 503 until then
    port=$(sed -n 's/.*event=ready addr="\{0,1\}127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/daemon.log")
    [ -n "$port" ] || sleep 0.1
    i=$((i + 1))
done
check "installed normstatd starts and is ready" test -n "$port"
if [ -n "$port" ]; then
    check "installed normstatd --probe answers 0" \
        "$dest/usr/sbin/normstatd" --probe "http://127.0.0.1:$port/readyz"
    LD_LIBRARY_PATH=$dest/usr/lib timeout 20 "$tmp/hello" "http://127.0.0.1:$port" >"$tmp/hello.out" 2>&1
    rc=$?
    sed 's/^/     /' "$tmp/hello.out"
    check "the program runs with LD_LIBRARY_PATH=DESTDIR/usr/lib and talks to normstatd" test $rc -eq 0
    check "it printed the server's version" grep -q '^server {' "$tmp/hello.out"
    check "it loaded the installed libnormstat" sh -c \
        "LD_LIBRARY_PATH='$dest/usr/lib' ldd '$tmp/hello' | grep -q '$dest/usr/lib/libnormstat.so.0'"
    check "installed normstat CLI: health" \
        "$dest/usr/bin/normstat" --url "http://127.0.0.1:$port" health
fi
kill "$daemon_pid" 2>/dev/null
wait "$daemon_pid"
rc=$?
daemon_pid=
check "installed normstatd exits 0 on SIGTERM" test $rc -eq 0

# ---------------------------------------------------------------- uninstall
if $MAKE --no-print-directory BUILD="$BUILD" uninstall PREFIX=/usr DESTDIR="$dest" \
        >"$tmp/uninstall.log" 2>&1; then
    ok "make uninstall PREFIX=/usr DESTDIR=..."
else
    cat "$tmp/uninstall.log"
    fail "make uninstall PREFIX=/usr DESTDIR=..."
fi
left=$(find "$dest" ! -type d | sed "s|^$dest||")
check "make uninstall removed every installed file${left:+ (left: $(echo $left))}" test -z "$left"

if [ $fails -ne 0 ]; then
    echo "FAIL test_install.sh: $fails checks failed"
    exit 1
fi
echo "PASS test_install.sh"
