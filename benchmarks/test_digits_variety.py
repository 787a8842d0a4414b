"""benchmarks/digits_variety.py's measure: the mean pairwise mean-absolute pixel difference."""

from __future__ import annotations

import digits_variety
import torch


def test_within_prompt_distance_is_the_mean_pairwise_absolute_difference():
    a, b, c = torch.zeros(3, 4, 4), torch.ones(3, 4, 4), torch.full((3, 4, 4), 0.25)
    assert digits_variety.within_prompt_distance(torch.stack([a, a, a])) == 0
    # pairs (a, b) 1, (a, c) 0.25, (b, c) 0.75: mean 2/3
    assert abs(digits_variety.within_prompt_distance(torch.stack([a, b, c])) - 2 / 3) < 1e-6
    # pooling averages texture away: a checkerboard and its negative differ by 1 everywhere, by 0 in 2x2 means
    board = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    pair = torch.stack([board, 1 - board]).float().expand(3, 2, 4, 4).transpose(0, 1)
    assert digits_variety.within_prompt_distance(pair) == 1
    assert digits_variety.within_prompt_distance(pair, pool=2) == 0


def test_data_variety_is_positive_and_seeded():
    v = digits_variety.data_variety(3, seed=0)
    assert 0.02 < v < 0.5
    assert v == digits_variety.data_variety(3, seed=0) != digits_variety.data_variety(3, seed=1)
