"""Independent random streams: distinct keys never share a seed, equal keys always do."""

from __future__ import annotations

import pytest
import torch

from atomgen.seeding import generator, stream_seed


def test_seed_zero_gives_every_purpose_its_own_stream():
    # With seed * K + offset, seed 0 gave the initial and the step noise one generator seed.
    seeds = {stream_seed(0, purpose, 0) for purpose in ("initial-noise", "step-noise", "train-draws")}
    assert len(seeds) == 3


def test_keys_that_differ_anywhere_give_different_streams():
    keys = [
        (0, "noise", 0, 1),
        (0, "noise", 1, 0),
        (1, "noise", 0, 1),
        (0, "noise", 1),
        (0, "noise", 0, 1, 0),
    ]
    assert len({stream_seed(*key) for key in keys}) == len(keys)


def test_a_stream_is_a_pure_function_of_its_key():
    first = torch.randn(5, generator=generator(3, "noise", 7))
    assert torch.equal(first, torch.randn(5, generator=generator(3, "noise", 7)))
    assert 0 <= stream_seed(3, "noise", 7) < 2**63


def test_negative_keys_are_refused():
    with pytest.raises(ValueError, match="non-negative integers"):
        stream_seed(-1, "noise")
