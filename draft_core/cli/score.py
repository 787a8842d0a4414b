"""``draft score``: evaluate image files with any registered reward, one line per image.

    draft score --reward NAME [--set reward.KEY=VALUE ...] [--prompt TEXT | --prompts FILE] IMAGES... [--json]

IMAGES are files or folders (their PNG/JPEG/WebP/BMP files, sorted by name). In a folder, the
contact sheets and plots draft itself writes (``grid.png``, ``contact_sheet.png``,
``before_after.png``, ``reward_curve.png``, ``guidance_schedule.png``) are skipped, with a line
on stderr; name such a file to score it. Lines are ``path<TAB>score``, or JSON objects
``{"path", "score", "prompt"}`` with ``--json``. Images go to the reward in batches of
consecutive same-sized images, as RGB floats in [0, 1].

A score that is not finite (NaN or infinite) is printed as ``nan``/``inf`` (``null`` in JSON),
a warning on stderr names those images, and the exit status is 1; otherwise it is 0.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from draft_core.errors import ConfigError, DraftError
from draft_core.rundir import GUIDANCE_PLOT, REWARD_CURVE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Written by draft sample / eval / train beside the images: grids of them, and plots.
DRAFT_SHEETS = ("grid.png", "contact_sheet.png", "before_after.png", REWARD_CURVE, GUIDANCE_PLOT)


def add_parser(sub) -> None:
    sc = sub.add_parser("score", help="score image files with a reward, one line per image")
    sc.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files or folders of images (PNG, JPEG, WebP, BMP)"
    )
    sc.add_argument("--reward", required=True, help="a registered reward (see `draft plugins`)")
    sc.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="reward.KEY=VALUE",
        help="a reward argument, e.g. reward.path=/weights/file.pth (repeatable)",
    )
    prompts = sc.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", help="the prompt of every image")
    prompts.add_argument(
        "--prompts", metavar="FILE", help="a text file with one prompt per line, one per image, in order"
    )
    sc.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="images per reward call (batch-dependent rewards such as diversity see these batches)",
    )
    sc.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    sc.add_argument("--json", action="store_true", help="JSON lines: path, score, prompt")
    sc.set_defaults(func=cmd_score)


def collect_images(items: list[str]) -> list[Path]:
    """Files as given; folders expanded to their image files, sorted, without draft's own contact sheets."""
    import sys

    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(c for c in p.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES)
            sheets = [c for c in found if c.name in DRAFT_SHEETS]
            found = [c for c in found if c.name not in DRAFT_SHEETS]
            if sheets:
                print(
                    f"skipping {', '.join(c.name for c in sheets)} in '{item}' (contact sheets or plots draft writes; "
                    f"name a file to score it)",
                    file=sys.stderr,
                )
            if not found:
                raise DraftError(
                    f"folder '{item}' holds no image files ({', '.join(IMAGE_SUFFIXES)}) besides draft's own contact sheets."
                )
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise DraftError(f"image '{item}' does not exist; give image files or folders of images.")
    return paths


def read_prompts(args: argparse.Namespace, count: int) -> list[str] | None:
    if args.prompt is not None:
        return [args.prompt] * count
    if args.prompts is None:
        return None
    try:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DraftError(f"--prompts '{args.prompts}' could not be read: {exc.strerror or exc}.") from None
    except UnicodeDecodeError as exc:
        raise DraftError(
            f"--prompts '{args.prompts}' is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8, one prompt per line."
        ) from None
    prompts = [line.strip() for line in lines if line.strip()]
    if len(prompts) != count:
        raise DraftError(
            f"--prompts '{args.prompts}' has {len(prompts)} prompts (non-empty lines) for {count} images; "
            f"give one prompt per image, in the order of the images, or one --prompt for all."
        )
    return prompts


def build_reward(name: str, overrides: list[str], command: str = "draft score"):
    """The reward ``name`` with ``reward.KEY=VALUE`` overrides as its arguments."""
    from draft_core.config import apply_overrides, plugin_kwargs
    from draft_core.plugins import load_registry

    for text in overrides:
        if not text.startswith("reward."):
            raise ConfigError(f"--set '{text}': {command} takes reward arguments only, as reward.KEY=VALUE.")
    raw = apply_overrides({"reward": {"name": name}}, overrides)
    name, kwargs = plugin_kwargs(raw["reward"])
    from draft_core.rewarding.contract import checked_reward

    try:  # behind the core's checks of the images and of the scores
        return checked_reward(
            load_registry().build("reward", name, **kwargs), load_registry().get("reward", name).describe()
        )
    except DraftError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"reward '{name}' rejected its arguments {kwargs}: {exc}") from exc


def load_image(path: Path):
    """[3, H, W] float32 RGB in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DraftError(f"image '{path}' could not be read as an image: {exc}.") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255


def batches(paths: list[Path], size: int):
    """Consecutive runs of same-sized images, at most ``size`` long: (paths, [N, 3, H, W])."""
    import torch

    run: list[tuple[Path, torch.Tensor]] = []
    for path in paths:
        image = load_image(path)
        if run and (len(run) == size or run[0][1].shape != image.shape):
            yield [p for p, _ in run], torch.stack([x for _, x in run])
            run = []
        run.append((path, image))
    if run:
        yield [p for p, _ in run], torch.stack([x for _, x in run])


def cmd_score(args: argparse.Namespace) -> int:
    import torch

    from draft_core.cli.common import quiet_libraries, resolve_device
    from draft_core.plugins.bases import as_reward

    if args.batch_size < 1:
        raise DraftError(f"--batch-size must be a positive integer, got {args.batch_size}.")
    paths = collect_images(args.images)
    prompts = read_prompts(args, len(paths))
    reward = build_reward(args.reward, args.set)
    if prompts is None:
        if as_reward(reward).uses_prompts:
            raise DraftError(
                f"reward '{args.reward}' scores each image against its prompt: give --prompt TEXT (all images) "
                f"or --prompts FILE (one line per image)."
            )
        prompts = [""] * len(paths)
    device = resolve_device(args.device)
    quiet_libraries()
    if isinstance(reward, torch.nn.Module):
        reward.to(device)
    done = 0
    nonfinite: list[Path] = []
    for chunk, images in batches(paths, args.batch_size):
        chunk_prompts = prompts[done : done + len(chunk)]
        try:
            with torch.no_grad():
                scores = reward(images.to(device), chunk_prompts)
        except ValueError as exc:  # the reward refused these images (size, shape): an input error
            raise DraftError(
                f"reward '{args.reward}' cannot score {chunk[0]}{' ...' if len(chunk) > 1 else ''}: {exc}"
            ) from None
        if tuple(scores.shape) != (len(chunk),):
            raise DraftError(
                f"reward '{args.reward}' returned shape {list(scores.shape)} for {len(chunk)} images; rewards return [B]."
            )
        for path, prompt, score in zip(chunk, chunk_prompts, scores.float().cpu().tolist()):
            if not math.isfinite(score):
                nonfinite.append(path)
            if args.json:
                value = score if math.isfinite(score) else None  # JSON has no NaN
                print(json.dumps({"path": str(path), "score": value, "prompt": prompt}), flush=True)
            else:
                print(f"{path}\t{score:.6g}", flush=True)
        done += len(chunk)
    if nonfinite:
        import sys

        shown = ", ".join(str(p) for p in nonfinite[:3]) + (" ..." if len(nonfinite) > 3 else "")
        print(
            f"warning: {len(nonfinite)} of {len(paths)} scores are not finite (NaN or infinite): {shown}. "
            f"Reward '{args.reward}' could not score those images; exit status 1.",
            file=sys.stderr,
        )
        return 1
    return 0
