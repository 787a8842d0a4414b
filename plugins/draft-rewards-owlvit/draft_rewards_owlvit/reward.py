"""Object addition or removal with OWL-ViT (DRaFT paper, Section 5.3 and Appendix B.6).

The detector sees the generated image and a fixed list of text queries Q. Each of its
boxes b gets a score s_b = sigmoid(max_q logit_bq), the score transformers'
``post_process_object_detection`` gives it; the boxes with s_b > ``threshold`` are the
localized objects. The reward is the paper's "sum of scores for the localized objects
corresponding to all queries, as well as the areas of their bounding boxes":

    r = sign · Σ_{b : s_b > threshold} s_b · (1 + area_weight · A_b)

with A_b the box's area as a fraction of the image (OWLv2: of the padded square), and
sign +1 for ``mode: add`` (more and larger detections), -1 for ``mode: remove``. The area
term is weighted by the score so that a box the detector does not believe in adds
nothing. The threshold is a hard cut: a box below it has no gradient, so when adding an
object that is rarely detected at first, ``threshold: 0`` rewards every box.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from draft_core.errors import ModelLoadError
from draft_core.rewarding.pretrained import (
    check_dtype_option,
    check_pretrained_available,
    check_reward_images,
    compute_dtype,
    frozen_model,
    hub_load_error,
)
from draft_rewards_owlvit.preprocess import preprocess_for

DEFAULT_MODEL = "google/owlvit-base-patch32"
MODES = {"add": 1.0, "remove": -1.0}


class OwlViTReward(nn.Module):
    """Reward [B] for detecting (``add``) or not detecting (``remove``) the ``queries``.

    queries: text queries, e.g. ``["a person", "people"]`` (at most 16 tokens each).
    model: a hub id (``google/owlvit-base-patch32``; an OWLv2 id such as
    ``google/owlv2-base-patch16-ensemble`` works too). path: a local folder with the same
    files (config.json, weights, processor and tokenizer files); used instead of the hub.
    threshold: score above which a box counts as a localized object. area_weight: weight
    of the score-weighted box areas. dtype: the network's dtype (``auto``: bfloat16 on
    CUDA, float32 on CPU). Prompts are ignored: the queries are fixed.
    """

    def __init__(
        self,
        queries: Sequence[str] | str,
        mode: str = "remove",
        model: str = DEFAULT_MODEL,
        path: str | None = None,
        threshold: float = 0.1,
        area_weight: float = 0.0,
        dtype: str = "auto",
    ) -> None:
        super().__init__()
        self.queries = _check_queries(queries)
        if mode not in MODES:
            raise ValueError(f"owlvit: mode must be 'add' or 'remove', got {mode!r}.")
        for name, value in (("threshold", threshold), ("area_weight", area_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"owlvit: {name} must be a number, got {value!r}.")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"owlvit: threshold is a score in [0, 1), got {threshold!r}.")
        self.mode, self.sign = mode, MODES[mode]
        self.model_id, self.path = model, path
        self.threshold, self.area_weight = float(threshold), float(area_weight)
        self.dtype = check_dtype_option(dtype, "owlvit")
        self._text: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def source(self) -> str:
        return str(Path(self.path).expanduser()) if self.path is not None else self.model_id

    def detect(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-box scores [B, N] (sigmoid of the best query's logit) and boxes [B, N, 4] (cx, cy, w, h).

        The model's own embedder and heads, as its forward calls them; the query embeddings
        are computed once. The class head is called without a query mask (all queries are
        real), which also keeps float64 logits float64 (the masked path casts to float32).
        """
        check_reward_images(images, "owlvit")
        dtype = compute_dtype(images, self.dtype)
        net = frozen_model(("owlvit", self.source), self._load_model, images.device, dtype, owner=self)
        pixels = preprocess_for(net.config)(images if images.dtype == torch.float64 else images.float())
        feature_map = net.image_embedder(pixel_values=pixels.to(dtype))[0]  # [B, h, w, D]
        feats = feature_map.flatten(1, 2)
        queries = self._query_embeds(net, images.device, dtype)
        logits = net.class_predictor(feats, queries.expand(feats.shape[0], -1, -1), None)[0]
        boxes = net.box_predictor(feats, feature_map)
        result_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        scores = torch.sigmoid(logits.to(result_dtype).max(dim=-1).values)
        return scores, boxes.to(result_dtype)

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1], any size. Returns [B]."""
        scores, boxes = self.detect(images)
        per_box = scores
        if self.area_weight:
            per_box = scores * (1 + self.area_weight * boxes[..., 2] * boxes[..., 3])
        kept = (scores > self.threshold).detach()
        return self.sign * (per_box * kept).sum(dim=1)

    # -- loading ---------------------------------------------------------------------------

    def check_available(self) -> None:
        """The checkpoint can be found (``path``, or the hub cache; online, the hub is asked later). Loads nothing."""
        self._check_path()
        check_pretrained_available("owlvit", self.model_id, self.path, files=_FILES)

    def _check_path(self) -> None:
        if self.path is not None and not Path(self.path).expanduser().is_dir():
            raise ModelLoadError(
                f"owlvit: path '{self.path}' is not a folder. Give a folder holding config.json,"
                " the weights (model.safetensors or pytorch_model.bin), and the processor and"
                f" tokenizer files, e.g. from `hf download {self.model_id} --local-dir DIR`."
            )

    def _load_model(self) -> nn.Module:
        from transformers import AutoModelForZeroShotObjectDetection

        self._check_path()
        try:
            net = AutoModelForZeroShotObjectDetection.from_pretrained(self.source)
        except (OSError, ValueError) as exc:
            raise hub_load_error("owlvit", self.source, exc, files=_FILES, hub_id=self.model_id) from exc
        if net.config.model_type not in ("owlvit", "owlv2"):
            raise ModelLoadError(f"owlvit: '{self.source}' is a {net.config.model_type} model, not OWL-ViT or OWLv2.")
        return net

    def _query_embeds(self, net: nn.Module, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[1, Q, D] text embeddings of the queries (no gradient; computed once per device and dtype)."""
        key = (device, dtype)
        if key not in self._text:
            ids, mask = self._tokens()
            with torch.no_grad():
                out = getattr(net, net.config.model_type).get_text_features(
                    input_ids=ids.to(device), attention_mask=mask.to(device)
                )
            embeds = out if isinstance(out, torch.Tensor) else out.pooler_output
            self._text[key] = embeds[None]
        return self._text[key]

    def _tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids and attention_mask [Q, L] of the queries, made by the model's own processor."""
        key = (self.source, self.queries)
        if key not in _TOKENS:
            from transformers import AutoProcessor

            self._check_path()
            try:
                processor = AutoProcessor.from_pretrained(self.source)
            except (OSError, ValueError) as exc:
                raise hub_load_error("owlvit", self.source, exc, files=_FILES, hub_id=self.model_id) from exc
            tokenizer = processor.tokenizer
            too_long = [q for q in self.queries if len(tokenizer(q)["input_ids"]) > tokenizer.model_max_length]
            if too_long:
                raise ValueError(
                    f"owlvit: queries {too_long} are longer than the model's"
                    f" {tokenizer.model_max_length} tokens; shorten them."
                )
            encoded = processor(text=[list(self.queries)], return_tensors="pt")
            _TOKENS[key] = (encoded["input_ids"], encoded["attention_mask"])
        return _TOKENS[key]

    def extra_repr(self) -> str:
        return (
            f"queries={list(self.queries)}, mode={self.mode!r}, model={self.source!r},"
            f" threshold={self.threshold}, area_weight={self.area_weight}"
        )


# tokenised queries per (source, queries): the tokenizer takes a second to load
_TOKENS: dict[tuple[str, tuple[str, ...]], tuple[torch.Tensor, torch.Tensor]] = {}
_FILES = "config.json, the weights and the processor/tokenizer files"


def _check_queries(queries: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(queries, str):
        queries = [queries]
    if (
        not isinstance(queries, (list, tuple))
        or not queries
        or not all(isinstance(q, str) and q.strip() for q in queries)
    ):
        raise ValueError(
            f"owlvit: queries must be a non-empty list of non-empty strings"
            f" (e.g. ['a person', 'people']), got {queries!r}."
        )
    return tuple(queries)
