"""evaluator.py - evaluate the trained weights with each kind of BatchNorm statistics.

    python3 evaluator.py --run demo --out /tmp/demo

Loads --out/model.pt (written by trainer.py), then the run's statistics from
normstatd - the EMA over all ranks and the PreciseBN estimate - and prints
the accuracy of each on held-out synthetic images, next to rank 0's own
(local) running statistics.
"""
import argparse
import os

import torch

import normstat
from normstat.torch import load_stats
from trainer import batch, make_model


def accuracy(model):
    model.eval()
    with torch.no_grad():
        hits = sum((model(x).argmax(1) == y).sum().item()
                   for x, y in (batch(99, 2_000_000 + i, 64) for i in range(8)))
    return hits / (8 * 64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=os.environ.get("NORMSTAT_URL", "http://127.0.0.1:8750"))
    ap.add_argument("--run", default="demo")
    ap.add_argument("--out", default=os.environ.get("NORMSTAT_EXAMPLES_DIR", "."))
    args = ap.parse_args()
    client = normstat.Client(args.url)
    model = make_model()
    weights = torch.load(os.path.join(args.out, "model.pt"))
    model.load_state_dict(weights)
    print(f"{'rank 0, local running stats':<28} accuracy {accuracy(model):.3f}")
    for source in ("ema", "precise"):
        model.load_state_dict(weights)
        missing, extra = load_stats(model, client, args.run, source=source)
        assert not missing and not extra, (missing, extra)
        print(f"{'normstat, ' + source:<28} accuracy {accuracy(model):.3f}")
    stats = client.stats(args.run, source="precise", layers=["1"])["layers"]["1"]
    print("precise statistics of layer '1':", {k: stats[k] for k in stats if "running" not in k})


if __name__ == "__main__":
    main()
