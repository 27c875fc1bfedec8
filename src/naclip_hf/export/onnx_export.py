"""Export NACLIP to ONNX: one window of the model as a graph with dynamic batch, class count and image size, and
the text tower as a second graph.

The segmentation graph is `NACLIPForSemanticSegmentation`'s own computation for one window (`slide_crop=0`):
`encode_patches` with the config's last block, then `window_logits`. It is traced with `torch.onnx.export`
(the `torch.export`-based exporter) on a view of the model in which one piece is replaced:

- The positional embeddings. PyTorch's `F.interpolate(scale_factor=...)` is traced with the scale factors of the
  example input as constants, so the ONNX graph would resize every grid with the example's factors. Here the
  official resize (bicubic, `scale = (grid + 0.1) / pretrained_grid`, no resize at the pretrained grid) is written
  as two resize matrices built from the grid size inside the graph; `official_position_embeddings` stays the
  reference, and `verify_graph` / the tests check the two against each other at several sizes.

The Gaussian bias Ω is built from the grid inside the graph by `gaussian_neighbourhood_bias` (its cache is skipped
while tracing). Sliding windows and post-processing run outside the graph (see `naclip_hf.export.runtime`).

The text graph (`TextGraph`) is the model's `text_model` and `text_projection` as they are: prompt token ids in,
L2-normalised prompt features out, pooled at CLIP's end-of-text token. With the tokenizer saved as `tokenizer.json`
it lets the runtime embed any class name without torch (`naclip_hf.export.text`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..fileio import staged_directory
from ..models.naclip.labels import parse_label_set
from ..models.naclip.modeling_naclip import NACLIPForSemanticSegmentation, NACLIPVisionEmbeddings
from .layout import (
    CLASS_EMBEDDINGS_FILE,
    CLASSES_FILE,
    CONFIG_FILE,
    GRAPH_INPUTS,
    GRAPH_OUTPUT,
    MODEL_FILE,
    ONNX_DIR,
    PREPROCESSOR_FILE,
    QUANTIZED_MODEL_FILE,
    SIGNED_INT8_MODEL_FILE,
    TEXT_GRAPH_INPUT,
    TEXT_GRAPH_OUTPUT,
    TEXT_MODEL_FILE,
    TOKENIZER_FILE,
    check_exportable,
)

logger = logging.getLogger(__name__)

# ONNX opset of the exported graph (LayerNormalization needs 17; onnxruntime and onnxruntime-web run 18).
ONNX_OPSET = 18
# Largest |ONNX - PyTorch| accepted by `verify_graph` on the logits (cosine similarities, in [-1, 1]).
VERIFY_TOLERANCE = 1e-4
# Largest |ONNX - PyTorch| accepted by `verify_text_graph` on the normalised prompt features.
TEXT_VERIFY_TOLERANCE = 1e-5
# Largest |ONNX - PyTorch float32| accepted for a float16 export, on the logits and on the prompt features (a
# random ViT-B/16 gave 8.7e-5 and 1.3e-4; the margin leaves room for trained weights' larger activations).
FLOAT16_VERIFY_TOLERANCE = 1e-2
# Input sizes `verify_graph` checks after an export, in patches: a non-square grid that needs positional
# interpolation, the pretrained grid (no interpolation) and one with an odd remainder of pixels.
_VERIFY_GRIDS = ((3, 5), None, (4, 3))


# --------------------------------------------------------------------------------- positional embeddings
def bicubic_resize_matrix(out_size: Any, in_size: int, inverse_scale: torch.Tensor) -> torch.Tensor:
    """Weights [out_size, in_size] of PyTorch's bicubic resize (`align_corners=False`, A = -0.75) along one axis.

    Output index i reads the source at `inverse_scale * (i + 0.5) - 0.5` with the four cubic-convolution taps,
    clamped to the border, as `F.interpolate(mode="bicubic")` does. `out_size` may be symbolic (under export);
    `inverse_scale` is a float32 scalar tensor (the source step per output pixel).
    """
    a = -0.75
    position = inverse_scale * (torch.arange(out_size, dtype=torch.float32) + 0.5) - 0.5
    index = torch.clamp(torch.floor(position), max=in_size - 1)
    t = torch.clamp(position - index, 0.0, 1.0)

    def near(x: torch.Tensor) -> torch.Tensor:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: torch.Tensor) -> torch.Tensor:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    coefficients = (far(t + 1), near(t), near(1 - t), far(2 - t))
    source = torch.arange(in_size, dtype=torch.long)
    weights = torch.zeros((), dtype=torch.float32)
    for tap, coefficient in enumerate(coefficients):
        column = torch.clamp(index.long() + (tap - 1), 0, in_size - 1)
        weights = weights + coefficient[:, None] * (column[:, None] == source[None, :]).to(torch.float32)
    return weights


def graph_position_embeddings(table: torch.Tensor, grid_height: Any, grid_width: Any, mode: str) -> torch.Tensor:
    """`table` [1 + n², hidden] resized to the grid with shape-dependent ops: [1 + grid_height * grid_width, hidden].

    `mode` is the config's `pos_embed_interpolation`: "official" (scale factor `(grid + 0.1) / n`, no resize at
    the pretrained grid; reference: `modeling_naclip.official_position_embeddings`) or "transformers" (target size,
    as CLIP's `interpolate_pos_encoding`).
    """
    pretrained = int(round((table.shape[0] - 1) ** 0.5))
    patches = table[1:].float().reshape(pretrained, pretrained, -1)
    matrices = []
    for size in (grid_height, grid_width):
        size_f64 = torch.scalar_tensor(size, dtype=torch.float64)
        if mode == "official":
            inverse = (1.0 / ((size_f64 + 0.1) / pretrained)).to(torch.float32)
        else:
            inverse = torch.scalar_tensor(pretrained, dtype=torch.float32) / size_f64.to(torch.float32)
        matrices.append(bicubic_resize_matrix(size, pretrained, inverse))
    if mode == "official":
        # The official code keeps the table as it is at the pretrained grid (a resize by 14.1/14 would not).
        keep = (torch.scalar_tensor(grid_height) == pretrained) & (torch.scalar_tensor(grid_width) == pretrained)
        source = torch.arange(pretrained)
        matrices = [
            torch.where(keep, (torch.arange(size)[:, None] == source[None, :]).to(torch.float32), matrix)
            for size, matrix in zip((grid_height, grid_width), matrices)
        ]
    rows, columns = matrices
    resized = torch.matmul(rows, patches.reshape(pretrained, -1)).reshape(-1, pretrained, patches.shape[-1])
    resized = torch.matmul(columns, resized)  # [grid_height, grid_width, hidden]
    resized = resized.reshape(-1, patches.shape[-1]).to(table.dtype)
    return torch.cat([table[:1], resized], dim=0)


class GraphVisionEmbeddings(NACLIPVisionEmbeddings):
    """`NACLIPVisionEmbeddings` whose positional embeddings are resized with `graph_position_embeddings`."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Positional embeddings [1, 1 + grid_height * grid_width, hidden] for an input of `height` × `width`."""
        grid_height, grid_width = height // self.patch_size, width // self.patch_size
        mode = self.naclip_config.pos_embed_interpolation
        return graph_position_embeddings(self.position_embedding.weight, grid_height, grid_width, mode)[None]


def _graph_view(model: NACLIPForSemanticSegmentation) -> NACLIPForSemanticSegmentation:
    """`model` with its vision embeddings as `GraphVisionEmbeddings`, sharing every weight; `model` is unchanged:
    the modules on the path to the embeddings are shallow copies (`copy.copy`) with their own table of submodules."""
    path = next(name for name, module in model.named_modules() if isinstance(module, NACLIPVisionEmbeddings))
    view = holder = copy.copy(model)
    for name in path.split("."):
        holder._modules = dict(holder._modules)
        holder._modules[name] = holder = copy.copy(holder._modules[name])
    holder.__class__ = GraphVisionEmbeddings
    return view


# ------------------------------------------------------------------------------------------------- graph
class SegmentationGraph(nn.Module):
    """The exported computation: per-name logits of one window.

    `forward(pixel_values [B, 3, H, W], text_embeds [N, D]) -> logits [B, N, H, W]`, equal to
    `model(pixel_values, text_embeds=text_embeds, slide_crop=0).logits` with the config's last block.
    """

    def __init__(self, model: NACLIPForSemanticSegmentation) -> None:
        super().__init__()
        self.model = _graph_view(model)
        self.options = model.config.inference_options()

    def forward(self, pixel_values: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        hidden = self.model.encode_patches(pixel_values.to(self.model.dtype), options=self.options).last_hidden_state
        return self.model.window_logits(hidden, text_embeds, pixel_values.shape[-2:]).float()


def export_graph(
    model: NACLIPForSemanticSegmentation, path: str | os.PathLike, opset_version: int = ONNX_OPSET
) -> Path:
    """Write the ONNX graph of one window of `model` (see `SegmentationGraph`) to `path`, as a single file.

    Inputs `pixel_values` [batch, 3, height, width] and `text_embeds` [num_names, projection_dim] (float32), output
    `logits` [batch, num_names, height, width]; every dimension but the channels and `projection_dim` is dynamic.
    """
    _check_graph_dtype(model)
    patch = model.config.vision_config.patch_size
    example = (
        torch.randn(2, 3, 3 * patch, 5 * patch),
        torch.nn.functional.normalize(torch.randn(3, model.config.projection_dim), dim=-1),
    )
    dynamic = torch.export.Dim.DYNAMIC
    dynamic_shapes = {"pixel_values": {0: dynamic, 2: dynamic, 3: dynamic}, "text_embeds": {0: dynamic}}
    path = _export_module(SegmentationGraph(model).eval(), example, GRAPH_INPUTS, GRAPH_OUTPUT, dynamic_shapes, path,
                          opset_version)  # fmt: skip
    _name_dimensions(path, {
        GRAPH_INPUTS[0]: ("batch", None, "height", "width"),
        GRAPH_INPUTS[1]: ("num_names", None),
        GRAPH_OUTPUT: ("batch", "num_names", "height", "width"),
    })  # fmt: skip
    return path


def _check_graph_dtype(model: NACLIPForSemanticSegmentation) -> None:
    if model.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"Export a float32 or float16 model (got {model.dtype}); see `graph_dtype`.")


def graph_dtype(dtype: str | torch.dtype | None, quantize: bool = False) -> torch.dtype | None:
    """The precision of the exported graphs for `dtype` (`naclip export --dtype`): None (the model's own),
    float32 ("auto" too: the graphs run on other machines than the one exporting), or float16 (half the size;
    onnxruntime's CPU provider runs it, casting to float32 where it has no float16 kernel; GPUs and WebGPU run it
    natively). bfloat16, and float16 with `quantize`, raise `ValueError`."""
    names = {"auto": torch.float32, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    resolved = names.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if resolved == torch.bfloat16:
        raise ValueError(
            "A bfloat16 ONNX graph would not run: onnxruntime's CPU provider has no bfloat16 kernels (MatMul, Add, "
            "...). Export float16 (half the size) or float32 (the default); PyTorch runs bfloat16 directly "
            "(naclip segment --dtype bfloat16)."
        )
    if resolved not in (None, torch.float32, torch.float16):
        raise ValueError(f"dtype={dtype!r} is not an export precision; choose float32 or float16.")
    if quantize and resolved == torch.float16:
        raise ValueError("int8 quantization (--quantize) starts from a float32 graph; drop --quantize or float16.")
    return resolved


def _export_module(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_name: str,
    dynamic_shapes: dict[str, dict[int, Any]],
    path: str | os.PathLike,
    opset_version: int,
) -> Path:
    """`torch.onnx.export` (the `torch.export`-based exporter) of `module` on `example` to one file at `path`."""
    with torch.no_grad(), quiet_export_messages():
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=list(input_names),
            output_names=[output_name],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset_version,
            optimize=True,
            verbose=False,
        )
    path = Path(path)
    program.save(path, external_data=False)
    return path


class _DropMessages(logging.Filter):
    """Drops the log records whose message starts with one of `prefixes`."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def quiet_export_messages() -> Iterator[None]:
    """Within the block, keep the export tools' notes that do not concern the user off stderr: torch.onnx's
    "torchvision is not installed" (no torchvision operator is exported), onnxruntime's quantizer's hint to
    pre-process the graph (dynamic quantization needs no calibration) and Python warnings. Everything is restored
    on leaving the block."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    root = logging.getLogger()
    torchvision_note = _DropMessages("torchvision is not installed")
    quantizer_hint = _DropMessages("Please consider to run pre-processing", "Please consider pre-processing")
    # `logging.warning()` installs a stderr handler on a root logger that has none; a handler keeps it from that.
    placeholder = logging.NullHandler()
    registration.addFilter(torchvision_note)
    root.addFilter(quantizer_hint)
    root.addHandler(placeholder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeHandler(placeholder)
        root.removeFilter(quantizer_hint)
        registration.removeFilter(torchvision_note)


def _name_dimensions(path: Path, names: Mapping[str, Sequence[str | None]]) -> None:
    """Give the dynamic dimensions of the graph's inputs and outputs readable names (`names`: per input or output,
    one name or None per dimension)."""
    import onnx

    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        for dim, name in zip(value.type.tensor_type.shape.dim, names.get(value.name, ())):
            if name is not None:
                dim.dim_param = name
    onnx.save(model, str(path))


def verify_graph(
    model: NACLIPForSemanticSegmentation, path: str | os.PathLike, tolerance: float = VERIFY_TOLERANCE
) -> float:
    """Run the graph at `path` with onnxruntime and `model` with PyTorch on random inputs of a few sizes; return the
    largest |difference| of the logits, or raise `RuntimeError` when it exceeds `tolerance`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    patch = model.config.vision_config.patch_size
    pretrained = model.config.vision_config.image_size // patch
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for number, grid in enumerate(_VERIFY_GRIDS):
        rows, columns = grid or (pretrained, pretrained)
        extra = number  # a few pixels past the last full patch for some sizes
        pixel_values = torch.randn(1, 3, rows * patch + extra, columns * patch + extra, generator=generator)
        text_embeds = torch.nn.functional.normalize(torch.randn(2 + number, model.config.projection_dim,
                                                                generator=generator), dim=-1)  # fmt: skip
        with torch.no_grad():
            expected = model(pixel_values.to(model.device, model.dtype), text_embeds=text_embeds.to(model.device),
                             slide_crop=0)  # fmt: skip
        feed = {GRAPH_INPUTS[0]: pixel_values.numpy(), GRAPH_INPUTS[1]: text_embeds.numpy()}
        (logits,) = session.run([GRAPH_OUTPUT], feed)
        difference = float(np.abs(logits - expected.logits.float().cpu().numpy()).max())
        worst = max(worst, _checked(difference, tolerance, "graph", f"on a {tuple(pixel_values.shape[-2:])} input"))
    return worst


def _checked(difference: float, tolerance: float, graph: str, where: str) -> float:
    """`difference` between the exported `graph` and PyTorch `where`, or `RuntimeError` above `tolerance`."""
    if not difference <= tolerance:
        raise RuntimeError(
            f"The exported {graph} disagrees with PyTorch by {difference:.2e} (> {tolerance:.0e}) {where}; the "
            "export is not usable with this torch/onnx version (try another torch version)."
        )
    return difference


# -------------------------------------------------------------------------------------------- text graph
class TextGraph(nn.Module):
    """The text tower as exported: `forward(input_ids [P, L]) -> prompt features [P, projection_dim]`, L2-normalised.

    CLIP's text model pools the final state of the end-of-text token (the first `eos_token_id`, or the largest id
    for configs with `eos_token_id=2`), then the text projection: `NACLIPForSemanticSegmentation.get_text_features`,
    normalised. The tower is causal, so padding after the end-of-text token does not change the result and no
    attention mask is needed.
    """

    def __init__(self, model: NACLIPForSemanticSegmentation) -> None:
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pooled = self.text_model(input_ids=input_ids).pooler_output
        return torch.nn.functional.normalize(self.text_projection(pooled), dim=-1).float()


def _random_prompts(config: Any, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Token ids [rows, length]: random tokens, start of text first, end of text at a random place in each row."""
    rows, length = shape
    ids = torch.randint(0, config.vocab_size, shape, generator=generator)
    ends = torch.randint(1, length, (rows,), generator=generator)
    ids[:, 0] = config.bos_token_id if 0 <= config.bos_token_id < config.vocab_size else 0
    ids[torch.arange(rows), ends] = config.eos_token_id if 0 <= config.eos_token_id < config.vocab_size else 0
    return ids


def export_text_graph(
    model: NACLIPForSemanticSegmentation, path: str | os.PathLike, opset_version: int = ONNX_OPSET
) -> Path:
    """Write the text graph of `model` (see `TextGraph`) to `path`, as a single file.

    Input `input_ids` [num_prompts, length] (int64; at most `max_position_embeddings` long), output
    `prompt_embeds` [num_prompts, projection_dim] (float32); both leading dimensions are dynamic.
    """
    _check_graph_dtype(model)
    example = (_random_prompts(model.config.text_config, (3, 7), torch.Generator().manual_seed(0)),)
    dynamic = torch.export.Dim.DYNAMIC
    dynamic_shapes = {TEXT_GRAPH_INPUT: {0: dynamic, 1: dynamic}}
    path = _export_module(TextGraph(model).eval(), example, (TEXT_GRAPH_INPUT,), TEXT_GRAPH_OUTPUT, dynamic_shapes,
                          path, opset_version)  # fmt: skip
    _name_dimensions(path, {TEXT_GRAPH_INPUT: ("num_prompts", "length"), TEXT_GRAPH_OUTPUT: ("num_prompts", None)})
    return path


def verify_text_graph(
    model: NACLIPForSemanticSegmentation, path: str | os.PathLike, tolerance: float = TEXT_VERIFY_TOLERANCE
) -> float:
    """Run the text graph at `path` with onnxruntime and `TextGraph(model)` with PyTorch on random prompts of a few
    lengths (up to the context length); return the largest |difference|, or raise `RuntimeError` above
    `tolerance`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = TextGraph(model).eval()
    config = model.config.text_config
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in ((1, 2), (5, 9), (2, config.max_position_embeddings)):
        input_ids = _random_prompts(config, shape, generator)
        with torch.no_grad():
            expected = graph(input_ids.to(model.device)).cpu().numpy()
        (features,) = session.run([TEXT_GRAPH_OUTPUT], {TEXT_GRAPH_INPUT: input_ids.numpy()})
        difference = float(np.abs(features - expected).max())
        worst = max(worst, _checked(difference, tolerance, "text graph", f"on prompts of {shape[1]} tokens"))
    return worst


# ----------------------------------------------------------------------------------------- quantization
def quantize_graph(source: str | os.PathLike, target: str | os.PathLike, signed: bool = False) -> dict[str, int]:
    """Dynamic int8 quantization of the graph at `source` into `target`; returns the count of quantized nodes by type.

    The weights of the matrix products with constant weights (the transformer's linear layers) are stored as int8
    with one scale and zero point per output channel; activations are quantized per call (dynamic), so no
    calibration data is needed. Per-channel scales follow each output's range: the share of pixels whose label
    equals the float graph's rose from 96-99.7 % (one scale per tensor) to 99.4-99.8 % on the test images of the
    tiny golden model, and from 98.1 % to 99.8 % on the ViT-B/16-shaped benchmark model, at the same speed. The
    patch-embedding convolution (one small layer) and the products between activations (attention, the final
    comparison with `text_embeds`) stay in float.

    `signed=False` stores unsigned weights: right on every CPU, since onnxruntime's x86 kernels for unsigned
    activations times signed weights can saturate on CPUs without VNNI (which wrecked the labels of the tiny test
    model there). `signed=True` stores signed weights, which CPUs with int8 dot products (VNNI, AMX) multiply
    natively: 3-4x faster than the float graph on such a CPU, where the unsigned graph runs at about the float
    graph's speed. The runtime picks the signed graph only on such CPUs (`naclip_hf.export.runtime`).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source))
    initializers = {initializer.name for initializer in graph.graph.initializer}
    weighted = [
        node.name for node in graph.graph.node
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in initializers
    ]  # fmt: skip
    with quiet_export_messages():
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_quantize=weighted,
            weight_type=QuantType.QInt8 if signed else QuantType.QUInt8,
            per_channel=True,
        )
    quantized = onnx.load(str(target))
    counts: dict[str, int] = {}
    for node in quantized.graph.node:
        if node.op_type in ("MatMulInteger", "DynamicQuantizeLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# --------------------------------------------------------------------------------------------- the folder
@dataclass
class ExportReport:
    """What `export_onnx` wrote: the folder, its files with their sizes in bytes, the verified |ONNX - PyTorch|
    differences of the logits and of the text features, the quantized node counts and the time taken."""

    output_dir: Path
    files: dict[str, int]
    max_abs_diff: float
    text_max_abs_diff: float
    quantized_nodes: dict[str, int]
    seconds: float


def export_onnx(
    model: str | os.PathLike | NACLIPForSemanticSegmentation,
    output_dir: str | os.PathLike,
    classes: Sequence[str | Sequence[str]] | None = None,
    *,
    processor: Any = None,
    overrides: Mapping[str, Any] | None = None,
    short_side: int | None = None,
    quantize: bool = False,
    verify: bool = True,
    opset_version: int = ONNX_OPSET,
    dtype: str | torch.dtype | None = None,
) -> ExportReport:
    """Export a NACLIP model to a folder that `naclip_hf.export.runtime` (numpy, onnxruntime and `tokenizers`) and
    onnxruntime-web can run without torch or transformers, for any class names.

    Args:
        model: a checkpoint folder or Hub id (loaded in float32), or a loaded `NACLIPForSemanticSegmentation`
            (float32 or float16; not changed).
        output_dir: a new (or empty) folder; it appears complete or not at all.
        classes: class entries whose text embeddings are stored (synonyms as for `encode_classes`; at least two
            classes, else `ValueError` before any work), so that they need no text graph run; other names are
            embedded by the text graph when used.
        processor: the model's `NACLIPProcessor` (default: `load_processor(model)`; needed when `model` is a loaded
            model, for its tokenizer and image settings; without it a loaded model gets OpenAI CLIP's BPE when its
            vocabulary is that one).
        overrides: settings for the config (e.g. `{"attn_strategy": "nonly", "slide_crop": 0}`, or
            `prompt_templates` for the class embeddings), applied when loading `model` from a path; the last
            block's settings are fixed in the graph.
        short_side: the image processor's short side stored in the folder (default: the processor's).
        quantize: also write the int8 graphs `onnx/model_quantized.onnx` (unsigned weights) and
            `onnx/model_int8.onnx` (signed weights; see `quantize_graph`).
        verify: compare both graphs with PyTorch (`verify_graph`, `verify_text_graph`) before writing the folder.
        opset_version: ONNX opset of the graphs.
        dtype: precision of the graphs (see `graph_dtype`): None (the model's), "float32" or "float16". The
            stored class embeddings are computed, and the graphs verified, by the model in its own precision.

    Returns:
        An `ExportReport`.

    Example:

    ```python
    >>> report = export_onnx("openai/clip-vit-base-patch16", "naclip-onnx", ["sky", "tree", "road, street"])
    >>> sorted(report.files)[:2]  # ['class_embeddings.safetensors', 'classes.json']
    ```
    """
    from ..inference import encode_classes, load_model, load_processor

    if classes is not None:
        classes = parse_label_set(classes, "classes")  # before any work: one class would label every pixel
    start = time.perf_counter()
    dtype = graph_dtype(dtype, quantize)
    if isinstance(model, NACLIPForSemanticSegmentation):
        if overrides:
            raise ValueError("overrides apply when loading a model; load it with them (load_model(path, overrides)).")
        if processor is None and classes is not None:
            raise ValueError("Pass the model's processor (processor=load_processor(path)) to embed the classes.")
    else:
        source = model
        model = load_model(source, overrides)
        processor = processor if processor is not None else load_processor(source)
    model = model.eval()
    check_exportable(model.config.arch)
    tokenizer = _export_tokenizer(model, processor)
    embeddings = None
    if classes is not None:
        embeddings = encode_classes(model, processor, classes, cache_dir=True)
    output_dir = Path(output_dir)
    with staged_directory(output_dir) as staging:
        (staging / ONNX_DIR).mkdir()
        graph_model = model if dtype in (None, model.dtype) else _converted(model, dtype)
        same = graph_model.dtype == model.dtype
        graph_path = export_graph(graph_model, staging / ONNX_DIR / MODEL_FILE, opset_version)
        tolerance = VERIFY_TOLERANCE if same else FLOAT16_VERIFY_TOLERANCE
        worst = verify_graph(model, graph_path, tolerance) if verify else float("nan")
        text_path = export_text_graph(graph_model, staging / ONNX_DIR / TEXT_MODEL_FILE, opset_version)
        tolerance = TEXT_VERIFY_TOLERANCE if same else FLOAT16_VERIFY_TOLERANCE
        text_worst = verify_text_graph(model, text_path, tolerance) if verify else float("nan")
        quantized: dict[str, int] = {}
        if quantize:
            quantized = quantize_graph(graph_path, staging / ONNX_DIR / QUANTIZED_MODEL_FILE)
            quantize_graph(graph_path, staging / ONNX_DIR / SIGNED_INT8_MODEL_FILE, signed=True)
        _write_settings(staging, graph_model, processor, short_side)
        tokenizer.save_pretrained(staging)
        if not (staging / TOKENIZER_FILE).is_file():
            raise ValueError(
                f"The tokenizer {type(tokenizer).__name__} wrote no {TOKENIZER_FILE}, which the runtime reads; give "
                "the model a fast CLIP tokenizer (transformers' CLIPTokenizer)."
            )
        if embeddings is not None:
            _write_classes(staging, embeddings, model.config.prompt_templates)
        files = {
            str(path.relative_to(staging)): path.stat().st_size for path in sorted(staging.rglob("*")) if path.is_file()
        }
    return ExportReport(output_dir, files, worst, text_worst, quantized, time.perf_counter() - start)


def _converted(model: NACLIPForSemanticSegmentation, dtype: torch.dtype) -> NACLIPForSemanticSegmentation:
    """A copy of `model` in `dtype`; `model` keeps its weights (the graphs are verified against it)."""
    converted = type(model)(model.config)
    converted.load_state_dict(model.state_dict())
    return converted.to(dtype).eval()


def _export_tokenizer(model: NACLIPForSemanticSegmentation, processor: Any) -> Any:
    """The tokenizer to store with the export: the processor's, else OpenAI CLIP's BPE when the text model has its
    vocabulary (`ValueError` asking for the processor otherwise)."""
    if processor is not None:
        return processor.tokenizer
    from ..models.naclip.tokenization import load_clip_tokenizer

    try:
        return load_clip_tokenizer(None, model.config.text_config)
    except ValueError as error:
        raise ValueError(
            f"{error} Pass the model's processor (processor=load_processor(path)) so that the export holds its "
            "tokenizer."
        ) from None


def _write_settings(folder: Path, model: NACLIPForSemanticSegmentation, processor: Any, short_side: int | None) -> None:
    """`config.json` (the model's, with the inference settings) and `preprocessor_config.json`."""
    from ..models.naclip.image_processing_naclip import NACLIPImageProcessor

    # JSON only: the folder holds no Python code, so the configs name none (`auto_map` dropped).
    config = json.loads(model.config.to_json_string())
    config["dtype"] = str(model.dtype).removeprefix("torch.")  # the graphs' precision
    _write_json(folder / CONFIG_FILE, config)
    image_processor = processor.image_processor if processor is not None else NACLIPImageProcessor()
    image_settings = json.loads(image_processor.to_json_string())
    if short_side is not None:
        image_settings["short_side"] = NACLIPImageProcessor(short_side=short_side).short_side  # checked
    _write_json(folder / PREPROCESSOR_FILE, image_settings)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    data.pop("auto_map", None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_classes(folder: Path, embeddings: Any, templates: Sequence[str] | None) -> None:
    """`classes.json` (classes, names, name_to_class, templates) and `class_embeddings.safetensors`."""
    from safetensors.numpy import save_file

    from ..models.naclip.labels import flatten_class_names

    names, name_to_class = flatten_class_names(embeddings.classes)
    text_embeds = embeddings.text_embeds.float().cpu().numpy()
    save_file({"text_embeds": np.ascontiguousarray(text_embeds)}, str(folder / CLASS_EMBEDDINGS_FILE))
    description = {
        "classes": embeddings.classes,
        "names": names,
        "name_to_class": name_to_class,
        "templates": None if templates is None else list(templates),
        "embedding_dim": int(text_embeds.shape[1]),
    }
    text = json.dumps(description, indent=2, ensure_ascii=False) + "\n"
    (folder / CLASSES_FILE).write_text(text, encoding="utf-8")


__all__ = ["ExportReport", "GraphVisionEmbeddings", "ONNX_OPSET", "SegmentationGraph", "TextGraph",
           "bicubic_resize_matrix", "export_graph", "export_onnx", "export_text_graph", "graph_dtype",
           "graph_position_embeddings", "quantize_graph", "quiet_export_messages", "verify_graph",
           "verify_text_graph"]  # fmt: skip
