"""The core's layout: no import cycles, no concrete plugin imported by the core, files of one size."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "draft_core"


def _module(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every draft* module named by an import anywhere in the file (function-level imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("draft"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("draft"))
    return found


def _graph() -> dict[str, set[str]]:
    imports = {_module(p): _imports(p) for p in CORE.rglob("*.py")}
    return {m: {d for d in deps if d in imports and d != m} for m, deps in imports.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_core_modules_import_each_other_without_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_core_imports_no_concrete_plugin():
    """The core knows estimators and rewards only by registered name (the kl wrapper included)."""
    offenders = {
        _module(p): sorted(d for d in _imports(p) if d.split(".")[0] in ("draft_estimators", "draft_rewards"))
        for p in CORE.rglob("*.py")
    }
    assert {m: d for m, d in offenders.items() if d} == {}


def test_core_files_stay_readable():
    """Files of one purpose, mostly under ~400 lines (the house style); 450 is the hard line."""
    long = {str(p.relative_to(CORE)): n for p in CORE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}


def test_public_import_paths_still_work():
    from draft_core import hookimpl  # noqa: F401
    from draft_core.protocols import Conditioning, EstimatorOutput, GradientEstimator, Reward, Sampler, StepInputs  # noqa: F401
    from draft_core.testing import RewardConformance  # noqa: F401
    from draft_core.testing.estimators import EstimatorConformance as same
    from draft_core.testing_estimators import EstimatorConformance

    assert EstimatorConformance is same


def _component_uses(path: Path, names: tuple[str, ...]) -> list[str]:
    """Lines of ``path`` that read a model component by attribute (``model.unet``, ``x.transformer``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in names:
            found.append(f"{path.relative_to(CORE.parent)}:{node.lineno}: .{node.attr}")
    return found


def test_only_model_families_touch_their_components():
    """Issue 12: samplers, estimators, reward wrappers, baselines and commands go through the family
    interface (denoise, denoiser, encode_prompts, decode); only draft_core/models/ (the families) and
    planning's architecture builders name a family's components."""
    components = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
    allowed = (CORE / "models", CORE / "planning" / "architectures.py")
    files = [
        p
        for root in (CORE, CORE.parent / "draft_estimators", CORE.parent / "draft_rewards")
        for p in root.rglob("*.py")
    ]
    offenders = [
        line
        for p in files
        if not any(p == a or a in p.parents for a in allowed)
        for line in _component_uses(p, components)
    ]
    assert offenders == []
