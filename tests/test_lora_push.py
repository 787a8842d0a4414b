"""``draft lora push``: exactly what would go to the Hub (files and card), offline refusals, the upload calls."""

from __future__ import annotations

import socket
import time

import pytest
from run_fixtures import make_run
from safetensors.torch import load_file

from draft_core.cli import main
from draft_core.lora import push as push_module
from draft_core.lora.files import read_lora, to_kohya

REPO = "alice/digits-bold"
FILES = [
    "README.md",
    "config.yaml",
    "digits-bold_kohya.safetensors",
    "images/before_after.png",
    "images/reward_curve.png",
    "pytorch_lora_weights.safetensors",
    "report.html",
]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: staging and listing must work offline."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network used: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("push"), lora=True)


@pytest.fixture(scope="module")
def untouched(tmp_path_factory):
    """A run that nothing may stage or upload."""
    return make_run(tmp_path_factory.mktemp("refused"), lora=True)


def test_dry_run_stages_and_lists_exactly_what_would_be_uploaded(run, no_network, capsys):
    assert main(["lora", "push", str(run), "--repo", REPO, "--dry-run"]) == 0
    out = capsys.readouterr().out
    staged = run / "push"
    assert [name for name, _ in push_module.listing(staged)] == FILES
    for name in FILES:
        assert f"  {name} " in out
    assert "would upload to alice/digits-bold (public)" in out and "nothing was uploaded" in out
    # The kohya file is the run's LoRA in the kohya layout.
    kohya, expected = load_file(staged / FILES[2]), to_kohya(read_lora(run / "lora"))
    assert kohya.keys() == expected.keys() and all((kohya[k] == expected[k]).all() for k in kohya)
    card = (staged / "README.md").read_text()
    header = card.split("---\n")[1]
    assert "base_model" not in header and "library_name: diffusers" in header  # digits is no Hub model
    for text in (
        "![reward during training](images/reward_curve.png)",
        "images/before_after.png",
        "draft train --preset quickstart",  # the command that trained it, not this one
        "hf download alice/digits-bold --local-dir digits-bold",
        "--lora digits-bold:1.0",
        "| steps | 30 |",
        "digits-bold_kohya.safetensors",
    ):
        assert text in card, text
    assert "report.html" in card


def test_a_hub_base_model_stays_in_the_card(tmp_path, no_network):
    run = make_run(tmp_path, model="CompVis/stable-diffusion-v1-4", lora=True)
    card = (push_module.stage(run, REPO) / "README.md").read_text()
    assert card.startswith("---\nbase_model: CompVis/stable-diffusion-v1-4\n")
    assert "pipe.load_lora_weights('alice/digits-bold')" in card


def test_the_hub_card_loads_the_lora_with_the_base_models_own_pipeline(tmp_path):
    """An SDXL base gets SDXL's pipeline class in the usage lines, not Stable Diffusion's."""
    base = tmp_path / "sdxl-base"
    base.mkdir()
    (base / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    usage = push_module.hub_usage(str(base), REPO, "x_kohya.safetensors")
    assert "from diffusers import StableDiffusionXLPipeline\n" in usage
    assert "StableDiffusionPipeline" not in usage


class FakeApi:
    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", push_module.listing(kwargs["folder_path"]), kwargs))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: the test command sets it for the whole suite.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: socket.socket())  # "reachable"
    return FakeApi.calls


def test_push_creates_the_repo_and_uploads_the_staged_folder(run, fake_hub, capsys):
    assert main(["lora", "push", str(run), "--repo", REPO, "--private"]) == 0
    (create, repo, kwargs), (upload, files, up) = fake_hub
    assert (create, repo) == ("create_repo", REPO) and kwargs["private"] is True and kwargs["exist_ok"] is True
    assert upload == "upload_folder" and [name for name, _ in files] == FILES
    assert up["repo_id"] == REPO and up["folder_path"] == run / "push"
    assert "uploaded to https://huggingface.co/alice/digits-bold (private)" in capsys.readouterr().out


@pytest.mark.parametrize("why", ["offline", "unreachable", "hangs", "no token"])
def test_push_refuses_at_once_without_network_or_token(untouched, fake_hub, monkeypatch, capsys, why):
    run = untouched
    if why == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    elif why == "unreachable":

        def fail(*a, **k):
            raise socket.gaierror(-2, "Name or service not known")

        monkeypatch.setattr(socket, "create_connection", fail)
    elif why == "hangs":  # a name lookup that never answers: the check gives up after CONNECT_TIMEOUT
        monkeypatch.setattr(push_module, "CONNECT_TIMEOUT", 0.1)

        def hang(*a, **k):
            time.sleep(1)
            raise OSError("answered too late")

        monkeypatch.setattr(socket, "create_connection", hang)
    else:
        import huggingface_hub

        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["lora", "push", str(run), "--repo", REPO]) == 2
    err = capsys.readouterr().err
    expected = {
        "offline": "HF_HUB_OFFLINE is set",
        "unreachable": "Name or service not known",
        "hangs": "no answer within 0.1 s",
        "no token": "hf auth login",
    }[why]
    assert expected in err and err.count("\n") == 1  # one paragraph
    assert fake_hub == [] and not (run / "push").exists()  # nothing staged, nothing sent


@pytest.mark.parametrize("repo", ["alice", "alice/bold/x", "alice/bold digits", "alice/--x"])
def test_push_rejects_a_bad_repo_id(run, repo, no_network, capsys):
    assert main(["lora", "push", str(run), "--repo", repo, "--dry-run"]) == 2
    assert f"--repo '{repo}' is not a Hub repository id" in capsys.readouterr().err


def test_push_needs_a_trained_lora(tmp_path, no_network, capsys):
    run = make_run(tmp_path)  # a card but no LoRA file yet
    assert main(["lora", "push", str(run), "--repo", REPO, "--dry-run"]) == 2
    assert "holds no lora/pytorch_lora_weights.safetensors" in capsys.readouterr().err
