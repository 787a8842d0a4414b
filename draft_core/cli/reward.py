"""``draft reward serve NAME [--port] [--token] [--set reward.KEY=VALUE ...]``: serve a registered reward
over HTTP on loopback for the ``remote`` reward (draft_core.rewarding.serve; docs/rewards.md: A reward in its own process)."""

from __future__ import annotations

import argparse
import secrets
import socket
import sys

from draft_core.errors import DraftError

TOKEN_ENV = "DRAFT_REWARD_TOKEN"


def add_parser(sub) -> None:
    rw = sub.add_parser("reward", help="serve a reward in its own process (draft reward serve NAME)")
    cmds = rw.add_subparsers(dest="reward_command", required=True)
    sv = cmds.add_parser(
        "serve", help="serve a registered reward over HTTP on 127.0.0.1, for `reward: {name: remote, url: ...}`"
    )
    sv.add_argument("name", help="a registered reward (see `draft plugins`)")
    sv.add_argument("--port", type=int, default=8765, help="the port on 127.0.0.1 (default 8765; 0: any free one)")
    sv.add_argument(
        "--token", help=f"the token clients must send (default: ${TOKEN_ENV}, else a new random one, printed)"
    )
    sv.add_argument(
        "--set", action="append", default=[], metavar="reward.KEY=VALUE", help="a reward argument (repeatable)"
    )
    sv.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    sv.add_argument("--max-batch", type=int, default=64, help="the most images per request (default 64)")
    sv.add_argument("--max-mb", type=float, default=256.0, help="the largest request in MiB (default 256)")
    sv.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from draft_core.cli.common import quiet_libraries, resolve_device
    from draft_core.cli.score import build_reward

    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise DraftError(
            f"draft reward serve needs starlette and uvicorn ({exc}); install them with "
            f"`pip install 'draft-diffusion[serve]'` (or `pip install starlette uvicorn`)."
        ) from None
    from draft_core.rewarding.serve import RewardService, build_app

    if not 0 <= args.port <= 65535:
        raise DraftError(f"--port must be 0..65535, got {args.port}.")
    if args.max_batch < 1 or args.max_mb <= 0:
        raise DraftError(f"--max-batch must be >= 1 and --max-mb > 0, got {args.max_batch} and {args.max_mb}.")
    token = args.token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    reward = build_reward(args.name, args.set, command="draft reward serve")
    device = resolve_device(args.device)
    quiet_libraries()
    if hasattr(reward, "to"):
        reward.to(device)
    service = RewardService(
        reward, args.name, max_batch=args.max_batch, max_bytes=int(args.max_mb * 2**20), device=device
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:  # bound here, so the address is known (and a port in use reported) before serving
        sock.bind(("127.0.0.1", args.port))
    except OSError as exc:
        sock.close()
        raise DraftError(
            f"draft reward serve cannot listen on 127.0.0.1:{args.port} ({exc}); give another --port (0: any free one)."
        ) from None
    sock.listen(128)  # connections wait in the backlog until the server accepts them
    port = sock.getsockname()[1]
    print(
        f"[draft] serving reward '{args.name}' ({'differentiable' if service.info()['differentiable'] else 'scores only'}) "
        f"at http://127.0.0.1:{port}",
        file=sys.stderr,
        flush=True,
    )
    print(
        f"[draft] train with: --set 'reward={{name: remote, url: http://127.0.0.1:{port}}}' and "
        f"{TOKEN_ENV}={'<your token>' if args.token else token} in its environment (or reward.token)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.Server(uvicorn.Config(build_app(service, token), log_level="warning")).run(sockets=[sock])
    return 0
