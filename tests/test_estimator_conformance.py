"""Every built-in estimator passes the shared checklist (draft_core.testing.estimators)."""

from __future__ import annotations

from draft_core.samplers import DDPMSampler
from draft_core.samplers.ddim import DDIMSampler
from draft_core.testing.estimators import EstimatorConformance
from draft_estimators import DDPO, GRPO, DeterministicPolicyGradient, FullBackprop, LowVariance, ReFL, TruncatedBackprop
from draft_estimators.kl import KLRegularized


class TestFullDraft(EstimatorConformance):
    def make_estimator(self):
        return FullBackprop()


class TestDraftK(EstimatorConformance):
    def make_estimator(self):
        return TruncatedBackprop(k=2)

    def make_unsupported_sampler(self):
        return DDIMSampler(steps=1)  # K = 2 does not fit


class TestDraftKRandomTruncation(EstimatorConformance):
    def make_estimator(self):
        return TruncatedBackprop(k_range=[1, 3])

    def make_unsupported_sampler(self):
        return DDIMSampler(steps=2)


class TestDraftLV(EstimatorConformance):
    def make_estimator(self):
        return LowVariance(n=2)


class TestReFL(EstimatorConformance):
    def make_estimator(self):
        return ReFL(m=2)

    def make_unsupported_sampler(self):
        return DDIMSampler(steps=1)


class TestDPG(EstimatorConformance):
    def make_estimator(self):
        return DeterministicPolicyGradient(states=2, critic_rank=2)

    def make_unsupported_sampler(self):
        return DDIMSampler(steps=3, eta=1.0)  # ancestral noise the policy does not choose


class TestKLWrapper(EstimatorConformance):
    def make_estimator(self):
        return KLRegularized(LowVariance(n=1), 0.5)


class TestDDPO(EstimatorConformance):
    def make_estimator(self):
        return DDPO()

    def make_sampler(self):
        return DDIMSampler(steps=self.steps, guidance_scale=3.0, eta=1.0)


class TestGRPO(EstimatorConformance):
    def make_estimator(self):
        return GRPO(group_size=2, beta=0.1, minibatches=2)

    def make_sampler(self):
        return DDPMSampler(steps=self.steps, guidance_scale=3.0)


class TestDraftKAlignPropTruncation(EstimatorConformance):
    def make_estimator(self):
        return TruncatedBackprop(alignprop_range=[0, 3])


class TestDraftKOnAFlowFamily(EstimatorConformance):
    """The checklist on another model family (``make_model``): the sd3 family in pixel space, with euler."""

    def make_model(self):
        from flow_fixtures import tiny_pixel_flow

        return tiny_pixel_flow()

    def make_sampler(self):
        from draft_core.samplers.flow import EulerSampler

        return EulerSampler(steps=self.steps, guidance_scale=3.0)

    def make_estimator(self):
        return TruncatedBackprop(k=2)
