"""attach(): the hook on real diffusers models, stock equivalence, and errors that teach."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiTTransformer2DModel
from tiny import tiny_conditional_unet, tiny_unet, tiny_vae

import atomgen
from atomgen import AtomSeparation, DispersiveLoss, attach


def test_unet_mid_block_weight_zero_and_removed_are_stock():
    unet, x, t = tiny_unet(), torch.randn(4, 1, 8, 8), torch.tensor([3, 50, 200, 900])
    stock = unet(x, t).sample
    with attach(unet, "mid_block", AtomSeparation(dim=16), weight=0.0) as handle:
        hooked = unet(x, t).sample
        assert torch.equal(hooked, stock)
        assert float(handle.loss()) == 0.0
        assert handle.output.grid == (4, 4)
    assert torch.equal(unet(x, t).sample, stock)
    handle = attach(unet, "mid_block", AtomSeparation(dim=16), weight=0.5)
    assert torch.equal(unet(x, t).sample, stock)  # the hook observes, it never rewrites
    handle.remove()
    assert not unet.mid_block._forward_hooks


def test_unet_training_step_gets_separation_gradients():
    unet = tiny_unet().train()
    sep = AtomSeparation(dim=16)
    handle = attach(unet, "mid_block", sep, weight=0.1)
    unet(torch.randn(4, 1, 8, 8), 10)
    assert torch.isclose(handle.loss(), 0.1 * handle.output.loss)
    handle.loss().backward()
    # The separation term alone reaches both the role head and the layers before the site.
    assert sep.role_head.weight.grad.abs().sum() > 0
    assert unet.mid_block.resnets[0].conv1.weight.grad.abs().sum() > 0
    assert unet.up_blocks[0].resnets[0].conv1.weight.grad is None  # nothing after the site
    assert handle.step == 1


def test_conditional_unet_mid_block():
    unet = tiny_conditional_unet()
    x, text = torch.randn(3, 4, 8, 8), torch.randn(3, 5, 8)
    stock = unet(x, 5, encoder_hidden_states=text).sample
    with attach(unet, "mid_block", AtomSeparation(dim=16), weight=0.0) as handle:
        assert torch.equal(unet(x, 5, encoder_hidden_states=text).sample, stock)
        assert handle.output.importance.shape == (3, 16)


def test_transformer_block_tokens():
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=2,
        out_channels=2,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=2,
    ).eval()
    x, t, labels = torch.randn(3, 2, 8, 8), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2])
    stock = dit(x, timestep=t, class_labels=labels).sample
    with attach(dit, "transformer_blocks.1", AtomSeparation(dim=8), weight=0.0) as handle:
        assert torch.equal(dit(x, timestep=t, class_labels=labels).sample, stock)
        out = handle.output
    assert out.grid == (16,)  # 4×4 patches of the 8×8 latent, one token each
    assert torch.isfinite(out.loss)


def test_vae_encoder_acts_on_the_posterior_mean():
    vae = tiny_vae()
    x = torch.randn(3, 1, 8, 8)
    posterior = vae.encode(x).latent_dist
    sep = AtomSeparation(dim=2, learn_roles=False)
    with attach(vae, "encoder", sep, weight=0.0) as handle:
        assert torch.equal(vae(x, sample_posterior=False).sample, vae.decode(posterior.mean).sample)
        from_hook = handle.output.loss
    assert torch.equal(from_hook, sep(posterior.mean).loss)
    assert not torch.equal(from_hook, sep(posterior.logvar).loss)


def test_vae_slicing_or_tiling_is_refused():
    vae = tiny_vae()
    vae.enable_slicing()
    with pytest.raises(RuntimeError, match="use_slicing=True"):
        attach(vae, "encoder", AtomSeparation(dim=2))
    vae.disable_slicing()
    handle = attach(vae, "encoder", AtomSeparation(dim=2))
    vae.enable_tiling()  # switched on after attach: caught at the next forward
    with pytest.raises(RuntimeError, match="disable_tiling"):
        vae.encode(torch.randn(2, 1, 8, 8))
    handle.remove()


def test_dispersive_loss_attaches_the_same_way():
    unet = tiny_unet()
    with attach(unet, "mid_block", DispersiveLoss(tau=0.5), weight=2.0) as handle:
        unet(torch.randn(4, 1, 8, 8), 10)
        z = handle.features.flatten(1)
        squared = (z[:, None] - z[None]).square().sum(-1) / z.shape[1]  # per feature entry, as released
        expected = torch.log(torch.exp(-squared / 0.5).mean())
        assert torch.allclose(handle.loss(), 2.0 * expected, atol=1e-6)


def test_unknown_site_lists_the_names_nearby():
    with pytest.raises(ValueError, match=r"no module 'mid_blok'.*Close matches: \['mid_block'"):
        attach(tiny_unet(), "mid_blok", AtomSeparation(dim=16))
    with pytest.raises(ValueError, match=r"'down_blocks' has no child '7'.*children are \['0', '1'\]"):
        attach(tiny_unet(), "down_blocks.7", AtomSeparation(dim=16))


def test_missing_mid_block_is_explained():
    unet = tiny_unet(mid_block_type=None)
    with pytest.raises(ValueError, match=r"mid_block is None.*mid_block_type=None"):
        attach(unet, "mid_block", AtomSeparation(dim=16))


def test_width_mismatch_names_the_site():
    unet = tiny_unet()
    handle = attach(unet, "mid_block", AtomSeparation(dim=32))
    unet(torch.randn(2, 1, 8, 8), 1)
    with pytest.raises(ValueError, match=r"site 'mid_block'.*dim=32\) received features of width 16"):
        handle.loss()


def test_negative_weight_is_refused():
    with pytest.raises(ValueError, match="weight must be a number ≥ 0"):
        attach(tiny_unet(), "mid_block", AtomSeparation(dim=16), weight=-0.1)


def test_non_finite_activations_name_site_and_step():
    unet = tiny_unet()
    handle = attach(unet, "mid_block", AtomSeparation(dim=16))
    unet(torch.randn(2, 1, 8, 8), 1)
    handle.loss()
    with torch.no_grad():
        unet.mid_block.resnets[0].conv1.weight.fill_(float("nan"))
    unet(torch.randn(2, 1, 8, 8), 1)
    with pytest.raises(FloatingPointError, match=r"site 'mid_block', forward pass 2: .*non-finite"):
        handle.loss()


def test_loss_before_any_forward_is_explained():
    handle = attach(tiny_unet(), "mid_block", AtomSeparation(dim=16))
    with pytest.raises(RuntimeError, match="no forward pass has gone through 'mid_block'"):
        handle.loss()


def test_public_api_names():
    for name in ("AtomSeparation", "AtomOutput", "attach", "DispersiveLoss"):
        assert hasattr(atomgen, name)


def test_capture_only_handle_exposes_features():
    unet = tiny_unet()
    with attach(unet, "mid_block", None) as handle:
        with pytest.raises(RuntimeError, match="no forward pass"):
            _ = handle.features
        unet(torch.randn(3, 1, 8, 8), 1)
        assert handle.features.shape == (3, 16, 4, 4)
        with pytest.raises(RuntimeError, match="only captures features"):
            handle.loss()


def test_dispersive_loss_has_a_gradient_on_raw_features():
    """1024 unit-scale entries: squared distances near 2048, where exp(−D/τ) underflows unless D is per entry."""
    z = torch.randn(8, 64, 4, 4, requires_grad=True)
    DispersiveLoss(tau=0.5)(z).loss.backward()
    assert z.grad.abs().sum() > 0
    flat = DispersiveLoss(tau=0.5, per_dim=False)(z.detach())
    assert float(flat.loss) == pytest.approx(-torch.log(torch.tensor(8.0)).item())  # only i = j survive
