"""evaluator.py - the trained weights evaluated with each kind of BatchNorm statistics.

    python3 evaluator.py --run demo --out /tmp/demo

Loads --out/model.pt (written by trainer.py: the weights and rank 0's own
running statistics), then the run's statistics from normstatd, and prints
a table of the accuracy on the held-out digits of each domain with:
rank 0's local running statistics (one worker, one domain); normstat's EMA
and PreciseBN over all workers (pooled); and normstat's EMA and PreciseBN of
each domain, used for that domain's images.
"""
import argparse
import os

import torch

import normstat
from normstat.torch import load_stats

import digits


def accuracy(model, images, labels, domain):
    model.eval()
    with torch.no_grad():
        return (model(digits.render(images, domain)).argmax(1) == labels).float().mean().item()


def row(name, model, weights, images, labels, stats_for):
    """Accuracy per domain and overall; stats_for(domain) loads the statistics to use."""
    accs = []
    for domain in digits.DOMAINS:
        model.load_state_dict(weights)
        stats_for(domain)
        accs.append(accuracy(model, images, labels, domain))
    cells = " | ".join(f"{a:.3f}" for a in accs + [sum(accs) / len(accs)])
    return f"| {name} | {cells} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=os.environ.get("NORMSTAT_URL", "http://127.0.0.1:8750"))
    ap.add_argument("--run", default="demo")
    ap.add_argument("--out", default=os.environ.get("NORMSTAT_EXAMPLES_DIR", "."))
    args = ap.parse_args()
    torch.set_num_threads(1)
    client = normstat.Client(args.url)
    model = digits.make_model()
    weights = torch.load(os.path.join(args.out, "model.pt"))
    images, labels = digits.load("test")

    def from_normstat(source, per_domain):
        def load(domain):
            missing, extra = load_stats(model, client, args.run, source=source,
                                        domain=domain if per_domain else "*")
            assert not missing and not extra, (missing, extra)
        return load

    rows = [
        ("rank 0's own running statistics (local)", lambda domain: None),
        ("normstat EMA, all workers", from_normstat("ema", False)),
        ("normstat PreciseBN, all workers", from_normstat("precise", False)),
        ("normstat EMA, per domain", from_normstat("ema", True)),
        ("normstat PreciseBN, per domain", from_normstat("precise", True)),
    ]
    print(f"held-out accuracy of run {args.run!r} ({len(labels)} digits per domain):")
    print("| BatchNorm statistics | " + " | ".join(digits.DOMAINS) + " | mean |")
    print("|---|" + "---:|" * (len(digits.DOMAINS) + 1))
    for name, stats_for in rows:
        print(row(name, model, weights, images, labels, stats_for))


if __name__ == "__main__":
    main()
