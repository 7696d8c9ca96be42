"""trainer.py - data-parallel training that sends its BatchNorm statistics to normstatd.

    python3 trainer.py --workers 4 --steps 200 --run demo --out /tmp/demo

Starts --workers ranks (or is one rank under torchrun: RANK, WORLD_SIZE,
MASTER_ADDR/PORT set), trains a small CNN on synthetic images with DDP
(gloo), reports every rank's BN statistics of every step, ends with a
PreciseBN pass over all ranks, and saves the weights to --out/model.pt.
"""
import argparse
import os
import socket

import torch
import torch.distributed as dist

import normstat
from normstat.torch import StatsReporter, precise_bn


def make_model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 4))


def batch(rank, step, size=16):
    """Synthetic 16x16 images of 4 classes (class c is brighter by c); one shard per rank."""
    g = torch.Generator().manual_seed(rank * 1_000_003 + step)
    y = torch.randint(0, 4, (size,), generator=g)
    x = torch.randn(size, 3, 16, 16, generator=g) * 2 + y.view(-1, 1, 1, 1)
    return x, y


def train(rank, world_size, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    client = normstat.Client(args.url)  # one client per rank
    with StatsReporter(model, client, args.run, rank, world_size) as reporter:
        for step in range(args.steps):
            x, y = batch(rank, step)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            reporter.step(step)  # this rank's BN statistics, sent in the background
    dist.barrier()  # every rank's training steps are delivered before PreciseBN starts
    # PreciseBN: the exact population statistics over 20 batches of every rank.
    loader = [batch(rank, 1_000_000 + i)[0] for i in range(20)]
    precise_bn(model.module, loader, client, args.run, rank, world_size, num_batches=20,
               step=args.steps)
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        torch.save(model.module.state_dict(), os.path.join(args.out, "model.pt"))
        print(f"trained {args.steps} steps on {world_size} ranks; run {args.run!r}:",
              client.get_run(args.run)["status"]["layers"])
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=os.environ.get("NORMSTAT_URL", "http://127.0.0.1:8750"))
    ap.add_argument("--run", default="demo")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=os.environ.get("NORMSTAT_EXAMPLES_DIR", "."))
    args = ap.parse_args()
    if "RANK" in os.environ:  # started by torchrun
        return train(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
    # A fresh run: PyTorch's BN momentum, one worker per rank.
    normstat.Client(args.url).delete_run(args.run, missing_ok=True)
    normstat.Client(args.url).put_run(args.run, world_size=args.workers, momentum=0.1)
    with socket.socket() as s:  # a free port for the ranks' own rendezvous
        s.bind(("127.0.0.1", 0))
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]))
    torch.multiprocessing.spawn(train, args=(args.workers, args), nprocs=args.workers)


if __name__ == "__main__":
    main()
