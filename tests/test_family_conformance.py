"""ModelFamilyConformance on every built-in family at test size: pipeline parity with the family's
diffusers pipeline, the LoRA written and read through the family's hooks, the guidance rule, and
gradients through ``denoise`` against float64 central differences (draft_core.testing.families)."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from model_fixtures import patch_flux_rope_float64

from draft_core.models.loading import EMBEDDED
from draft_core.testing import ModelFamilyConformance


class TestSD(ModelFamilyConformance):
    def make_model(self):
        return EMBEDDED["tiny-random"]()


class TestSDXL(ModelFamilyConformance):
    def make_model(self):
        return EMBEDDED["tiny-random-sdxl"]()


class TestSD3(ModelFamilyConformance):
    def make_model(self):
        return EMBEDDED["tiny-random-sd3"]()

    def make_float64_model(self):
        # SD3.5's q/k RMS norm takes its variance in float32 inside diffusers (~1e-7 relative noise in a
        # float64 pass, more than central differences resolve): SD3 Medium's blocks for the gradient.
        from draft_core.models.tiny_sd3 import build_tiny_random_sd3

        return build_tiny_random_sd3(sd35=False)


class TestFlux(ModelFamilyConformance):
    guidance = 3.5

    def make_model(self):
        return EMBEDDED["tiny-random-flux"]()

    def pipeline_arguments(self, model, noise):
        from diffusers import FluxPipeline

        # FluxPipeline takes packed latents, and T5 at the tiny tokenizer's length.
        return {
            "latents": FluxPipeline._pack_latents(noise, *noise.shape),
            "guidance_scale": self.guidance,
            "max_sequence_length": model.max_sequence_length,
        }

    @contextmanager
    def float64_context(self):
        with pytest.MonkeyPatch.context() as mp:
            patch_flux_rope_float64(mp)
            yield


class TestDigits(ModelFamilyConformance):
    """The embedded pixel-space SD model: no diffusers pipeline (parity skips), the rest applies."""

    def make_model(self):
        return EMBEDDED["digits"]()


class TestDigitsFlow(ModelFamilyConformance):
    """The embedded pixel-space flow model (the sd3 family without VAE or T5)."""

    def make_model(self):
        return EMBEDDED["digits-flow"]()
