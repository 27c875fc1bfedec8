"""naclip-hf: NACLIP (Neighbour-Aware CLIP) training-free open-vocabulary segmentation for transformers.

Importing the package makes NACLIP known to transformers (see `naclip_hf.registration`): the auto classes, the
`naclip-segmentation` pipeline task, and remote-code saving. It does so without importing transformers itself,
so that `naclip --help` and other light entry points start fast:

- if transformers is already imported, the registration runs at once;
- otherwise it runs as soon as transformers is imported (for instance by `from transformers import pipeline`),
  or as soon as one of the names below (`NACLIPConfig`, ...) is first used.

The public classes are imported on first access.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import warnings
from typing import Any

__version__ = "0.1.0"

# Public name -> module defining it.
_PUBLIC: dict[str, str] = {
    "NACLIPConfig": "configuration_naclip",
    "NACLIPForSemanticSegmentation": "modeling_naclip",
    "NACLIPSemanticSegmenterOutput": "modeling_naclip",
    "NACLIPImageProcessor": "image_processing_naclip",
    "NACLIPProcessor": "processing_naclip",
    "NACLIPSegmentationPipeline": "pipeline_naclip",
    "save_for_hub": "pipeline_naclip",
    "register_naclip": "registration",
}

__all__ = [*sorted(_PUBLIC), "__version__"]

_lock = threading.RLock()
_state = {"registered": False, "registering": False}


def _register() -> None:
    """Run the registration once (importing `registration` registers NACLIP with transformers)."""
    with _lock:
        if _state["registered"] or _state["registering"]:
            return
        _state["registering"] = True
        try:
            importlib.import_module(f"{__name__}.registration")
            _state["registered"] = True
        finally:
            _state["registering"] = False
    _RegisterAfterImport.uninstall()


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _register()
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


class _NotifyingLoader(importlib.abc.Loader):
    """Runs a module as its own loader does, then asks for the registration (see `_RegisterAfterImport`).

    Every other attribute (source, resources, code) is the original loader's."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _RegisterAfterImport.module_loaded(module.__name__)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Registers NACLIP once transformers has been imported and no NACLIP module is half-imported.

    It watches the imports of `transformers` and of this package's modules: after each, if transformers is
    loaded and none of this package's modules is still being imported (the registration imports them), it
    registers. Installed by `import naclip_hf` only when transformers is not imported yet; removed after."""

    _installed: _RegisterAfterImport | None = None

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "transformers" and not fullname.startswith(f"{__name__}."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _NotifyingLoader(spec.loader)
                return spec
        return None

    @classmethod
    def module_loaded(cls, loaded: str) -> None:
        """Called when the module `loaded` has run (it still counts as being imported until this returns)."""
        if _state["registered"] or _state["registering"] or sys.modules.get("transformers") is None:
            return
        if loaded != "transformers" and _initializing("transformers"):
            return
        if any(
            name != loaded and name.startswith(f"{__name__}.") and _initializing(name) for name in list(sys.modules)
        ):
            return
        try:
            _register()
        except Exception as error:  # noqa: BLE001 - an import of transformers must not fail because of NACLIP
            cls.uninstall()
            warnings.warn(
                f"naclip_hf could not register NACLIP with transformers ({type(error).__name__}: {error}); "
                "using a NACLIP class (e.g. naclip_hf.NACLIPConfig) shows the full error.",
                stacklevel=2,
            )

    @classmethod
    def install(cls) -> None:
        with _lock:
            if cls._installed is None:
                cls._installed = cls()
                sys.meta_path.insert(0, cls._installed)

    @classmethod
    def uninstall(cls) -> None:
        with _lock:
            if cls._installed is not None:
                if cls._installed in sys.meta_path:
                    sys.meta_path.remove(cls._installed)
                cls._installed = None


if sys.modules.get("transformers") is not None:  # None: its import is blocked
    _register()
else:
    _RegisterAfterImport.install()
