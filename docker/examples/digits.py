"""digits.py - the examples' task: handwritten digits from two scanners, one per group of workers.

The data are scikit-learn's `digits` (1,797 images of 8x8 pixels, shipped
with Debian's python3-sklearn: nothing is downloaded). They come in two
domains, as if from two scanners: "clean" (ink 0..1 on black) and "faint"
(a quarter of the contrast on a grey background). Each training worker reads
one domain only - even ranks "clean", odd ranks "faint" - as jobs do whose
workers each read one data source. Every worker normalizes with its own
batch, so the network is trained on statistics of one domain at a time and
evaluated well only with statistics that match the test images' domain.
"""
import torch

DOMAINS = ("clean", "faint")
CLASSES = 10
TEST_SHARE = 0.25  # the last quarter of a fixed shuffle is held out


def domain_of(rank):
    return DOMAINS[rank % len(DOMAINS)]


def render(images, domain):
    """8x8 digit images (0..16) as one scanner would give them, [N, 1, 8, 8]."""
    x = images.view(-1, 1, 8, 8) / 16.0
    if domain == "faint":
        return 0.5 + 0.25 * x
    return x


def load(split):
    """(images [N, 64] in 0..16, labels [N]) of 'train' or 'test'."""
    from sklearn.datasets import load_digits  # imported here: it takes a second

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    cut = int(len(y) * (1 - TEST_SHARE))
    keep = order[:cut] if split == "train" else order[cut:]
    return x[keep], y[keep]


def make_model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, CLASSES))


def batches(images, labels, rank, world_size, size, seed):
    """Endless shuffled batches of this rank's shard, rendered in its domain."""
    shard = torch.arange(rank, len(labels), world_size)
    g = torch.Generator().manual_seed(seed * 1_000_003 + rank)
    domain = domain_of(rank)
    while True:
        perm = shard[torch.randperm(len(shard), generator=g)]
        for i in range(0, len(perm) - size + 1, size):
            idx = perm[i:i + size]
            yield render(images[idx], domain), labels[idx]
