"""Deterministic policy gradient (paper Appendix C.2) with a critic adapted from the reward.

Sampling is a deterministic MDP: the state s_i is (x_i, step i, prompt), the action is
the guided model output a_i = μ_θ(s_i) (ε̃, or ṽ for v-prediction models), and the
transition f(s_i, a_i) is the scheduler's DDIM step. The critic is Equation 3:

    Q_φ(s_i, a_i) = r_adapt(ξ, φ)( x̂0( f(s_i, a_i), step i+1 ) )

the reward's own network with LoRA parameters φ (``critic_rank``), applied to the
one-step-denoised result of taking the action (at the last step, f already gives x_0).
Each training step:

1. sample a trajectory without autograd, keeping each step's input x_i, and score the
   final images with the reward: the return R (the reward logged for the step);
2. pick ``states`` steps of the trajectory at random (from ``min_step`` on);
3. at each, a = μ_θ(s_i) with autograd; g = ∇_a Q_φ(s_i, a) through the transition,
   the denoising step and the adapted reward, with θ held fixed inside Q (no gradient
   from the critic's denoising step reaches θ); the policy loss is −⟨g, a⟩ averaged
   over the batch and the chosen states, whose gradient is ∇_a Q · ∇_θ μ_θ;
4. the critic is trained by squared error (Q_φ(s_i, a_i) − R)² with its own AdamW
   optimiser (``critic_lr``), one update per optimiser step of the policy, using Q from
   before the update for the policy gradient. Its gradient is accumulated over the
   micro-batches of ``train.grad_accum`` (averaged) and applied in
   ``on_optimizer_step``, which the runner calls after its non-finite checks: the critic
   steps exactly when the LoRA does, and a skipped step (a NaN reward) leaves it as it was.

Each chosen state's graphs (the action's UNet call; Q's transition, denoising step,
decode and critic) are released before the next state's are built: the critic's
gradient is taken per state, and the policy term's backward pass runs at once when the
runner passes ``StepInputs.backward``. The action's UNet call is checkpointed (one more
UNet forward per state), so that only one UNet graph is alive at a time.

The critic's LoRA and optimiser state belong to the estimator and are saved with every
checkpoint (``state_dict``). The critic is a copy of the reward network (its base weights
frozen), so it costs one more copy of the reward model's weights in memory.
Rewards that are not a ``torch.nn.Module`` holding Linear or Conv2d layers (JPEG,
rotation, weighted sums) are refused: DPG needs a network to adapt.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from draft_core.errors import ConfigError
from draft_core.memory import run as checkpointed
from draft_core.memory import unwrap_reward
from draft_core.plugins.bases import EstimatorBase, as_sampler
from draft_core.plugins.protocols import EstimatorOutput, StepInputs
from draft_core.rewarding.contract import unchecked

CRITIC_ADAPTER = "draft_critic"


class DeterministicPolicyGradient(EstimatorBase):
    """states: trajectory steps used per training step. min_step: earliest step used (the
    paper notes Q is poor at high noise levels). critic_rank / critic_alpha / critic_lr:
    the critic's LoRA and its AdamW learning rate; critic_seed: its initial LoRA factors."""

    def __init__(
        self,
        states: int = 2,
        min_step: int = 0,
        critic_rank: int = 4,
        critic_alpha: float | None = None,
        critic_lr: float = 1e-3,
        critic_seed: int = 0,
    ) -> None:
        for key, value, low in (("states", states, 1), ("min_step", min_step, 0), ("critic_rank", critic_rank, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"estimator.{key} must be an integer >= {low}, got {value!r}.")
        if isinstance(critic_lr, bool) or not isinstance(critic_lr, (int, float)) or not critic_lr > 0:
            raise ConfigError(f"estimator.critic_lr must be a positive number, got {critic_lr!r}.")
        self.states = states
        self.min_step = min_step
        self.critic_rank = critic_rank
        self.critic_alpha = float(critic_alpha) if critic_alpha is not None else float(critic_rank)
        self.critic_lr = float(critic_lr)
        self.critic_seed = int(critic_seed)
        self.critic: nn.Module | None = None
        self.critic_params: list[nn.Parameter] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: dict[str, torch.Tensor] | None = None
        self._critic_grads: list[torch.Tensor] | None = None  # summed over this step's micro-batches
        self._micro_batches = 0

    def __repr__(self) -> str:
        return (
            f"DeterministicPolicyGradient(states={self.states}, min_step={self.min_step}, "
            f"critic_rank={self.critic_rank}, critic_lr={self.critic_lr})"
        )

    def differentiated_steps(self, num_steps: int) -> range:
        return range(self.min_step, num_steps)

    # -- checks ------------------------------------------------------------------------
    def check(self, sampler) -> None:
        """DPG's MDP is deterministic: DDIM with eta = 0 or the flow ODE (euler); enough steps for ``min_step``."""
        sampler = as_sampler(sampler)
        flow_ode = bool(sampler.flow_matching) and not sampler.stochastic
        if sampler.eta != 0 and not flow_ode:
            raise ConfigError(
                f"estimator 'dpg' needs a deterministic sampler (ddim with eta: 0, or euler), got {sampler!r}; "
                "ancestral sampling adds noise the policy does not choose."
            )
        if self.min_step >= sampler.num_steps:
            raise ConfigError(
                f"estimator.min_step={self.min_step} leaves no step of the {sampler.num_steps} sampling steps; "
                f"use 0 <= min_step <= {sampler.num_steps - 1}."
            )

    # -- the critic -----------------------------------------------------------------------
    def _build_critic(self, reward) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        if not isinstance(reward, nn.Module):
            raise ConfigError(
                f"estimator 'dpg' adapts the reward's own network as its critic (paper Appendix C.2), but the "
                f"reward {type(reward).__name__} is not a torch.nn.Module. Use a network reward (e.g. "
                "digit-classifier, aesthetic, hpsv2, pickscore) or another estimator (draft-k, draft-lv, refl)."
            )
        critic = copy.deepcopy(reward)
        targets = [name for name, m in critic.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and name]
        if not targets:
            raise ConfigError(
                f"estimator 'dpg': the reward {type(reward).__name__} has no Linear or Conv2d layers to adapt "
                "(after its first call); use a network reward or another estimator."
            )
        critic.requires_grad_(False)
        config = LoraConfig(r=self.critic_rank, lora_alpha=self.critic_alpha, target_modules=targets)
        # A fixed seed for the LoRA's initial A factors: a fresh run and a resumed one (which
        # overwrites them) then draw the same numbers from every other random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.critic_seed)
            inject_adapter_in_model(config, critic, adapter_name=CRITIC_ADAPTER)
        params = [p for n, p in critic.named_parameters() if "lora_" in n]
        for p in params:
            p.data = p.data.float()
            p.requires_grad_(True)
        self.critic, self.critic_params = critic, params
        self.optimizer = torch.optim.AdamW(params, lr=self.critic_lr, weight_decay=0.0)
        if self._pending is not None:
            self._load(self._pending)
            self._pending = None

    def _critic_names(self) -> list[str]:
        return [n for n, _ in self.critic.named_parameters() if "lora_" in n]

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The critic's LoRA tensors and AdamW state, as flat tensors (safetensors-friendly)."""
        if self.critic is None:
            return dict(self._pending or {})
        out = {f"critic.{n}": p.detach().clone() for n, p in zip(self._critic_names(), self.critic_params)}
        for i, p in enumerate(self.critic_params):
            for k, v in self.optimizer.state.get(p, {}).items():
                out[f"critic_opt.{i}.{k}"] = v.detach().clone() if torch.is_tensor(v) else torch.tensor(v)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.critic is None:
            self._pending = dict(state)  # applied when the critic is built (first call)
        else:
            self._load(state)

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        names = self._critic_names()
        missing = [n for n in names if f"critic.{n}" not in state]
        if missing:
            raise ConfigError(
                f"estimator 'dpg': the checkpoint's critic lacks {missing[:3]}...; was it saved with the same "
                "reward and estimator.critic_rank?"
            )
        with torch.no_grad():
            for n, p in zip(names, self.critic_params):
                p.copy_(state[f"critic.{n}"])
        opt = self.optimizer.state_dict()
        for i in range(len(self.critic_params)):
            entries = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"critic_opt.{i}.")}
            if entries:
                opt["state"][i] = entries
        self.optimizer.load_state_dict(opt)

    # -- one step --------------------------------------------------------------------------
    def __call__(self, inputs: StepInputs) -> EstimatorOutput:
        model, sampler, cond = inputs.model, inputs.sampler, inputs.cond
        self.check(sampler)
        T = sampler.num_steps
        trace: list = []
        with torch.no_grad():
            x0 = sampler.sample(model, cond, inputs.noise, trace=trace)
            images = model.decode(x0)
            ret = inputs.reward(images, cond.prompts).float()
        if self.critic is None:  # a copy of the reward itself, not of the core's checkpointing and checks around it
            self._build_critic(unchecked(unwrap_reward(inputs.reward)))
        pool = T - self.min_step
        picks = torch.randperm(pool, generator=inputs.generator)[: min(self.states, pool)] + self.min_step
        steps = sorted(int(i) for i in picks)

        batch, n = ret.shape[0], len(steps)
        split = inputs.backward is not None
        policy_loss = torch.zeros((), device=x0.device)
        critic_loss = 0.0
        critic_grads = [torch.zeros_like(p) for p in self.critic_params]
        q_values = []
        for i in steps:
            state = trace[i][1]
            # With autograd into θ, checkpointed: its UNet activations are recomputed in the policy
            # term's backward pass instead of being held while Q is evaluated and differentiated.
            action = checkpointed(sampler.action, model, state, i, cond)
            a = action.detach().requires_grad_(True)
            q = self.q_value(model, sampler, cond, state, i, a)
            (grad_a,) = torch.autograd.grad(q.sum(), a, retain_graph=True)
            err = (q - ret).pow(2).mean() / n
            # The critic's gradient now, and no reference to Q kept: this state's Q graph (its
            # UNet part is not traversed by that gradient) is freed before the policy term's
            # backward pass and the next state.
            for acc, g in zip(critic_grads, torch.autograd.grad(err, self.critic_params, allow_unused=True)):
                if g is not None:
                    acc += g.to(acc.dtype)
            critic_loss += err.item()
            q_values.append(q.detach())
            del q, err
            term = -(grad_a.detach() * action).flatten(1).sum(1).sum() / (batch * n)
            if split:
                inputs.backward(term)
                term = term.detach()
            policy_loss = policy_loss + term
        self._accumulate(critic_grads)
        q_all = torch.cat(q_values)
        return EstimatorOutput(
            loss=policy_loss,
            reward=ret.detach(),
            images=images.detach(),
            queries=1 + n,
            logs={"critic_loss": critic_loss, "q_mean": q_all.mean().item(), "dpg_steps": float(n)},
            backward_done=split,
        )

    def _accumulate(self, grads: list[torch.Tensor]) -> None:
        if self._critic_grads is None:
            self._critic_grads = grads
        else:
            for acc, g in zip(self._critic_grads, grads):
                acc += g
        self._micro_batches += 1

    def on_optimizer_step(self, applied: bool) -> None:
        """After the runner's optimiser step (``applied``) or its skip: update the critic with
        the mean of this step's micro-batch gradients, averaged over processes, or drop them.

        A critic gradient that is not finite (all processes agree, after the all-reduce)
        leaves the critic unchanged too."""
        grads, count = self._critic_grads, self._micro_batches
        self._critic_grads, self._micro_batches = None, 0
        if not applied or grads is None:
            return
        for g in grads:
            g /= count
        _average_across_processes(grads)
        if not all(torch.isfinite(g).all() for g in grads):
            return
        for p, g in zip(self.critic_params, grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def q_value(self, model, sampler, cond, state: torch.Tensor, step: int, action: torch.Tensor) -> torch.Tensor:
        """Q_φ(s_step, action) of Equation 3: transition, one-step denoise, adapted reward. [B]

        Gradients flow to ``action`` and to the critic's LoRA; the UNet's parameters are
        used but this value is never differentiated with respect to them here.
        """
        nxt = sampler.transition(model, state, step, action)
        x0_hat = nxt if step == sampler.num_steps - 1 else sampler.predict_x0(model, nxt, step + 1, cond)
        return self.critic(model.decode(x0_hat), cond.prompts).float()


def _average_across_processes(grads: list[torch.Tensor]) -> None:
    """Data parallel: average the critic's gradients over processes (one all-reduce), so every
    process keeps the same critic, as the runner does for the LoRA."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
