"""trainer.py - data-parallel training that sends its BatchNorm statistics to normstatd.

    python3 trainer.py --workers 2 --steps 60 --run demo --out /tmp/demo

Starts --workers ranks (or is one rank under torchrun: RANK, WORLD_SIZE,
MASTER_ADDR/PORT set) that train a small CNN with DDP (gloo) on the digits
of digits.py: small batches per worker, a high learning rate, and each rank
reading one domain (even ranks "clean", odd ranks "faint"). Every rank
reports its BN statistics of every step under its domain; training ends
with a PreciseBN pass over all ranks, and rank 0 saves the weights (with
its own running statistics) to --out/model.pt.
"""
import argparse
import os
import socket
import time
import urllib.error
import urllib.request

import torch
import torch.distributed as dist

import normstat
from normstat.torch import StatsReporter, precise_bn

import digits

PRECISE_BATCHES = 20


def train(rank, world_size, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    images, labels = digits.load("train")
    domain = digits.domain_of(rank)
    model = torch.nn.parallel.DistributedDataParallel(digits.make_model())
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    client = normstat.Client(args.url)  # one client per rank
    data = digits.batches(images, labels, rank, world_size, args.batch, seed=1)
    with StatsReporter(model, client, args.run, rank, world_size, domain=domain) as reporter:
        for step in range(args.steps):
            x, y = next(data)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            reporter.step(step)  # this rank's BN statistics, sent in the background
    dist.barrier()  # every rank's training steps are delivered before PreciseBN starts
    # PreciseBN with the final weights: 20 batches of every rank, each rank
    # filed under its domain (the pooled values merge the domains exactly).
    loader = digits.batches(images, labels, rank, world_size, args.batch, seed=2)
    loader = [next(loader)[0] for _ in range(PRECISE_BATCHES)]
    local = {k: v.clone() for k, v in model.module.state_dict().items()}
    precise_bn(model.module, loader, client, args.run, rank, world_size,
               num_batches=PRECISE_BATCHES, domain=domain, step=args.steps, load=False)
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        torch.save(local, os.path.join(args.out, "model.pt"))
        print(f"trained {args.steps} steps on {world_size} ranks, {args.batch} images per "
              f"rank and step; run {args.run!r} has domains",
              sorted(d["domain"] for d in client.get_run(args.run)["status"]["domains"]))
    dist.destroy_process_group()


def wait_ready(url, limit_s):
    """Wait (bounded) for the daemon's /readyz: compose may start us first."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/readyz", timeout=5):
                return
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise SystemExit(f"trainer: normstatd at {url} not ready after {limit_s} s")
            time.sleep(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=os.environ.get("NORMSTAT_URL", "http://127.0.0.1:8750"))
    ap.add_argument("--run", default="demo")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8, help="images per rank and step")
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--wait", type=float, default=60, help="seconds to wait for normstatd")
    ap.add_argument("--out", default=os.environ.get("NORMSTAT_EXAMPLES_DIR", "."))
    args = ap.parse_args()
    if "RANK" in os.environ:  # started by torchrun
        return train(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
    wait_ready(args.url, args.wait)
    # A fresh run: PyTorch's BN momentum, one worker per rank.
    normstat.Client(args.url).delete_run(args.run, missing_ok=True)
    normstat.Client(args.url).put_run(args.run, world_size=args.workers, momentum=0.1)
    with socket.socket() as s:  # a free port for the ranks' own rendezvous
        s.bind(("127.0.0.1", 0))
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]))
    torch.multiprocessing.spawn(train, args=(args.workers, args), nprocs=args.workers)


if __name__ == "__main__":
    main()
