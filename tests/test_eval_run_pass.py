"""``run_eval`` decodes each source once, whatever the metrics need (features, LPIPS, labels, VAE
scores), and not at all when every feature is cached and nothing else needs the pixels."""

from __future__ import annotations

import pytest
import torch

from atomgen.eval import METRICS, TensorSource, open_source, run_eval


class CountingSource(TensorSource):
    """A tensor source that counts its decoding passes (one per batches() iteration started)."""

    def __init__(self, images, **options):
        super().__init__(images, **options)
        self.passes = 0

    def batches(self, batch_size, num_workers=0):
        self.passes += 1
        yield from super().batches(batch_size, num_workers)


def test_each_source_is_decoded_once_for_every_metric(tmp_path):
    digits = open_source("digits")
    real = CountingSource(digits.images[:60], name="digits", labels=digits.labels[:60])
    fake = CountingSource(digits.images[60:120], name="samples")
    report = run_eval(real, fake, list(METRICS), "digits", device="cpu", batch_size=16, progress=False)
    assert set(report["metrics"]) == {"fid", "kid", "prdc", "vendi", "lpips_diversity", "mode_coverage"}
    assert real.passes == 1 and fake.passes == 1


def test_a_vae_scores_on_the_same_pass_as_the_features(tmp_path):
    from tiny import tiny_vae

    digits = open_source("digits")
    real = CountingSource(digits.images[:24], name="held out")
    report = run_eval(
        real, tiny_vae(), ["fid", "vendi"], "digits", num_samples=12, device="cpu", batch_size=8,
        progress=False,
    )  # fmt: skip
    assert "vae" in report["metrics"] and real.passes == 1


def test_cached_features_skip_decoding(tmp_path):
    images = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    options = dict(metrics=["fid", "vendi"], extractor="digits", device="cpu", progress=False)
    first = run_eval(CountingSource(images), CountingSource(images.flip(0)), cache_dir=tmp_path, **options)
    real, fake = CountingSource(images), CountingSource(images.flip(0))
    again = run_eval(real, fake, cache_dir=tmp_path, **options)
    assert real.passes == fake.passes == 0
    assert again["metrics"]["fid"] == pytest.approx(first["metrics"]["fid"])
