"""The plugin registry: every registered sampler, estimator and reward by name, who provides it,
and how to build it from a config's arguments. Discovery (entry points) is in ``discovery``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pluggy

import draft_core.plugins.hookspecs as hookspecs
from draft_core.errors import PluginError, closest, did_you_mean
from draft_core.plugins.arguments import Argument, argument_list, signature_of

GROUP = hookspecs.PROJECT
CONFLICT_ADVICE = "Uninstall one of them, or set DRAFT_PLUGINS to the entry points to load."
BUILTIN_DISTRIBUTION = "draft-diffusion"
KINDS = ("sampler", "estimator", "reward", "model")
PLURALS = {"sampler": "samplers", "estimator": "estimators", "reward": "rewards", "model": "models"}

# Names that users meet in the paper or docs but that live in their own
# distribution, so an unknown-name error can say what to install.
# (Every reward distribution under plugins/; a test keeps the two lists equal.)
KNOWN_EXTERNAL: dict[str, str] = {
    "owlvit": "draft-rewards-owlvit",
    "adversarial": "draft-rewards-adversarial",
    "nsfw": "draft-rewards-nsfw",
    "ocr": "draft-rewards-ocr",
    "imagereward": "draft-rewards-imagereward",
    "mps": "draft-rewards-mps",
    "aesthetic-v25": "draft-rewards-aesthetic-v25",
    "hpsv3": "draft-rewards-hpsv3",
}
KNOWN_EXTERNAL_KIND = "reward"


@dataclass(frozen=True)
class PluginEntry:
    """One registered name: ``factory(**kwargs)`` builds it; ``plugin`` is the entry-point name."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str | None
    version: str | None

    def describe(self) -> str:
        return describe_provider(self.kind, self.name, self.plugin, self.distribution, self.version)


@dataclass(frozen=True)
class LoadError:
    """An entry point that could not be loaded; ``error`` reads ``ExcType: message``."""

    entry_point: str
    distribution: str | None
    version: str | None
    error: str


@dataclass(frozen=True)
class Conflict:
    """A name registered twice: ``kept`` (the built-in, or the first loaded) keeps it in the
    listing; ``dropped`` was not registered. A run that names it gets an error."""

    kept: PluginEntry
    dropped: PluginEntry

    def message(self) -> str:
        k, d = self.kept, self.dropped
        return (
            f"{k.kind} '{k.name}' is registered twice: by {_provider(k.plugin, k.distribution, k.version)} and by "
            f"{_provider(d.plugin, d.distribution, d.version)}."
        )


@dataclass(frozen=True)
class ClaimConflict:
    """Two model families that claim the same diffusers pipeline classes: ``kept`` (the built-in, or
    the first loaded) loads such folders; ``dropped`` keeps its name and is used only where a config
    sets ``model.family`` to it."""

    kept: PluginEntry
    dropped: PluginEntry
    classes: tuple[str, ...]

    def message(self) -> str:
        k, d = self.kept, self.dropped
        return (
            f"model families '{k.name}' ({_provider(k.plugin, k.distribution, k.version)}) and '{d.name}' "
            f"({_provider(d.plugin, d.distribution, d.version)}) both load {', '.join(self.classes)}; such folders "
            f"load with '{k.name}', and '{d.name}' only where model.family names it."
        )


def normalise_distribution(name: str) -> str:
    """PEP 503 normalisation, so ``Draft_Diffusion`` and ``draft-diffusion`` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def describe_provider(kind: str, name: str, plugin: str, distribution: str | None, version: str | None) -> str:
    """``reward 'x' (plugin 'p' from distribution d 1.0)``: what error messages call a plugin's name."""
    dist = (
        f"distribution {distribution}" + (f" {version}" if version else "")
        if distribution
        else "no installed distribution"
    )
    return f"{kind} '{name}' (plugin '{plugin}' from {dist})"


def _provider(plugin: str, distribution: str | None, version: str | None) -> str:
    if distribution is None:
        return f"plugin '{plugin}' (not from an installed distribution)"
    return f"plugin '{plugin}' from {distribution}" + (f" {version}" if version else "")


def _error_text(exc: BaseException) -> str:
    # One line, so that `draft plugins` stays a table (pluggy's messages span several).
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}"


class Registry:
    """name -> PluginEntry for each kind, plus the entry points that failed to load."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, PluginEntry]] = {kind: {} for kind in KINDS}
        self.load_errors: list[LoadError] = []
        self.conflicts: list[Conflict] = []  # names registered twice (non-strict discovery)
        self.claim_conflicts: list[ClaimConflict] = []  # pipeline classes claimed by two model families
        # DRAFT_PLUGINS names that match no installed entry point (set by discovery).
        self.unknown_allowed: tuple[str, ...] = ()
        # Set by load_registry when DRAFT_PLUGINS filtered the third-party plugins.
        self.allow_list: tuple[str, ...] | None = None
        self._pm = pluggy.PluginManager(GROUP)
        self._pm.add_hookspecs(hookspecs)

    # -- registration -------------------------------------------------------

    def register_plugin(
        self,
        plugin: object,
        name: str,
        distribution: str | None = None,
        version: str | None = None,
    ) -> None:
        """Register a module (or any object) carrying ``@hookimpl`` functions; errors propagate."""
        self._commit(self._attach(plugin, name, distribution, version))

    def _attach(self, plugin: object, name: str, distribution: str | None, version: str | None) -> list[PluginEntry]:
        """Register ``plugin`` with pluggy and run its hooks; nothing is committed yet.

        Staging first means a plugin whose hook raises half-way contributes nothing,
        rather than some of its names.
        """
        # The pluggy name includes the distribution: two distributions may well
        # pick the same entry-point name.
        pm_name = f"{distribution or '<none>'}:{name}"
        self._check_unmarked(plugin, name)
        self._pm.register(plugin, name=pm_name)
        try:
            self._check_hooks(plugin, name)
            return self._call_hooks(plugin, name, distribution, version)
        except BaseException:
            self._pm.unregister(plugin)
            raise

    def _check_unmarked(self, plugin: object, name: str) -> None:
        """A hook function without ``@hookimpl`` would register nothing, silently: refuse it."""
        unmarked = [
            f"register_{PLURALS[k]}"
            for k in KINDS
            if callable(getattr(plugin, f"register_{PLURALS[k]}", None))
            and self._pm.parse_hookimpl_opts(plugin, f"register_{PLURALS[k]}") is None
        ]
        if unmarked:
            raise PluginError(
                f"plugin '{name}' defines {', '.join(unmarked)} without @hookimpl, so it would register nothing; "
                f"decorate it: `from draft_core import hookimpl`, then `@hookimpl` above `def {unmarked[0]}(register):`."
            )

    def _check_hooks(self, plugin: object, name: str) -> None:
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            # pluggy's own message shows the module repr; say which hook and what was meant.
            known = [f"register_{PLURALS[k]}" for k in KINDS]
            unknown = [h.name for h in self._pm.get_hookcallers(plugin) or [] if not h.has_spec()]
            hints = "".join(did_you_mean(h, known) for h in unknown)
            raise PluginError(
                f"plugin '{name}' implements unknown hook(s) {', '.join(map(repr, unknown))}."
                f"{hints} The hooks are {', '.join(known)}."
            ) from exc

    def _call_hooks(
        self, plugin: object, name: str, distribution: str | None, version: str | None
    ) -> list[PluginEntry]:
        staged: list[PluginEntry] = []
        for kind in KINDS:
            caller = getattr(self._pm.hook, f"register_{PLURALS[kind]}")
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                if impl.hookwrapper or impl.wrapper:
                    raise PluginError(f"plugin '{name}': hook wrappers are not supported here")

                def register(entry_name: str, factory: Callable[..., Any], _kind: str = kind) -> None:
                    if not isinstance(entry_name, str) or not entry_name:
                        raise PluginError(
                            f"plugin '{name}' registered a {_kind} with name {entry_name!r};"
                            " names are non-empty strings"
                        )
                    if not callable(factory):
                        raise PluginError(
                            f"plugin '{name}' registered {_kind} '{entry_name}' with a"
                            f" factory that is not callable: {factory!r}"
                        )
                    if _kind == "model":
                        check_family_class(factory, entry_name, name)
                    staged.append(PluginEntry(_kind, entry_name, factory, name, distribution, version))

                # An implementation may take a subset of the spec's arguments
                # (pluggy's rule), so pass only those it names.
                available = {"register": register}
                impl.function(**{a: available[a] for a in impl.argnames if a in available})
        return staged

    def _commit(self, staged: list[PluginEntry], strict: bool = True) -> None:
        """Add ``staged``. A name already taken raises PluginError when ``strict``; otherwise the
        first registration keeps it and the later one is recorded in ``conflicts`` and dropped."""
        seen: dict[tuple[str, str], PluginEntry] = {}
        keep: list[PluginEntry] = []
        for entry in staged:
            key = (entry.kind, entry.name)
            other = seen.get(key) or self._entries[entry.kind].get(entry.name)
            if other is None:
                seen[key] = entry
                keep.append(entry)
            elif strict:
                raise PluginError(f"{Conflict(other, entry).message()} {CONFLICT_ADVICE}")
            else:
                self.conflicts.append(Conflict(other, entry))
        for entry in keep:
            if entry.kind == "model":
                self._check_claims(entry, strict)
            self._entries[entry.kind][entry.name] = entry

    def _check_claims(self, entry: PluginEntry, strict: bool) -> None:
        """A family claiming pipeline classes that an earlier family (a built-in first) loads."""
        mine = pipeline_classes(entry.factory)
        for other in self._entries["model"].values():
            shared = tuple(c for c in mine if c in pipeline_classes(other.factory))
            if not shared:
                continue
            conflict = ClaimConflict(other, entry, shared)
            if strict:
                raise PluginError(
                    f"{conflict.message()} Give the later family only the pipeline classes it "
                    f"adds, or set DRAFT_PLUGINS to the entry points to load."
                )
            self.claim_conflicts.append(conflict)

    def family_for_class(self, class_name: str | None) -> PluginEntry | None:
        """The model family that loads folders of pipeline class ``class_name``: the first registered
        (built-ins register first) that claims it, so a plugin family never takes a built-in's folders."""
        return next((e for e in self._entries["model"].values() if class_name in pipeline_classes(e.factory)), None)

    # -- lookup -------------------------------------------------------------

    def _kind(self, kind: str) -> dict[str, PluginEntry]:
        if kind not in self._entries:
            raise PluginError(
                f"unknown plugin kind {kind!r}; the kinds are {', '.join(KINDS)}." + did_you_mean(kind, KINDS)
            )
        return self._entries[kind]

    def names(self, kind: str) -> list[str]:
        """The registered names of ``kind``, sorted."""
        return sorted(self._kind(kind))

    def entries(self, kind: str) -> list[PluginEntry]:
        """The entries of ``kind``, sorted by name."""
        entries = self._kind(kind)
        return [entries[n] for n in sorted(entries)]

    def get(self, kind: str, name: str) -> PluginEntry:
        """The entry for ``name``; an unknown name raises PluginError saying what exists."""
        entries = self._kind(kind)
        conflict = next((c for c in self.conflicts if (c.kept.kind, c.kept.name) == (kind, name)), None)
        if conflict is not None:  # which of the two was meant cannot be known
            raise PluginError(
                f"{conflict.message()} The second was dropped, so '{name}' cannot be used until "
                f"one is removed. {CONFLICT_ADVICE}"
            )
        if name in entries:
            return entries[name]
        raise PluginError(self._unknown_message(kind, name))

    def _unknown_message(self, kind: str, name: str) -> str:
        names = self.names(kind)
        plural = PLURALS[kind]
        parts = [f"unknown {kind} '{name}'."]
        dist = KNOWN_EXTERNAL.get(name) if kind == KNOWN_EXTERNAL_KIND else None
        failed_dist = dist and next(
            (
                e
                for e in self.load_errors
                if e.distribution and normalise_distribution(e.distribution) == normalise_distribution(dist)
            ),
            None,
        )
        if failed_dist:
            parts.append(
                f"'{name}' is provided by the distribution {dist}, which is installed but"
                f" failed to load: {failed_dist.error}."
            )
        elif dist:
            parts.append(
                f"'{name}' is provided by the distribution {dist}: pip install {dist}"
                f" (or ./plugins/{dist} from a checkout)."
            )
        parts.append(f"Registered {plural}: {', '.join(names) if names else '(none)'}.")
        hint = did_you_mean(name, names).strip()
        if hint and not dist:
            parts.append(hint)
        if self.load_errors and not failed_dist:
            failed = sorted({e.distribution or e.entry_point for e in self.load_errors})
            parts.append(f"Some plugins failed to load ({', '.join(failed)}); `draft plugins` lists them.")
        if self.allow_list is not None:
            parts.append(f"DRAFT_PLUGINS={','.join(self.allow_list)} limits which third-party plugins are loaded.")
        return " ".join(parts)

    # -- arguments ----------------------------------------------------------

    def check_kwargs(self, kind: str, name: str, kwargs: dict[str, Any]) -> None:
        """Raise PluginError if ``factory(**kwargs)`` would not bind: unknown or missing arguments."""
        sig = signature_of(self.get(kind, name).factory, annotations=False)
        if sig is None:
            return  # some C callables have no signature; the call itself will complain
        accepted = _describe_params(sig.keyword, sig.any_keyword)
        if not sig.any_keyword:
            known = sig.names()
            unknown = [k for k in kwargs if k not in known]
            if unknown:
                described = ", ".join(
                    f"'{k}'" + (f" (did you mean '{m}'?)" if (m := closest(k, known)) else "") for k in unknown
                )
                word = "argument" if len(unknown) == 1 else "arguments"
                raise PluginError(f"{kind} '{name}' got unknown {word} {described}. {accepted}")
        missing = sig.positional_only + [a.name for a in sig.keyword if a.required and a.name not in kwargs]
        if missing:
            word = "argument" if len(missing) == 1 else "arguments"
            raise PluginError(f"{kind} '{name}' is missing required {word} {', '.join(map(repr, missing))}. {accepted}")

    def build(self, kind: str, name: str, /, **kwargs: Any) -> Any:
        """``check_kwargs`` then ``factory(**kwargs)``."""
        self.check_kwargs(kind, name, kwargs)
        return self.get(kind, name).factory(**kwargs)

    # -- reporting ----------------------------------------------------------

    def describe(self) -> dict[str, list[Any]]:
        """A JSON-serialisable summary: every name with its provider, and the load errors."""
        out: dict[str, list[Any]] = {}
        for kind in KINDS:
            out[PLURALS[kind]] = [
                {
                    "name": e.name,
                    "plugin": e.plugin,
                    "distribution": e.distribution,
                    "version": e.version,
                    "arguments": [a.describe() for a in argument_list(e.factory)],
                }
                for e in self.entries(kind)
            ]
        out["errors"] = [asdict(e) for e in self.load_errors]
        out["conflicts"] = [
            {
                "kind": c.kept.kind,
                "name": c.kept.name,
                "message": c.message(),
                "kept": {"plugin": c.kept.plugin, "distribution": c.kept.distribution, "version": c.kept.version},
                "dropped": {
                    "plugin": c.dropped.plugin,
                    "distribution": c.dropped.distribution,
                    "version": c.dropped.version,
                },
            }
            for c in self.conflicts
        ]
        out["claim_conflicts"] = [
            {"kept": c.kept.name, "dropped": c.dropped.name, "classes": list(c.classes), "message": c.message()}
            for c in self.claim_conflicts
        ]
        out["unknown_allowed"] = list(self.unknown_allowed)
        return out


def pipeline_classes(factory: Any) -> tuple[str, ...]:
    """The diffusers pipeline classes a registered model family claims (``ModelFamily.pipeline_classes``)."""
    return tuple(getattr(factory, "pipeline_classes", ()) or ())


def check_family_class(factory: Any, name: str, plugin: str) -> None:
    """A model family is a ``ModelFamily`` subclass whose ``pipeline_classes`` is a tuple of strings."""
    from draft_core.models.family import ModelFamily

    if not (isinstance(factory, type) and issubclass(factory, ModelFamily)):
        raise PluginError(
            f"plugin '{plugin}' registered model family '{name}' with {factory!r}, which is not a subclass of "
            f"draft_core.models.family.ModelFamily; register the family's class (register('{name}', MyFamily))."
        )
    classes = factory.__dict__.get("pipeline_classes", factory.pipeline_classes)
    if not isinstance(classes, tuple) or not all(isinstance(c, str) and c for c in classes):
        raise PluginError(
            f"plugin '{plugin}': model family '{name}' has pipeline_classes {classes!r}; give a tuple of the "
            f"diffusers pipeline class names it loads, e.g. ('PixArtSigmaPipeline',), or () to be chosen only by "
            f"model.family."
        )


def _describe_params(params: list[Argument], accepts_any: bool) -> str:
    if not params:
        return "It accepts any keyword arguments." if accepts_any else "It accepts no arguments."
    shown = [a.text() for a in params]
    tail = ", and any other keyword" if accepts_any else ""
    return f"Accepted arguments: {', '.join(shown)}{tail}."
