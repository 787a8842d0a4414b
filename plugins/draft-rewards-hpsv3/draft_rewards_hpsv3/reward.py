"""HPSv3 (Ma et al. 2025, MizzenAI/HPSv3): human preference for an image given its prompt, from a VLM.

Qwen2-VL-7B-Instruct reads the image and an instruction holding the prompt (Qwen2-VL's chat
template: the default system message, then the user's image and text, then the assistant's
turn); HPSv3's reward head reads the decoder's last hidden state at the token ``<|Reward|>`` that
ends the instruction and gives two numbers, the mean and the spread of HPSv3's Gaussian preference
model; the score is the first (the mean), as in HPSv3's inference (``draft_rewards_hpsv3.model``); it is not normalised to a range.
Preprocessing (``draft_rewards_hpsv3.preprocess``) is torch ops, so DRaFT trains through it. The
tokenizer and chat template are Qwen2-VL-7B-Instruct's processor's (a hub id in the cache, or a
local folder), with ``<|Reward|>`` added as HPSv3 adds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import nn

from draft_core.errors import ModelLoadError
from draft_core.rewarding.pretrained import (
    check_dtype_option,
    check_reward_images,
    compute_dtype,
    frozen_model,
    random_weights,
)
from draft_rewards.hub import (
    from_pretrained,
    hub_file,
    hub_file_available,
    hub_offline,
    load_state_dict_file,
    load_strict,
    local_path,
    looks_like_path,
)
from draft_rewards.pretrained import check_prompts
from draft_rewards_hpsv3.model import ARCH, HPSv3Net, convert_state_dict, qwen2vl_config
from draft_rewards_hpsv3.preprocess import VisionInput

HUB_REPO, HUB_FILE = "MizzenAI/HPSv3", "HPSv3.safetensors"
DEFAULT_PROCESSOR = "Qwen/Qwen2-VL-7B-Instruct"
REWARD_TOKEN, IMAGE_TOKEN = "<|Reward|>", "<|image_pad|>"
#: the processor folder's file checked before loading (the processor's own errors name the rest).
PROCESSOR_FILE = "tokenizer_config.json"
#: HPSv3's instruction (its data collator's INSTRUCTION + prompt_with_special_token), whitespace included.
INSTRUCTION = (
    "\nYou are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a"
    " overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the"
    " worst and 10 being the best. \n\n**Visual Quality:**  \nEvaluate the overall visual quality of the image."
    " The following sub-dimensions should be considered:\n- **Reasonableness:** The image should not contain"
    " any significant biological or logical errors, such as abnormal body structures or nonsensical"
    " environmental setups.\n- **Clarity:** Evaluate the sharpness and visibility of the image. The image should"
    " be clear and easy to interpret, with no blurring or indistinct areas.\n- **Detail Richness:** Consider the"
    " level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing,"
    " shadows).\n- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color"
    " scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey"
    " a sense of harmony and balance.\n- **Safety:** The image should not contain harmful or inappropriate"
    " content, such as political, violent, or adult material. If such content is present, the image quality"
    " and satisfaction score should be the lowest possible. \n\n**Text Alignment:**  \nAssess how well the"
    " image matches the textual prompt across the following sub-dimensions:\n- **Subject Relevance** Evaluate"
    " how accurately the subject(s) in the image (e.g., person, animal, object) align with the textual"
    " description. The subject should match the description in terms of number, appearance, and behavior.\n-"
    " **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well"
    " the image adheres to this style.\n- **Contextual Consistency**: Assess whether the background, setting,"
    " and surrounding elements in the image logically fit the scenario described in the prompt. The environment"
    " should support and enhance the subject without contradictions.\n- **Attribute Fidelity**: Check if"
    " specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions)"
    " are faithfully represented in the image. Minor deviations may be acceptable, but critical attributes"
    " should be preserved.\n- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the"
    " prompt are captured in the image. The generated content should not introduce elements that conflict with"
    " or distort the original description.\nTextual prompt - {prompt}\n\n\n"
    "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
)


class _AssignLoad:
    """``load_strict``'s view of a network built on the meta device: its tensors are taken as loaded."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> Any:
        return self.net.load_state_dict(state, strict=strict, assign=True)


class HPSv3Reward(nn.Module):
    """HPSv3 score [B] of images [B, 3, H, W] in [0, 1] for their prompts.

    path: the checkpoint (``HPSv3.safetensors``; safetensors only); None takes it from the hub
    model MizzenAI/HPSv3 in the Hugging Face cache. processor: Qwen2-VL-7B-Instruct's hub id or a
    local folder with its processor files (tokenizer, chat template, preprocessor_config.json).
    arch: the network's sizes (``model.ARCH``; tests give a tiny one). dtype: ``auto`` (bfloat16 on
    CUDA, float32 on CPU), float32, bfloat16 or float16; the reward head stays float32 under a
    half-precision tower, as in HPSv3.
    """

    def __init__(
        self,
        path: str | None = None,
        processor: str = DEFAULT_PROCESSOR,
        arch: dict[str, Any] | None = None,
        dtype: str = "auto",
    ) -> None:
        super().__init__()
        if path is not None and not (isinstance(path, str) and path):
            raise ValueError(f"hpsv3: path must be the path of {HUB_FILE}, got {path!r}.")
        if not (isinstance(processor, str) and processor):
            raise ValueError(
                f"hpsv3: processor must be a hub id or a folder of {DEFAULT_PROCESSOR}, got {processor!r}."
            )
        if arch is not None and not (isinstance(arch, dict) and {"text_config", "vision_config"} <= set(arch)):
            raise ValueError(
                f"hpsv3: arch must be a Qwen2VLConfig dict with text_config and vision_config, got {arch!r}."
            )
        self.path, self.processor_id, self.arch = path, processor, arch or ARCH
        self.dtype = check_dtype_option(dtype, "hpsv3")
        self._processor = None

    # -- where the files come from ------------------------------------------------------------

    def checkpoint_file(self) -> Path:
        if self.path is None:
            return hub_file(HUB_REPO, HUB_FILE, reward="hpsv3", option="path")
        expected = f"HPSv3's checkpoint ({HUB_FILE} of the hub model {HUB_REPO}, a .safetensors file)"
        path = local_path(self.path, reward="hpsv3", option="path", expected=expected)
        if path.suffix != ".safetensors":
            raise ModelLoadError(f"hpsv3: reward.path '{self.path}' is not a .safetensors file; it must be {expected}.")
        return path

    def _local_processor(self) -> bool:
        return Path(self.processor_id).expanduser().is_dir() or looks_like_path(self.processor_id)

    def check_available(self) -> None:
        """The checkpoint and the processor files can be found (local, or the hub cache); one error
        names every missing one. Loads nothing."""
        problems = []
        for check in (self._check_checkpoint, self.check_processor_available):
            try:
                check()
            except ModelLoadError as exc:
                problems.append(str(exc).removeprefix("hpsv3: "))
        if problems:
            raise ModelLoadError("hpsv3: " + " Also: ".join(problems))

    def _check_checkpoint(self) -> None:
        if self.path is not None:
            self.checkpoint_file()
        else:
            hub_file_available(HUB_REPO, HUB_FILE, reward="hpsv3", option="path")

    def check_processor_available(self) -> None:
        """The processor's tokenizer_config.json is in the folder ``processor``, or that hub id's is cached."""
        download = f"`hf download {DEFAULT_PROCESSOR} --include '*.json' '*.txt' '*.jinja' --local-dir DIR`"
        if self._local_processor():
            expected = f"{DEFAULT_PROCESSOR}'s {PROCESSOR_FILE} ({download})"
            local_path(Path(self.processor_id) / PROCESSOR_FILE, reward="hpsv3", option="processor", expected=expected)
            return
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(self.processor_id, PROCESSOR_FILE), str) or not hub_offline():
            return
        raise ModelLoadError(
            f"hpsv3: the processor files of the hub model '{self.processor_id}' ({PROCESSOR_FILE}, ...) are not in"
            " the Hugging Face cache (HF_HUB_OFFLINE=1 is set, so only the cache was searched). Either download"
            f" them on a machine with network ({download}, no weights needed) and give the folder with --set"
            " reward.processor=DIR, or put them in the Hugging Face cache and run with HF_HUB_OFFLINE=1."
        )

    def processor(self):
        """Qwen2-VL's processor with ``<|Reward|>`` added to its tokenizer (as HPSv3 adds it), padding right."""
        if self._processor is None:
            from transformers import AutoProcessor

            self.check_processor_available()  # a missing tokenizer file is named before transformers guesses around it
            expected = f"a folder with {DEFAULT_PROCESSOR}'s processor files (tokenizer, chat template, image settings)"
            proc = from_pretrained(
                AutoProcessor.from_pretrained, self.processor_id, reward="hpsv3", option="processor", expected=expected
            )
            if REWARD_TOKEN not in proc.tokenizer.get_vocab():
                proc.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
            proc.tokenizer.padding_side = "right"
            self._processor = proc
        return self._processor

    def load(self) -> nn.Module:
        path = self.checkpoint_file()  # before building the network: a missing file fails fast
        state = convert_state_dict(load_state_dict_file(path, reward="hpsv3", option="path"))
        embed = state.get("language.embed_tokens.weight")
        config = qwen2vl_config(self.arch, vocab_size=None if embed is None else embed.shape[0])
        # built without memory and given the checkpoint's tensors: a 7B network is not allocated twice
        with torch.device("meta"):
            net = HPSv3Net(config)
        expected = "HPSv3 (Qwen2-VL + reward head)"
        load_strict(_AssignLoad(net), state, reward="hpsv3", path=path, expected=expected)
        net.use_hpsv3_rotary()  # the rotary frequencies are computed, not stored: now for real, off meta
        empty = [name for name, t in chain(net.named_parameters(), net.named_buffers()) if t.is_meta]
        if empty:
            raise ModelLoadError(f"hpsv3: the checkpoint '{path}' leaves {empty[:3]} unset; it must be {expected}.")
        return net

    def architecture(self) -> nn.Module:
        """The network with random weights, reading no checkpoint (``draft plan`` builds it on the meta
        device; it still builds the model's inputs, so the processor's files must be found)."""
        return HPSv3Net(qwen2vl_config(self.arch))

    # -- scoring ----------------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str], image_tokens: int) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask [B, L] of the chat for each prompt, with ``image_tokens`` image slots."""
        proc = self.processor()
        chats = [
            [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION.format(prompt=p)}],
                }
            ]
            for p in prompts
        ]
        texts = proc.apply_chat_template(chats, tokenize=False, add_generation_prompt=True)
        texts = [text.replace(IMAGE_TOKEN, IMAGE_TOKEN * image_tokens) for text in texts]
        batch = proc.tokenizer(texts, padding=True, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def inputs(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The model inputs Qwen2-VL's processor would make: pixel_values, image_grid_thw, input_ids, attention_mask."""
        vision = VisionInput.from_processor(self.processor().image_processor)
        pixel_values, grid = vision(images)
        tokens = self.encode(prompts, int(grid[0].prod()) // vision.merge_size**2)
        tokens = {k: v.to(images.device) for k, v in tokens.items()}
        return {"pixel_values": pixel_values, "image_grid_thw": grid, **tokens}

    def reward_token_id(self, vocab_size: int) -> int:
        token = self.processor().tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        if not isinstance(token, int) or token >= vocab_size:
            raise ModelLoadError(
                f"hpsv3: the tokenizer of '{self.processor_id}' gives {REWARD_TOKEN} the id {token}, outside the"
                f" checkpoint's {vocab_size} embeddings; reward.processor must be {DEFAULT_PROCESSOR}'s processor."
            )
        return token

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1]; prompts: B strings. Returns [B] (float32; float64 for float64 images)."""
        check_reward_images(images, "hpsv3")
        prompts = check_prompts(prompts, images.shape[0], "hpsv3")
        dtype = compute_dtype(images, self.dtype)
        if self._processor is None and not random_weights(self.load):  # draft plan reads no checkpoint
            self.check_available()  # every missing file named at once, before anything loads
        net = frozen_model(("hpsv3", self.path, repr(self.arch)), self.load, images.device, dtype, owner=self)
        if dtype in (torch.bfloat16, torch.float16):
            net.head.float()
        work = torch.float64 if dtype == torch.float64 else torch.float32
        batch = self.inputs(images.to(work), prompts)
        reward_id = self.reward_token_id(net.language.embed_tokens.num_embeddings)
        found = (batch["input_ids"] == reward_id).sum(dim=1)
        if not (found == 1).all():
            bad = [p for p, n in zip(prompts, found.tolist(), strict=True) if n != 1]
            raise ValueError(f"hpsv3: a prompt must not contain {REWARD_TOKEN} itself, got {bad[0]!r}.")
        out = net(
            batch["pixel_values"].to(dtype),
            batch["image_grid_thw"],
            batch["input_ids"],
            batch["attention_mask"],
            reward_id,
        )
        return out.to(work)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, processor={self.processor_id!r}"
