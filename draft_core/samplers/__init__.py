"""Built-in samplers, registered through the ``draft`` entry-point group like any plugin."""

from draft_core.plugins.hookspecs import hookimpl
from draft_core.samplers.chain import ChainSampler
from draft_core.samplers.ddim import DDIMSampler
from draft_core.samplers.ddpm import DDPMSampler


@hookimpl
def register_samplers(register) -> None:
    register("ddim", DDIMSampler)
    register("ddpm", DDPMSampler)


__all__ = ["ChainSampler", "DDIMSampler", "DDPMSampler"]
