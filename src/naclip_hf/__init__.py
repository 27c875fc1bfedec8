"""naclip-hf: NACLIP (Neighbour-Aware CLIP) training-free open-vocabulary segmentation for transformers.

The model itself (config, model, processors, pipeline) is the package `naclip_hf.models.naclip`, which is also what
a Hub folder ships as remote code. Registering it with transformers (`naclip_hf.registration`: the auto classes
and the `naclip-segmentation` pipeline task) needs transformers, whose import takes seconds, so `import naclip_hf`
alone stays light for the command line and the torch-free ONNX runtime:

- when transformers is already imported, `import naclip_hf` registers at once
  (`from transformers import pipeline` then `import naclip_hf`);
- otherwise the registration runs on first use of a public name below (`naclip_hf.NACLIPConfig`, ...), when
  `naclip_hf.inference` (which loads models) is imported, or by calling `naclip_hf.register_naclip()`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

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


if sys.modules.get("transformers") is not None:  # None: its import is blocked (the torch-free runtime's tests)
    importlib.import_module(f"{__name__}.registration")
