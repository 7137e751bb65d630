"""How ``atomgen sample`` lays N images out in batches: by conditioning, the same for any number of processes.

Batch methods (atom guidance, feature guidance, Particle Guidance) couple the images of one denoiser
call, so a batch's images are a function of the whole batch. The layout below depends only on the
conditionings, their image counts and the batch size — never on the number of processes or on what a
previous run finished — so that every process, and every rerun, samples each batch identically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Conditioning = int | str | None  # a class label, a prompt, or None (unconditional)


@dataclass(frozen=True)
class Batch:
    """One pipeline call: ``runs`` of consecutive images that share a conditioning.

    Attributes:
        index: the batch's place in the layout; with the seed, it keys the batch's noise.
        start: the index of the batch's first image.
        runs: ``(conditioning, count)`` pairs, in image order; all counts are equal.
    """

    index: int
    start: int
    runs: tuple[tuple[Conditioning, int], ...]

    @property
    def size(self) -> int:
        return sum(count for _, count in self.runs)

    @property
    def per_image(self) -> list[Conditioning]:
        """The conditioning of each image of the batch, in order."""
        return [value for value, count in self.runs for _ in range(count)]

    @property
    def image_indices(self) -> range:
        return range(self.start, self.start + self.size)


def balanced_counts(num_samples: int, num_values: int) -> list[int]:
    """``num_samples`` spread over ``num_values`` values as evenly as possible, the first ones one more."""
    return [num_samples // num_values + (i < num_samples % num_values) for i in range(num_values)]


def plan_batches(conditionings: Sequence[tuple[Conditioning, int]], batch_size: int) -> list[Batch]:
    """Lay the images of ``conditionings`` out in batches of at most ``batch_size`` images.

    Images are numbered conditioning by conditioning, in the order given. A conditioning's images are
    split into as few runs as fit a batch (``ceil(count / batch_size)``), of sizes that differ by at
    most one, so a batch method never meets a lone last image. Consecutive runs of equal size share a
    batch while they fit: the pipeline's own batching of prompts (``num_images_per_prompt``) needs equal
    counts, and batch methods act within a conditioning (its images in the batch), so sharing a batch
    changes no image's partners.

    Args:
        conditionings: ``(value, count)`` pairs: a class label, a prompt or ``None``, and its number of
            images (0 skips it).
        batch_size: the most images in one pipeline call.

    Example:
        >>> [batch.runs for batch in plan_batches([("a dog", 5), ("a cat", 2), ("a cow", 2)], 4)]
        [(('a dog', 3),), (('a dog', 2), ('a cat', 2)), (('a cow', 2),)]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    chunks: list[tuple[Conditioning, int]] = []
    for value, count in conditionings:
        if count < 0:
            raise ValueError(f"a conditioning has a negative image count: {value!r}: {count}")
        if count == 0:
            continue
        pieces = math.ceil(count / batch_size)
        chunks += [(value, size) for size in balanced_counts(count, pieces)]

    batches: list[Batch] = []
    current: list[tuple[Conditioning, int]] = []
    start = 0

    def close() -> None:
        nonlocal start, current
        batches.append(Batch(index=len(batches), start=start, runs=tuple(current)))
        start += batches[-1].size
        current = []

    for value, size in chunks:
        if current and (size != current[0][1] or (len(current) + 1) * size > batch_size):
            close()
        current.append((value, size))
    if current:
        close()
    return batches


def shard(batches: Sequence[Batch], process_index: int, num_processes: int) -> list[Batch]:
    """This process's share of ``batches``: every ``num_processes``-th, from ``process_index`` on."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process {process_index} is not one of {num_processes} processes")
    return list(batches[process_index::num_processes])


__all__ = ["Batch", "Conditioning", "balanced_counts", "plan_batches", "shard"]
