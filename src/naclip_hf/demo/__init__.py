"""The interactive demo: a Gradio app (`build_demo`, extra `demo`: `pip install "naclip-hf[demo]"`) and a writer of
Hugging Face Space folders that run it (`write_space`).

Importing this package imports neither Gradio nor torch; `build_demo` and `DemoBackend` load them when first used
(torch only for a PyTorch checkpoint: an exported model runs on onnxruntime).
"""

from __future__ import annotations

from typing import Any

from .space import write_space

_LAZY = {
    "build_demo": "app",
    "segment_api_example": "app",
    "DEFAULT_ATTENTION_METHODS": "backend",
    "DemoBackend": "backend",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_ATTENTION_METHODS", "DemoBackend", "build_demo", "segment_api_example", "write_space"]
