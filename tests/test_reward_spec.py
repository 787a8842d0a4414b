"""One reading of the reward section: a single reward is one term of weight 1 (draft_core.rewarding.spec)."""

from __future__ import annotations

from draft_core.rewarding.spec import RewardTerm, reward_label, reward_problems, reward_terms, set_term_argument


def test_a_single_reward_is_one_term_of_weight_one():
    assert reward_terms({"name": "jpeg-compressibility", "quality": 30}) == [
        RewardTerm("jpeg-compressibility", 1.0, {"quality": 30}, "reward")
    ]


def test_weighted_terms_keep_config_order_weights_and_arguments():
    section = {"weights": {"b": 2, "a": 0.5}, "args": {"a": {"quality": 30}}}
    assert reward_terms(section) == [
        RewardTerm("b", 2.0, {}, "reward.args.b"),
        RewardTerm("a", 0.5, {"quality": 30}, "reward.args.a"),
    ]


def test_one_label_for_both_shapes():
    assert reward_label({"name": "aesthetic"}) == "aesthetic"
    assert reward_label({"name": "jpeg-compressibility", "quality": 30}) == "jpeg-compressibility(quality=30)"
    assert (
        reward_label(
            {
                "weights": {"aesthetic": 1, "jpeg-compressibility": 0.5},
                "args": {"jpeg-compressibility": {"quality": 30}},
            }
        )
        == "1·aesthetic + 0.5·jpeg-compressibility(quality=30)"
    )


def test_an_argument_is_set_where_each_shape_keeps_it():
    single = {"name": "hpsv2"}
    set_term_argument(single, "hpsv2", "dtype", "bfloat16")
    weighted = {"weights": {"hpsv2": 1.0, "aesthetic": 2.0}}
    set_term_argument(weighted, "hpsv2", "dtype", "bfloat16")
    assert single == {"name": "hpsv2", "dtype": "bfloat16"}
    assert weighted["args"] == {"hpsv2": {"dtype": "bfloat16"}}
    assert reward_terms(weighted)[0].kwargs == {"dtype": "bfloat16"}


def test_shape_problems_are_named():
    assert reward_problems({"name": "aesthetic"}) == []
    assert "needs a 'name'" in reward_problems({})[0]
    assert "'reward.weights.a' must be a finite number" in reward_problems({"weights": {"a": float("nan")}})[0]
    assert "has 'weights' and also ['quality']" in reward_problems({"weights": {"a": 1}, "quality": 3})[0]
