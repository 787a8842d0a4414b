"""An exponential moving average of the trained weights (the LoRA and any learned sampler
hyperparameters), with diffusers' ``EMAModel``: shadow = d·shadow + (1 − d)·weights after each
optimiser step, d = min(decay, (1 + n) / (10 + n)) after n updates (its warm-up, so early
averages are not dominated by the initial weights).

Checkpoints hold the shadow weights and the update count, so a resumed run continues the
average bit for bit; the run folder gets ``lora_ema/``, written by swapping the average into
the model for the moment of the write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

PREFIX = "weights_ema."  # checkpoint keys (extra.safetensors)


class WeightsEma:
    """The average of ``params`` with ``decay``; with ``decay`` None, an average that is switched
    off (every method does nothing), so the runner needs no branches."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float | None) -> None:
        self.params = list(params)
        self.average = None
        if decay is not None:
            from diffusers.training_utils import EMAModel

            self.average = EMAModel(self.params, decay=decay)

    @classmethod
    def from_config(cls, section: Any, params: list[torch.nn.Parameter]) -> WeightsEma:
        """``section``: the config's ``train.ema`` (its decay null: no average)."""
        return cls(params, section.decay)

    def update(self) -> None:
        """After an optimiser step that changed the weights (a skipped step is no update)."""
        if self.average is not None:
            self.average.step(self.params)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors for the checkpoint: each shadow weight, and the update count."""
        if self.average is None:
            return {}
        state = {f"{PREFIX}{i}": p.detach().clone() for i, p in enumerate(self.average.shadow_params)}
        state[f"{PREFIX}step"] = torch.tensor(self.average.optimization_step, dtype=torch.int64)
        return state

    def load_state_dict(self, extra: dict[str, torch.Tensor]) -> None:
        """Take (and remove) the average's keys from a checkpoint's extra tensors."""
        mine = {k[len(PREFIX) :]: extra.pop(k) for k in list(extra) if k.startswith(PREFIX)}
        if self.average is None or not mine:
            return  # no average now, or none then (it starts from the weights)
        step = int(mine.pop("step"))
        shadow = [mine[str(i)].to(p.device, p.dtype) for i, p in enumerate(self.params)]
        self.average.load_state_dict({"optimization_step": step, "shadow_params": shadow})

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The average in place of the weights, for the duration of the block."""
        assert self.average is not None, "applied() needs an average (train.ema.decay)"
        self.average.store(self.params)
        self.average.copy_to(self.params)
        try:
            yield
        finally:
            self.average.restore(self.params)

    def write(self, write_folder: Callable[[Path], None], folder: Path) -> None:
        """``write_folder(folder)`` with the average swapped in (the run's ``lora_ema/``)."""
        if self.average is not None:
            with self.applied():
                write_folder(folder)
