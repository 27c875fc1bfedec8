"""What benchmark sections share: sizes, the model and inputs (built once per run), timers, the memory probe and
the result types (`Row`, `Target`, `Table`, `SectionResult`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
GOLDEN_DIR = REPO / "tests" / "fixtures" / "golden"
MIB = 2**20

try:
    import naclip_hf  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO / "src"))
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from naclip_hf import NACLIPConfig, NACLIPForSemanticSegmentation, NACLIPProcessor  # noqa: E402
from naclip_hf.models.naclip.image_processing_naclip import NACLIPImageProcessor  # noqa: E402


def _class_file() -> Path:
    for folder in ("benchmark_classes", "benchmarks"):
        path = REPO / "src" / "naclip_hf" / folder / "cls_coco_stuff.txt"
        if path.is_file():
            return path
    raise FileNotFoundError("cls_coco_stuff.txt not found under src/naclip_hf/benchmark_classes.")


CLASS_FILE = _class_file()


# ------------------------------------------------------------------------------------------------ sizes
@dataclass(frozen=True)
class Setting:
    """Sizes of one benchmark run."""

    vision: dict[str, int]
    text: dict[str, int]
    projection_dim: int
    image_size: tuple[int, int]  # (height, width) of the test image
    short_side: int
    slide_crop: int
    slide_stride: int
    image_names: int  # names of the image stages
    text_names: int  # names of the text classifier
    cli_classes: int  # classes of the command-line runs


FULL = Setting(
    vision={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "patch_size": 16, "image_size": 224},
    text={"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8,
          "vocab_size": 49408, "max_position_embeddings": 77},
    projection_dim=512, image_size=(375, 500), short_side=336, slide_crop=224, slide_stride=112, image_names=12,
    text_names=171, cli_classes=13,
)  # fmt: skip
QUICK = Setting(
    vision={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
            "patch_size": 16, "image_size": 224},
    text={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
          "vocab_size": 49408, "max_position_embeddings": 77},
    projection_dim=32, image_size=(94, 125), short_side=112, slide_crop=64, slide_stride=48, image_names=4,
    text_names=4, cli_classes=4,
)  # fmt: skip


def build_model(setting: Setting, seed: int = 0, **settings: Any) -> NACLIPForSemanticSegmentation:
    """A NACLIP model of the given shapes with random weights drawn from `seed` (fp32, SDPA attention, eval);
    `settings` are NACLIP settings of its config."""
    config = NACLIPConfig(
        projection_dim=setting.projection_dim,
        vision_config={**setting.vision, "projection_dim": setting.projection_dim},
        text_config={**setting.text, "projection_dim": setting.projection_dim},
        slide_crop=setting.slide_crop,
        slide_stride=setting.slide_stride,
        **settings,
    )
    torch.manual_seed(seed)
    model = NACLIPForSemanticSegmentation._from_config(config, attn_implementation="sdpa")
    return model.eval()


def load_processor(short_side: int) -> NACLIPProcessor:
    """The processor with the CLIP BPE of the golden fixture."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(GOLDEN_DIR / "tokenizer"), model_max_length=77)
    return NACLIPProcessor(NACLIPImageProcessor(short_side=short_side), tokenizer)


def class_names(count: int) -> list[str]:
    """The first `count` class names of COCO-Stuff (171 classes, one name each)."""
    names = [line.strip() for line in CLASS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not 1 <= count <= len(names):
        raise ValueError(f"--names must be between 1 and {len(names)}, got {count}.")
    return names[:count]


def benchmark_image(size: tuple[int, int]) -> np.ndarray:
    """The golden fixture's 375x500 RGB test image (uint8), resized to `size` if that differs."""
    from PIL import Image
    from safetensors.torch import load_file

    image = load_file(str(GOLDEN_DIR / "golden.safetensors"))["img_c/raw"].numpy()
    if image.shape[:2] != tuple(size):
        image = np.array(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    return image


# ------------------------------------------------------------------------------------------- measurement
@contextlib.contextmanager
def cpu_profile(**kwargs: Any) -> Iterator[Any]:
    """`torch.profiler.profile(activities=[CPU], **kwargs)` without the lines that some PyTorch builds' native
    profiler prints on stderr when it starts and stops (the benchmark's output stays its own)."""
    from torch.profiler import ProfilerActivity, profile

    profiler = profile(activities=[ProfilerActivity.CPU], **kwargs)
    with _native_stderr_closed():
        profiler.__enter__()
    try:
        yield profiler
    finally:
        with _native_stderr_closed():
            profiler.__exit__(None, None, None)


@contextlib.contextmanager
def _native_stderr_closed() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null (what native code writes there is dropped), then restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_tensor_bytes(fn: Callable[[], Any]) -> tuple[int | None, Any]:
    """Run `fn` under `torch.profiler` and return (peak live tensor bytes above the level at the start, its result).

    The peak is the maximum of the running sum of the allocation (+) and free (-) events in time order. None when
    this PyTorch does not expose the events."""
    with cpu_profile(profile_memory=True) as profiler:
        result = fn()
    try:
        events = profiler.profiler.kineto_results.events()
        changes = sorted((event.start_ns(), event.nbytes()) for event in events if event.name() == "[memory]")
    except AttributeError:
        return None, result
    level = peak = 0
    for _, change in changes:
        level += change
        peak = max(peak, level)
    return peak, result


def timed(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_times(candidates: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best of `repeats` timed calls of every candidate, the candidates alternating within each repeat."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(max(repeats, 1)):
        for name, fn in candidates.items():
            times[name].append(timed(fn))
    return {name: min(values) for name, values in times.items()}


def matmul_rate(size: int = 2048, calls: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of `torch.mm` on two size x size matrices of `dtype` (default fp32), over `calls` calls."""
    left, right = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(left, right)
    return 2 * size**3 / min(timed(lambda: torch.mm(left, right)) for _ in range(calls))


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (matmuls, convolutions, attention), by `FlopCounterMode`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------------ results
@dataclass
class Row:
    """One line of the main table: ours next to a reference (the baseline, or another path of ours)."""

    key: str
    stage: str
    ours_s: float
    ours_peak: int | None
    reference: str
    reference_s: float | None
    reference_peak: int | None
    outputs: str = ""
    note: str = ""

    @property
    def speedup(self) -> float | None:
        return None if not self.reference_s else self.reference_s / self.ours_s

    @property
    def memory_ratio(self) -> float | None:
        if self.ours_peak is None or not self.reference_peak:
            return None
        return self.ours_peak / self.reference_peak


@dataclass
class Target:
    """A performance target: `measured` compared with `required` (`sense` ">=" or "<=")."""

    target: str
    measured: float | None
    required: float
    sense: str = ">="

    @property
    def met(self) -> bool:
        if self.measured is None:
            return False
        return self.measured >= self.required if self.sense == ">=" else self.measured <= self.required


@dataclass
class Table:
    """An extra table of the report."""

    title: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class SectionResult:
    """What a section returns. `finish`, when set, runs after every section (e.g. to use the best matmul rate
    sampled over the whole run) and returns more results."""

    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    finish: Callable[[Context], SectionResult] | None = None


# ------------------------------------------------------------------------------------------------ context
class Context:
    """The run's options, and the model, baseline model and inputs, built on first use and shared by sections.

    Sections may leave results for later sections in `shared` (e.g. the fp32 end-to-end labels for bf16)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = bool(args.quick)
        self.setting = QUICK if self.quick else FULL
        self.repeats: int = max(int(args.repeats), 1)
        self.shared: dict[str, Any] = {}
        self.matmul_samples: list[float] = []

    @cached_property
    def model(self) -> NACLIPForSemanticSegmentation:
        model = build_model(self.setting, **self._model_settings())
        return model.to(torch.bfloat16) if self.args.dtype == "bf16" else model

    def model_in(self, dtype: torch.dtype) -> NACLIPForSemanticSegmentation:
        """The run's model in `dtype`: `model` itself when it has that dtype, else a copy built once (same weights,
        same settings)."""
        if self.model.dtype == dtype:
            return self.model
        copies = self.shared.setdefault("models_by_dtype", {})
        if dtype not in copies:
            copies[dtype] = build_model(self.setting, **self._model_settings()).to(dtype)
        return copies[dtype]

    def _model_settings(self) -> dict[str, int]:
        settings = {}
        if self.args.slide_batch_size:
            settings["slide_batch_size"] = self.args.slide_batch_size
        if self.args.text_batch_size:
            settings["text_batch_size"] = self.args.text_batch_size
        return settings

    @cached_property
    def baseline_model(self) -> NACLIPForSemanticSegmentation:
        """The model's weights (shared, not copied) under a config with eager attention."""
        from baselines import eager_twin

        return eager_twin(self.model)

    @cached_property
    def processor(self) -> NACLIPProcessor:
        return load_processor(self.setting.short_side)

    @cached_property
    def image(self) -> np.ndarray:
        return benchmark_image(self.setting.image_size)

    @cached_property
    def text_names(self) -> list[str]:
        return class_names(self.args.names if self.args.names is not None else self.setting.text_names)

    @cached_property
    def image_names(self) -> list[str]:
        return class_names(self.setting.image_names)

    @cached_property
    def image_classes(self) -> Any:
        """`ClassEmbeddings` of the image stages' names."""
        from naclip_hf.inference import encode_classes

        with torch.no_grad():
            return encode_classes(self.model, self.processor, self.image_names)

    @cached_property
    def pixel_values(self) -> torch.Tensor:
        return self.processor.image_processor(self.image)["pixel_values"].to(self.model.dtype)

    @cached_property
    def sliding_logits(self) -> torch.Tensor:
        """Our sliding-window logits of the test image (PAMR's input)."""
        with torch.no_grad():
            return self.model(pixel_values=self.pixel_values, text_embeds=self.image_classes.text_embeds).logits

    def sample_matmul_rate(self) -> None:
        """Sample the fp32 matmul rate (the best sample is the machine's rate)."""
        size, calls = (512, 5) if self.quick else (2048, 20)
        self.matmul_samples.append(matmul_rate(size, calls))


# ------------------------------------------------------------------------------------------------ format
def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def mib(value: int | None) -> str:
    return "—" if value is None else f"{value / MIB:.1f}"


def ratio(value: float | None) -> str:
    return "—" if value is None else (f"{value:.1f}×" if value >= 1 else f"{value:.3f}×")
