"""model.offload_text_encoders: the run's prompts encoded once, cached in the run folder, reused on resume;
the text encoders are off the device (here: on ``meta``, where running them would fail) during steps."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import draft_core.training.prompt_cache as prompt_cache
from draft_core import cli
from draft_core.config import load_config
from draft_core.models.loading import load_model
from draft_core.training.prompt_cache import PromptCache, encoder_key, text_encoders, wants_offload

FAST = [
    "model.name=tiny-random",
    "reward.name=jpeg-compressibility",
    "prompts.items=[a cat, a dog, a red fox]",
    "sampler.steps=2",
    "estimator.name=draft-k",
    "estimator.k=1",
    "train.batch_size=2",
    "train.lr=0.01",
    "train.sample_per_prompt=1",
    "train.sample_prompts=[a cat]",
    "lora.rank=2",
    "train.sample_every=0",
    "train.checkpoint_every=2",
]


def train(*argv: str) -> None:
    assert cli.main(["train", *argv, "--no-progress"]) == 0


def sets(*extra: str) -> list[str]:
    return sum((["--set", o] for o in FAST + list(extra)), [])


def lora(run):
    return load_file(run / "lora" / "pytorch_lora_weights.safetensors")


class Watch:
    """Counts text-encoder forward passes, and records where the encoders' weights are each time the
    denoiser runs (hooks on the modules the runner loads)."""

    def __init__(self, monkeypatch):
        import draft_core.training.runner as runner

        self.encoder_calls, self.encoder_devices = 0, set()
        original = runner.Trainer.load_model

        def load(trainer, device, dtype):
            model = original(trainer, device, dtype)
            for enc in text_encoders(model).values():
                enc.register_forward_pre_hook(lambda *_: self._encoded())
            model.denoiser.register_forward_pre_hook(lambda *_: self._denoised(model))
            return model

        monkeypatch.setattr(runner.Trainer, "load_model", load)

    def _encoded(self):
        self.encoder_calls += 1

    def _denoised(self, model):
        self.encoder_devices |= {p.device.type for e in text_encoders(model).values() for p in e.parameters()}


def test_settings():
    assert wants_offload("auto", torch.device("cuda")) and not wants_offload("auto", torch.device("cpu"))
    # auto follows draft plan's rule: encoders of 1 GiB or more (T5-XXL) go, small ones stay
    assert wants_offload("auto", torch.device("cuda"), 2**31) and not wants_offload("auto", torch.device("cuda"), 2**20)
    assert wants_offload(True, torch.device("cpu")) and wants_offload("true", torch.device("cpu"))
    assert not wants_offload(False, torch.device("cuda")) and not wants_offload("false", torch.device("cuda"))
    for text, value in (("auto", "auto"), ("true", True), ("false", False), ("'true'", "true"), ("'false'", "false")):
        assert load_config(None, [f"model.offload_text_encoders={text}"]).model.offload_text_encoders == value
    with pytest.raises(Exception, match="offload_text_encoders"):
        load_config(None, ["model.offload_text_encoders=sometimes"])


def test_offloaded_run_trains_as_the_plain_one_and_resumes_from_the_cache(tmp_path, monkeypatch):
    plain, off = tmp_path / "plain", tmp_path / "off"
    train("--preset", "quickstart", "--out", str(plain), *sets("train.steps=2"))
    # Offloaded encoders go to `meta`: a step that ran them, or read their weights, would fail.
    monkeypatch.setattr(prompt_cache, "HOME", torch.device("meta"))
    watch = Watch(monkeypatch)
    train("--preset", "quickstart", "--out", str(off), *sets("train.steps=2", "model.offload_text_encoders=true"))
    # Encoded once at setup (3 training prompts, one batch; the empty prompt inside the same call).
    assert watch.encoder_calls > 0 and watch.encoder_devices == {"meta"}
    cached = list((off / "prompt_cache").glob("*.safetensors"))
    assert len(cached) == 1
    a, b = lora(plain), lora(off)
    assert a.keys() == b.keys()
    for k in a:  # same prompts, encoded in batches of another size: float32 rounding only
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6 * a[k].abs().max().item())
    before = cached[0].read_bytes()
    watch.encoder_calls = 0
    train("--resume", str(off), "--set", "train.steps=4")
    assert watch.encoder_calls == 0 and watch.encoder_devices == {"meta"}  # the cache was read, not recomputed
    assert cached[0].read_bytes() == before


def test_cache_matches_the_model_and_moves_encoders_only_for_a_new_prompt():
    model = load_model("tiny-random", "cpu")
    direct = model.encode_prompts(["a cat", "a dog"])
    cache = PromptCache(model, encoder_key(model))
    cache.add(["a dog", "a cat"])
    cache.install()
    got = model.encode_prompts(["a cat", "a dog"])
    torch.testing.assert_close(got.cond, direct.cond, rtol=1e-5, atol=1e-6)
    assert torch.equal(got.uncond, direct.uncond) and got.prompts == ["a cat", "a dog"]
    assert cache.encoded == 2
    model.encode_prompts(["a cow", "a cat"])  # one new prompt: encoded, the other read back
    assert cache.encoded == 3


def test_key_follows_the_encoder_weights():
    a, b = load_model("tiny-random", "cpu"), load_model("tiny-random", "cpu")
    assert encoder_key(a) == encoder_key(b)
    with torch.no_grad():
        next(iter(b.text_encoder.parameters())).mul_(1.01)
    assert encoder_key(a) != encoder_key(b)
    assert encoder_key(a) != encoder_key(load_model("tiny-random-flux", "cpu"))
