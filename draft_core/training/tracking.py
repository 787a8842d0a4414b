"""Experiment trackers (``train.trackers``) through accelerate's own tracking: TensorBoard,
Weights & Biases, MLflow, Aim.

What they get: every numeric ``metrics.jsonl`` field at every step, the resolved config as
hyperparameters (flattened to ``section.key``), the sample and validation grids, and the learned
guidance schedule's plot when one is learned. Only the main process starts trackers, so a data
parallel run logs once. Where each writes without a server: TensorBoard and Aim under
``RUN/logs/``, W&B under ``RUN/logs/wandb`` (or ``$WANDB_DIR``; offline with
``WANDB_MODE=offline``), MLflow to ``$MLFLOW_TRACKING_URI`` or else a file store in
``RUN/logs/mlruns``. A resumed run continues the same W&B and MLflow runs (their ids are kept in
``RUN/logs/trackers.json``), and TensorBoard drops the events logged after the checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from draft_core.errors import ConfigError

# tracker -> (the pip package that provides it, accelerate's availability check)
PACKAGES = {
    "tensorboard": ("tensorboard", "is_tensorboard_available"),
    "wandb": ("wandb", "is_wandb_available"),
    "mlflow": ("mlflow", "is_mlflow_available"),
    "aim": ("aim", "is_aim_available"),
}
IDS = "trackers.json"


def check_trackers(names: Sequence[str]) -> None:
    """Every tracker named is installed (accelerate would otherwise skip it without a word)."""
    import accelerate.utils

    missing = [n for n in names if not getattr(accelerate.utils, PACKAGES[n][1])()]
    if missing:
        pips = " ".join(PACKAGES[n][0] for n in missing)
        raise ConfigError(
            f"train.trackers names {', '.join(missing)}, but {'it is' if len(missing) == 1 else 'they are'} not installed "
            f"here; install with `pip install {pips}` (or `pip install draft-diffusion[trackers]` for TensorBoard, W&B "
            f"and MLflow), or remove {'it' if len(missing) == 1 else 'them'} from train.trackers."
        )


def accelerator_options(names: Sequence[str], run_dir: Path) -> dict[str, Any]:
    """Keyword arguments for ``Accelerator``: the trackers and where the local ones write."""
    if not names:
        return {}
    from accelerate.utils import ProjectConfiguration

    return {
        "log_with": list(names),
        "project_config": ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    }


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}; lists, mappings and nulls as JSON text
    (TensorBoard's hyperparameters take only numbers, text and booleans)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


class Tracking:
    """The started trackers of one ``train()`` call; every method is a no-op without any."""

    def __init__(self, accelerator: Any = None) -> None:
        self.acc = accelerator
        self.trackers = list(accelerator.trackers) if accelerator is not None else []

    @classmethod
    def start(cls, accelerator: Any, config: Any, run_dir: Path, step: int, project: str) -> Tracking:
        """Start the trackers the accelerator was made with (main process only). ``step``: the
        last completed step (0 for a new run); ``config``: the resolved ``Config``."""
        if not getattr(accelerator, "log_with", None) or not accelerator.is_main_process:
            return cls()
        logs = run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        ids = _read_ids(logs / IDS) if step > 0 else {}
        kwargs: dict[str, dict[str, Any]] = {
            "tensorboard": {"purge_step": step + 1} if step > 0 else {},
            "wandb": {
                "name": run_dir.name,
                **({} if "WANDB_DIR" in os.environ else {"dir": str(logs)}),
                **({"id": ids["wandb"], "resume": "allow"} if "wandb" in ids else {}),
            },
            "mlflow": {"run_name": run_dir.name, **({"run_id": ids["mlflow"]} if "mlflow" in ids else {})},
        }
        if "mlflow" in [str(t) for t in accelerator.log_with]:
            _mlflow_store(logs)
        accelerator.init_trackers(project, config=flat_config(config.to_dict()), init_kwargs=kwargs)
        started = cls(accelerator)
        _write_ids(logs / IDS, started.trackers)
        return started

    def record(self, metrics: Any, row: dict[str, Any]) -> None:
        """One ``metrics.jsonl`` row: to ``metrics`` (the open file; None off the main process) and to the trackers."""
        if metrics:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        self.log(row)

    def log(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row: its numbers, at its step."""
        if not self.trackers:
            return
        values = {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        self.acc.log(values, step=int(row["step"]))

    def image(self, tag: str, path: Path | None, step: int) -> None:
        """A PNG the run wrote (a grid, a plot), under ``tag`` at ``step``."""
        if not self.trackers or path is None:
            return
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            picture = im.convert("RGB")
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({tag: np.asarray(picture)[None]}, step=step, dataformats="NHWC")
            elif tracker.name in ("wandb", "aim"):
                tracker.log_images({tag: [picture] if tracker.name == "wandb" else picture}, step=step)
            elif tracker.name == "mlflow":  # MLflow keeps files, not image series: the PNG as an artifact
                tracker.log_artifact(str(path), artifact_path=tag)

    def close(self) -> None:
        """Finish every tracker (flushes TensorBoard's events, ends the W&B and MLflow runs). Not
        ``Accelerator.end_training``: that also ends the process group, which a resume in the same
        processes still needs."""
        for tracker in self.trackers:
            tracker.finish()
        if self.acc is not None:
            self.acc.trackers.clear()
        self.trackers = []


def _mlflow_store(logs: Path) -> None:
    """MLflow logs to ``$MLFLOW_TRACKING_URI`` when set, else to a file store in the run folder
    (MLflow 3 asks for ``MLFLOW_ALLOW_FILE_STORE`` before it writes a file store)."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or (logs / "mlruns").resolve().as_uri()
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)


def _read_ids(path: Path) -> dict[str, str]:
    try:
        return cast(dict[str, str], json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _write_ids(path: Path, trackers: Any) -> None:
    ids = {}
    for tracker in trackers:
        if tracker.name == "wandb":
            ids["wandb"] = tracker.run.id
        elif tracker.name == "mlflow":
            ids["mlflow"] = tracker.active_run.info.run_id
    if ids:
        path.write_text(json.dumps(ids))
