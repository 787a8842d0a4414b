"""A plain Euler sampler for ``digits-flow``: the arithmetic of ``FlowMatchEulerDiscreteScheduler``, written out.

The noise levels are the scheduler's ``set_timesteps(steps)`` sigmas (``flow_sigmas``);
each step is x <- x + (sigma_next - sigma) v with v the transformer's (eps - x0)
prediction at timestep 1000 sigma; classifier-free guidance is v_u + g (v_c - v_u), the
unconditional and conditional halves run as one batch [uncond; cond] as
``StableDiffusion3Pipeline`` runs them. Conditioning comes from that pipeline's own
``encode_prompt``. tests/test_digits_flow.py checks the loop against the pipeline.
"""

from __future__ import annotations

import torch

from draft_core.models.digits_flow import DEFAULT_GUIDANCE, DEFAULT_STEPS, DigitsFlowComponents, sd3_pipeline


def flow_sigmas(scheduler_config: dict, steps: int) -> torch.Tensor:
    """[steps + 1] float32 noise levels from 1 down to 0, as ``FlowMatchEulerDiscreteScheduler.set_timesteps``.

    Evenly spaced timesteps from sigma_max's to sigma_min's (the static ``shift`` applied to
    the 1000 training levels i / 1000), divided by 1000, shifted, then a final 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}.")
    unsupported = [
        k
        for k in (
            "use_dynamic_shifting",
            "invert_sigmas",
            "shift_terminal",
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "stochastic_sampling",
        )
        if scheduler_config.get(k)
    ]
    if unsupported:
        raise ValueError(f"flow_sigmas implements the static-shift schedule only; the config sets {unsupported}.")
    n_train = scheduler_config.get("num_train_timesteps", 1000)
    shift = scheduler_config.get("shift", 1.0)

    def shifted(s):
        return shift * s / (1 + (shift - 1) * s)

    # The scheduler keeps its training sigmas in float32, then works in float64 (numpy).
    train = torch.linspace(1, n_train, n_train, dtype=torch.float64).flip(0).float() / n_train
    train = shifted(train)
    hi, lo = train[0].double() * n_train, train[-1].double() * n_train
    sigmas = shifted(torch.linspace(float(hi), float(lo), steps, dtype=torch.float64) / n_train)
    return torch.cat([sigmas.float(), torch.zeros(1)])


def encode(parts: DigitsFlowComponents, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds [B, L + max_sequence_length, joint_attention_dim], pooled [B, pooled_projection_dim])
    from ``StableDiffusion3Pipeline.encode_prompt``."""
    embeds, _, pooled, _ = sd3_pipeline(parts).encode_prompt(
        prompts,
        None,
        None,
        device=torch.device("cpu"),
        do_classifier_free_guidance=False,
        max_sequence_length=parts.max_sequence_length,
    )
    return embeds, pooled


def denoise(
    parts: DigitsFlowComponents,
    noise: torch.Tensor,
    cond: tuple[torch.Tensor, torch.Tensor],
    uncond: tuple[torch.Tensor, torch.Tensor] | None,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
) -> torch.Tensor:
    """Euler from ``noise`` [B, 3, H, W] (sigma 1) to x0 [B, 3, H, W] in about [-1, 1] (not clamped).

    ``cond``/``uncond``: (embeds, pooled) for the B samples; guidance applies when > 1, as in diffusers.
    """
    sigmas = flow_sigmas(parts.scheduler_config, steps)
    guided = guidance > 1
    if guided and uncond is None:
        raise ValueError("guidance > 1 needs the unconditional (empty-prompt) embeddings.")
    embeds = torch.cat([uncond[0], cond[0]]) if guided else cond[0]
    pooled = torch.cat([uncond[1], cond[1]]) if guided else cond[1]
    x = noise
    for i in range(steps):
        x_in = torch.cat([x, x]) if guided else x
        t = (sigmas[i] * parts.scheduler_config.get("num_train_timesteps", 1000)).expand(x_in.shape[0])
        v = parts.transformer(
            hidden_states=x_in, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled, return_dict=False
        )[0]
        if guided:
            v_u, v_c = v.chunk(2)
            v = v_u + guidance * (v_c - v_u)
        x = (x.float() + (sigmas[i + 1] - sigmas[i]) * v.float()).to(x.dtype)
    return x


@torch.no_grad()
def sample(
    parts: DigitsFlowComponents,
    prompts: list[str],
    generator: torch.Generator | None = None,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] for ``prompts`` (noise drawn from ``generator`` unless given)."""
    size = parts.image_size
    if noise is None:
        noise = torch.randn(len(prompts), parts.transformer.config.in_channels, size, size, generator=generator)
    cond = encode(parts, list(prompts))
    uncond = encode(parts, [""] * len(prompts)) if guidance > 1 else None
    x0 = denoise(parts, noise, cond, uncond, steps, guidance)
    return (x0 / 2 + 0.5).clamp(0, 1)
