"""A reward in its own process: ``draft reward serve`` and the ``remote`` reward, on loopback only.

Scores and gradients over the wire equal the in-process reward's (float64, so equal to rounding);
a reward without gradient serves scores only; a wrong token, an oversized batch, a server that
answers garbage and one that is gone each give one clear paragraph; a server killed during a run
stops it with its last checkpoint, and the run resumes once the server is back.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from draft_core import cli
from draft_core.rewarding.serve import RewardService, build_app
from draft_core.rewarding.wire import WireError
from draft_rewards.digits import DigitClassifier
from draft_rewards.jpeg_size import JpegSize
from draft_rewards.remote import RemoteReward, RemoteRewardError

uvicorn = pytest.importorskip("uvicorn", reason="draft reward serve needs the [serve] extra (starlette, uvicorn)")
TOKEN = "test-token"
PROMPTS = ["a handwritten digit three", "a handwritten digit eight", "a handwritten digit zero"]


@contextmanager
def serving(reward, name="r", token=TOKEN, **limits):
    """``reward`` served on 127.0.0.1 from a thread of this process; yields the URL."""
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(RewardService(reward, name, **limits), token), host="127.0.0.1", port=0, log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()


def test_scores_and_gradients_equal_the_in_process_reward():
    local = DigitClassifier(output="prob")  # reads each prompt's digit: the prompts travel too
    images = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    upstream = torch.randn(3, dtype=torch.float64)
    with serving(local) as url:
        remote = RemoteReward(url, token=TOKEN)
        assert remote.differentiable
        x = images.clone().requires_grad_(True)
        got = remote(x, PROMPTS)
        (got_grad,) = torch.autograd.grad(got, x, upstream)
    x = images.clone().requires_grad_(True)
    want = local(x, PROMPTS)
    (want_grad,) = torch.autograd.grad(want, x, upstream)
    assert got.dtype == torch.float64 and got_grad.dtype == torch.float64
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-300)
    assert got_grad.abs().sum() > 0


def test_a_reward_without_gradient_serves_scores_only():
    from draft_core.config import load_config
    from draft_core.errors import ConfigError
    from draft_core.training.components import build_components

    images = torch.rand(2, 3, 16, 16)
    with serving(JpegSize(), "jpeg-size") as url:
        remote = RemoteReward(url, token=TOKEN)
        assert remote.differentiable is False
        scores = remote(images.clone().requires_grad_(True), ["", ""])
        assert not scores.requires_grad
        torch.testing.assert_close(scores, JpegSize()(images, ["", ""]), rtol=1e-6, atol=0)
        reward = f"reward={{name: remote, url: '{url}', token: {TOKEN}}}"
        with pytest.raises(ConfigError, match="has no gradient"):  # found at config time, from the server's /info
            build_components(load_config(None, ["model.name=tiny-random", reward, "estimator.name=draft"]))


def test_wrong_token_oversized_batch_and_request_size_are_clear_errors():
    with serving(DigitClassifier(target=3), max_batch=2, max_bytes=40_000) as url:
        with pytest.raises(RemoteRewardError, match="refused the token"):
            RemoteReward(url, token="wrong").info()
        with pytest.raises(RemoteRewardError, match="refused the token"):
            RemoteReward(url, token=None)(torch.rand(1, 3, 8, 8))
        remote = RemoteReward(url, token=TOKEN)
        with pytest.raises(RemoteRewardError, match="a batch of 3 images is over this server's limit of 2"):
            remote(torch.rand(3, 3, 8, 8))
        with pytest.raises(RemoteRewardError, match="over this server's limit of 40000"):
            remote(torch.rand(1, 3, 64, 64, dtype=torch.float64))  # 98 KB
        with pytest.raises(RemoteRewardError, match=r"image values must lie in \[0, 1\]"):
            remote(torch.rand(1, 3, 8, 8) * 255)
        assert remote(torch.rand(2, 3, 8, 8)).shape == (2,)  # the server is still fine


class _Garbage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's names)
        self._answer()

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer()

    def _answer(self):
        body = b"<html>hello, I am not a reward server</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_server_that_answers_garbage_and_one_that_is_gone():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with pytest.raises(RemoteRewardError, match="is not a draft reward server's description"):
            RemoteReward(url).info()
        remote = RemoteReward(url)
        remote._info = {"differentiable": True}
        with pytest.raises(WireError, match="is not a draft reward message.*began with b'<html>hello"):
            remote(torch.rand(1, 3, 8, 8))
    finally:
        httpd.shutdown()
        httpd.server_close()
    with pytest.raises(RemoteRewardError, match=r"did not answer /info \(ConnectionRefusedError.*in 2 tries"):
        RemoteReward(url, retries=1, timeout=5).info()
    with pytest.raises(ValueError, match="url must be the server's address"):
        RemoteReward("127.0.0.1:8765")


# -- a killed server, in another process ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "draft_core.cli",
            "reward",
            "serve",
            "jpeg-compressibility",
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--device",
            "cpu",
        ],
        stderr=open(log, "w"),
        stdout=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 600  # importing torch and the plugins: seconds idle, minutes on a loaded machine
    while "serving reward" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc


def test_a_server_killed_during_a_run_stops_it_with_its_checkpoint_and_it_resumes(tmp_path, capsys):
    port, run = _free_port(), tmp_path / "run"
    server = _start_server(port, tmp_path / "server.log")
    overrides = [
        "model.name=tiny-random",
        "prompts.source=animals",
        "sampler.steps=2",
        "estimator={name: draft-k, k: 1}",
        "train.batch_size=1",
        "train.lr=0.01",
        "lora.rank=2",
        "train.steps=5",
        "train.checkpoint_every=1",
        "train.sample_every=0",
        "train.sample_per_prompt=1",
        "train.sample_prompts=[a cat]",
        f"reward={{name: remote, url: 'http://127.0.0.1:{port}', token: {TOKEN}, retries: 2, timeout: 30}}",
    ]
    argv = [
        "train",
        "--preset",
        "quickstart",
        "--out",
        str(run),
        "--no-progress",
        *sum((["--set", o] for o in overrides), []),
    ]

    def kill_after_step_2():
        while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 2:
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_after_step_2, daemon=True)
    killer.start()
    try:
        assert cli.main(argv) == 2
    finally:
        server.kill()
        server.wait()
    killer.join()
    err = capsys.readouterr().err
    assert f"the reward server at http://127.0.0.1:{port} did not answer" in err and "in 3 tries" in err
    assert "draft train --resume" in err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    done = rows[-1]["step"]
    assert 2 <= done < 5 and (run / "checkpoints" / f"step-{done:06d}").is_dir()
    server = _start_server(port, tmp_path / "server2.log")
    try:
        assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    finally:
        server.kill()
        server.wait()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
