"""``draft lora push``: a run's LoRA on the Hugging Face Hub, with its model card, pictures and kohya file.

What goes up is staged first in ``RUN/push/`` (kept, so what was sent can be looked at):

- ``pytorch_lora_weights.safetensors`` (diffusers format) and ``sampler_params.safetensors``
  when the run learned sampler hyperparameters;
- ``<name>_kohya.safetensors``: the same LoRA in the kohya layout (AUTOMATIC1111, ComfyUI);
- ``README.md``: the model card, with the reward curve and the before/after grid;
- ``images/reward_curve.png``, ``images/before_after.png``;
- ``config.yaml`` (the resolved config) and ``report.html`` (the run's report page).

Uploading is ``huggingface_hub``'s ``create_repo`` + ``upload_folder``. Without a network
(or with ``HF_HUB_OFFLINE`` set) it stops at once, before anything is staged.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

from draft_core.errors import DraftError
from draft_core.lora.adapters import WEIGHT_NAME

CONNECT_TIMEOUT = 5.0  # seconds for the one reachability check (name lookup included)
_TRUE = {"1", "ON", "YES", "TRUE"}


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    problem = None
    if repo_id.count("/") != 1:
        problem = "it must be USER/NAME (or ORG/NAME): one slash"
    else:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as exc:
            problem = str(exc).split("\n")[0]
    if problem:
        raise DraftError(
            f"--repo '{repo_id}' is not a Hub repository id: {problem}. Use letters, digits, '-', '_' and '.', e.g. --repo alice/digits-bold."
        )
    return repo_id


def run_lora(run_dir: Path) -> Path:
    from draft_core.rundir import RunDir

    folder = RunDir(run_dir).lora
    if not (folder / WEIGHT_NAME).is_file():
        raise DraftError(
            f"'{run_dir}' holds no {'lora/' + WEIGHT_NAME}: give a run folder written by `draft train` "
            f"(the LoRA is written at the first checkpoint)."
        )
    from draft_core.lora.files import read_lora

    read_lora(folder)  # a bad file is refused here, before anything is staged or uploaded
    return folder


def stage(run_dir: str | Path, repo_id: str) -> Path:
    """Fill ``RUN/push/`` with what the repository will hold; returns that folder."""
    from draft_core.lora.card import run_card_info, write_model_card
    from draft_core.lora.files import export_kohya
    from draft_core.lora.redact import redact_staged
    from draft_core.media import plot_reward_curve, save_before_after
    from draft_core.report import write_report
    from draft_core.rundir import CONFIG, REPORT, REWARD_CURVE, RunDir

    run = RunDir(run_dir)
    run_dir = run.path
    lora = run_lora(run_dir)
    out = run_dir / "push"
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    shutil.copy2(lora / WEIGHT_NAME, out / WEIGHT_NAME)
    for extra in sorted(lora.glob("*.safetensors")):
        if extra.name != WEIGHT_NAME:
            shutil.copy2(extra, out / extra.name)  # the learned guidance schedule / negative prompt
    name = repo_id.split("/")[1]
    kohya = export_kohya(lora, out / f"{name}_kohya.safetensors").name
    images = []
    if plot_reward_curve(run.metrics, out / "images" / REWARD_CURVE, f"reward during training ({run_dir.name})"):
        images.append(("reward during training", f"images/{REWARD_CURVE}"))
    grids = sorted(run.samples.glob("step-*.png"))
    if len(grids) > 1:  # the first grid beside the last (the run's own before_after.png is the same picture)
        save_before_after(
            grids[0],
            grids[-1],
            out / "images" / "before_after.png",
            (f"before: {grids[0].stem.replace('-', ' ')}", f"after: {grids[-1].stem.replace('-', ' ')}"),
        )
        images.append(
            (
                f"before (left, {grids[0].stem}) and after (right, {grids[-1].stem}): fixed prompts and seeds",
                "images/before_after.png",
            )
        )
    shutil.copy2(run.config, out / CONFIG)
    write_report([run_dir], out / REPORT)
    info = run_card_info(run_dir, command=training_command(lora))
    sections = "\n\n".join(f"![{alt}]({path})\n\n*{alt}*" for alt, path in images)
    card = write_model_card(
        out,
        info,
        usage=hub_usage(info.get("base_model"), repo_id, kohya),
        sections="## Training\n\n"
        + sections
        + "\n\nThe full run report: `report.html` (download and open it in a browser).",
    )
    _hub_header(card, info.get("base_model"))
    for change in redact_staged(out, run_dir):  # no absolute path of this machine goes up
        print(f"[draft] push: {change}", file=sys.stderr)
    return out


def training_command(lora: Path) -> str:
    """The command that trained the run, from its own model card."""
    card = lora / "README.md"
    m = re.search(r"Made by:\n\n```bash\n(.*?)\n```", card.read_text(), re.S) if card.is_file() else None
    return m.group(1) if m else "(unknown)"


def hub_usage(base: str | None, repo_id: str, kohya: str) -> str:
    from draft_core.models.loading import EMBEDDED

    name = repo_id.split("/")[1]
    fetch = f"hf download {repo_id} --local-dir {name}"
    if base in EMBEDDED:
        return (
            f"```bash\n{fetch}\ndraft sample --model {base} --lora {name}:1.0 --prompt ... --out samples/\n```\n\n"
            f"`{kohya}` holds the same LoRA in the kohya layout."
        )
    from draft_core.lora.card import _diffusers_usage

    # The base model family's own pipeline class (SDXL's, SD3's, FLUX's...), not Stable Diffusion's for all.
    lines = _diffusers_usage(base or "BASE_MODEL", repo_id)
    with_draft = f"With draft: `{fetch}`, then `draft sample --model {base} --lora {name}:1.0 --prompt ...`."
    if not lines:
        return f"{with_draft}\n\n`{kohya}` holds the same LoRA in the kohya layout."
    return f"```python\n{lines}\n```\n\nFor AUTOMATIC1111 or ComfyUI, use `{kohya}` (kohya layout). {with_draft}"


def _hub_header(card: Path, base: str | None) -> None:
    """The Hub checks ``base_model`` against its models: keep it only for a Hub id."""
    import yaml

    from draft_core.models.loading import EMBEDDED

    if base and base not in EMBEDDED and not Path(base).expanduser().exists():
        return
    text = card.read_text()
    _, header, body = text.split("---\n", 2)
    meta = yaml.safe_load(header)
    meta.pop("base_model", None)
    card.write_text(f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n{body}")


def check_online() -> str:
    """The Hub endpoint, once it is known to be reachable; else a one-paragraph error, within seconds."""
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE or constants.HF_HUB_OFFLINE:
        raise DraftError(
            "HF_HUB_OFFLINE is set, so nothing can be pushed to the Hugging Face Hub. Unset it on a machine "
            "with network access and run the command again; `--dry-run` stages and lists the files without uploading."
        )
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
            result.append(None)
        except OSError as exc:
            result.append(exc)

    worker = threading.Thread(target=connect, daemon=True)  # a name lookup ignores the socket's timeout
    worker.start()
    worker.join(CONNECT_TIMEOUT)
    if not result or result[0] is not None:
        why = f"{type(result[0]).__name__}: {result[0]}" if result else f"no answer within {CONNECT_TIMEOUT:g} s"
        raise DraftError(
            f"cannot reach the Hugging Face Hub at {endpoint} ({why}), so nothing was uploaded. Check the network "
            f"(or HF_ENDPOINT), then run the command again; `--dry-run` stages and lists the files offline."
        )
    return endpoint


def push(run_dir: str | Path, repo_id: str, private: bool = False) -> tuple[str, Path]:
    """Upload the staged folder to ``repo_id`` (created when missing); returns (repo URL, staged folder)."""
    from huggingface_hub import HfApi, get_token

    run_dir = Path(run_dir)
    check_repo_id(repo_id)
    run_lora(run_dir)
    endpoint = check_online()
    if not get_token():
        raise DraftError(
            "no Hugging Face token: log in with `hf auth login` (or set HF_TOKEN to a token with write access), "
            "then run the command again."
        )
    staged = stage(run_dir, repo_id)
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=staged,
            repo_type="model",
            commit_message=f"draft: LoRA from run {run_dir.name}",
        )
    except Exception as exc:  # HTTP, auth and network errors of the Hub client, in one paragraph
        raise DraftError(
            f"uploading to {endpoint}/{repo_id} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); the staged files are in {staged}."
        ) from exc
    return str(url), staged


def listing(folder: Path) -> list[tuple[str, int]]:
    """(relative path, size in bytes) of every staged file, sorted."""
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
