"""Flow-matching samplers: ``euler`` (the deterministic flow ODE) and ``flow-sde`` (an SDE with the same marginals).

A flow model predicts the velocity v = ε − x0 of the straight path x_σ = (1 − σ)·x0 + σ·ε, σ
running from 1 (noise) to 0 (data). Both samplers build diffusers' ``FlowMatchEulerDiscreteScheduler``
from the model's scheduler config and let its ``set_timesteps`` make the schedule (``shift``, dynamic
shifting with the family's ``mu``, custom ``sigmas``, ``shift_terminal``, Karras/exponential/beta
sigmas), then do each step's arithmetic themselves from ``sched.sigmas`` by step index: the
scheduler's own ``step`` keeps a step counter, and a cached scheduler shared by checkpointed
recomputation and by policy-gradient estimators that revisit steps in any order must keep none.

The one-step prediction is x̂0 = x_σ − σ·v and re-noising is x_σ = (1 − σ)·x0 + σ·ε (diffusers'
``scale_noise``), so DRaFT-LV and ReFL are defined for flow models as for diffusion ones.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from draft_core.errors import ConfigError
from draft_core.lora import adapters_enabled
from draft_core.models.family import upcast
from draft_core.samplers.chain import ChainSampler


class FlowSampler(ChainSampler):
    """What ``euler`` and ``flow-sde`` share: the schedule, indexing by step, x̂0 and re-noising."""

    name = "flow"
    scheduler_class = FlowMatchEulerDiscreteScheduler
    flow_matching = True

    # -- the schedule -------------------------------------------------------------------------
    def scheduler(self, model):
        sched = super().scheduler(model)
        if sched.config.invert_sigmas:
            raise ConfigError(
                f"the {self.name} sampler follows the rectified-flow convention x = (1 − σ)·x0 + σ·noise, but this "
                "model's scheduler config sets invert_sigmas (Mochi's inverted schedule), which it does not support."
            )
        return sched

    @staticmethod
    def _sigmas(sched, i: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ_i, σ_{i+1} − σ_i): the step's noise level and its increment dt (< 0), the increment taken
        in the scheduler's float32 as its ``step`` takes it, then both in ``like``'s dtype and device."""
        sigma, sigma_next = sched.sigmas[i], sched.sigmas[i + 1]
        dt = sigma_next - sigma
        return sigma.to(like.device, like.dtype), dt.to(like.device, like.dtype)

    def index_of(self, sched, t: torch.Tensor) -> int:
        """The step index of timestep ``t`` (for callers of ``scheduler_step``/``step_gaussian`` by timestep)."""
        hits = (sched.timesteps == torch.as_tensor(t).to(sched.timesteps)).nonzero().flatten().tolist()
        if len(hits) != 1:
            raise ValueError(f"timestep {float(t)} is not exactly one of this schedule's {len(sched.timesteps)} steps.")
        return hits[0]

    def initial_sample(self, model, noise: torch.Tensor) -> torch.Tensor:
        """x at σ_0: the noise itself (the flow scheduler has no ``init_noise_sigma``; its pipelines start from noise)."""
        self.scheduler(model)  # the config check
        return upcast(noise)

    # -- one step, by index -------------------------------------------------------------------
    def step_at(
        self, sched, out: torch.Tensor, i: int, x: torch.Tensor, noise=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_{i+1}, x̂0) from velocity ``out`` at step ``i``."""
        raise NotImplementedError

    def scheduler_step(self, sched, out, t, x, noise):
        return self.step_at(sched, out, self.index_of(sched, t), x, noise)

    def _step(self, model, sample, i, cond, lora_on, noise=None):
        sched = self.scheduler(model)
        with adapters_enabled(model.denoiser, lora_on):
            out = self._model_output(model, sample, sched.timesteps[i], cond, i)
        return self.step_at(sched, out, i, sample, noise)

    def transition(self, model, sample, step, action, noise=None):
        return self.step_at(self.scheduler(model), action, step, upcast(sample), noise)[0]

    def predict_x0(self, model, sample, step, cond, lora_on=True):
        """x̂0 = x − σ_step·ṽ (ṽ the guided velocity at step ``step``)."""
        return self._step(model, upcast(sample), step, cond, lora_on)[1]

    def add_noise(self, model, x0, noise, step):
        """x at step ``step``'s noise level: (1 − σ)·x0 + σ·noise (diffusers' ``scale_noise``)."""
        x0 = upcast(x0)
        sigma, _ = self._sigmas(self.scheduler(model), step, x0)
        return (1.0 - sigma) * x0 + sigma * noise.to(x0)


class EulerSampler(FlowSampler):
    """The flow ODE by Euler's method, exactly ``FlowMatchEulerDiscreteScheduler.step``:
    x_{i+1} = x_i + (σ_{i+1} − σ_i)·ṽ, in float32 (float64 stays float64), ṽ the guided velocity.

    Deterministic (no step densities): policy-gradient estimators need ``flow-sde``. The scheduler
    config's ``stochastic_sampling`` (a re-noising variant of the step) is not followed: this is the ODE.
    """

    name = "euler"

    def step_at(self, sched, out, i, x, noise=None):
        x = upcast(x)
        sigma, dt = self._sigmas(sched, i, x)
        return x + dt * out, x - sigma * out


class FlowSDESampler(FlowSampler):
    r"""Flow-GRPO's SDE sampler (Liu et al. 2025, "Flow-GRPO": its ODE-to-SDE update, as its code's
    ``sde_step_with_logprob`` computes it).

    The ODE dx = v dt has the marginals of x_σ = (1 − σ)x0 + σε. For any g_σ, the reverse-time SDE
    dx = [v − (g²/2)·∇log p_σ(x)] dσ + g dw̄ (dσ < 0) has the same marginals (Fokker–Planck), and for
    this path ∇log p_σ(x) = −ε̂/σ = −(x + (1 − σ)v)/σ. With Flow-GRPO's noise level
    g_σ = eta·√(σ/(1 − σ)), Euler–Maruyama from σ = σ_i to σ_{i+1} (dt = σ_{i+1} − σ_i < 0) gives::

        x_{i+1} = x_i + dt·[v + g²/(2σ)·(x_i + (1 − σ)·v)] + g·√(−dt)·z,   z ~ N(0, I)

    a Gaussian with mean the bracketed drift step and std g·√(−dt), a scalar per step
    (``step_gaussian``). At σ = 1 the factor 1/(1 − σ) is infinite; as Flow-GRPO does, 1 − σ_1
    (the second sigma of the schedule) stands in for it there. That first step then has
    g²·|dt| = eta² whatever the number of steps, so from pure noise its output's variance is about
    (1 − eta²/2)² + eta² = 1 + eta⁴/4 rather than the flow's ~1; the later steps' score term pulls
    the chain back (tests/test_sampler_flow.py measures the marginals from σ < 1). eta = 0 is the
    ODE: ``euler`` bit for bit. Flow-GRPO trains with eta (its ``noise_level``) 0.7, the default here.

    ``diffusion: dance-grpo`` is DanceGRPO's sampler (Xue et al. 2025, its code's ``flux_step`` with the
    SDE solver): the same reverse SDE and Euler–Maruyama step with a constant g_σ = eta, so the step's
    std is eta·√|dt| (its eta·√|dσ|) and its mean x + dt·[v + eta²/(2σ)·(x + (1 − σ)·v)] (its score
    term −(x − (1 − σ)·x̂0)/σ², rearranged). No stand-in is needed at σ = 1. Its noise is spread evenly
    over σ, where Flow-GRPO's grows towards σ = 1, so an eta does not carry over between the two.
    """

    name = "flow-sde"

    def __init__(
        self, steps: int = 50, guidance_scale: float = 7.5, eta: float = 0.7, diffusion: str = "flow-grpo"
    ) -> None:
        super().__init__(steps, guidance_scale)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
            raise ConfigError(
                f"sampler.eta must be a number >= 0 (Flow-GRPO's noise level; 0 is the ODE), got {eta!r}."
            )
        if diffusion not in ("flow-grpo", "dance-grpo"):
            raise ConfigError(
                f"sampler.diffusion must be 'flow-grpo' (noise scale g = eta·√(σ/(1 − σ))) or "
                f"'dance-grpo' (g = eta: noise eta·√|dσ| per step), got {diffusion!r}."
            )
        self.eta = float(eta)
        self.diffusion = diffusion

    def __repr__(self) -> str:
        dance = ", diffusion='dance-grpo'" if self.diffusion == "dance-grpo" else ""
        return f"FlowSDESampler(steps={self.num_steps}, guidance_scale={self.guidance_scale}, eta={self.eta}{dance})"

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def draw_step_noise(self, x, generator):
        if self.eta == 0:
            return None
        device = "cpu" if generator is None else generator.device
        return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)

    def _diffusion(self, sched, i: int, like: torch.Tensor) -> torch.Tensor:
        """g_σ at step ``i`` (0-d, ``like``'s dtype): eta·√(σ/(1 − σ)), with 1 − σ_1 for 1 − σ where σ = 1
        (DanceGRPO's: eta)."""
        sigma = sched.sigmas[i].to(like.device, like.dtype)
        if self.diffusion == "dance-grpo":
            return torch.full((), self.eta, dtype=like.dtype, device=like.device)
        one_minus = torch.where(sigma < 1, 1 - sigma, 1 - sched.sigmas[1].to(sigma))
        return self.eta * (sigma / one_minus).sqrt()

    def _gaussian(self, sched, out, i, x):
        x = upcast(x)
        sigma, dt = self._sigmas(sched, i, x)
        if self.eta == 0:
            return x + dt * out, torch.zeros((), dtype=x.dtype, device=x.device), sigma
        g = self._diffusion(sched, i, x)
        mean = x + dt * (out + g**2 / (2 * sigma) * (x + (1 - sigma) * out))
        return mean, g * (-dt).sqrt(), sigma

    def step_at(self, sched, out, i, x, noise=None):
        mean, std, sigma = self._gaussian(sched, out, i, x)
        x0_hat = upcast(x) - sigma * out
        return (mean if noise is None else mean + std * noise.to(mean)), x0_hat

    def step_gaussian(self, sched, out, t, x):
        """(mean, std) of the step at timestep ``t`` (see the class docstring); std is 0-d."""
        return self._gaussian(sched, out, self.index_of(sched, t), x)[:2]

    def transition_distribution(self, model, sample, step, cond, lora_on=True):
        sched = self.scheduler(model)
        x = upcast(sample)
        with adapters_enabled(model.denoiser, lora_on):
            out = self._model_output(model, x, sched.timesteps[step], cond, step)
        return self._gaussian(sched, out, step, x)[:2]
