"""test_syncbn_wire.py - normstat.wire, the transport of SyncBatchNorm.

Against a real normstatd:
* SyncFrame: for steps whose decimal length changes (0, 9, 10, 99999,
  10**12) and counts 0 and > 0, the answer equals what normstat.Client.sync
  gets on a twin run for the same reports (count, mean, var, bit for bit),
  and the run's per-layer step is the one patched in; a frame with
  update=("precise",) leaves the EMA alone; domain and world_size travel;
* GradFrame, F32 and F64, two workers (threads with their own Connection):
  the answer is the float64 sum of both workers' arrays (math.fsum of the
  values sent), in the frame's dtype (F32: rounded once);
* errors keep the server's status, code and message: a stale step (409
  stale_step), a /grad to a run that does not exist (404), a channel count
  that differs (409); the connection stays usable after each;
* a Connection whose keep-alive socket the daemon closed (daemon restarted
  on the same port) reconnects once and counts it;
* Answer parsing of headers laid out otherwise than the daemon's, offline;
* a daemon with --auth-token: frames carry the Connection's token; without
  it the answer is 401 (AuthError naming the request).
"""

import math
import struct
import threading

import harness as h

import torch

import normstat
from normstat import wire

C = 7


def f32(values):
    return struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values))


def arr(ans, name, code="f"):
    dtype, b = ans.array(name)
    return dtype, list(struct.unpack(f"<{len(b) // struct.calcsize(code)}{code}", b))


def sync_frames(checks, d):
    client = d.client()
    run_a, run_b = h.run_name("wire-a"), h.run_name("wire-b")
    for r in (run_a, run_b):
        client.put_run(r, world_size=1)
    conn = wire.Connection(d.url, timeout=20)
    frame = wire.SyncFrame(conn, run_a, "layer1.0.bn1", worker=0, channels=C)
    gen = torch.Generator().manual_seed(3)
    for step, count in [(0, 10), (9, 0), (10, 3), (99999, 1000), (10 ** 12, 2)]:
        mean = f32((torch.randn(C, generator=gen) * 2).tolist())
        var = f32(torch.rand(C, generator=gen).tolist())
        frame.mean[:] = struct.pack(f"<{C}f", *mean)
        frame.var[:] = struct.pack(f"<{C}f", *var)
        ans = conn.exchange(frame.request(step, count), "layer1.0.bn1")
        ref = client.sync(run_b, step, 0, {"layer1.0.bn1": (count, list(mean), list(var))})
        meta = ans.metadata
        checks.eq((meta.get("step"), meta.get("complete"), meta.get("workers")),
                  (str(step), "true", "1"), f"step {step}: answer metadata")
        got_count = struct.unpack("<q", ans.array("layer1.0.bn1.count")[1])[0]
        want = ref["layers"]["layer1.0.bn1"]
        checks.eq(got_count, want["count"],
                  f"step {step} count {count}: global count as Client.sync")
        if count:
            checks.eq(arr(ans, "layer1.0.bn1.mean"), ("F32", list(f32(want["mean"]))),
                      f"step {step}: global mean as Client.sync (bits)")
            checks.eq(arr(ans, "layer1.0.bn1.var"), ("F32", list(f32(want["var"]))),
                      f"step {step}: global var as Client.sync (bits)")
        checks.eq(client.get_run(run_a)["status"]["layers"]["layer1.0.bn1"]["finalized_step"], step,
                  f"step {step}: the run's layer step is the one patched in")
    ema_a = client.stats(run_a)["layers"]["layer1.0.bn1"]
    ema_b = client.stats(run_b)["layers"]["layer1.0.bn1"]
    checks.eq(ema_a, ema_b, "the EMA of the frame's run equals the Client's twin")

    # update=("precise",): EMA untouched; domain and world_size travel
    run_p = h.run_name("wire-p")
    fp = wire.SyncFrame(conn, run_p, "l", worker=1, channels=C, world_size=2, domain="photo",
                        update=("precise",))
    other_err = []

    def other_worker():
        try:
            d.client().sync(run_p, 5, 0, {"l": (4, [0.0] * C, [1.0] * C)}, domain="photo",
                            update=["precise"], world_size=2)
        except Exception as e:  # checked below
            other_err.append(repr(e))

    other = threading.Thread(target=other_worker)
    other.start()
    fp.mean[:] = struct.pack(f"<{C}f", *([1.0] * C))
    fp.var[:] = struct.pack(f"<{C}f", *([1.0] * C))
    ans = conn.exchange(fp.request(5, 4), "l")
    other.join(20)
    checks.eq(other_err, [], "worker 0 (Client.sync) was answered")
    checks.eq(ans.metadata.get("workers"), "2", "world_size=2 created the run with 2 workers")
    _, m = arr(ans, "l.mean")
    checks.eq(m, [0.5] * C, "worker 1 and worker 0 combined (mean 0.5)")
    info = client.get_run(run_p)
    checks.eq(info["config"]["world_size"], 2, "the run was created with world_size 2")
    doms = [x["domain"] for x in info["status"]["domains"]]
    checks.check("photo" in doms, "the report was filed under domain photo", str(doms))
    ema = client.stats(run_p, domain="photo")["layers"].get("l", {})
    checks.eq(ema.get("num_batches_tracked"), 0, "update=('precise',) left the EMA alone")
    pre = client.stats(run_p, source="precise", domain="photo")["layers"].get("l", {})
    checks.eq(pre.get("num_batches"), 1, "update=('precise',) reached PreciseBN")
    conn.close()
    client.close()


def grad_frames(checks, d):
    client = d.client()
    for dtype, code in (("F32", "f"), ("F64", "d")):
        run = h.run_name(f"wire-grad-{dtype}")
        client.put_run(run, world_size=2)
        gen = torch.Generator().manual_seed(9)
        sent = [[(torch.randn(2 * C, generator=gen) * 10 ** (3 * w)).tolist()] for w in range(2)]
        if dtype == "F32":
            sent = [[list(f32(s[0]))] for s in sent]
        answers = [None, None]

        def work(w):
            conn = wire.Connection(d.url, timeout=20)
            f = wire.GradFrame(conn, run, "bn", worker=w, channels=C, dtype=dtype)
            f.sums[:] = struct.pack(f"<{2 * C}{code}", *sent[w][0])
            ans = conn.exchange(f.request(3), "bn")
            answers[w] = (ans.metadata, arr(ans, "bn.sum_dy", code),
                          arr(ans, "bn.sum_dy_xmu", code))
            conn.close()

        threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        exact = [math.fsum([sent[0][0][i], sent[1][0][i]]) for i in range(2 * C)]
        if dtype == "F32":
            exact = list(f32(exact))
        for w in range(2):
            a = answers[w]
            if a is None:
                checks.check(False, f"{dtype}: worker {w} got an answer")
                continue
            checks.eq((a[0].get("step"), a[0].get("workers")), ("3", "2"),
                      f"{dtype} worker {w}: step and workers")
            checks.eq(a[1], (dtype, exact[:C]), f"{dtype} worker {w}: sum_dy = the exact sum, "
                                                f"rounded once to {dtype}")
            checks.eq(a[2], (dtype, exact[C:]), f"{dtype} worker {w}: sum_dy_xmu likewise")
    client.close()


def errors(checks, d):
    client = d.client()
    run = h.run_name("wire-err")
    client.put_run(run, world_size=1)
    conn = wire.Connection(d.url, timeout=20)
    f = wire.SyncFrame(conn, run, "l", worker=0, channels=C)
    conn.exchange(f.request(4, 2), "l")
    try:
        conn.exchange(f.request(3, 2), "l")
        checks.check(False, "a stale step raises Conflict")
    except normstat.Conflict as e:
        checks.eq((e.status, e.code), (409, "stale_step"), f"a stale step raises Conflict: {e}")
    g = wire.GradFrame(conn, h.run_name("no-such-run"), "l", worker=0, channels=C)
    try:
        conn.exchange(g.request(0), "l")
        checks.check(False, "/grad to a missing run raises NotFound")
    except normstat.NotFound as e:
        checks.eq(e.status, 404, f"/grad to a missing run raises NotFound: {e}")
    f8 = wire.SyncFrame(conn, run, "l", worker=0, channels=C + 1)
    try:
        conn.exchange(f8.request(5, 2), "l")
        checks.check(False, "a channel count that differs raises Conflict")
    except normstat.Conflict as e:
        checks.check(e.code == "channel_mismatch" and "l" in e.message,
                     f"a channel count that differs raises Conflict: {e}")
    ans = conn.exchange(f.request(6, 2), "l")
    checks.eq(ans.metadata.get("step"), "6", "the connection still works after errors")
    checks.eq(conn.reconnects, 0, "no reconnect was needed")
    try:
        f.request(-1, 2)
        checks.check(False, "a negative step raises ValueError")
    except ValueError as e:
        checks.check("step" in str(e), f"a negative step raises ValueError: {e}")
    conn.close()
    client.close()


def reconnect(checks, d):
    """The daemon restarts on the same port: the idle connection is dead;
    the next exchange reconnects once."""
    run = h.run_name("wire-re")
    conn = wire.Connection(d.url, timeout=20)
    f = wire.SyncFrame(conn, run, "l", worker=0, channels=C, world_size=1)
    conn.exchange(f.request(0, 2), "l")
    port = d.port
    h.stop_daemon(checks, d)
    d2 = h.start_daemon("--listen", f"127.0.0.1:{port}")
    checks.eq(d2.port, port, "the daemon restarted on the same port")
    ans = conn.exchange(f.request(1, 2), "l")
    checks.eq(ans.metadata.get("step"), "1", "the exchange after the restart is answered")
    checks.eq(conn.reconnects, 1, "one reconnect counted")
    conn.close()
    return d2


def auth(checks):
    """A daemon that wants a bearer token: frames carry the Connection's
    token; without it the daemon refuses (401), named in the error."""
    d = h.start_daemon("--auth-token", "s3cret")
    run = h.run_name("wire-auth")
    conn = wire.Connection(d.url, timeout=20, token="s3cret")
    f = wire.SyncFrame(conn, run, "l", worker=0, channels=C, world_size=1)
    ans = conn.exchange(f.request(0, 2), f.path)
    checks.eq(ans.metadata.get("complete"), "true", "with the token: answered")
    bare = wire.Connection(d.url, timeout=20)
    fb = wire.SyncFrame(bare, run, "l", worker=0, channels=C, world_size=1)
    try:
        bare.exchange(fb.request(1, 2), fb.path)
        checks.check(False, "without the token: AuthError")
    except normstat.AuthError as e:
        checks.check(e.status == 401 and fb.path in str(e), f"without the token: AuthError: {e}")
    conn.close()
    bare.close()
    h.stop_daemon(checks, d)


def answers_offline(checks):
    """Answer parsing without a daemon: metadata first (the daemon's
    layout, parsed twice to use the kept layout), metadata last, a brace in
    a metadata value, tensors that do not lie next to each other."""
    vals = struct.pack("<3f", 1.0, 2.0, 3.0)
    cases = {
        "metadata first": b'{"__metadata__":{"step":"4"},"a":{"dtype":"F32","shape":[1],'
                          b'"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[2],'
                          b'"data_offsets":[4,12]}}',
        "metadata last": b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                         b'"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},'
                         b'"__metadata__":{"step":"4"}}',
        "a brace in metadata": b'{"__metadata__":{"step":"4","x":"}"},"a":{"dtype":"F32",'
                               b'"shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32",'
                               b'"shape":[2],"data_offsets":[4,12]}}',
    }
    for desc, head in cases.items():
        for _ in range(2):
            body = struct.pack("<Q", len(head)) + head + vals
            ans = wire.Answer(200, wire.SAFETENSORS, memoryview(body))
            checks.eq(ans.metadata.get("step"), "4", f"{desc}: metadata")
            dt, b = ans.arrays("a", "b")
            checks.eq((dt, struct.unpack("<3f", b)), ("F32", (1.0, 2.0, 3.0)),
                      f"{desc}: adjacent tensors as one region")
    checks.eq(ans.arrays("b", "a"), None, "tensors out of order: no single region")
    try:
        wire.Answer(200, b"application/json", memoryview(b"{}")).metadata
        checks.check(False, "a JSON answer where safetensors was expected raises")
    except normstat.TransportError as e:
        checks.check("safetensors" in str(e), f"a JSON answer where safetensors was expected "
                                              f"raises TransportError: {e}")


def body(checks):
    answers_offline(checks)
    d = h.start_daemon()
    sync_frames(checks, d)
    grad_frames(checks, d)
    errors(checks, d)
    d = reconnect(checks, d)
    h.stop_daemon(checks, d)
    auth(checks)


if __name__ == "__main__":
    h.main(body)
