"""``remote``: a reward served by ``draft reward serve`` in another process (another environment,
another machine through an SSH tunnel), called over HTTP.

``reward: {name: remote, url: http://127.0.0.1:8765, token: ..., timeout: 60, retries: 3}``. Scores
come back from ``POST /score``; for a differentiable reward, the backward pass sends the upstream
gradient to ``POST /vjp`` and gets d(upstream . r)/d images back, a vector-Jacobian product over
the wire, so DRaFT trains through the remote reward exactly as through the local one (the server
recomputes the scores for it: twice the reward's forward cost, no state kept between requests).
A reward without gradient serves scores only (``differentiable = False``, from the server's
``/info``). Connection failures are retried ``retries`` times with a growing pause; then the call
fails with one paragraph that says how to restart the server and resume the run.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from draft_core.errors import DraftError
from draft_core.rewarding.wire import CONTENT_TYPE, pack, tensor, unpack

TOKEN_ENV = "DRAFT_REWARD_TOKEN"


class RemoteRewardError(DraftError):
    """The reward server cannot be reached, refused a request, or answered something unreadable."""


class RemoteReward(nn.Module):
    """A reward computed by a ``draft reward serve`` server.

    url: the server (``http://127.0.0.1:PORT``). token: its token (None: ``$DRAFT_REWARD_TOKEN``).
    timeout: seconds per request. retries: further tries after a connection failure.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, retries: int = 3) -> None:
        super().__init__()
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(
                f"remote: url must be the server's address, e.g. http://127.0.0.1:8765 (as `draft reward serve` "
                f"prints it), got {url!r}."
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"remote: timeout must be a number of seconds > 0, got {timeout!r}.")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"remote: retries must be an integer >= 0, got {retries!r}.")
        self.url, self.timeout, self.retries = url.rstrip("/"), float(timeout), retries
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._info: dict[str, Any] | None = None

    def extra_repr(self) -> str:
        return f"url={self.url!r}"

    def info(self) -> dict[str, Any]:
        """The server's ``/info`` (asked once): the reward's name, whether it is differentiable, the limits."""
        if self._info is None:
            answer = self._request("GET", "/info", None)
            try:
                info = json.loads(answer)
                if not isinstance(info, dict) or not isinstance(info.get("differentiable"), bool):
                    raise ValueError(f"no 'differentiable' field in {info!r}"[:200])
            except ValueError as exc:
                raise RemoteRewardError(
                    f"the reward server at {self.url} answered /info with something that is not a "
                    f"draft reward server's description ({exc}); is it `draft reward serve`?"
                ) from None
            self._info = info
        return self._info

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return bool(self.info()["differentiable"])

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1] -> [B] scores on the images' device (their dtype)."""
        prompts = list(prompts) if len(prompts) else [""] * images.shape[0]
        if self.differentiable and torch.is_grad_enabled() and images.requires_grad:
            return _RemoteScore.apply(images, self, prompts)
        return self.scores(images, prompts)

    def scores(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        answer = self._call("/score", {"images": images}, prompts)
        return tensor(answer, "scores", self._what("/score")).to(images.device, images.dtype)

    def vjp(self, images: torch.Tensor, prompts: list[str], upstream: torch.Tensor) -> torch.Tensor:
        answer = self._call("/vjp", {"images": images, "upstream": upstream.to(images.dtype)}, prompts)
        return tensor(answer, "grad", self._what("/vjp")).to(images.device, images.dtype)

    # -- the wire -------------------------------------------------------------------------------
    def _what(self, path: str) -> str:
        return f"the answer of the reward server at {self.url}{path}"

    def _call(self, path: str, tensors: dict[str, torch.Tensor], prompts: list[str]) -> dict[str, torch.Tensor]:
        body = self._request("POST", path, pack(tensors, {"prompts": prompts}))
        return unpack(body, self._what(path))[0]

    def _request(self, method: str, path: str, body: bytes | None) -> bytes:
        headers = {"Content-Type": CONTENT_TYPE}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        start, failure = time.monotonic(), ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))  # a server restarting gets a moment
            request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                if exc.code in (502, 503, 504):  # a proxy in front of a server that is down: try again
                    failure = f"HTTP {exc.code}"
                    continue
                raise self._refused(path, exc.code, exc.read()) from None
            except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out: try again
                reason = getattr(exc, "reason", exc)
                failure = f"{type(reason).__name__}: {reason}"
        raise RemoteRewardError(
            f"the reward server at {self.url} did not answer {path} ({failure}) in {self.retries + 1} tries over "
            f"{time.monotonic() - start:.0f} s. Start it again (`draft reward serve NAME --port PORT --token TOKEN`); "
            f"a training run keeps the checkpoint of its last completed step: continue it with `draft train --resume RUN`."
        )

    def _refused(self, path: str, code: int, body: bytes) -> RemoteRewardError:
        try:
            message = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            message = f"an answer that is not a draft reward server's error: {body[:80]!r}"
        if code == 401:
            return RemoteRewardError(
                f"the reward server at {self.url} refused the token (reward.token, or ${TOKEN_ENV}): {message}"
            )
        return RemoteRewardError(f"the reward server at {self.url} refused {path} (HTTP {code}): {message}")


class _RemoteScore(torch.autograd.Function):
    """Scores from the server; the backward pass asks it for the vector-Jacobian product."""

    @staticmethod
    def forward(ctx: Any, images: torch.Tensor, remote: RemoteReward, prompts: list[str]) -> torch.Tensor:
        ctx.remote, ctx.prompts = remote, prompts
        ctx.save_for_backward(images)
        return remote.scores(images.detach(), prompts)

    @staticmethod
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (images,) = ctx.saved_tensors
        return ctx.remote.vjp(images.detach(), ctx.prompts, upstream.detach()), None, None
