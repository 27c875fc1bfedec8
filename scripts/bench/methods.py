"""Section `methods`: every method per image on the same input, and the three 2025 methods against their official
code in the same process.

Ours: `segment_image(..., method=NAME)` for each method of `METHODS_TIMED` on the 375x500 test image, 12 names,
with every method on the same windows (224/112, short side 336) and PAMR off, so that the times differ only by
what each method does to the vision tower and its own post-processing (ResCLIP's first pass keeps its internal
PAMR, which is part of the method). In float32 and in bfloat16 (the same weights cast), the methods alternating
within each round; times are the median of the run's repeats after a warm-up call, and a ratio to NACLIP (same dtype)
is the median over rounds of the ratio within a round, which a busy moment on a shared machine affects less. On a
CPU without native bfloat16 matrix products (see the `precision` section) the bfloat16 column is skipped.

Official code (`--official-dir DIR`, a folder holding checkouts of github.com/SuleBai/SC-CLIP as `DIR/SC-CLIP`,
github.com/Kimsure/SFP as `DIR/SFP` (its `SFP_ICCV/` folder is used) and github.com/yvhangyang/ResCLIP as
`DIR/ResCLIP`; without it this part is skipped with a line saying so). Each checkout's segmentor is built as its
`eval.py` builds it, on the CPU, with the constructor's defaults and, for ResCLIP, the values of its
`configs/cfg_context59.py` (the defaults of our `resclip` method); its weights come through its own `clip.load` from
a state dict in OpenAI's layout holding the same random weights as our model (`openai_state_dict`, checked by
converting it back with `naclip_hf.conversion.convert_openai_state_dict`). The segmentors embed a two-name file when
built; their name embeddings are then set to ours (`query_features`, `query_idx`), so both sides compute the same
function of the same inputs, and the outputs are compared. A timed official call is the segmentor's `predict` on
the normalised 336x448 input with the original size (375x500) in its metadata: `forward_slide` (one
`forward_feature` per window, as the official code runs them) and `postprocess_result` (upsampling, softmax,
labels). Ours is `segment_image` on the raw image, which also resizes and normalises it (about 8 ms): the
comparison is at our expense. Ours and the official call alternate within each round; medians, and the ratio is
the median of the rounds' ratios.

Running the official code needs what it imports but never calls on this path; `official_imports` puts minimal
stand-ins, written here, into `sys.modules` while a checkout is imported (mmseg's `BaseSegmentor`, data
preprocessor and registry, mmengine's `PixelData`, torchvision's transforms, `pkg_resources.packaging`,
matplotlib, and `ftfy.fix_text` as the identity for the ASCII class names), then removes them. ResCLIP's vision
tower calls `.cuda()` and moves a module to `torch.device('cuda')`: `cuda_as_noop` makes both no-ops for the
duration of each official call. Nothing of the official code is changed or copied.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import statistics
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.common import Context, Row, SectionResult, Table, Target, class_names, matmul_rate, seconds
from naclip_hf.conversion import _BLOCK_RENAMES, _TOP_RENAMES, convert_openai_state_dict
from naclip_hf.inference import segment_image
from naclip_hf.methods import get_method

NEW_METHODS = ("scclip", "sfp", "resclip")
METHODS_TIMED = ("naclip", *NEW_METHODS, "clip", "maskclip", "sclip", "clearclip")
NEW_TO_NACLIP_TARGET = 2.0
OFFICIAL_OVER_OURS_TARGET = 1.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------------------------ ours
def our_call(model: Any, context: Context, classes: Any, method: str, **overrides: Any) -> Callable[[], Any]:
    """One image through `segment_image` with `method` (and `overrides` on top of its settings)."""

    def call() -> Any:
        with torch.no_grad():
            return segment_image(model, context.processor, context.image, classes, method=method, **overrides)

    return call


def timed_rounds(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of `repeats` rounds of calls (after one warm-up call each), the candidates alternating in each round."""
    import time

    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(max(repeats, 1)):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of the ratio of two candidates' times in the same round: on a shared machine a busy
    moment slows both sides of a round, so this is steadier than the ratio of medians."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def native_bf16(context: Context) -> bool:
    """Whether this CPU multiplies bfloat16 matrices at least at an eighth of the fp32 rate (else it is a slow
    fallback, and the bf16 runs are skipped)."""
    rates = context.shared.get("matmul_rates")
    if rates is not None:
        return rates["bf16"] >= rates["fp32"] / 8
    fp32 = max(context.matmul_samples) if context.matmul_samples else matmul_rate(256, 3)
    return matmul_rate(256, 3, torch.bfloat16) > fp32 / 8


# ------------------------------------------------------------------------------------------------ weights
def openai_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The model's CLIP weights in OpenAI's state-dict layout (the inverse of `convert_openai_state_dict`), fp32.

    Raises if converting the result back does not give the model's own weights exactly."""
    state = {name: tensor.detach().float() for name, tensor in model.state_dict().items()}
    top = {ours: theirs for theirs, ours in _TOP_RENAMES.items()}
    inner_names = {ours: theirs for theirs, ours in _BLOCK_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    in_proj: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        if name in top:
            out[top[name]] = tensor
        elif name == "visual_projection.weight":
            out["visual.proj"] = tensor.T.contiguous()
        elif name == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
        elif ".encoder.layers." in name:
            tower, rest = name.split(".encoder.layers.")
            index, inner = rest.split(".", 1)
            prefix = ("visual.transformer" if tower == "vision_model" else "transformer") + f".resblocks.{index}."
            parts = inner.split(".")
            if parts[0] == "self_attn" and parts[1] in ("q_proj", "k_proj", "v_proj"):
                in_proj.setdefault((prefix, parts[2]), {})[parts[1][0]] = tensor
            elif inner in inner_names:
                out[prefix + inner_names[inner]] = tensor
    for (prefix, kind), pieces in in_proj.items():
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([pieces["q"], pieces["k"], pieces["v"]]).contiguous()
    back = convert_openai_state_dict(out)
    expected = {name: tensor for name, tensor in state.items() if not name.endswith("position_ids")}
    if set(back) != set(expected) or any(not torch.equal(back[name], expected[name]) for name in expected):
        raise RuntimeError("The OpenAI-layout weights do not convert back to the model's own.")
    return out


# ------------------------------------------------------------------------------------------------ official code
def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _stand_ins() -> dict[str, types.ModuleType]:
    """Minimal modules for what the official segmentors import but do not use on the timed path."""

    class BaseSegmentor(nn.Module):
        def __init__(self, data_preprocessor: Any = None, init_cfg: Any = None) -> None:
            super().__init__()

    class SegDataPreProcessor:
        def __init__(self, **settings: Any) -> None:
            self.settings = settings

    class PixelData:
        def __init__(self, **fields: Any) -> None:
            self.__dict__.update(fields)

    class Registry:
        def register_module(self, *args: Any, **kwargs: Any) -> Callable[[type], type]:
            return lambda cls: cls

    class Unused:  # clip.load builds its image transform, which the segmentors never call
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("torchvision is not installed; this path of the official code is not benchmarked.")

    import packaging.version

    transforms = _module("torchvision.transforms", Compose=Unused, Resize=Unused, CenterCrop=Unused,
                         ToTensor=Unused, Normalize=Unused,
                         InterpolationMode=types.SimpleNamespace(BICUBIC="bicubic"))  # fmt: skip
    functional = _module("torchvision.transforms.functional")
    transforms.functional = functional
    pyplot = _module("matplotlib.pyplot")
    segmentors = _module("mmseg.models.segmentors", BaseSegmentor=BaseSegmentor)
    preprocessor = _module("mmseg.models.data_preprocessor", SegDataPreProcessor=SegDataPreProcessor)
    models = _module("mmseg.models", segmentors=segmentors, data_preprocessor=preprocessor)
    registry = _module("mmseg.registry", MODELS=Registry())
    structures = _module("mmengine.structures", PixelData=PixelData)
    return {
        "mmseg": _module("mmseg", models=models, registry=registry),
        "mmseg.models": models,
        "mmseg.models.segmentors": segmentors,
        "mmseg.models.data_preprocessor": preprocessor,
        "mmseg.registry": registry,
        "mmengine": _module("mmengine", structures=structures),
        "mmengine.structures": structures,
        "torchvision": _module("torchvision", transforms=transforms),
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
        "pkg_resources": _module("pkg_resources", packaging=_module("packaging", version=packaging.version)),
        "matplotlib": _module("matplotlib", pyplot=pyplot),
        "matplotlib.pyplot": pyplot,
        "ftfy": _module("ftfy", fix_text=lambda text: text),
    }


# Top-level modules every checkout ships under the same names: cleared before and after importing each one.
_CHECKOUT_MODULES = ("clip", "pamr", "prompts", "scclip_segmentor", "SFP_segmentor", "resclip_segmentor")


def _clear_checkout_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _CHECKOUT_MODULES:
            del sys.modules[name]


@contextlib.contextmanager
def official_imports(folder: Path) -> Iterator[None]:
    """Import from the checkout at `folder`: it first on `sys.path`, stand-ins for the modules that are not installed,
    and afterwards `sys.path` and `sys.modules` as they were (the imported official objects keep working)."""
    installed: dict[str, bool] = {}
    missing = {}
    for name, module in _stand_ins().items():
        top = name.split(".")[0]
        if top not in installed:
            installed[top] = importlib.util.find_spec(top) is not None
        if not installed[top]:
            missing[name] = module
    saved_path = list(sys.path)
    _clear_checkout_modules()
    sys.modules.update(missing)
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path[:] = saved_path
        _clear_checkout_modules()
        for name in missing:
            sys.modules.pop(name, None)


@contextlib.contextmanager
def cuda_as_noop() -> Iterator[None]:
    """`Tensor.cuda()` and `Module.to(<cuda device>)` leave the object where it is (ResCLIP hard-codes both)."""
    tensor_cuda, module_to = torch.Tensor.cuda, nn.Module.to

    def to(self: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        device = args[0] if args else kwargs.get("device")
        if isinstance(device, (str, torch.device)) and torch.device(device).type == "cuda":
            return self
        return module_to(self, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    nn.Module.to = to  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = tensor_cuda  # type: ignore[method-assign]
        nn.Module.to = module_to  # type: ignore[method-assign]


# method -> (checkout folder under --official-dir, module, segmentor class, constructor keywords)
OFFICIAL = {
    "scclip": ("SC-CLIP", "scclip_segmentor", "SCCLIPForSegmentation", {}),
    "sfp": ("SFP", "SFP_segmentor", "SFPForSegmentation", {}),
    "resclip": ("ResCLIP", "resclip_segmentor", "ResCLIPSegmentation",
                {"temp_thd": 0.25, "attn_rcs_weights": [2.0, 0.4], "attn_sfr_weights": [1.8, 0.7],
                 "delete_same_entity": True}),
}  # fmt: skip


def checkout_folder(official_dir: Path, method: str) -> Path:
    folder = official_dir / OFFICIAL[method][0]
    return folder / "SFP_ICCV" if (folder / "SFP_ICCV").is_dir() else folder


def build_official(official_dir: Path, method: str, weights: Path, names_file: Path, text_embeds: torch.Tensor) -> Any:
    """The official segmentor of `method`, built as its eval.py builds it (on the CPU), with our name embeddings."""
    _, module_name, class_name, settings = OFFICIAL[method]
    with official_imports(checkout_folder(official_dir, method)), cuda_as_noop():
        segmentor_class = getattr(importlib.import_module(module_name), class_name)
        segmentor = segmentor_class(clip_path=str(weights), name_path=str(names_file), device=torch.device("cpu"),
                                    **settings)  # fmt: skip
    segmentor.eval()
    segmentor.query_features = text_embeds.float().clone()
    segmentor.query_idx = torch.arange(len(text_embeds))
    segmentor.num_queries = len(text_embeds)
    segmentor.num_classes = len(text_embeds)
    segmentor.dtype = segmentor.query_features.dtype
    return segmentor


class _Sample:
    """What the official `predict` reads from and writes to a data sample: `metainfo` and `set_data`."""

    def __init__(self, original_size: tuple[int, int]) -> None:
        self.metainfo = {"ori_shape": original_size, "img_shape": original_size}

    def set_data(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)


def official_call(segmentor: Any, pixel_values: torch.Tensor, original_size: tuple[int, int]) -> Callable[[], Any]:
    def call() -> Any:
        with torch.no_grad(), cuda_as_noop():
            return segmentor.predict(pixel_values, [_Sample(original_size)])[0]

    return call


def compare_outputs(ours: Any, theirs: Any) -> str:
    """Labels and probabilities of ours against the official `predict`'s, on the pixels where the official output is
    finite (SFP's code can turn a whole window into NaN where ours keeps finite values; the fraction is reported)."""
    probabilities = theirs.seg_logits.data.float()
    probabilities = probabilities / probabilities.sum(0, keepdim=True)
    labels = theirs.pred_sem_seg.data[0]
    finite = torch.isfinite(probabilities).all(0)
    equal = (ours.segmentation.to(labels.dtype) == labels)[finite].float().mean().item()
    difference = (ours.probabilities.float() - probabilities).abs()[:, finite].max().item()
    text = f"labels equal {100 * equal:.2f}%, probabilities max abs diff {difference:.1e}"
    if not bool(finite.all()):
        text += f" (on the {100 * finite.float().mean().item():.1f}% of pixels where the official output is not NaN)"
    return text


def run_official(context: Context, official_dir: Path) -> tuple[list[Row], Table, list[Target], str]:
    model = context.model_in(torch.float32)
    classes = context.image_classes
    text_embeds = classes.text_embeds.float()
    inputs = context.processor.image_processor(context.image)
    pixel_values = inputs["pixel_values"].float()
    original_size = tuple(int(v) for v in context.image.shape[:2])
    rows, lines, targets = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "clip_openai_layout.pt"
        torch.save(openai_state_dict(model), weights)
        names_file = Path(folder) / "names.txt"
        names_file.write_text("\n".join(class_names(2)) + "\n", encoding="utf-8")
        segmentors = {method: build_official(official_dir, method, weights, names_file, text_embeds)
                      for method in NEW_METHODS}  # fmt: skip
    for method in NEW_METHODS:
        ours = our_call(model, context, classes, method)
        theirs = official_call(segmentors[method], pixel_values, original_size)
        rounds = timed_rounds({"ours": ours, "official": theirs}, context.repeats)
        times = {name: statistics.median(values) for name, values in rounds.items()}
        outputs = compare_outputs(ours(), theirs())
        title = get_method(method).title
        speedup = median_ratio(rounds["official"], rounds["ours"])
        stage = f"{title} per image ({len(context.image_names)} names, the methods' settings), fp32"
        rows.append(Row(f"methods_official_{method}", stage, times["ours"], None, f"official {title} code",
                        times["official"], None, outputs, "medians (Speed-up: their ratio; the official-code table: "
                        "the median of the rounds' ratios); official: predict on the normalised input"))
        lines.append([title, seconds(times["ours"]), seconds(times["official"]), f"{speedup:.2f}", outputs])
        targets.append(Target(f"{title} per image: official time / ours (fp32)", speedup, OFFICIAL_OVER_OURS_TARGET))
    table = Table("Against the official code", ["Method", "Ours (s)", "Official (s)", "Official / ours (median of "
                                                "rounds)", "Outputs"], lines)  # fmt: skip
    return rows, table, targets, "medians of alternating calls in one process, fp32"


# ------------------------------------------------------------------------------------------------ section
def run(context: Context) -> SectionResult:
    dtypes = ["fp32"] + (["bf16"] if native_bf16(context) else [])
    setting = context.setting
    same_windows = {"slide_crop": setting.slide_crop, "slide_stride": setting.slide_stride,
                    "short_side": setting.short_side, "pamr_steps": 0}  # fmt: skip
    classes = context.image_classes
    rounds: dict[str, dict[str, list[float]]] = {}
    for dtype in dtypes:
        model = context.model_in(DTYPES[dtype])
        calls = {method: our_call(model, context, classes, method, **same_windows) for method in METHODS_TIMED}
        rounds[dtype] = timed_rounds(calls, context.repeats)
    times = {dtype: {name: statistics.median(values) for name, values in by_method.items()}
             for dtype, by_method in rounds.items()}  # fmt: skip
    header = ["Method"] + [column for dtype in dtypes for column in (f"{dtype} (s)", f"{dtype} / NACLIP")]
    lines, targets = [], []
    for method in METHODS_TIMED:
        line = [get_method(method).title]
        for dtype in dtypes:
            share = median_ratio(rounds[dtype][method], rounds[dtype]["naclip"])
            line += [seconds(times[dtype][method]), f"{share:.2f}"]
            if method in NEW_METHODS:
                targets.append(Target(f"{get_method(method).title} / NACLIP per image, {dtype}", share,
                                      NEW_TO_NACLIP_TARGET, "<="))  # fmt: skip
        lines.append(line)
    result = SectionResult(
        tables=[Table("Methods per image", header, lines)],
        targets=targets,
        settings={"methods": f"{setting.image_size[0]}x{setting.image_size[1]} test image, "
                  f"{len(context.image_names)} names, windows {setting.slide_crop}/{setting.slide_stride}, short side "
                  f"{setting.short_side}, PAMR off, medians of {context.repeats} alternating calls"
                  + ("" if "bf16" in dtypes else "; bf16 skipped: no native bf16 matrix products")},
    )  # fmt: skip
    official_dir = getattr(context.args, "official_dir", None)
    reason = None
    if official_dir is None:
        reason = "no --official-dir given"
    elif context.quick:
        reason = "--quick: the official code hard-codes the layers of a 12-layer ViT-B/16"
    else:
        official_dir = Path(official_dir)
        absent = [str(checkout_folder(official_dir, m)) for m in NEW_METHODS if not checkout_folder(official_dir, m)
                  .is_dir()]  # fmt: skip
        if absent:
            reason = f"checkouts not found: {', '.join(absent)}"
    if reason is not None:
        line = f"skipped ({reason}); see scripts/bench/methods.py for the folders it needs"
        result.tables.append(Table("Against the official code", ["Against the official code"], [[line]]))
        result.settings["methods, official code"] = line
        return result
    rows, table, official_targets, note = run_official(context, official_dir)
    result.rows += rows
    result.tables.append(table)
    result.targets += official_targets
    result.settings["methods, official code"] = f"{official_dir}: {note}"
    return result
