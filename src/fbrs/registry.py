"""Registries: models and predictor modes are looked up by name from one place.

The CLI, the evaluation runner and the app list what is available from here. Predictor modes:
`PREDICTORS` is the single source of truth. `load_plugins()` (run by the first question asked of it) is the
only place that imports the modules defining modes: each module in `PLUGIN_MODULES` has a `mode_specs()`
returning one frozen `ModeSpec` per mode, which says what the mode supports (ONNX backend, oracle,
gradient-based refinement, a model of the CLIs, its options) and whether it is available here. A new mode
family adds its module to `PLUGIN_MODULES` and shows up everywhere, in the registry-wide tests
(tests/test_registry_modes.py) too; `PREDICTORS.add(spec)` registers one at run time.

Importing a mode module registers nothing (no side effects at import); only `load_plugins` does.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from fbrs.errors import ConfigError, MissingDependencyError

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """A name -> factory mapping with helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[F], F]:
        def decorator(factory: F) -> F:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = factory
            self._meta[name] = dict(meta)
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise KeyError(f"unknown {self.kind} {name!r}; available: {known}") from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


MODELS = Registry("model")


# ---------------------------------------------------------------------------------------------------------
# Predictor modes


@dataclass(frozen=True)
class ModeSpec:
    """One predictor mode: how it is built and what it supports.

    factory(model=None, **options) builds the predictor (set_image / add_click / undo / reset / clicks /
    get_state / set_state / predict); call it through `create`, which checks availability and options.
    """

    name: str
    factory: Callable[..., Any]
    family: str  # "deeplab" (the learned modes), "sam", "baseline", or a plugin's own
    description: str = ""
    needs_model: bool = True  # takes the DeepLab InteractiveModel the CLIs load (else brings its own or none)
    options: tuple[str, ...] = ()  # the options it takes (create_predictor(mode, **options))
    ignored: tuple[str, ...] = ()  # options it accepts without effect (SAM: zoom_in)
    # Also accept, without effect, every option another registered mode takes: one option set drives every
    # mode (the classical baselines). A name no registered mode takes is still refused (a typo).
    ignores_other_modes_options: bool = False
    onnx: bool = False  # can run its feed-forward part in ONNX Runtime (fbrs.onnx)
    oracle: bool = False  # its predictor has oracle_refine (the f-BRS oracle, paper Appendix B)
    gradients: bool = False  # refines each click by backpropagation (BRS / f-BRS)
    requires: tuple[tuple[str, str], ...] = ()  # optional (module, pip package) pairs it needs
    config: Any = None  # the family's own description (fbrs.inference.modes.LearnedMode for "deeplab")

    @property
    def unavailable_reason(self) -> str | None:
        """None when the mode can be built here, else why not (e.g. a missing optional dependency)."""
        missing = [(module, package) for module, package in self.requires if importlib.util.find_spec(module) is None]
        if not missing:
            return None
        names = ", ".join(f"{package} (module {module})" for module, package in missing)
        packages = " ".join(package for _, package in missing)
        return f"{names} not installed: pip install {packages}"

    @property
    def available(self) -> bool:
        return self.unavailable_reason is None

    def create(self, model: Any = None, **options: Any) -> Any:
        """The predictor of this mode. MissingDependencyError when it is unavailable, ConfigError naming
        options it does not take."""
        reason = self.unavailable_reason
        if reason is not None:
            raise MissingDependencyError(f"mode {self.name} is unavailable: {reason}")
        unknown = [name for name in options if name not in self.options and name not in self.ignored]
        if unknown and self.ignores_other_modes_options:
            others = {name for spec in PREDICTORS.specs() for name in (*spec.options, *spec.ignored)}
            unknown = [name for name in unknown if name not in others]
        if unknown:
            takes = ", ".join(self.options) or "none"
            raise ConfigError(f"mode {self.name} does not take the option(s) {', '.join(unknown)}; it takes: {takes}")
        return self.factory(model=model, **options)


#: The modules whose `mode_specs()` define the built-in modes, in listing order.
PLUGIN_MODULES = ("fbrs.inference.deeplab_modes", "fbrs.inference.sam_modes", "fbrs.baselines")


class ModeRegistry:
    """Predictor modes by name (see the module docstring). Asking anything loads the plugins first."""

    kind = "predictor mode"

    def __init__(self) -> None:
        self._specs: dict[str, ModeSpec] = {}
        self._loaded = False
        self._lock = threading.RLock()

    def load_plugins(self) -> None:
        """Import every mode module (once per process) and register its ModeSpecs."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True  # set first: a plugin asking the registry while loading does not recurse
            try:
                for module_name in PLUGIN_MODULES:
                    for spec in importlib.import_module(module_name).mode_specs():
                        self.add(spec)
            except BaseException:
                self._specs.clear()
                self._loaded = False
                raise

    def add(self, spec: ModeSpec) -> ModeSpec:
        """Register `spec` (plugins; a test's or a user's own mode at run time)."""
        with self._lock:
            if spec.name in self._specs:
                raise KeyError(f"{self.kind} {spec.name!r} is already registered")
            self._specs[spec.name] = spec
        return spec

    def remove(self, name: str) -> None:
        """Forget a mode added with `add` (tests)."""
        self.load_plugins()
        with self._lock:
            del self._specs[name]

    def spec(self, name: str) -> ModeSpec:
        self.load_plugins()
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self._specs)
            raise KeyError(f"unknown {self.kind} {name!r}; available: {known}") from None

    def specs(self, family: str | None = None) -> list[ModeSpec]:
        """Every registered mode (of `family`), in registration order, available or not."""
        self.load_plugins()
        return [spec for spec in self._specs.values() if family is None or spec.family == family]

    def names(self, family: str | None = None) -> list[str]:
        return [spec.name for spec in self.specs(family)]

    def get(self, name: str) -> Callable[..., Any]:
        """The checked factory of `name`: (model=None, **options) -> predictor (ModeSpec.create)."""
        return self.spec(name).create

    def meta(self, name: str) -> dict[str, Any]:
        """The spec's fields as a dict (needs_model, family, description, options, ...), plus available."""
        spec = self.spec(name)
        values = {field.name: getattr(spec, field.name) for field in fields(spec) if field.name != "factory"}
        return {**values, "available": spec.available, "unavailable_reason": spec.unavailable_reason}

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._specs


PREDICTORS = ModeRegistry()


def load_plugins() -> None:
    """Register every predictor mode (idempotent): the only place that imports the mode modules."""
    PREDICTORS.load_plugins()
