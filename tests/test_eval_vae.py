"""VAE scores: closed forms on constructed posteriors, prior samples, and ``atomgen eval`` on a VAE run."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from PIL import Image
from tiny import tiny_vae

from atomgen.eval import (
    add_eval_arguments,
    eval_command,
    open_source,
    prior_samples,
    reconstruct,
    run_eval,
    vae_scores,
)
from atomgen.pipelines import AtomVAEPipeline


def _patch_encoder(vae, moments):
    """Make ``vae.encode`` return ``N(mean, exp(logvar))`` with ``mean, logvar = moments(pixels)``."""

    def encode(pixels, return_dict=True):
        mean, logvar = moments(pixels)
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(torch.cat([mean, logvar], 1)))

    vae.encode = encode
    return vae


def test_active_units_count_channel_positions_above_the_threshold():
    # Channel 0 is the 2×2-pooled image (uniform pixels: Var = (1/3) / 4 ≈ 0.083 > 0.01 at every
    # position), channel 1 the same scaled by 0.1 (Var ≈ 0.00083 < 0.01): 16 of 32 units are active.
    def moments(pixels):
        pooled = F.avg_pool2d(pixels, 2)
        mean = torch.cat([pooled, 0.1 * pooled], 1)
        return mean, torch.zeros_like(mean)

    images = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    vae = _patch_encoder(tiny_vae(), moments)
    scores = vae_scores(vae, images, batch_size=32)  # batches of 32: the streamed variance is merged
    assert (scores.active_units, scores.num_units) == (16, 32)
    assert scores.active_units_per_channel == (16, 0) and scores.latent_shape == (2, 4, 4)
    expected = F.avg_pool2d(images * 2 - 1, 2).double().var(0).mean()  # the encoder sees [-1, 1]
    assert scores.variance_per_channel[0] == pytest.approx(float(expected), rel=1e-6)
    assert scores.variance_per_channel[1] == pytest.approx(0.01 * float(expected), rel=1e-6)  # float32 × 0.1
    assert vae_scores(vae, images, threshold=1e-4).active_units == 32


def test_a_constant_channel_of_a_real_encoder_is_inactive():
    vae = tiny_vae()
    with torch.no_grad():  # mean channel 1 of the moments no longer depends on the image
        vae.quant_conv.weight[1].zero_()
    scores = vae_scores(vae, open_source("digits").images[:64])
    assert scores.active_units_per_channel[1] == 0 and scores.variance_per_channel[1] == pytest.approx(0)
    assert scores.active_units == scores.active_units_per_channel[0] > 0


def test_kl_per_channel_is_the_closed_form_and_sums_to_the_posterior_kl():
    mu, logvar = (0.5, -1.0), (math.log(0.25), 0.0)

    def moments(pixels):
        shape = (len(pixels), 1, 4, 4)
        mean = torch.cat([torch.full(shape, m) for m in mu], 1)
        return mean, torch.cat([torch.full(shape, v) for v in logvar], 1)

    scores = vae_scores(_patch_encoder(tiny_vae(), moments), torch.rand(5, 1, 8, 8))
    closed = [0.5 * (m**2 + math.exp(v) - 1 - v) for m, v in zip(mu, logvar, strict=True)]
    assert scores.kl_per_channel == pytest.approx(closed, rel=1e-6)  # a float32 posterior
    assert scores.kl == pytest.approx(16 * sum(closed), rel=1e-6)  # nats per image: 2 × 16 units
    assert scores.active_units == 0  # constant means

    vae, images = tiny_vae(), open_source("digits").images[:16]
    with torch.no_grad():
        expected = vae.encode(images * 2 - 1).latent_dist.kl().double().mean()
    assert vae_scores(vae, images).kl == pytest.approx(float(expected), rel=1e-6)


def test_reconstruction_error_of_an_identity_and_a_constant_decoder():
    # One block (no downsampling): the latent is the image itself; decoding returns it, or grey.
    vae = tiny_vae(block_out_channels=(4,), down_block_types=("DownEncoderBlock2D",),
                   up_block_types=("UpDecoderBlock2D",), latent_channels=1)  # fmt: skip
    _patch_encoder(vae, lambda pixels: (pixels, torch.zeros_like(pixels)))
    images = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    vae.decode = lambda z, return_dict=True: DecoderOutput(sample=z)
    scores = vae_scores(vae, images, batch_size=5)
    assert scores.reconstruction_mse == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(reconstruct(vae, images), images, atol=1e-6)
    vae.decode = lambda z, return_dict=True: DecoderOutput(sample=torch.zeros_like(z))  # 0.5 in [0, 1]
    scores = vae_scores(vae, images, batch_size=5)
    per_image = ((images.double() - 0.5) ** 2).flatten(1).mean(1)
    assert scores.reconstruction_mse == pytest.approx(float(per_image.mean()), rel=1e-6)
    assert scores.reconstruction_mse_std == pytest.approx(float(per_image.std()), rel=1e-5)


def test_reconstructions_are_the_pipelines_from_the_posterior_mean():
    vae, images = tiny_vae(), open_source("digits").images[:6]
    expected = AtomVAEPipeline(vae)(images=images, output_type="pt").images
    assert torch.allclose(reconstruct(vae, images, batch_size=4), expected, atol=1e-5)


def test_prior_samples_have_the_image_shape_and_follow_the_generator():
    vae = tiny_vae()

    def draw(seed: int) -> torch.Tensor:
        return prior_samples(vae, 5, batch_size=2, generator=torch.Generator().manual_seed(seed))

    samples = draw(0)
    assert samples.shape == (5, 1, 8, 8) and samples.dtype == torch.float32
    assert samples.min() >= 0 and samples.max() <= 1
    assert torch.equal(samples, draw(0)) and not torch.equal(samples, draw(1))
    # The first batch is the pipeline's own prior sample with the same generator.
    first = AtomVAEPipeline(vae)(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert torch.allclose(samples[:2], torch.from_numpy(first.images).permute(0, 3, 1, 2))


def test_errors_name_the_problem(tmp_path):
    vae = tiny_vae()
    with pytest.raises(ValueError, match="at least 2 images"):
        vae_scores(vae, torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="threshold must be positive"):
        vae_scores(vae, torch.rand(4, 1, 8, 8), threshold=0)
    with pytest.raises(ValueError, match="images have 3 channels, the VAE takes 1"):
        vae_scores(vae, torch.rand(4, 3, 8, 8))
    with pytest.raises(ValueError, match="multiples of 2"):
        vae_scores(vae, torch.rand(4, 1, 9, 9))
    with pytest.raises(ValueError, match="num_samples and batch_size must be positive"):
        prior_samples(vae, 0)
    with pytest.raises(ValueError, match="holds no VAE"):
        prior_samples(tmp_path, 2)
    # A training run that has not finished: config.yaml, no pipeline/, no vae/.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("data: {name: digits}\n")
    with pytest.raises(FileNotFoundError, match=r"neither a saved pipeline .* nor a saved VAE"):
        run_eval("digits", tmp_path / "run", ["fid"], "pixels", device="cpu", progress=False)


def test_atomgen_eval_on_a_trained_vae_run(tmp_path):
    from test_train import tiny

    from atomgen.train import train

    run = train(tiny(tmp_path, "train.steps=2", family="vae"))
    parser = add_eval_arguments(argparse.ArgumentParser())
    out = run / "eval"  # inside the run: its PNG grids must not be read back as samples next time
    argv = ["--real", "digits", "--fake", str(run), "--out", str(out), "--metrics", "fid", "prdc", "vendi"]
    argv += ["--extractor", "digits", "--num-samples", "20", "--device", "cpu", "--no-progress"]
    for _ in range(2):
        report = eval_command(parser.parse_args(argv))
    assert report["fake"] == {"source": f"{run} (prior samples)", "images": 20}
    assert {"fid", "prdc", "vendi", "vae"} == set(report["metrics"])
    vae = report["metrics"]["vae"]
    assert vae["images"] == 1797 and vae["source"] == "digits" and vae["latent_shape"] == [2, 4, 4]
    assert 0 <= vae["active_units"] <= vae["num_units"] == 32 and len(vae["kl_per_channel"]) == 2
    assert vae["reconstruction_mse"] > 0 and vae["kl"] > 0
    # The prior samples are the ones prior_samples draws with the default seed.
    expected = prior_samples(run, 20, generator=torch.Generator().manual_seed(0))
    again = run_eval("digits", expected, ["fid"], "digits", device="cpu", progress=False)
    assert again["metrics"]["fid"] == pytest.approx(report["metrics"]["fid"], rel=1e-6)
    saved = json.loads((out / "report.json").read_text())
    assert saved["metrics"]["vae"]["active_units"] == vae["active_units"]
    markdown = (out / "report.md").read_text()
    for word in ("reconstruction_mse", "kl_prior", "active_units", "Burda", "reconstructions.png"):
        assert word in markdown
    with Image.open(out / "reconstructions.png") as grid:  # 32 pairs of 8×8 ×5, 16 per row
        assert grid.size == (16 * 42 + 2, 4 * 42 + 2)
    with Image.open(out / "prior-samples.png") as grid:  # 20 samples, 8 per row
        assert grid.size == (8 * 42 + 2, 3 * 42 + 2)
