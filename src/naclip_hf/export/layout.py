"""The layout of an exported folder: file names (relative to the folder) and the names of the graphs' inputs and
outputs. The exporter writes them and the runtime reads them; both take them from here."""

from __future__ import annotations

ONNX_DIR = "onnx"
MODEL_FILE = "model.onnx"
QUANTIZED_MODEL_FILE = "model_quantized.onnx"  # int8, unsigned weights: right on every CPU
SIGNED_INT8_MODEL_FILE = "model_int8.onnx"  # int8, signed weights: 3-4x faster where int8 dot products are native
TEXT_MODEL_FILE = "text_model.onnx"
CLASSES_FILE = "classes.json"
CLASS_EMBEDDINGS_FILE = "class_embeddings.safetensors"
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"



def check_exportable(arch: str) -> None:
    """Refuse a last block that the graph cannot hold: the graph is one window through CLIP with a last block of
    `options.BLOCK_ARCHS`. A method that replaces the last block (SC-CLIP, SFP, ResCLIP: `dense_methods`) reads
    intermediate blocks through per-window statistics and choices (outlier detection, top-k and quantiles, a
    first pass refined by PAMR whose labels build the second pass's attention) that the traced graph would
    freeze to the example window's. `ValueError` with what to use instead."""
    from ..models.naclip.options import BLOCK_ARCHS

    if arch not in BLOCK_ARCHS:
        raise ValueError(
            f"arch={arch!r} cannot be exported to ONNX: this method replaces the last block with computations on "
            "intermediate blocks whose per-window decisions (outliers, top-k, quantiles, a refined first pass) a "
            "traced graph cannot hold. Run it with the PyTorch checkpoint (naclip segment --model MODEL --method "
            f"...), or export a method whose last block runs as a block ({', '.join(BLOCK_ARCHS)})."
        )


# The segmentation graph: `pixel_values` [B, 3, H, W] and `text_embeds` [N, D] in, `logits` [B, N, H, W] out.
GRAPH_INPUTS = ("pixel_values", "text_embeds")
GRAPH_OUTPUT = "logits"
# The text graph: `input_ids` [prompts, length] in, L2-normalised prompt features [prompts, D] out.
TEXT_GRAPH_INPUT = "input_ids"
TEXT_GRAPH_OUTPUT = "prompt_embeds"
