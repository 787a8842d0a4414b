"""Built-in samplers, registered through the ``draft`` entry-point group like any plugin."""

from draft_core.hookspecs import hookimpl
from draft_core.samplers.ddim import DDIMSampler


@hookimpl
def register_samplers(register) -> None:
    register("ddim", DDIMSampler)


__all__ = ["DDIMSampler"]
