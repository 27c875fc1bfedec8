"""NACLIP as ONNX: the export (`onnx_export`, needs torch) and a runtime that needs neither torch nor
transformers (`runtime` and `text`: numpy, onnxruntime, Pillow and `tokenizers`).

An exported folder (`naclip export MODEL OUT`) holds:

- `onnx/model.onnx`: one window of the model, `pixel_values` [B, 3, H, W] and `text_embeds` [N, D] in,
  `logits` [B, N, H, W] out (any B, N, H, W); `onnx/model_quantized.onnx` with `--quantize` (int8 weights);
- `onnx/text_model.onnx`: the text tower, `input_ids` [P, L] in, normalised prompt features `prompt_embeds`
  [P, D] out, with `tokenizer.json`: the runtime embeds any class name with them;
- `config.json` (the settings the graph was built with and the inference defaults), `preprocessor_config.json`
  and the tokenizer files;
- with labels, `classes.json` and `class_embeddings.safetensors` (those names' text embeddings, computed at
  export).

The file names are in `layout`. This package imports nothing heavy itself: `naclip_hf.export.runtime` can be
imported where torch is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "export_onnx": "onnx_export",
    "ExportedSegmenter": "runtime",
    "ExportedTextTower": "text",
    "ExportedTokenizer": "text",
    "is_exported_folder": "runtime",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
