"""``model.resolution``: images of another size than the family's native one, checked against what
the family can generate (multiples of the VAE's factor x the denoiser's downsampling or patch)."""

from __future__ import annotations

import pytest
import torch

from draft_core.config import load_config
from draft_core.errors import ConfigError


def test_resolution_changes_the_sample_and_image_size():
    from draft_core.models.tiny import build_tiny_random

    model = build_tiny_random()
    native = model.image_size
    f = model.vae_scale_factor
    model.set_resolution([native[0] // 2, native[1]])
    assert model.image_size == (native[0] // 2, native[1])
    assert model.sample_shape[1:] == (native[0] // 2 // f, native[1] // f)
    with torch.no_grad():
        images = model.decode(model.make_noise(1))
    assert images.shape[-2:] == (native[0] // 2, native[1])
    model.set_resolution(None)
    assert model.image_size == native


@pytest.mark.parametrize("bad", [30, [64, 63], [64], 0, 10**5])
def test_a_size_the_family_cannot_generate_is_refused_with_what_it_can(bad):
    from draft_core.models.tiny import build_tiny_random

    model = build_tiny_random()
    step = model.vae_scale_factor * 2 ** (len(model.unet.config.down_block_types) - 1)
    with pytest.raises(ConfigError, match=f"model.resolution is .*multiples of {step} px"):
        model.set_resolution(bad)


def test_flow_families_limits():
    from draft_core.models.families.flux import build_tiny_random_flux
    from draft_core.models.tiny_sd3 import build_tiny_random_sd3

    flux = build_tiny_random_flux()
    step = flux.vae_scale_factor * 2  # latents packed 2x2
    flux.set_resolution([2 * step, 3 * step])
    assert flux.sample_shape[1:] == (4, 6) and flux.image_size == (2 * step, 3 * step)
    with pytest.raises(ConfigError, match=f"multiples of {step} px"):
        flux.set_resolution(step + flux.vae_scale_factor)
    sd3 = build_tiny_random_sd3()
    cfg = sd3.transformer.config
    limit = cfg.pos_embed_max_size * cfg.patch_size * sd3.vae_scale_factor
    sd3.set_resolution(limit)
    with pytest.raises(ConfigError, match=f"to {limit} px"):
        sd3.set_resolution(limit + cfg.patch_size * sd3.vae_scale_factor)


def test_config_key_shape_is_checked_before_any_model_loads():
    assert load_config(None, ["model.resolution=[512, 768]"]).model.resolution == [512, 768]
    assert load_config(None, ["model.resolution=512"]).model.resolution == 512
    with pytest.raises(ConfigError, match="model.resolution"):
        load_config(None, ["model.resolution=[512, 512, 3]"])
    with pytest.raises(ConfigError, match="model.resolution"):
        load_config(None, ["model.resolution=-8"])
