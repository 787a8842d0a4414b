"""The built-in model families, registered through the ``register_models`` hook like a plugin's."""

from __future__ import annotations

from draft_core.plugins.hookspecs import hookimpl


@hookimpl
def register_models(register) -> None:
    from draft_core.models.pipeline import DiffusionModel

    register("sd", DiffusionModel)
    from draft_core.models.families.sdxl import SDXLModel

    register("sdxl", SDXLModel)
    from draft_core.models.families.sd3 import SD3Model
    register("sd3", SD3Model)
    from draft_core.models.families.flux import FluxModel

    register("flux", FluxModel)
