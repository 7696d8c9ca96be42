"""check_includes.py - the include graph follows the project's layering.

Libraries: core < proto < {client, server}; a file includes headers of its
own library or of a lower one (client and server never each other, except
that server/src/relay/ forwards upstream with the client library).
Inside server/src the parts are ranked

    base < registry < store < relay < http < api < daemon

and a file includes headers of its own part or of a lower one, never of a
higher one. proto/src's parts are ranked util < safetensors < messages
(proto_internal.h, beside them, is shared by all three). Quoted includes
are resolved as the compiler does (the including file's directory, then the
library's source root); <normstat/x.h> resolves to the library that
installs it. Finally no header may include itself through others, and no
two modules (x.c with x.h) of different parts may include each other.

Run from the repository root: python3 tests/layers/check_includes.py
Prints one line per violation and exits 1 if there is any.
"""

import os
import re
import sys

LIB_RANK = {"core": 0, "proto": 1, "client": 2, "server": 2}
PARTS = {
    "server/src": ["base", "registry", "store", "relay", "http", "api", "daemon"],
    "proto/src": ["util", "safetensors", "messages"],
}
INSTALLED = {"core/include/normstat", "proto/include/normstat", "client/include/normstat"}
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def sources():
    for lib in LIB_RANK:
        for root, _, names in os.walk(lib):
            for n in names:
                if n.endswith((".c", ".h")):
                    yield os.path.join(root, n)


def library(path):
    return path.split("/", 1)[0]


def part(path):
    """(source root, rank) of a file inside a ranked source root, else None."""
    for root, parts in PARTS.items():
        if path.startswith(root + "/"):
            rest = path[len(root) + 1:]
            head = rest.split("/", 1)[0]
            if "/" in rest and head in parts:
                return root, parts.index(head)
            return root, -1  # beside the parts: shared by all
    return None


def resolve(path, kind, name):
    """The repository file an include names, or None (system headers)."""
    if kind == "<":
        for inc in INSTALLED:
            if name.startswith("normstat/") and os.path.exists(os.path.join(inc, name[9:])):
                return os.path.join(inc, name[9:])
        return None
    here = os.path.normpath(os.path.join(os.path.dirname(path), name))
    if os.path.exists(here):
        return here
    for root in PARTS:
        cand = os.path.normpath(os.path.join(root, name))
        if path.startswith(root + "/") and os.path.exists(cand):
            return cand
    return None


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    bad = []
    graph = {}
    for src in sorted(sources()):
        text = open(src, encoding="utf-8", errors="replace").read()
        for kind, name in INCLUDE.findall(text):
            dst = resolve(src, kind, name)
            if dst is None:
                continue
            graph.setdefault(src, set()).add(dst)
            a, b = library(src), library(dst)
            relay_uses_client = src.startswith("server/src/relay/") and b == "client"
            if a != b and LIB_RANK[b] >= LIB_RANK[a] and not relay_uses_client:
                bad.append(f"{src}: includes {dst} ({b} is not below {a})")
            pa, pb = part(src), part(dst)
            if pa and pb and pa[0] == pb[0] and pa[1] >= 0 and pb[1] > pa[1]:
                bad.append(f"{src}: includes {dst} (a higher part)")
    # A header that includes itself through others.
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    for h in sorted(f for f in graph if f.endswith(".h")):
        if h in reach(h):
            bad.append(f"{h}: includes itself through other headers")
    # Modules of different parts that include each other.
    module = lambda f: f.rsplit(".", 1)[0]
    mgraph = {}
    for f, dsts in graph.items():
        for d in dsts:
            if module(f) != module(d):
                mgraph.setdefault(module(f), set()).add(module(d))
    for a in sorted(mgraph):
        for b in sorted(mgraph[a]):
            if a < b and a in mgraph.get(b, ()) and os.path.dirname(a) != os.path.dirname(b):
                bad.append(f"{a} and {b} include each other")
    for line in bad:
        print(f"FAIL {line}")
    print(f"{'FAIL' if bad else 'ok'} include layering: {len(graph)} files, {len(bad)} violations")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
