"""What a diffusers folder's ``model_index.json`` may make draft import: the classes diffusers' own loader
takes components from, and nothing else.

Each component entry is ``[LIBRARY, CLASS]``. diffusers' ``DiffusionPipeline.from_pretrained`` looks CLASS up
in diffusers, transformers (``pipeline_loading_utils.LOADABLE_CLASSES``) or one of diffusers' pipeline
modules (``["stable_diffusion", "StableDiffusionSafetyChecker"]``), and only classes that derive from a
loadable base (a model, tokenizer, scheduler, feature extractor...). A folder from a stranger naming any
other module (``["this", "Nothing"]``) is refused with one paragraph before anything is imported.
"""

from __future__ import annotations

import importlib

from draft_core.errors import ModelLoadError

# diffusers' loadable libraries less onnxruntime: draft trains torch modules.
COMPONENT_LIBRARIES = ("diffusers", "transformers")


def _absent(entry) -> bool:
    return entry is None or (
        isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is None and entry[1] is None
    )


def _lookup(library, class_name) -> type | None:
    import diffusers.pipelines
    from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES

    if not isinstance(library, str) or not isinstance(class_name, str) or not class_name.isidentifier():
        return None
    if library in COMPONENT_LIBRARIES:
        module, libraries = importlib.import_module(library), (library,)
    elif library.isidentifier() and not library.startswith("_") and hasattr(diffusers.pipelines, library):
        module, libraries = getattr(diffusers.pipelines, library), COMPONENT_LIBRARIES  # e.g. the SD safety checker
    else:
        return None
    bases = []
    for lib in libraries:
        base_module = importlib.import_module(lib)
        bases += [b for b in (getattr(base_module, n, None) for n in LOADABLE_CLASSES[lib]) if isinstance(b, type)]
    try:
        cls = getattr(module, class_name, None)
    except Exception:  # diffusers' lazy modules import on attribute access; a missing optional backend raises
        return None
    return cls if isinstance(cls, type) and issubclass(cls, tuple(bases)) else None


def component_class(name: str, key: str, entry) -> type | None:
    """The class ``entry`` (model_index.json's ``[library, class_name]`` for component ``key`` of model
    ``name``) names, or None for an absent component; ModelLoadError for anything diffusers would not load."""
    if _absent(entry):
        return None
    cls = _lookup(*entry) if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
    if cls is None:
        raise ModelLoadError(
            f"model '{name}': its model_index.json names {entry!r} for component '{key}', which is not a class "
            f"diffusers loads components from. Each component must be [LIBRARY, CLASS]: LIBRARY one of "
            f"{', '.join(COMPONENT_LIBRARIES)} (or a diffusers pipeline module such as stable_diffusion) and CLASS a "
            f'model, tokenizer or scheduler class of it, as save_pretrained writes them (e.g. ["diffusers", '
            f'"AutoencoderKL"]), or [null, null] for none. draft imports nothing else a folder names.'
        )
    return cls


def check_index(name: str, index: dict) -> None:
    """Every component entry of a parsed model_index.json names a loadable class (keys starting with '_' and
    plain settings such as ``requires_safety_checker`` are not components)."""
    for key, entry in index.items():
        if not str(key).startswith("_") and isinstance(entry, (list, tuple)):
            component_class(name, str(key), entry)
