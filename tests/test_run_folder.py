"""One writer per run folder (an flock that dies with its process), a run stopped before its first
step that the same command takes over, unwritable outputs as one paragraph, and output files with
the usual permissions."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from run_fixtures import make_run, save_random_lora

from draft_core import cli
from draft_core.outputs import usual_permissions
from draft_core.training.runlock import LOCK_NAME, RunFolderBusy, lock_run_folder, reuse_unstarted


def unwritable_place(tmp_path: Path) -> Path:
    """A folder nothing can be written under: a 0500 folder, or for root (whom modes do not stop) sysfs."""
    if os.geteuid() == 0:
        return Path("/sys/draft-test-unwritable")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked


def test_a_second_writer_is_refused_with_the_holders_pid_host_and_start_time(tmp_path):
    run = tmp_path / "run"
    held = lock_run_folder(run)
    try:
        with pytest.raises(RunFolderBusy) as info:
            lock_run_folder(run)  # another open file: flock refuses it even in the same process
        msg = str(info.value)
        assert f"process {os.getpid()} on host {socket.gethostname()}, started 20" in msg and "UTC" in msg
        assert f"draft train --resume {run}" in msg
    finally:
        held.release()
    assert not (run / LOCK_NAME).exists()  # a finished run leaves no lock file
    lock_run_folder(run).release()


def test_the_lock_dies_with_a_sigkilled_process(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # What lock_run_folder does, without importing draft (seconds): flock the file, write who holds it.
    code = (
        "import fcntl, json, os, socket, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), "
        "'started': time.time(), 'command': 'draft train'}).encode()); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(run / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=f"process {proc.pid} on host"):
            lock_run_folder(run)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run / LOCK_NAME).exists()  # the file stays, the lock does not
    lock_run_folder(run).release()  # at once


def test_train_and_resume_of_a_folder_in_use_are_refused_before_any_model_loads(tmp_path, no_model, capsys):
    run = make_run(tmp_path)
    held = lock_run_folder(run)
    try:
        assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 2
        assert cli.main(["train", "--preset", "quickstart", "--out", str(run), "--no-progress"]) == 2
    finally:
        held.release()
    err = capsys.readouterr().err
    assert err.count(f"run folder '{run}' is in use by process {os.getpid()}") == 2 and "Traceback" not in err


def test_a_run_stopped_before_its_first_step_is_taken_over_by_the_same_command(tmp_path, monkeypatch, capsys):
    from draft_core.training.runner import Trainer

    out = tmp_path / "run"
    args = [
        "train",
        "--preset",
        "quickstart",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "model.name=tiny-random",
        "--set",
        "sampler.steps=2",
        "--set",
        "train.steps=1",
        "--set",
        "train.sample_per_prompt=1",
        "--set",
        "train.sample_prompts=[a cat]",
        "--set",
        "train.batch_size=1",
    ]

    def interrupted(self, tag):  # SIGINT during the step-0 grid
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "sample_grid", interrupted)
    assert cli.main(args) == 130
    assert not out.exists()
    # SIGKILL (or SIGTERM) during the grid: what the process had written, and its dead lock, stay.
    (out / "samples").mkdir(parents=True)
    (out / "config.yaml").write_text("model: {name: tiny-random}\n")
    (out / LOCK_NAME).write_text('{"pid": 1}')
    (out / "metrics.jsonl").write_text('{"step": 0, "val/jpeg": 1.0}\n')
    assert cli.main([*args, "--dry-run"]) == 0 and (out / "config.yaml").exists()  # a dry run changes nothing
    monkeypatch.undo()
    assert cli.main(args) == 0
    assert "stopped before its first step; it is started again there" in capsys.readouterr().err
    assert [line.count('"step": 1') for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    # A run with a completed step is never taken over.
    assert not reuse_unstarted(out) and cli.main(args) == 2


def test_unwritable_outputs_are_one_paragraph(tmp_path, capsys):
    place = unwritable_place(tmp_path)
    lora = tmp_path / "lora"
    save_random_lora(lora)
    run = make_run(tmp_path)
    commands = [
        ["train", "--preset", "quickstart", "--out", str(place / "run"), "--set", "model.name=tiny-random"],
        ["lora", "export", str(lora), "--out", str(place / "kohya.safetensors"), "--family", "sd"],
        ["lora", "mix", f"{lora}:0.5", "--out", str(place / "mixed")],
        ["report", str(run), "--out", str(place / "report.html")],
        ["lora", "fuse", "--model", "tiny-random", "--lora", str(lora), "--out", str(place / "fused")],
        ["sample", "--model", "tiny-random", "--prompt", "a cat", "--steps", "2", "--out", str(place / "pictures")],
    ]
    for argv in commands:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: cannot use '/") and str(place) in err, (argv, err)
        assert "Traceback" not in err and err.count("\n") == 1


def test_output_files_get_the_usual_permissions(tmp_path):
    lora = tmp_path / "lora"
    save_random_lora(lora)
    old = os.umask(0o027)
    try:
        assert cli.main(["lora", "export", str(lora), "--out", str(tmp_path / "k.safetensors"), "--family", "sd"]) == 0
        assert cli.main(["lora", "mix", f"{lora}:0.5", "--out", str(tmp_path / "mixed")]) == 0
        usual_permissions(lora)
    finally:
        os.umask(old)
    files = [tmp_path / "k.safetensors", *(tmp_path / "mixed").iterdir(), *lora.iterdir()]
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o640}  # not safetensors' 0600
