"""README's "A short tour" runs as written: its commands are read from README.md and run in order
(in this process, through the same ``main`` the ``draft`` script calls), shortened only by ``--set``."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from draft_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
# Appended to every new training run: 2 sampler steps, a batch of 1, one sample prompt.
SHORT = [
    "--set",
    "sampler.steps=2",
    "--set",
    "train.batch_size=1",
    "--set",
    "train.sample_per_prompt=1",
    "--set",
    "train.sample_prompts=[a cat]",
]


def section_commands(markdown: str, heading: str) -> list[list[str]]:
    """The commands of the first ```bash block after ``heading``: continuation lines joined,
    comments and the venv activation dropped, each split as the shell would."""
    text = markdown[markdown.index(heading) :]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[0] != "source":
            commands.append(argv)
    return commands


def shortened(argv: list[str]) -> list[str]:
    """``train.steps=N`` becomes N // 25 (50 -> 2, 100 -> 4); a new training run also gets SHORT."""
    argv = [re.sub(r"^train\.steps=(\d+)$", lambda m: f"train.steps={max(1, int(m[1]) // 25)}", a) for a in argv]
    if argv[1] == "train" and "--resume" not in argv and "--dry-run" not in argv:
        argv += SHORT
    return argv


def test_the_commands_are_found():
    commands = section_commands((ROOT / "README.md").read_text(), "## A short tour")
    assert all(argv[0] == "draft" for argv in commands), commands
    assert {argv[1] for argv in commands} >= {"plugins", "train", "sample", "score"}
    assert shortened(["draft", "train", "--resume", "runs/x", "--set", "train.steps=100"])[-1] == "train.steps=4"


def test_the_readme_tour_runs_as_written(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    for argv in section_commands((ROOT / "README.md").read_text(), "## A short tour"):
        try:
            code = main(shortened(argv)[1:])
        except SystemExit as exc:  # --version exits through argparse
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 0, (argv, out, err)
        assert "Traceback" not in err, (argv, err)
    # What the tour promises exists: both runs, the resumed run's steps, the images and their scores.
    for run in ("runs/x", "runs/y"):
        assert (tmp_path / run / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "runs/x/checkpoints/step-000004").is_dir()
    assert sorted(p.name for p in (tmp_path / "out/mix").iterdir()) == [
        "0000.png",
        "0001.png",
        "0002.png",
        "0003.png",
        "grid.png",
    ]
    assert len(out.splitlines()) == 4 and "grid.png" not in out  # draft score's lines: the images only
