"""What a run shows while it trains, end to end on tiny-random: experiment trackers (read back with
each one's own reader), validation rows and grids, the weight average's LoRA, the LR schedule, and
that none of it changes the training or breaks an exact resume.

Three runs of one config (cosine LR with warm-up, a weight average, a learned guidance schedule):
``straight`` with trackers and validation; ``split``, the same, failing during step 3 and resumed;
``plain`` without trackers or validation. Their LoRAs must be identical.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import accelerate.utils
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from draft_core import cli
from draft_core.config import load_config
from draft_core.media import read_png_info
from draft_core.training.components import build_components
from draft_core.training.runner import Trainer

BASE = [
    "model.name=tiny-random",
    "reward.name=jpeg-compressibility",
    "prompts.source=animals",
    "sampler.steps=2",
    "estimator={name: draft-k, k: 1}",
    "train.batch_size=1",
    "train.lr=0.01",
    "train.sample_per_prompt=1",
    "train.sample_prompts=[a cat]",
    "lora.rank=2",
    "train.steps=4",
    "train.checkpoint_every=2",
    "train.sample_every=2",
    "train.lr_schedule=cosine",
    "train.lr_warmup_steps=1",
    "train.ema.decay=0.8",
    "learn.guidance=true",
]
AVAILABLE = {name: getattr(accelerate.utils, f"is_{name}_available")() for name in ("tensorboard", "wandb", "mlflow")}
TRACKERS = [name for name, ok in AVAILABLE.items() if ok]
WATCH = [
    f"train.trackers=[{', '.join(TRACKERS)}]",
    "train.validation={prompts: [a dog, a fox], every: 2, n_per_prompt: 1, rewards: [jpeg-compressibility, jpeg-incompressibility]}",
]
VAL = ["val/jpeg-compressibility", "val/jpeg-incompressibility"]


def _sets(overrides):
    return sum((["--set", o] for o in overrides), [])


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _lora(run: Path, folder: str = "lora") -> dict[str, torch.Tensor]:
    return load_file(run / folder / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(root / "wandb"),
            "WANDB_SILENT": "true",
            "MLFLOW_TRACKING_URI": (root / "mlruns").as_uri(),
            "MLFLOW_ALLOW_FILE_STORE": "true",
        }.items():
            mp.setenv(key, value)
        (root / "wandb").mkdir()
        straight, split, plain = root / "straight", root / "split", root / "plain"
        assert (
            cli.main(["train", "--preset", "quickstart", "--out", str(straight), "--no-progress", *_sets(BASE + WATCH)])
            == 0
        )
        # The split run fails during step 3 (after the step-2 checkpoint), then resumes to the end.
        config = load_config(None, BASE + WATCH, preset="quickstart")
        trainer = Trainer(config, split, build_components(config), progress=False)
        trainer.setup()
        reward, calls = trainer.c.reward, []

        def failing(images, prompts):
            calls.append(1)
            if len(calls) == 3:  # draft-k calls the training reward once per step
                raise RuntimeError("simulated crash in step 3")
            return reward(images, prompts)

        trainer.c.reward = failing
        with pytest.raises(RuntimeError, match="simulated crash"):
            trainer.train()
        assert cli.main(["train", "--resume", str(split), "--no-progress"]) == 0
        assert cli.main(["train", "--preset", "quickstart", "--out", str(plain), "--no-progress", *_sets(BASE)]) == 0
    return {"straight": straight, "split": split, "plain": plain, "root": root}


def test_validation_rows_at_step_0_every_n_and_the_end_and_the_same_after_a_resume(runs):
    rows = _rows(runs["straight"])
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["step"] for r in rows if all(k in r for k in VAL)] == [0, 2, 4]
    assert not any(k in r for r in rows if r["step"] in (1, 3) for k in VAL)
    # Two rewards of opposite sign, the second not the training reward.
    assert all(r[VAL[0]] == -r[VAL[1]] and r[VAL[0]] < 0 for r in rows if VAL[0] in r)
    split = _rows(runs["split"])
    assert [r["step"] for r in split] == [0, 1, 2, 3, 4]
    for a, b in zip(rows, split):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    for step in (0, 2, 4):
        info = read_png_info(runs["straight"] / "samples" / f"val-step-{step:06d}.png")
        assert info["prompt"] == ["a dog", "a fox"] and info["step"] == step and "seeding" in info


def test_validation_and_trackers_do_not_change_the_training_and_the_average_resumes_exactly(runs):
    straight, split, plain = (_lora(runs[k]) for k in ("straight", "split", "plain"))
    assert straight.keys() == plain.keys() == split.keys()
    assert all(torch.equal(straight[k], plain[k]) and torch.equal(straight[k], split[k]) for k in straight)
    ema_a, ema_b = _lora(runs["straight"], "lora_ema"), _lora(runs["split"], "lora_ema")
    assert ema_a.keys() == straight.keys()
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)  # the average survived the crash and resume bit for bit
    assert any(not torch.equal(ema_a[k], straight[k]) for k in ema_a if "lora_B" in k)  # and it is an average
    extra = load_file(runs["split"] / "checkpoints" / "step-000004" / "extra.safetensors")
    assert int(extra["weights_ema.step"]) == 4 and "weights_ema.0" in extra
    # The averaged guidance schedule is saved beside the averaged LoRA, and differs from the trained one.
    ema_g, last_g = (load_file(runs["straight"] / f / "sampler_params.safetensors") for f in ("lora_ema", "lora"))
    assert ema_g.keys() == last_g.keys() and any(not torch.equal(ema_g[k], last_g[k]) for k in ema_g)


def test_the_rows_learning_rates_follow_diffusers_cosine_with_warmup(runs):
    from diffusers.optimization import get_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    ref = get_scheduler("cosine", opt, num_warmup_steps=1, num_training_steps=4)
    want = []
    for _ in range(4):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert [r["lr"] for r in _rows(runs["straight"]) if r["step"] > 0] == want
    assert [r["lr"] for r in _rows(runs["split"]) if r["step"] > 0] == want


def test_grids_are_labelled_and_carry_their_parameters(runs):
    samples = runs["straight"] / "samples"
    for name in ("step-000000.png", "step-000002.png", "step-000004.png", "before_after.png"):
        info = read_png_info(samples / name)
        assert info["prompt"] == ["a cat"] and info["model"] == "tiny-random" and info["sampler"] == "ddim", name
        assert info["steps"] == 2 and info["guidance"] == 7.5 and info["layout"]["left"] > 0, name
        with Image.open(samples / name) as im:
            assert im.text["parameters"].startswith("a cat"), name
    assert read_png_info(samples / "step-000004.png")["loras"] == [
        {"path": str(runs["straight"] / "lora"), "scale": 1.0}
    ]
    assert read_png_info(samples / "step-000000.png")["loras"] == []
    assert read_png_info(samples / "step-000004.png")["learned"] == "guidance schedule"


def test_draft_sample_uses_the_average_as_a_lora(runs, tmp_path, capsys):
    out = tmp_path / "s"
    lora = runs["straight"] / "lora_ema"
    assert (
        cli.main(
            [
                "sample",
                "--model",
                "tiny-random",
                "--prompt",
                "a cat",
                "--n",
                "1",
                "--steps",
                "2",
                "--lora",
                f"{lora}:0.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    info = read_png_info(out / "0000.png")
    assert info["loras"] == [{"path": str(lora), "scale": 0.5}] and info["prompt"] == "a cat" and info["seed"] == 0
    assert f"using the learned guidance schedule from {lora}" in capsys.readouterr().err  # its schedule came along
    assert info["learned"] == "from the LoRA folder" and info["index"] == 0


# -- each tracker, read back with its own reader ---------------------------------------------------------


def _need(name: str) -> None:
    if not AVAILABLE[name]:
        pytest.skip(f"{name} is not installed here (pip install draft-diffusion[trackers] installs it)")


def _metric_steps(rows: list[dict], key: str) -> list[int]:
    return [r["step"] for r in rows if key in r]


def test_tensorboard_events_hold_every_scalar_the_grids_and_the_config(runs):
    _need("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for name in ("straight", "split"):
        logdir = runs[name] / "logs" / "draft"
        events = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
        events.Reload()
        rows = _rows(runs[name])
        for key in ("reward_mean", "loss", "grad_norm", "lr", "reward_queries", *VAL):
            logged = events.Scalars(key)
            assert [e.step for e in logged] == _metric_steps(rows, key), (name, key)
            # TensorBoard stores float32: equal to the row's value to float32 rounding.
            assert [e.value for e in logged] == pytest.approx([r[key] for r in rows if key in r], rel=1e-6), (name, key)
        images = {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}
        if name == "straight":
            assert images == {
                "samples": [0, 2, 4],
                "validation": [0, 2, 4],
                "guidance_schedule": [2, 4],
                "before_after": [4],
            }
        hparams = None
        for folder in (p for p in logdir.iterdir() if p.is_dir()):  # add_hparams writes a session subfolder
            session = EventAccumulator(str(folder))
            session.Reload()
            try:
                start = session.PluginTagToContent("hparams")["_hparams_/session_start_info"]
            except KeyError:
                continue
            hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
        assert hparams is not None and hparams["train.lr"].number_value == 0.01
        assert hparams["reward.name"].string_value == "jpeg-compressibility"


def _wandb_records(path: Path):
    """The records of a W&B offline run file (LevelDB log format: 32 KiB blocks, 7-byte record headers)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buffer = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buffer += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buffer)
            buffer = b""
            yield record


def test_wandb_offline_run_holds_every_scalar_the_grids_and_the_config(runs):
    _need("wandb")
    straight_id = json.loads((runs["straight"] / "logs" / "trackers.json").read_text())["wandb"]
    split_id = json.loads((runs["split"] / "logs" / "trackers.json").read_text())["wandb"]
    folders = sorted((runs["root"] / "wandb" / "wandb").glob("offline-run-*"))
    assert len([f for f in folders if f.name.endswith(split_id)]) == 2  # the resume continued the same run id
    (folder,) = [f for f in folders if f.name.endswith(straight_id)]
    history: dict[int, dict[str, float]] = {}
    config = {}
    for record in _wandb_records(next(folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history.setdefault(items["_step"], {}).update(items)
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
    rows = _rows(runs["straight"])
    for key in ("reward_mean", "lr", *VAL):
        assert sorted(s for s, h in history.items() if key in h) == _metric_steps(rows, key), key
        assert [history[r["step"]][key] for r in rows if key in r] == [r[key] for r in rows if key in r], key
    assert history[4]["samples/_type"] == "images/separated" and history[0]["validation/count"] == 1
    assert config["train.lr"] == 0.01 and config["estimator.name"] == "draft-k"
    assert len(list((folder / "files" / "media" / "images").glob("samples_*.png"))) == 3


def test_mlflow_file_store_holds_every_scalar_the_grids_and_the_config(runs):
    _need("mlflow")
    from mlflow.tracking import MlflowClient

    client = MlflowClient((runs["root"] / "mlruns").as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "draft"]
    found = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(found) == ["split", "straight"]  # the plain run has no trackers
    for name in ("straight", "split"):  # the split run's resume continued its MLflow run: one run, every step once
        run, rows = found[name], _rows(runs[name])
        assert run.data.params["train.lr"] == "0.01" and run.data.params["train.ema.decay"] == "0.8"
        for key in ("reward_mean", *VAL):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == _metric_steps(rows, key), (name, key)
            assert [m.value for m in history] == [r[key] for r in rows if key in r], (name, key)
    artifacts = [a.path for a in client.list_artifacts(found["straight"].info.run_id, "samples")]
    assert artifacts == ["samples/step-000000.png", "samples/step-000002.png", "samples/step-000004.png"]
