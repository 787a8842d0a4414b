"""Test helpers for model-family authors: the checklist every ``ModelFamily`` passes.

Subclass ``ModelFamilyConformance`` and supply ``make_model`` (needs pytest)::

    from draft_core.testing import ModelFamilyConformance

    class TestMyFamily(ModelFamilyConformance):
        def make_model(self):
            return build_tiny_my_family(seed=0)  # a small random model of the family, built offline

It checks the four things the core relies on, in float32 on the CPU with 2 sampling steps:

- **pipeline parity**: the family's sampler (its ``sampling_defaults``) through ``encode_prompts``,
  ``denoise`` and ``decode`` gives the images the family's own diffusers pipeline (``model.pipeline()``)
  gives for the same initial noise, steps and guidance. A family without a diffusers pipeline
  (``pipeline()`` raises NotImplementedError, as for pixel-space models) skips it.
- **LoRA round trip**: a LoRA written through the family's ``save_lora_weights`` hook and read back
  through its ``lora_state_dict`` hook (``--lora``) gives the in-memory LoRA's outputs; where
  ``lora_usage`` names a diffusers loader (the model card's lines), that pipeline's
  ``load_lora_weights`` on a fresh model samples the same images as draft with the in-memory LoRA.
- **the guidance rule**: for a family with classifier-free guidance, ``denoise(g)`` is
  ``out(∅) + g·(out(c) − out(∅))`` with one conditional pass at g = 1 and two otherwise (or for a
  tensor scale); a guidance-distilled family encodes no empty prompt, runs one pass for every g and
  takes g as an input (the output moves with it).
- **gradients through denoise**, in float64: the directional derivative of a fixed linear function
  of ``denoise``'s output, along a random direction of the LoRA's parameters and of the input sample,
  against central differences.

Override ``make_float64_model`` where the denoiser computes part of its forward pass in float32
whatever its dtype (SD3.5's q/k RMS norm does: use a model without it) or ``float64_context`` to patch
such a part for the check (FLUX's rotary embedding), and ``pipeline_arguments`` where the pipeline takes
its initial latents or guidance otherwise (FLUX packs its latents; PixArt needs
``use_resolution_binning=False`` at test size).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from draft_core.lora import LoraSpec, add_lora, apply_loras, lora_parameters, save_lora
from draft_core.models.conditioning import Conditioning
from draft_core.models.family import ModelFamily, uses_cfg


def rel_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got − expected| over max |expected|: agreement measured against the outputs' own scale."""
    return float((got.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-30))


class ModelFamilyConformance:
    """Shared tests for a ``ModelFamily``; override ``make_model`` (and the attributes)."""

    #: sampling steps for the parity and LoRA checks (two steps already run the scheduler's update twice).
    steps: int = 2
    prompts: tuple[str, ...] = ("a cat", "a dog")
    #: a guidance scale other than 1, so a CFG family runs both passes.
    guidance: float = 3.0
    #: float32 agreement, relative to the largest entry: the same operations may be batched differently
    #: (the empty prompt encoded once here, per row in a pipeline), which moves float32 results by some
    #: ulps (1.2e-7) through a few dozen layers; a wrong timestep, scale or guidance moves them by >1e-3.
    float32_rel: float = 1e-5
    #: float64 central differences: step h = 1e-6 puts the O(h²) truncation and the rounding (~1e-16/h) below 1e-8.
    fd_step: float = 1e-6
    fd_rel: float = 1e-6
    #: the timestep of the single-call checks (a scheduler timestep in [0, 1000)).
    timestep: int = 500

    def make_model(self) -> ModelFamily:
        raise NotImplementedError("a ModelFamilyConformance subclass must define make_model()")

    def make_float64_model(self) -> ModelFamily:
        """The model for the gradient check, converted to float64 by the kit: ``make_model()``'s."""
        return self.make_model()

    def pipeline_arguments(self, model: ModelFamily, noise: torch.Tensor) -> dict[str, Any]:
        """The pipeline's arguments beside the prompts, size, steps and output type: the initial latents
        (as its ``latents`` argument takes them) and the guidance. Override where the pipeline differs: FLUX
        packs the latents, PixArt needs ``use_resolution_binning=False`` at test size."""
        return {"latents": noise, "guidance_scale": self.guidance}

    @contextmanager
    def float64_context(self) -> Iterator[None]:
        """Where a family needs a patch to run its denoiser in float64 (FLUX's rotary embedding), around the check."""
        yield

    # -- helpers -------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def base(cls) -> ModelFamily:
        return cls().make_model().to(device="cpu", dtype=torch.float32)

    @staticmethod
    def with_lora(model: ModelFamily, seed: int = 1) -> ModelFamily:
        """A copy of ``model`` (its own denoiser) with a random LoRA: both factors non-zero, alpha ≠ rank."""
        out = copy.copy(model)
        setattr(out, model.denoiser_name, copy.deepcopy(model.denoiser))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            add_lora(out, rank=2, alpha=3.0, init=False)
        return out

    def sampler(self, model: ModelFamily):
        from draft_core.plugins.discovery import load_registry

        name = type(model).sampling_defaults(model.name)["name"]
        return load_registry().build("sampler", name, steps=self.steps, guidance_scale=self.guidance)

    def noise(self, model: ModelFamily) -> torch.Tensor:
        return model.make_noise(len(self.prompts), torch.Generator().manual_seed(0))

    @torch.no_grad()
    def draft_images(self, model: ModelFamily, noise: torch.Tensor) -> torch.Tensor:
        latents = self.sampler(model).sample(model, model.encode_prompts(list(self.prompts)), noise)
        return model.decode(latents)

    @torch.no_grad()
    def pipeline_images(self, pipe, model: ModelFamily, noise: torch.Tensor) -> torch.Tensor:
        pipe.set_progress_bar_config(disable=True)
        h, w = model.image_size
        kw = dict(height=h, width=w, num_inference_steps=self.steps, output_type="pt")
        return pipe(list(self.prompts), **{**kw, **self.pipeline_arguments(model, noise.clone())}).images

    @staticmethod
    def pipeline_of(model: ModelFamily):
        try:
            return model.pipeline()
        except NotImplementedError as exc:
            pytest.skip(
                f"no pipeline parity for '{model.name}' of the '{model.family}' family: {exc or 'pipeline() is not implemented'}"
            )

    @staticmethod
    def empty_prompt(cond: Conditioning) -> Conditioning:
        """The empty prompt's conditioning as a conditional batch (each tensor replaced by its counterpart)."""
        b = cond.batch_size
        rows = {name: pair[:b] for name, pair in cond.guidance_pairs().items()}
        extra = {k: rows.get(k, v) for k, v in cond.extra.items()}
        return dataclasses.replace(cond, cond=rows["cond"], pooled=rows.get("pooled", cond.pooled), extra=extra)

    # -- the contract ----------------------------------------------------------------------------

    def test_pipeline_parity(self, base):
        pipe = self.pipeline_of(base)
        noise = self.noise(base)
        ours = self.draft_images(base, noise)
        theirs = self.pipeline_images(pipe, base, noise)
        assert ours.shape == theirs.shape == (len(self.prompts), 3, *base.image_size)
        assert ours.std() > 1e-3, "the images are a constant: nothing was decoded"
        error = rel_error(ours, theirs)
        assert error <= self.float32_rel, (
            f"draft's images differ from {type(pipe).__name__}'s by {error:.2e} of their scale"
        )

    def test_lora_round_trip(self, base, tmp_path):
        trained = self.with_lora(base)
        folder = Path(save_lora(trained, tmp_path / "lora")).parent  # the family's save_lora_weights hook
        read = copy.copy(base)
        setattr(read, base.denoiser_name, copy.deepcopy(base.denoiser))
        apply_loras(read, [LoraSpec(folder, 1.0)])  # --lora: the family's lora_state_dict hook
        x = self.noise(base)
        t = torch.tensor(self.timestep)
        cond = base.encode_prompts(list(self.prompts))
        with torch.no_grad():
            expected, got, plain = (m.denoise(x, t, cond, self.guidance) for m in (trained, read, base))
        assert rel_error(expected, plain) > 1e-3, "the LoRA does not change the output: the check would prove nothing"
        assert rel_error(got, expected) <= self.float32_rel, "the LoRA read back gives other outputs than the one saved"
        usage = type(base).lora_usage("BASE", str(folder))
        if usage is None:
            return  # the model card names only `draft sample --lora`: the hook above is what loads it
        loader = type(base).pipeline_classes[0]
        assert f"{loader}.from_pretrained" in usage and "load_lora_weights" in usage, usage
        fresh = copy.copy(base)
        setattr(fresh, base.denoiser_name, copy.deepcopy(base.denoiser))
        try:
            pipe = fresh.pipeline()
        except NotImplementedError:
            return  # no diffusers pipeline runs this model (pixel space): the hook above is what loads it
        pipe.load_lora_weights(str(folder))  # what the model card tells users to run
        noise = self.noise(base)
        error = rel_error(self.pipeline_images(pipe, fresh, noise), self.draft_images(trained, noise))
        assert error <= self.float32_rel, (
            f"{loader}.load_lora_weights samples other images than draft's LoRA ({error:.2e})"
        )

    def test_guidance_rule(self, base):
        x = self.noise(base)
        t = torch.tensor(self.timestep)
        cond = base.encode_prompts(list(self.prompts))
        rows: list[int] = []
        scales: dict[str, Any] = {
            "one": 1.0,
            "g": self.guidance,
            "tensor": torch.tensor(self.guidance),
            "2g": 2 * self.guidance,
        }

        def count(module, args, kwargs):
            sample = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
            rows.append(int(sample.shape[0]))

        hook = base.denoiser.register_forward_pre_hook(count, with_kwargs=True)
        try:
            with torch.no_grad():
                calls: dict[str, torch.Tensor] = {}
                passes: dict[str, int] = {}
                for key, g in scales.items():
                    rows.clear()
                    calls[key] = base.denoise(x, t, cond, g)
                    passes[key] = sum(rows) // x.shape[0]
                rows.clear()
                empty = base.denoise(x, t, self.empty_prompt(cond), 1.0) if cond.uncond is not None else None
        finally:
            hook.remove()
        b = x.shape[0]
        assert all(v.shape == x.shape and v.dtype in (torch.float32, torch.float64) for v in calls.values())
        assert rel_error(calls["tensor"], calls["g"]) <= self.float32_rel, "a tensor scale differs from the same float"
        assert rel_error(calls["g"], calls["one"]) > 1e-3, "the guidance scale changes nothing"
        if base.guidance_distilled:
            assert cond.uncond is None, "a guidance-distilled family needs no empty prompt"
            assert passes == {k: 1 for k in passes}, f"a distilled family runs one pass for every scale: {passes}"
            return
        assert cond.uncond is not None and cond.uncond.shape[0] in (1, b)
        assert passes == {k: 2 if uses_cfg(g) else 1 for k, g in scales.items()}, f"passes per scale: {passes}"
        assert empty is not None
        for key, g in (("g", self.guidance), ("2g", 2 * self.guidance)):
            expected = empty + g * (calls["one"] - empty)  # out(∅) + g·(out(c) − out(∅)), two separate passes
            error = rel_error(calls[key], expected)
            # the passes' float32 difference (batched there, separate here) enters multiplied by g
            assert error <= self.float32_rel * g, f"denoise(g={g}) is not out(∅) + g·(out(c) − out(∅)) ({error:.2e})"

    def test_gradient_through_denoise_float64(self):
        with self.float64_context():
            model = self.make_float64_model().to(device="cpu", dtype=torch.float64)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1)
                params = add_lora(model, rank=2, init=False)
            for p in params:
                p.data = p.data.double()
            cond = model.encode_prompts(list(self.prompts[:1]))
            g = torch.Generator().manual_seed(2)
            x = model.make_noise(1, torch.Generator().manual_seed(0), dtype=torch.float64)
            t = torch.tensor(self.timestep)
            weight = torch.randn(x.shape, generator=g, dtype=torch.float64)

            def f(sample: torch.Tensor) -> torch.Tensor:
                return (weight * model.denoise(sample, t, cond, self.guidance)).sum()

            x.requires_grad_(True)
            f(x).backward()
            assert x.grad is not None and all(p.grad is not None for p in params)
            dirs = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
            dx = torch.randn(x.shape, generator=g, dtype=torch.float64)
            along_lora = sum(float((p.grad * d).sum()) for p, d in zip(params, dirs))
            along_x = float((x.grad * dx).sum())
            h = self.fd_step
            with torch.no_grad():
                sides = []
                for sign in (1, -1):
                    for p, d in zip(params, dirs):
                        p.add_(sign * h * d)
                    sides.append(float(f(x.detach())))
                    for p, d in zip(params, dirs):
                        p.sub_(sign * h * d)
                fd_lora = (sides[0] - sides[1]) / (2 * h)
                fd_x = (float(f(x.detach() + h * dx)) - float(f(x.detach() - h * dx))) / (2 * h)
            assert set(map(id, lora_parameters(model))) == set(map(id, params))
            for what, autograd, fd in (("the LoRA", along_lora, fd_lora), ("the input", along_x, fd_x)):
                assert abs(autograd) > 1e-8, f"no gradient along {what}"
                assert abs(autograd - fd) <= self.fd_rel * abs(fd), (
                    f"d/dh f along {what}: autograd {autograd:.12e}, central differences {fd:.12e}"
                )
