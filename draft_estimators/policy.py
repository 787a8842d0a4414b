"""What the policy-gradient estimators (ddpo, grpo) share: rollouts, a trajectory buffer, PPO.

Sampling with a stochastic sampler is a Markov decision process whose policy at step i is
the Gaussian p_θ(x_{i+1} | x_i, c) of ``sampler.transition_distribution`` (Black et al.
2023). The reward is needed only at the end of a trajectory, and only its value: these
estimators work with rewards that have no gradient.

How it fits the runner, which asks for one loss per call and takes one optimiser step
per ``train.grad_accum`` calls: the estimator keeps a buffer of trajectories.

1. A call that finds the buffer empty samples the call's batch with the current policy
   without autograd, storing every state x_0..x_T and each step's log-probability under
   that (old) policy, scores the final images, and turns the rewards into advantages
   (the subclass's rule), clipped to ±``adv_clip_max``. It then draws the PPO schedule:
   ``inner_epochs`` passes over the trajectories, each in a new random order, split into
   ``minibatches`` minibatches, each with its own random subset of
   ``int(timestep_fraction · S)`` (at least 1) of the S steps that draw noise (DDPO's rule;
   with ``first_steps``, Flow-GRPO's: the first ``int(timestep_fraction · S)`` of them, in
   sampling order, for every minibatch).
2. Every call (the sampling one included) takes the next minibatch of the schedule and
   returns the PPO loss over its steps: per step, the clipped surrogate
   mean_b max(−A_b·ρ_b, −A_b·clip(ρ_b, 1 ± clip_range)) with ρ = exp(log p_θ − log p_old),
   averaged over the steps. That average is DDPO's gradient accumulation across timesteps;
   with ``checkpoint`` (default) memory holds one step's activations, not all of them: each
   step's backward pass runs as soon as its loss is computed, through the runner's
   ``StepInputs.backward`` (as DDPO's code does), or, for a caller without it, each step's
   UNet pass is recomputed in the backward pass of the whole loss.
3. When the schedule is used up, the next call samples again. One sampled batch thus
   serves ``inner_epochs × minibatches`` calls; with both 1 (the default) every update is
   on-policy and the loss's gradient is REINFORCE's.

A call that reuses the buffer queries the reward 0 times, and reports the rewards of the
buffer's trajectories again. A sampled batch with a non-finite reward is never stored: the
call returns its rewards (the runner skips that one update and blames the reward) and the
next call samples a fresh batch. The buffer and the schedule's position are estimator state
(``state_dict``, tensors only), saved with every checkpoint, so a resumed run continues
the same schedule. The stored conditioning is detached: a learned negative prompt
(``learn:``) gets no gradient from these estimators.
"""

from __future__ import annotations

import math

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from draft_core.errors import ConfigError
from draft_core.models.conditioning import EXTRA_PREFIX, TENSOR_FIELDS, conditioning_keys
from draft_core.plugins.bases import EstimatorBase, as_sampler
from draft_core.plugins.protocols import Conditioning, EstimatorOutput, StepInputs
from draft_core.samplers.gaussian import is_stochastic, kl_same_std, log_prob
from draft_estimators.guard import check_guard_sampler, guarded_log_ratio, step_weight

ON_DEVICE = ("latents", "log_probs", "advantages", "rewards", "means")
BUFFER_KEYS = ("latents", "log_probs", "advantages", "rewards", "cond", "steps", "perms", "order", "cursor")
# The conditioning is stored as Conditioning.tensors(): "cond" always, the others when the family has them.
OPTIONAL_KEYS = tuple(f for f in TENSOR_FIELDS if f != "cond")
# timestep_batch "auto": as many steps per denoiser call as keep the call's states (b·C·h·w per step,
# before CFG doubles them) within this many elements. On the CPU the tiny UNet's forward and backward cost
# per sample fell until a call held some 16-32k latent elements (16 steps of tiny-random at batch 4:
# benchmarks/RESULTS.md, the DDPO peer); one step of SD 1.5 at 512 px (4·64·64 per sample) is already
# past it at batch 1, so such models keep one step per call, and one step's activations in memory.
AUTO_TIMESTEP_ELEMENTS = 2**14


def clipped_surrogate(
    new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
):
    """PPO's clipped objective as a loss, and the ratios. All [B]; returns (scalar, [B]).

    loss = mean_b max(−A_b ρ_b, −A_b clip(ρ_b, 1 − ε, 1 + ε)), ρ = exp(new − old). At ρ = 1
    its gradient is REINFORCE's, −mean_b A_b ∇ log p; where ρ has left the range in the
    direction A favours, the clipped (constant) term wins and the gradient is 0.
    """
    ratio = torch.exp(new_log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio


@torch.no_grad()
def rollout(
    sampler,
    model,
    cond: Conditioning,
    noise: torch.Tensor,
    generator: torch.Generator | None,
    means: list[torch.Tensor] | None = None,
):
    """Sample with the current policy, keeping every state and each step's log-probability.

    noise: [N, C, h, w]. Returns latents [T+1, N, C, h, w] (x_0 .. x_T, x_T the sample),
    log_probs [T, N] (mean over elements, 0 at steps without noise) and stds [T]. One
    standard-normal draw per step from ``generator``, as the ddim sampler draws it, so
    with ddim this is the trajectory ``sampler.sample`` would give from the same stream.
    ``means``, when given, receives each step's Gaussian mean (GRPO-Guard's μ_old).
    """
    x = sampler.initial_sample(model, noise)
    states, log_probs, stds = [x], [], []
    for i in range(sampler.num_steps):
        mean, std = sampler.transition_distribution(model, x, i, cond)
        z = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = mean + std * z
        if means is not None:
            means.append(mean)
        stochastic = is_stochastic(std)
        log_probs.append(
            log_prob(x, mean, std) if stochastic else torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        )
        states.append(x)
        stds.append(torch.as_tensor(std, dtype=torch.float64).reshape(-1)[0])
    return torch.stack(states), torch.stack(log_probs), torch.stack(stds)


def _check_number(
    key: str, value, low: float, high: float = math.inf, *, integer: bool = False, open_low: bool = False
):
    kind = int if integer else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, kind)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        what = "an integer" if integer else "a number"
        bound = f"> {low}" if open_low else f">= {low}"
        raise ConfigError(
            f"estimator.{key} must be {what} {bound}"
            + (f" and <= {high}" if high < math.inf else "")
            + f", got {value!r}."
        )
    return value


class PolicyGradient(EstimatorBase):
    """Base of ddpo and grpo: the buffer, the schedule and the PPO loss (module docstring).

    Subclasses define ``name``, ``queries_per_image``, ``expand`` (which trajectories a
    batch samples) and ``advantages`` (rewards -> advantages).
    """

    name = "policy-gradient"
    needs_reward_gradient = False
    #: GRPO-Guard's regulated ratio and 1/|dt| step weight (draft_estimators/guard.py) instead of PPO's ratio.
    guard = False
    #: reward evaluations per image of the runner's batch when a call samples (GRPO: G).
    queries_per_image = 1
    #: train the first int(timestep_fraction · S) noisy steps in order (Flow-GRPO), not a random subset (DDPO).
    first_steps = False

    def __init__(
        self,
        clip_range: float,
        adv_clip_max: float,
        timestep_fraction: float,
        inner_epochs: int,
        minibatches: int,
        checkpoint: bool,
        kl_beta: float = 0.0,
        timestep_batch: int | str = 1,
    ) -> None:
        self.clip_range = float(_check_number("clip_range", clip_range, 0.0, open_low=True))
        self.adv_clip_max = float(_check_number("adv_clip_max", adv_clip_max, 0.0, open_low=True))
        self.timestep_fraction = float(_check_number("timestep_fraction", timestep_fraction, 0.0, 1.0, open_low=True))
        self.inner_epochs = _check_number("inner_epochs", inner_epochs, 1, integer=True)
        self.minibatches = _check_number("minibatches", minibatches, 1, integer=True)
        if not isinstance(checkpoint, bool):
            raise ConfigError(f"estimator.checkpoint must be true or false, got {checkpoint!r}.")
        self.checkpoint = checkpoint
        self.kl_beta = float(kl_beta)
        if timestep_batch != "auto" and (
            isinstance(timestep_batch, bool) or not isinstance(timestep_batch, int) or timestep_batch < 1
        ):
            raise ConfigError(
                f"estimator.timestep_batch must be an integer >= 1 (trained steps per denoiser call) or 'auto' "
                f"(steps batched while their states are small), got {timestep_batch!r}."
            )
        self.timestep_batch = timestep_batch
        self.buffer: dict[str, torch.Tensor] | None = None

    # -- checks ----------------------------------------------------------------------------
    def check(self, sampler) -> None:
        """The policy is the sampler's per-step Gaussian: the sampler must draw noise."""
        # transition_distribution is a capability (a method), not an optional member with a default.
        if not callable(getattr(sampler, "transition_distribution", None)) or not as_sampler(sampler).stochastic:
            raise ConfigError(
                f"estimator '{self.name}' trains on the log-probabilities of the sampling steps, so it needs a "
                f"stochastic sampler (ddpm, or ddim with eta > 0; DDPO samples with ddim, eta: 1.0; for a flow-matching "
                f"model flow-sde with eta > 0, as Flow-GRPO samples, or cps), got {sampler!r}."
            )
        if self.guard:
            check_guard_sampler(self.name, sampler)

    # -- what a subclass provides ------------------------------------------------------------
    def expand(self, inputs: StepInputs) -> tuple[Conditioning, torch.Tensor]:
        """The conditioning and noise of the trajectories one call samples ([N, ...])."""
        return inputs.cond, inputs.noise

    def advantages(self, rewards: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        """[N] rewards of the sampled trajectories -> [N] advantages (before clipping), and logs."""
        raise NotImplementedError

    def report(self, rewards: torch.Tensor, batch: int) -> torch.Tensor:
        """The [batch] rewards a call reports for the runner's batch."""
        return rewards

    def rollout_sampler(self, sampler):
        """The sampler a call samples with (mix-grpo: one that takes ODE steps outside its window)."""
        return sampler

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The buffer and the schedule's position while the buffer has minibatches left."""
        if self.buffer is None or self._exhausted():
            return {}
        # On the CPU: the runner gathers every process's state as Python objects before writing it.
        return {f"buffer.{k}": v.detach().to("cpu", copy=True) for k, v in self.buffer.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        found = {k[len("buffer.") :]: v for k, v in state.items() if k.startswith("buffer.")}
        if found and set(found) - {*OPTIONAL_KEYS, "means"} - {k for k in found if k.startswith(EXTRA_PREFIX)} != set(
            BUFFER_KEYS
        ):
            raise ConfigError(
                f"estimator '{self.name}': the checkpoint's trajectory buffer has keys {sorted(found)}, "
                f"expected {sorted(BUFFER_KEYS)}; was it written by another version of draft?"
            )
        self.buffer = dict(found) if found else None
        if self.buffer is not None and self.guard != ("means" in self.buffer):
            self.buffer = (
                None  # written with the guard switched the other way: its stored means do not fit, sample afresh
            )
        if self.buffer is not None and not all(torch.isfinite(self.buffer[k]).all() for k in ("rewards", "advantages")):
            self.buffer = None  # a poisoned batch from an older checkpoint: sample afresh instead

    def _exhausted(self) -> bool:
        return int(self.buffer["cursor"]) >= self.buffer["order"].shape[0]

    # -- sampling -----------------------------------------------------------------------------------
    def _fill(self, inputs: StepInputs) -> tuple[torch.Tensor, dict[str, float], torch.Tensor | None]:
        """Sample, score and store a batch: its images, logs and, for a batch dropped for its
        non-finite rewards (``buffer`` is then None), the [batch] rewards to report."""
        model, sampler = inputs.model, inputs.sampler
        cond, noise = self.expand(inputs)
        n = noise.shape[0]
        if self.minibatches > n:
            raise ConfigError(
                f"estimator.minibatches={self.minibatches} exceeds the {n} trajectories a call samples "
                f"(train.batch_size per process{' × group_size' if self.queries_per_image > 1 else ''}); "
                f"use 1 <= minibatches <= {n}."
            )
        means: list[torch.Tensor] | None = [] if self.guard else None
        latents, old_log_probs, stds = rollout(
            self.rollout_sampler(sampler), model, cond, noise, inputs.generator, means
        )
        with torch.no_grad():
            images = model.decode(latents[-1])
            rewards = inputs.reward(images, cond.prompts).detach().float()
        adv, logs = self.advantages(rewards, list(cond.prompts))
        if not (torch.isfinite(rewards).all() and torch.isfinite(adv).all()):
            # A batch with a non-finite reward (here, or on another process: then the gathered
            # advantages are NaN) is dropped: never stored, never checkpointed, never reused.
            self.buffer = None
            return images[: inputs.noise.shape[0]].detach(), {}, self.report(rewards, inputs.noise.shape[0])
        steps = torch.nonzero(stds > 0).flatten()
        if steps.numel() == 0:
            raise ConfigError(
                f"estimator '{self.name}': no step of {sampler!r} draws noise for this model, so there "
                "is no step log-probability to train on; use ddim with eta > 0 or ddpm with more steps "
                "(flow-sde with eta > 0 for a flow-matching model)."
            )
        per_update = max(1, int(self.timestep_fraction * steps.numel()))  # DDPO: int(T · fraction)
        g = inputs.generator
        perms = torch.stack([torch.randperm(n, generator=g) for _ in range(self.inner_epochs)])
        if self.first_steps:
            order = steps[:per_update].repeat(self.inner_epochs * self.minibatches, 1)
        else:
            order = torch.stack(
                [
                    steps[torch.randperm(steps.numel(), generator=g)[:per_update]]
                    for _ in range(self.inner_epochs * self.minibatches)
                ]
            )
        self.buffer = {
            "latents": latents,
            "log_probs": old_log_probs,
            "advantages": adv.clamp(-self.adv_clip_max, self.adv_clip_max),
            "rewards": self.report(rewards, inputs.noise.shape[0]),
            **cond.detach().tensors(),
            "steps": steps,
            "perms": perms,
            "order": order,
            "cursor": torch.zeros((), dtype=torch.int64),
        }
        if means is not None:
            self.buffer["means"] = torch.stack(means)
        logs["reward_sampled_std"] = rewards.std().item() if rewards.numel() > 1 else 0.0
        return images[: inputs.noise.shape[0]].detach(), logs, None

    # -- one call ---------------------------------------------------------------------------------
    def __call__(self, inputs: StepInputs) -> EstimatorOutput:
        self.check(inputs.sampler)
        images, logs, fresh = None, {}, self.buffer is None or self._exhausted()
        if fresh:
            images, logs, dropped = self._fill(inputs)
            if dropped is not None:  # one skipped step (the runner sees the rewards), then a fresh batch
                nan = torch.full((), float("nan"), device=images.device)
                return EstimatorOutput(
                    loss=nan, reward=dropped, images=images, queries=self.queries_per_image, logs={"fresh_samples": 1.0}
                )
        buf = self.buffer
        if buf["latents"].device != inputs.model.device:  # restored from a checkpoint (on the CPU)
            buf.update(
                {key: buf[key].to(inputs.model.device) for key in (*ON_DEVICE, *conditioning_keys(buf)) if key in buf}
            )
        k = int(buf["cursor"])
        epoch, part = divmod(k, self.minibatches)
        idx = torch.tensor_split(buf["perms"][epoch], self.minibatches)[part]
        steps = buf["order"][k].tolist()
        buf["cursor"] = buf["cursor"] + 1
        # With checkpoint and a caller that takes partial backward passes, each step's backward pass
        # runs at once: one step's graph alive at a time, as with recomputation, without recomputing.
        split = inputs.backward if self.checkpoint else None
        loss, ppo_logs = self.ppo_loss(inputs.model, inputs.sampler, idx, steps, backward=split)
        logs.update(ppo_logs)
        logs["fresh_samples"] = float(fresh)
        return EstimatorOutput(
            loss=loss,
            reward=buf["rewards"].clone(),
            images=images,
            queries=self.queries_per_image if fresh else 0,
            logs=logs,
            backward_done=split is not None,
        )

    def ppo_loss(
        self, model, sampler, idx: torch.Tensor, steps: list[int], backward=None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The PPO loss of trajectories ``idx`` [b] over ``steps``, averaged over the steps.

        The steps go through the denoiser ``timestep_batch`` at a time (one call per chunk, where the
        sampler and model allow it: ``transition_distributions``); the loss is the same sum of per-step
        terms. backward: StepInputs.backward; given, each chunk's share of the loss (its steps' losses /
        the number of steps) is backpropagated as soon as it is computed and the returned loss is detached."""
        buf = self.buffer
        device = buf["latents"].device
        idx = idx.to(device)
        cond = Conditioning.from_tensors({k: buf[k] for k in conditioning_keys(buf)}).select(idx)
        adv = buf["advantages"][idx]
        total = torch.zeros((), device=device)
        clipped, approx_kl, kls = [], [], []
        size = self.timestep_batch
        if size == "auto":  # small calls are dominated by per-module overhead; large ones by the compute
            size = max(1, AUTO_TIMESTEP_ELEMENTS // (idx.numel() * buf["latents"][0][0].numel()))
        for chunk in [steps[s : s + size] for s in range(0, len(steps), size)]:
            x_t = [buf["latents"][j][idx] for j in chunk]
            x_next = [buf["latents"][j + 1][idx] for j in chunk]
            refs = None
            if self.kl_beta > 0:
                with torch.no_grad():
                    refs = [m for m, _ in transition_distributions(sampler, model, x_t, chunk, cond, lora_on=False)]

            def terms(*states, chunk=chunk, refs=refs):
                # per step: [log p, log ρ̃ (guard), KL (beta > 0)]
                x_t, x_next = states[: len(chunk)], states[len(chunk) :]
                out = []
                for k, (mean, std) in enumerate(transition_distributions(sampler, model, x_t, chunk, cond)):
                    lp = log_prob(x_next[k], mean, std)
                    guarded = (
                        (guarded_log_ratio(mean, buf["means"][chunk[k]][idx], x_next[k], std),) if self.guard else ()
                    )
                    out.append((lp, *guarded, *((kl_same_std(mean, refs[k], std),) if refs is not None else ())))
                return tuple(out)

            recompute = self.checkpoint and backward is None
            outs = torch_checkpoint(terms, *x_t, *x_next, use_reentrant=False) if recompute else terms(*x_t, *x_next)
            chunk_loss = torch.zeros((), device=device)
            for j, out in zip(chunk, outs):
                old = buf["log_probs"][j][idx]
                if self.guard:  # ρ̃ = exp(log ρ̃), the step's loss weighted by 1/|dt|
                    loss, ratio = clipped_surrogate(out[1], torch.zeros_like(old), adv, self.clip_range)
                    loss = loss * step_weight(sampler, model, j)
                else:
                    loss, ratio = clipped_surrogate(out[0], old, adv, self.clip_range)
                if refs is not None:
                    loss = loss + self.kl_beta * out[-1].mean()
                    kls.append(out[-1].detach().mean())
                chunk_loss = chunk_loss + loss
                clipped.append(((ratio.detach() - 1).abs() > self.clip_range).float().mean())
                approx_kl.append(0.5 * (out[0].detach() - old).pow(2).mean())
            if backward is not None:
                backward(chunk_loss / len(steps))
                chunk_loss = chunk_loss.detach()
            total = total + chunk_loss
        logs = {
            "clipfrac": torch.stack(clipped).mean().item(),
            "approx_kl": torch.stack(approx_kl).mean().item(),
            "advantage_abs": adv.abs().mean().item(),
            "ppo_steps": float(len(steps)),
        }
        if kls:
            logs["kl"] = torch.stack(kls).mean().item()
        return total / len(steps), logs


def transition_distributions(sampler, model, samples, steps, cond, lora_on=True):
    """The sampler's Gaussian at each (sample, step) pair: in one denoiser call where the sampler
    offers it (``ChainSampler.transition_distributions``), else step by step."""
    batched = getattr(sampler, "transition_distributions", None)
    if len(steps) > 1 and callable(batched):
        return batched(model, samples, steps, cond, lora_on)
    return [sampler.transition_distribution(model, x, j, cond, lora_on=lora_on) for x, j in zip(samples, steps)]
