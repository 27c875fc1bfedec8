"""naclip-hf: NACLIP (Neighbour-Aware CLIP) training-free open-vocabulary segmentation for transformers.

The model itself (config, model, processors, pipeline) is the package `naclip_hf.models.naclip`, which is also what
a Hub folder ships as remote code. Registering it with transformers (`naclip_hf.registration`: the auto classes
and the `naclip-segmentation` pipeline task) needs transformers and torch, whose imports take seconds, so
`import naclip_hf` imports neither (the command line and the torch-free ONNX runtime start at once). Instead it
asks `wrapt.register_post_import_hook` to run the registration when transformers is imported, so the import order
does not matter:

- transformers already imported: the hook runs at once, inside `import naclip_hf`;
- transformers imported later (`from transformers import pipeline`, `AutoModel`, ...): the hook runs when the
  `transformers` package has finished importing, before the importing statement goes on;
- when that happens while a module of the model package (or `registration` itself) is still half-imported (it
  was that module that imported transformers), registering then would import that module again, circularly: the
  registration waits until the last such module has finished (`registration` registers at its own end).

`naclip_hf.NACLIPConfig` and the other public names below import `registration` first, and
`naclip_hf.register_naclip()` registers explicitly; both are safe to use in any order.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import wrapt

__version__ = "0.1.0"

# Public name -> module defining it (relative to this package).
_PUBLIC: dict[str, str] = {
    "NACLIPConfig": "models.naclip.configuration_naclip",
    "NACLIPForSemanticSegmentation": "models.naclip.modeling_naclip",
    "NACLIPSemanticSegmenterOutput": "models.naclip.modeling_naclip",
    "NACLIPImageProcessor": "models.naclip.image_processing_naclip",
    "NACLIPProcessor": "models.naclip.processing_naclip",
    "NACLIPSegmentationPipeline": "registration",
    "save_for_hub": "hub",
    "register_naclip": "registration",
}

__all__ = [*sorted(_PUBLIC), "__version__"]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module(f"{__name__}.registration")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


# Modules that the registration imports: while one of them is half-imported, registering must wait (see above).
_MODEL_PACKAGE = Path(__file__).parent / "models" / "naclip"
_WATCHED: tuple[str, ...] = (
    f"{__name__}.registration",
    *(f"{__name__}.models.naclip.{path.stem}" for path in sorted(_MODEL_PACKAGE.glob("[!_]*.py"))),
)
_unfinished: set[str] = set()  # watched modules not imported yet (half-imported while also in sys.modules)


def _register_when_safe(module: ModuleType) -> None:
    """Post-import hook of `transformers` and of the watched modules: register NACLIP with transformers once
    transformers is imported and no watched module is half-imported.

    A dependency the registration needs but cannot find (torch) is reported as a warning rather than failing the
    import of transformers that ran this hook; `naclip_hf.register_naclip()` then raises it."""
    _unfinished.discard(module.__name__)
    if sys.modules.get("transformers") is None or any(name in sys.modules for name in _unfinished):
        return
    try:
        importlib.import_module(f"{__name__}.registration")
    except ModuleNotFoundError as error:
        warnings.warn(
            f"naclip_hf: NACLIP is not registered with transformers ({error}); install the missing package "
            f"(pip install {error.name or 'torch'}), then call naclip_hf.register_naclip().",
            stacklevel=2,
        )


def _install_hooks() -> None:
    """Run `_register_when_safe` after transformers and after each watched module not yet imported."""
    for name in _WATCHED:
        if name not in sys.modules:
            _unfinished.add(name)
            wrapt.register_post_import_hook(_register_when_safe, name)
    # Last: with transformers already imported, this registers at once.
    wrapt.register_post_import_hook(_register_when_safe, "transformers")


_install_hooks()
