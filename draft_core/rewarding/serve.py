"""``draft reward serve``: any registered reward behind a small HTTP server on loopback, for a reward
whose dependencies cannot live in the trainer's environment (the ``remote`` reward calls it).

Endpoints (a bearer token on every one; bodies in draft_core.rewarding.wire's format):

- ``GET /info``: JSON ``{reward, differentiable, max_batch, max_bytes}``;
- ``POST /score``: images [B, 3, H, W] in [0, 1] and B prompts -> scores [B];
- ``POST /vjp``: images, prompts and ``upstream`` [B] -> ``grad`` = d(upstream . r)/d images, the
  vector-Jacobian product the client's backward needs (the server recomputes the scores; it keeps
  no state between requests, so any request may be retried).

Requests over ``max_bytes`` are refused before they are read, batches over ``max_batch`` before
the reward runs; errors answer JSON ``{"error": message}`` with a 4xx/5xx status. The reward runs
in a worker thread, one request at a time (rewards are not thread-safe). Built on starlette and
uvicorn (``pip install 'draft-diffusion[serve]'``).
"""

from __future__ import annotations

import hmac
import threading
from typing import Any

import torch

from draft_core.rewarding.checks import check_image_batch
from draft_core.rewarding.contract import check_reward_output
from draft_core.rewarding.gradient import is_differentiable
from draft_core.rewarding.wire import CONTENT_TYPE, WireError, pack, tensor, unpack

MAX_BATCH = 64
MAX_BYTES = 256 * 2**20


class RequestProblem(Exception):
    """A request the server refuses: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RewardService:
    """The reward and its limits, independent of the HTTP layer (each method: request bytes -> answer bytes)."""

    def __init__(
        self,
        reward: Any,
        name: str,
        *,
        max_batch: int = MAX_BATCH,
        max_bytes: int = MAX_BYTES,
        device: torch.device | None = None,
    ) -> None:
        self.reward, self.name, self.max_batch, self.max_bytes = reward, name, max_batch, max_bytes
        self.device = device or torch.device("cpu")
        self.lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        return {
            "reward": self.name,
            "differentiable": is_differentiable(self.reward),
            "max_batch": self.max_batch,
            "max_bytes": self.max_bytes,
        }

    def _inputs(self, body: bytes) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str]]:
        try:
            tensors, meta = unpack(body, "the request")
            images = tensor(tensors, "images", "the request")
        except WireError as exc:
            raise RequestProblem(400, str(exc)) from None
        if images.ndim >= 1 and images.shape[0] > self.max_batch:
            raise RequestProblem(
                413,
                f"a batch of {images.shape[0]} images is over this server's limit of {self.max_batch} "
                f"(draft reward serve --max-batch); send smaller batches (the remote reward's max_batch).",
            )
        prompts = meta.get("prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise RequestProblem(400, f"the request's prompts must be a list of strings, got {prompts!r}"[:300])
        try:
            check_image_batch(images, f"reward server '{self.name}'")
        except ValueError as exc:
            raise RequestProblem(400, str(exc)) from None
        if len(prompts) != images.shape[0]:
            raise RequestProblem(
                400, f"the request has {images.shape[0]} images and {len(prompts)} prompts; send one prompt per image."
            )
        return tensors, images.to(self.device), prompts

    def _scores(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        out = self.reward(images, prompts)
        check_reward_output(out, images, f"reward '{self.name}'")
        return out

    def score(self, body: bytes) -> bytes:
        _, images, prompts = self._inputs(body)
        with self.lock, torch.no_grad():
            return pack({"scores": self._scores(images, prompts)}, {})

    def vjp(self, body: bytes) -> bytes:
        if not is_differentiable(self.reward):
            raise RequestProblem(
                400, f"reward '{self.name}' has no gradient (differentiable = False); it serves scores only."
            )
        tensors, images, prompts = self._inputs(body)
        try:
            upstream = tensor(tensors, "upstream", "the request").to(self.device, images.dtype)
        except WireError as exc:
            raise RequestProblem(400, str(exc)) from None
        if upstream.shape != (images.shape[0],):
            raise RequestProblem(
                400, f"the request's upstream gradient has shape {list(upstream.shape)}; expected [{images.shape[0]}]."
            )
        with self.lock, torch.enable_grad():
            x = images.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._scores(x, prompts), x, upstream, allow_unused=True)
        return pack({"grad": torch.zeros_like(x) if grad is None else grad}, {})


def build_app(service: RewardService, token: str | None) -> Any:
    """The starlette application around ``service`` (``token``: required as ``Authorization: Bearer``)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def refused(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def authorised(request: Request) -> bool:
        if not token:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > service.max_bytes:
            raise RequestProblem(
                413,
                f"the request has {int(length)} bytes, over this server's limit of {service.max_bytes} "
                f"(draft reward serve --max-mb); send smaller batches.",
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > service.max_bytes:
                raise RequestProblem(
                    413, f"the request is over this server's limit of {service.max_bytes} bytes; send smaller batches."
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def endpoint(method: Any) -> Any:
        async def handle(request: Request) -> Response:
            if not authorised(request):
                return refused(
                    401, "wrong or missing token: give the token `draft reward serve` printed (reward.token)."
                )
            try:
                body = await read_body(request)
                answer = await run_in_threadpool(method, body)
            except RequestProblem as exc:
                return refused(exc.status, str(exc))
            except Exception as exc:  # the reward itself failed: tell the client what happened
                return refused(500, f"reward '{service.name}' raised {type(exc).__name__}: {exc}")
            return Response(answer, media_type=CONTENT_TYPE)

        return handle

    async def info(request: Request) -> Response:
        if not authorised(request):
            return refused(401, "wrong or missing token: give the token `draft reward serve` printed (reward.token).")
        return JSONResponse(service.info())

    return Starlette(
        routes=[
            Route("/info", info, methods=["GET"]),
            Route("/score", endpoint(service.score), methods=["POST"]),
            Route("/vjp", endpoint(service.vjp), methods=["POST"]),
        ]
    )
