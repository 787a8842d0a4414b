"""`draft --version` and `draft --help` answer without loading torch or diffusers (lazy imports), and the
commands' help lists every preset and shows the options' defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest

from draft_core.cli import main
from draft_core.cli.helptext import PRESETS_DIR, preset_names

PROBE = (
    "import sys; from draft_core.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    "print('heavy:', sorted(m for m in ('torch', 'diffusers', 'transformers', 'draft_core.config') if m in sys.modules))"
)


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_load_nothing_heavy(flag):
    done = subprocess.run([sys.executable, "-c", PROBE, flag], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout, done.stdout[-500:]
    assert ("draft 0.1.0" if flag == "--version" else "usage: draft") in done.stdout


def help_text(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps to the terminal's width, at hyphens too
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_train_help_lists_every_preset(capsys, monkeypatch):
    names = preset_names()
    assert names == sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")) and {"quickstart", "adversarial-8"} <= set(names)
    text = help_text(capsys, monkeypatch, "train")
    assert all(name in text for name in names), text


def test_sample_and_eval_help_show_defaults(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "sample")
    for shown in (
        "(default: digits)",
        "images per prompt (default: 4)",
        "--seed SEED default: 0",
        "(default: samples)",
    ):
        assert shown in text, (shown, text)
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
    text = help_text(capsys, monkeypatch, "eval")
    for shown in ("--n-per-prompt N_PER_PROMPT default: 4", "(default: eval)", "--batch-size BATCH_SIZE default: 8"):
        assert shown in text, (shown, text)
