"""sync_gloo.py - the peer of normstat's /sync: torch.distributed gloo all_gather on loopback.

    /usr/bin/python3 tests/bench/sync_gloo.py W SPEC[,SPEC...] ITERS [--per-layer]

W processes (forked) join one gloo group on 127.0.0.1 (MASTER_ADDR). For each
SPEC ("resnet50" = torchvision ResNet-50's 53 BatchNorm layers, 26,560
channels; "NxC" = N layers of C channels) every rank all_gathers the [3, C]
float32 tensors a SyncBN layer exchanges (mean, var, count): by default one
concatenated [3, sum C] tensor per step (one collective per step, as normstat
sends one request per step; the cheaper choice for gloo), with --per-layer one
all_gather per layer. Each rank times each step (time.perf_counter_ns) after
5 warm-up steps; all ranks' times are pooled. Prints one line per SPEC:

    gloo world=W spec=SPEC channels=C tensors=T p50_us=.. p99_us=.. samples=N
"""
import multiprocessing as mp
import os
import socket
import sys
import time

import torch
import torch.distributed as dist

WARMUP = 5


def resnet50_channels():
    chans = [64]
    for blocks, width in ((3, 64), (4, 128), (6, 256), (3, 512)):
        for b in range(blocks):
            chans += [width, width, width * 4]
            if b == 0:
                chans.append(width * 4)
    return chans


def spec_channels(spec):
    if spec == "resnet50":
        chans = resnet50_channels()
        assert len(chans) == 53 and sum(chans) == 26560, (len(chans), sum(chans))
        return chans
    n, c = spec.split("x")
    return [int(c)] * int(n)


def worker(rank, world, port, specs, iters, per_layer, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(rank)
    for spec in specs:
        chans = spec_channels(spec)
        if per_layer:
            tensors = [torch.rand(3, c, generator=gen) for c in chans]
        else:
            tensors = [torch.rand(3, sum(chans), generator=gen)]
        outs = [[torch.empty_like(t) for _ in range(world)] for t in tensors]
        times = []
        for i in range(WARMUP + iters):
            t0 = time.perf_counter_ns()
            for t, o in zip(tensors, outs):
                dist.all_gather(o, t)
            t1 = time.perf_counter_ns()
            if i >= WARMUP:
                times.append((t1 - t0) / 1000.0)
        out.put((spec, sum(chans), len(tensors), times))
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(v, p):
    return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    per_layer = "--per-layer" in sys.argv
    if len(args) != 3:
        sys.exit("usage: sync_gloo.py W SPEC[,SPEC...] ITERS [--per-layer]")
    world, specs, iters = int(args[0]), args[1].split(","), int(args[2])
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, world, port, specs, iters, per_layer, out))
             for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    for _ in range(world * len(specs)):
        spec, chans, ntensors, times = out.get(timeout=300)
        results.setdefault(spec, [chans, ntensors, []])[2].extend(times)
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            sys.exit("sync_gloo: a rank failed (exit %s)" % p.exitcode)
    for spec in specs:
        chans, ntensors, times = results[spec]
        times.sort()
        print("gloo world=%d spec=%s channels=%d tensors=%d p50_us=%.1f p99_us=%.1f samples=%d"
              % (world, spec, chans, ntensors, pct(times, 0.5), pct(times, 0.99), len(times)),
              flush=True)


if __name__ == "__main__":
    main()
