"""Every built-in estimator passes the shared checklist (draft_core.testing_estimators)."""

from __future__ import annotations

from draft_core.testing_estimators import EstimatorConformance
from draft_estimators import DeterministicPolicyGradient, FullBackprop, LowVariance, ReFL, TruncatedBackprop
from draft_estimators.kl import KLRegularized


class TestFullDraft(EstimatorConformance):
    def make_estimator(self):
        return FullBackprop()


class TestDraftK(EstimatorConformance):
    def make_estimator(self):
        return TruncatedBackprop(k=2)


class TestDraftKRandomTruncation(EstimatorConformance):
    def make_estimator(self):
        return TruncatedBackprop(k_range=[1, 3])


class TestDraftLV(EstimatorConformance):
    def make_estimator(self):
        return LowVariance(n=2)


class TestReFL(EstimatorConformance):
    def make_estimator(self):
        return ReFL(m=2)


class TestDPG(EstimatorConformance):
    def make_estimator(self):
        return DeterministicPolicyGradient(states=2, critic_rank=2)


class TestKLWrapper(EstimatorConformance):
    def make_estimator(self):
        return KLRegularized(LowVariance(n=1), 0.5)


class TestDraftKAlignPropTruncation(EstimatorConformance):
    def make_estimator(self):
        return TruncatedBackprop(alignprop_range=[0, 3])
