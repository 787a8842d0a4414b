"""``digits``: the project's own small text-to-image model, trained on sklearn's load_digits.

A pixel-space diffusers ``UNet2DConditionModel`` (32x32, 3 channels, v-prediction,
``squaredcos_cap_v2`` betas) and a small ``CLIPTextModel`` trained jointly from scratch by
``python -m draft_core.models.digits.train`` (deterministic from its seed); the weights
in ``weights/`` ship with the package, so ``build_digits()`` needs no network.

The text encoder only ever saw the training prompts (``data.PHRASINGS`` x ``DIGIT_WORDS``
and ""). To keep the files small, only the token-embedding rows of the tokens in those
prompts are stored; every other row of the 49,408 x 64 table is rebuilt as zeros, so
unseen words carry no meaning (they never had any: their rows were never trained).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from draft_core.models.pipeline import DiffusionModel

WEIGHTS_DIR = Path(__file__).parent / "weights"

# The table's state-dict key ends so; transformers 4 prefixes it with "text_model.", 5 does not.
TOKEN_EMBEDDING = "embeddings.token_embedding.weight"
# Keys of the compact text-encoder file that replace TOKEN_EMBEDDING.
KEPT_IDS, KEPT_ROWS = "kept_token_ids", "kept_token_rows"

__all__ = ["WEIGHTS_DIR", "build_digits", "pack_text_encoder_state", "unpack_text_encoder_state"]


def pack_text_encoder_state(state: dict[str, torch.Tensor], token_ids: list[int]) -> dict[str, torch.Tensor]:
    """A text encoder's state dict with its token-embedding table cut to the rows ``token_ids``."""
    key = _table_key(state)
    ids = torch.tensor(sorted(set(token_ids)), dtype=torch.int64)
    packed = {k: v.contiguous() for k, v in state.items() if k != key}
    packed[KEPT_IDS] = ids
    packed[KEPT_ROWS] = state[key][ids].contiguous()
    return packed


def _table_key(state: dict) -> str:
    keys = [k for k in state if k.endswith(TOKEN_EMBEDDING)]
    if len(keys) != 1:
        raise KeyError(f"expected one key ending in {TOKEN_EMBEDDING!r}, found {keys}")
    return keys[0]


def unpack_text_encoder_state(
    packed: dict[str, torch.Tensor], vocab_size: int, key: str = TOKEN_EMBEDDING
) -> dict[str, torch.Tensor]:
    """Inverse of ``pack_text_encoder_state``: the full table under ``key``, zeros in the rows not kept."""
    state = {k: v for k, v in packed.items() if k not in (KEPT_IDS, KEPT_ROWS)}
    rows = packed[KEPT_ROWS]
    table = torch.zeros(vocab_size, rows.shape[1], dtype=rows.dtype)
    table[packed[KEPT_IDS]] = rows
    state[key] = table
    return state


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"digits model file {path} is missing; train the weights with "
            f"`python -m draft_core.models.digits.train --out {path.parent}`."
        )
    return json.loads(path.read_text())


def build_digits(weights_dir: str | Path = WEIGHTS_DIR) -> DiffusionModel:
    """The ``digits`` DiffusionModel (vae=None, float32, CPU, frozen) from ``weights_dir``."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from draft_core.models.tokenizer import offline_clip_tokenizer

    folder = Path(weights_dir)
    meta = _read_json(folder / "model.json")
    unet_config = _read_json(folder / "unet_config.json")
    text_config = CLIPTextConfig.from_dict(_read_json(folder / "text_config.json"))
    scheduler_config = _read_json(folder / "scheduler_config.json")
    # Building modules draws their random initial weights from the global generator;
    # keep the caller's random stream as it was (all of it is overwritten next).
    with torch.random.fork_rng(devices=[]):
        unet = UNet2DConditionModel.from_config(unet_config)
        text_encoder = CLIPTextModel(text_config)
    unet.load_state_dict(load_file(str(folder / "unet.safetensors")))
    packed = load_file(str(folder / "text_encoder.safetensors"))
    key = _table_key(text_encoder.state_dict())  # this transformers version's name for the table
    text_encoder.load_state_dict(unpack_text_encoder_state(packed, text_config.vocab_size, key))
    return DiffusionModel(
        unet=unet.float(),
        text_encoder=text_encoder.float(),
        tokenizer=offline_clip_tokenizer(model_max_length=meta["tokenizer_max_length"]),
        scheduler_config=scheduler_config,
        vae=None,
        name="digits",
    )
