"""Built-in samplers, registered through the ``draft`` entry-point group like any plugin."""

from draft_core.plugins.hookspecs import hookimpl
from draft_core.samplers.chain import ChainSampler
from draft_core.samplers.cps import CPSSampler
from draft_core.samplers.ddim import DDIMSampler
from draft_core.samplers.ddpm import DDPMSampler
from draft_core.samplers.flow import EulerSampler, FlowSDESampler


@hookimpl
def register_samplers(register) -> None:
    register("ddim", DDIMSampler)
    register("ddpm", DDPMSampler)
    register("euler", EulerSampler)
    register("flow-sde", FlowSDESampler)
    register("cps", CPSSampler)


__all__ = ["CPSSampler", "ChainSampler", "DDIMSampler", "DDPMSampler", "EulerSampler", "FlowSDESampler"]
