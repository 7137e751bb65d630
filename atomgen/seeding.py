"""Independent random streams, one per seed, purpose and index, derived with ``numpy.random.SeedSequence``.

``seed * K + offset`` makes streams collide (at seed 0 every purpose gets the same seed); hashing the
whole key ``(seed, purpose, *indices)`` through ``SeedSequence`` gives streams that are independent for
any seeds, purposes and indices, and the same on every machine and process.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def stream_seed(seed: int, purpose: str, *indices: int) -> int:
    """A 63-bit seed for the stream ``(seed, purpose, *indices)``; different keys give independent seeds.

    Args:
        seed: the run's seed (≥ 0).
        purpose: what the stream draws, e.g. ``"shuffle"``, ``"initial-noise"``, ``"step-noise"``.
        indices: where it draws, e.g. an epoch, a step, a batch index (each ≥ 0).
    """
    # The count of indices is part of the key: SeedSequence pads its entropy with zeros, so without it
    # (…, 1) and (…, 1, 0) would be one stream.
    key = [seed, zlib.crc32(purpose.encode()), len(indices), *indices]
    if any(not isinstance(k, (int, np.integer)) or k < 0 for k in key):
        raise ValueError(f"a stream key is non-negative integers; got seed={seed!r}, indices={indices!r}")
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def generator(seed: int, purpose: str, *indices: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`stream_seed`."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, purpose, *indices))


__all__ = ["generator", "stream_seed"]
