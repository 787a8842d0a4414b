"""Conditioning carries a family's extra tensors (a text attention mask) and subclasses through every
batch operation, guidance pairing and storage (draft_core.models.conditioning)."""

from __future__ import annotations

import dataclasses

import torch

from draft_core.models.conditioning import Conditioning


def _masked(batch: int = 3) -> Conditioning:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(batch, 5)
    mask[:, 3:] = 0
    return Conditioning(
        torch.randn(batch, 5, 4, generator=g),
        torch.randn(1, 5, 4, generator=g),
        ["a", "b", "c"][:batch],
        extra={"mask": mask, "uncond_mask": torch.tensor([[1.0, 0, 0, 0, 0]])},
    )


def test_extra_tensors_follow_repeat_and_select_with_the_shared_empty_prompt_row_kept_shared():
    c = _masked()
    r = c.repeat(2)
    assert r.extra["mask"].shape == (6, 5) and torch.equal(r.extra["mask"][3:], c.extra["mask"])
    assert r.extra["uncond_mask"].shape == (1, 5)
    s = c.select(torch.tensor([2, 0]))
    assert torch.equal(s.extra["mask"], c.extra["mask"][[2, 0]]) and s.prompts == ["c", "a"]
    assert s.extra["uncond_mask"] is c.extra["uncond_mask"]


def test_guidance_pairs_put_the_empty_prompt_first_for_every_paired_tensor():
    c = _masked()
    pairs = c.guidance_pairs()
    assert set(pairs) == {"cond", "mask"}
    assert torch.equal(pairs["cond"][:3], c.uncond.expand(3, 5, 4)) and torch.equal(pairs["cond"][3:], c.cond)
    assert torch.equal(pairs["mask"][:3], c.extra["uncond_mask"].expand(3, 5)) and torch.equal(
        pairs["mask"][3:], c.extra["mask"]
    )


def test_a_learned_negative_prompt_keeps_the_extras():
    c = _masked()
    replaced = dataclasses.replace(c, uncond=torch.zeros(1, 5, 4))
    assert replaced.extra is c.extra


def test_tensors_round_trip_with_extras():
    c = _masked()
    back = Conditioning.from_tensors(c.detach().tensors(), c.prompts)
    assert set(c.tensors()) == {"cond", "uncond", "extra.mask", "extra.uncond_mask"}
    assert all(torch.equal(back.tensors()[k], v) for k, v in c.tensors().items())


@dataclasses.dataclass
class WithIds(Conditioning):
    """A family's subclass with a tensor field and a plain field of its own."""

    token_ids: torch.Tensor | None = None
    note: str = "kept"


def test_a_subclass_survives_every_operation():
    c = WithIds(torch.randn(2, 3, 4), None, ["a", "b"], token_ids=torch.tensor([[1, 2, 3], [4, 5, 6]]))
    for out in (c.repeat(2), c.select(torch.tensor([1])), c.detach(), c.to("cpu")):
        assert type(out) is WithIds and out.note == "kept"
    assert torch.equal(c.repeat(2).token_ids[2:], c.token_ids)
    assert torch.equal(c.select(torch.tensor([1])).token_ids, c.token_ids[[1]])
