"""benchmarks/digits_quality.py's ``--model digits-flow`` path runs end to end at toy scale."""

from __future__ import annotations

import digits_quality
import pytest


def test_digits_flow_quality_at_toy_scale():
    res = digits_quality.evaluate(n=1, steps=2, model_name="digits-flow")
    assert res["model"] == "digits-flow" and res["steps"] == 2
    assert len(res["per_digit"]) == 10
    assert all(len(d["svc_predictions"]) == 1 for d in res["per_digit"].values())
    assert 0 <= res["mean"]["svc_accuracy"] <= 1


def test_unknown_model_and_flow_lora_are_refused():
    with pytest.raises(ValueError, match="digits-flow"):
        digits_quality.evaluate(n=1, steps=2, model_name="digits-xl")
    with pytest.raises(ValueError, match="lora"):
        digits_quality.evaluate(n=1, steps=2, model_name="digits-flow", lora="x.safetensors")
