"""Speed and memory of naclip-hf's default execution paths next to a baseline that makes the official code's choices.

    python scripts/benchmark.py                 # ViT-B/16, 171 names, fp32; about 10 minutes on 2 cores
    python scripts/benchmark.py --markdown      # the same, as Markdown (for the README)
    python scripts/benchmark.py --quick         # tiny model and image: a smoke test of a few seconds

Model and inputs
    A CLIP with ViT-B/16 shapes (vision: 768 wide, 12 layers, 12 heads, patch 16, 224 pixels; text: 512 wide,
    12 layers, 8 heads, vocabulary 49408, 77 positions; projection 512), randomly initialised from a fixed seed:
    speed and memory do not depend on the weight values, and nothing is downloaded. Tokenizer: the CLIP BPE of
    `tests/fixtures/golden/tokenizer`. Class names: the 171 classes of `cls_coco_stuff.txt`, one name each (the
    file has no synonyms); `--names N` takes the first N. Image: the 375x500 RGB test image `img_c` of the golden
    fixture, resized to a short side of 336 (336x448, six 224-pixel windows at stride 112); 12 names; PAMR with 10
    steps at dilations 8 and 16.

Stages (each as "ours" = the package's default path, next to the baseline)
    text classifier   `encode_classes` for N names x 80 templates (tokenising included).
    text, 2nd call    `encode_classes(..., cache_dir=DIR)` reading the on-disk cache, against our uncached call.
    whole-image pass  the vision tower and cosine logits on the whole 336x448 input (`slide_crop=0`).
    sliding windows   the same with 224/112 sliding windows (the default setting).
    PAMR              refinement of the 12 upsampled logit maps at 375x500, guided by the upsampled input.
    end to end        `segment_image`: resize and normalise, sliding windows, upsampling, PAMR, softmax, labels
                      (class embeddings precomputed, as when one label set segments many images).
    bf16              end to end with the whole model in bfloat16 (text embeddings from the bf16 text tower), against
                      ours in fp32; its labels are compared with the fp32 labels.

Baseline mode: the official execution choices. Text: one text-tower call per name with its 80 prompts padded to 77
tokens (causal mask only). Vision: one sliding window at a time (batch 1) and eager attention (explicit matmuls and
softmax). PAMR: `pamr_reference`, which materialises every shifted copy of the scores at once. The "Outputs" column
says how far our outputs are from the baseline's (they compute the same function).

Timing: wall-clock time (`time.perf_counter`), the best of `--repeats` runs after a warm-up run, with ours and the
baseline alternating within each repeat. The best run is reported because other processes on a shared machine
only ever slow a run down. The baseline text classifier makes one call of identical shape ([80, 77] tokens) per
name, so its time is exactly linear in the number of names: it is timed on the first `--baseline-text-names`
names and scaled to N (`--baseline-text-names 0` runs all N).

Memory: the peak of live tensor bytes during the stage, above what was allocated when it started, from the
allocation and free events that `torch.profiler` records with `profile_memory=True` (in the warm-up run, which is
not timed). It is exact for tensors, i.e. everything PyTorch's CPU allocator hands out: activations, temporaries
and outputs. It leaves out the weights (allocated before), Python objects and scratch space that MKL or oneDNN
allocate themselves. Process RSS was not used: it includes the model and the allocator's cached pages, and
`tracemalloc` does not see tensor storage at all.

Allocator: with glibc's default settings, a block above a threshold (at most 32 MiB) is mmap-ed when allocated and
returned to the system when freed, so every use page-faults it in again. The reference PAMR allocates 70-140 MiB
temporaries in each of its 10 steps and spends most of its time in those page faults (about 1.8 million per call
here); ours keeps its temporaries small. Whether large blocks are page-faulted also depends on what the process
allocated before (freed blocks left inside the heap are reused), so the image stages run first, in the fresh
process, as for the first image a user segments. At the end, PAMR and end to end are measured again after `mallopt`
told malloc to keep all freed memory (no mmap, no trimming), which is the best case for the baseline; both results
are in the table and in the targets.

Compute efficiency: FLOPs of one vision pass counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls,
convolutions, attention; 2 FLOPs per multiply-add), divided by its best time, against the machine's fp32 matmul
rate: the best of 20 `torch.mm` of two 2048x2048 matrices on the same threads, sampled before, between and after
the stages (the best sample is used, so a busy moment cannot flatter the fraction).

Defaults of the batch sizes: `--sweep-slide-batch-size` times the vision pass of 16 windows in batches of 1 to 16
windows, `--sweep-text-batch-size` the text classifier of 16 names with 64 to 1024 prompts per batch.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO / "tests" / "fixtures" / "golden"
CLASS_FILE = REPO / "src" / "naclip_hf" / "benchmarks" / "cls_coco_stuff.txt"

try:
    import naclip_hf  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO / "src"))

from naclip_hf import NACLIPConfig, NACLIPForSemanticSegmentation, NACLIPProcessor, modeling_naclip  # noqa: E402
from naclip_hf.inference import ClassEmbeddings, encode_classes, segment_image  # noqa: E402
from naclip_hf.pamr import pamr, pamr_reference  # noqa: E402
from naclip_hf.templates import IMAGENET_TEMPLATES  # noqa: E402

MIB = 2**20
TARGETS = {
    "text_speedup": 4.0,
    "cache_speedup": 100.0,
    "end_to_end_speedup": 3.0,
    "pamr_speedup": 5.0,
    "pamr_memory_ratio": 0.25,
    "vision_matmul_fraction": 0.60,
}


# ------------------------------------------------------------------------------------------------ setup
@dataclass
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


FULL = Setting(
    vision={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "patch_size": 16, "image_size": 224},
    text={"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8,
          "vocab_size": 49408, "max_position_embeddings": 77},
    projection_dim=512, image_size=(375, 500), short_side=336, slide_crop=224, slide_stride=112, image_names=12,
)  # fmt: skip
QUICK = Setting(
    vision={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
            "patch_size": 16, "image_size": 224},
    text={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
          "vocab_size": 49408, "max_position_embeddings": 77},
    projection_dim=32, image_size=(94, 125), short_side=112, slide_crop=64, slide_stride=48, image_names=4,
)  # fmt: skip


def build_model(setting: Setting, seed: int = 0) -> NACLIPForSemanticSegmentation:
    """A NACLIP model of the given shapes with random weights drawn from `seed` (fp32, SDPA attention, eval)."""
    config = NACLIPConfig(
        projection_dim=setting.projection_dim,
        vision_config={**setting.vision, "projection_dim": setting.projection_dim},
        text_config={**setting.text, "projection_dim": setting.projection_dim},
        slide_crop=setting.slide_crop,
        slide_stride=setting.slide_stride,
    )
    torch.manual_seed(seed)
    model = NACLIPForSemanticSegmentation(config).eval()
    model.set_attn_implementation("sdpa")
    return model


def load_processor(short_side: int) -> NACLIPProcessor:
    """The processor with the CLIP BPE of the golden fixture."""
    return NACLIPProcessor.from_tokenizer_dir(GOLDEN_DIR / "tokenizer", short_side=short_side)


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


# ------------------------------------------------------------------------------------------ baseline mode
@contextlib.contextmanager
def baseline_mode(model: NACLIPForSemanticSegmentation) -> Iterator[None]:
    """Run `model` as the official code does: eager attention, one sliding window at a time, reference PAMR."""
    implementation, batch_size = model.config._attn_implementation, model.config.slide_batch_size
    model.set_attn_implementation("eager")
    model.config.slide_batch_size = 1
    modeling_naclip.pamr = pamr_reference
    try:
        yield
    finally:
        modeling_naclip.pamr = pamr
        model.config.slide_batch_size = batch_size
        model.set_attn_implementation(implementation)


@torch.no_grad()
def embed_names_one_by_one(
    model: NACLIPForSemanticSegmentation,
    tokenizer: Any,
    names: Sequence[str],
    templates: Sequence[str] = IMAGENET_TEMPLATES,
) -> torch.Tensor:
    """The official text classifier: per name, its prompts padded to 77 tokens in one text-tower call (causal mask
    only, no padding mask), each prompt embedding L2-normalised, averaged, normalised again. Returns [names, D]."""
    rows = []
    for name in names:
        tokens = tokenizer(
            [template.format(name) for template in templates],
            padding="max_length",
            max_length=77,
            truncation=True,
            return_tensors="pt",
        )
        features = F.normalize(model.get_text_features(tokens["input_ids"].to(model.device)), dim=-1)
        rows.append(F.normalize(features.mean(dim=0), dim=-1))
    return torch.stack(rows)


# ------------------------------------------------------------------------------------------- measurement
def peak_tensor_bytes(fn: Callable[[], Any]) -> tuple[int | None, Any]:
    """Run `fn` under `torch.profiler` and return (peak live tensor bytes above the level at the start, its result).

    The peak is the maximum of the running sum of the allocation (+) and free (-) events in time order. None when
    this PyTorch does not expose the events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
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


def matmul_rate(size: int = 2048, calls: int = 20) -> float:
    """Best fp32 FLOP/s of `torch.mm` on two size x size matrices, over `calls` calls."""
    left, right = torch.randn(size, size), torch.randn(size, size)
    torch.mm(left, right)
    return 2 * size**3 / min(timed(lambda: torch.mm(left, right)) for _ in range(calls))


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (matmuls, convolutions, attention), by `FlopCounterMode`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass
class Row:
    """One line of the results table: ours next to a reference (the baseline, or another path of ours)."""

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
class Report:
    """Everything a run measured."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    efficiency: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    text_sweep: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ stages
def text_stages(
    model: NACLIPForSemanticSegmentation,
    processor: NACLIPProcessor,
    names: list[str],
    baseline_names: int,
    repeats: int,
    cache_dir: Path,
) -> list[Row]:
    """Text classifier: ours, ours from the disk cache, and the name-by-name baseline."""
    # Warm-up and memory run of ours; it also fills the cache.
    ours_peak, filled = peak_tensor_bytes(lambda: encode_classes(model, processor, names, cache_dir=cache_dir))
    ours_s = min(timed(lambda: encode_classes(model, processor, names)) for _ in range(max(repeats, 1)))
    cached_peak, cached = peak_tensor_bytes(lambda: encode_classes(model, processor, names, cache_dir=cache_dir))
    cached_s = min(
        timed(lambda: encode_classes(model, processor, names, cache_dir=cache_dir)) for _ in range(max(repeats, 3))
    )
    sample = names if baseline_names <= 0 else names[: min(baseline_names, len(names))]
    with baseline_mode(model):
        baseline_peak, _ = peak_tensor_bytes(lambda: embed_names_one_by_one(model, processor.tokenizer, sample[:1]))
        start = time.perf_counter()
        baseline = embed_names_one_by_one(model, processor.tokenizer, sample)
        baseline_s = (time.perf_counter() - start) * len(names) / len(sample)
    difference = (filled.text_embeds[: len(sample)].float() - baseline.float()).abs().max().item()
    cache_difference = (cached.text_embeds.float() - filled.text_embeds.float()).abs().max().item()
    scaled = "" if len(sample) == len(names) else f"baseline timed on {len(sample)} names, scaled to {len(names)}"
    text = Row(
        key="text",
        stage=f"text classifier, {len(names)} names",
        ours_s=ours_s,
        ours_peak=ours_peak,
        reference="baseline",
        reference_s=baseline_s,
        reference_peak=baseline_peak,
        outputs=f"max abs diff {difference:.1e}",
        note=scaled,
    )
    cached_row = Row(
        key="text_cached",
        stage=f"text classifier, {len(names)} names, 2nd call (disk cache)",
        ours_s=cached_s,
        ours_peak=cached_peak,
        reference="ours, uncached",
        reference_s=ours_s,
        reference_peak=ours_peak,
        outputs=f"max abs diff {cache_difference:.1e}",
    )
    return [text, cached_row]


def vision_stages(
    model: NACLIPForSemanticSegmentation,
    pixel_values: torch.Tensor,
    text_embeds: torch.Tensor,
    repeats: int,
) -> tuple[list[Row], dict[str, Any]]:
    """Whole-image pass and sliding windows, ours next to the baseline. Also returns FLOPs and times for the
    efficiency table and the sliding-window logits (PAMR's input)."""
    rows: list[Row] = []
    windows = len(modeling_naclip.sliding_windows(
        *pixel_values.shape[-2:], model.config.slide_crop, model.config.slide_stride))  # fmt: skip
    extra: dict[str, Any] = {"windows": windows}

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(pixel_values=pixel_values, text_embeds=text_embeds).logits

    def baseline_forward() -> torch.Tensor:
        with baseline_mode(model):
            return forward()

    crop = model.config.slide_crop
    for key, label, slide_crop in (("whole", "whole-image pass", 0), ("sliding", "sliding windows", crop)):
        model.config.slide_crop = slide_crop
        try:
            ours_peak, ours = peak_tensor_bytes(forward)
            baseline_peak, baseline = peak_tensor_bytes(baseline_forward)
            times = best_times({"ours": forward, "baseline": baseline_forward}, repeats)
            flops = count_flops(forward)
        finally:
            model.config.slide_crop = crop
        difference = (ours - baseline).abs().max().item()
        shape = "x".join(map(str, pixel_values.shape[-2:]))
        stage = f"{label} ({shape}" + (f", {windows} windows)" if slide_crop else ")")
        outputs = f"max abs diff {difference:.1e}"
        rows.append(Row(key, stage, times["ours"], ours_peak, "baseline", times["baseline"], baseline_peak, outputs))
        extra[label] = {"flops": flops, "seconds": times["ours"]}
        if slide_crop:
            extra["logits"] = ours
    return rows, extra


def pamr_stage(
    model: NACLIPForSemanticSegmentation,
    pixel_values: torch.Tensor,
    logits: torch.Tensor,
    size: tuple[int, int],
    repeats: int,
    key: str = "pamr",
    note: str = "",
) -> Row:
    """PAMR on what post-processing feeds it (logits and guide image upsampled to the original size), ours next to
    the reference formulation."""
    config = model.config
    scores = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    guide = F.interpolate(pixel_values.float(), size=size, mode="bilinear", align_corners=False)

    def refine() -> torch.Tensor:
        return pamr(guide, scores, config.pamr_steps, config.pamr_dilations)

    def refine_reference() -> torch.Tensor:
        return pamr_reference(guide, scores, config.pamr_steps, config.pamr_dilations)

    ours_peak, ours = peak_tensor_bytes(refine)
    baseline_peak, baseline = peak_tensor_bytes(refine_reference)
    times = best_times({"ours": refine, "baseline": refine_reference}, repeats)
    difference = (ours - baseline).abs().max().item()
    stage = f"PAMR ({size[0]}x{size[1]}, {scores.shape[1]} names, {config.pamr_steps} steps)"
    if note:
        stage += f", {note}"
    outputs = f"max abs diff {difference:.1e}"
    return Row(key, stage, times["ours"], ours_peak, "baseline", times["baseline"], baseline_peak, outputs)


def end_to_end_stage(
    model: NACLIPForSemanticSegmentation,
    processor: NACLIPProcessor,
    image: np.ndarray,
    classes: ClassEmbeddings,
    repeats: int,
    key: str = "end_to_end",
    note: str = "",
) -> tuple[Row, dict[str, Any]]:
    """`segment_image` ours next to the baseline; also returns our time, peak and labels (for the bf16 row)."""

    def end_to_end() -> Any:
        return segment_image(model, processor, image, classes)

    def baseline_end_to_end() -> Any:
        with baseline_mode(model):
            return end_to_end()

    ours_peak, ours = peak_tensor_bytes(end_to_end)
    baseline_peak, baseline = peak_tensor_bytes(baseline_end_to_end)
    times = best_times({"ours": end_to_end, "baseline": baseline_end_to_end}, repeats)
    agreement = (ours.segmentation == baseline.segmentation).float().mean().item()
    difference = (ours.probabilities - baseline.probabilities).abs().max().item()
    stage = f"end to end ({image.shape[0]}x{image.shape[1]} image, {len(classes.text_embeds)} names)"
    if note:
        stage += f", {note}"
    outputs = f"labels equal {agreement:.2%}, probabilities max abs diff {difference:.1e}"
    row = Row(key, stage, times["ours"], ours_peak, "baseline", times["baseline"], baseline_peak, outputs)
    return row, {"seconds": times["ours"], "peak": ours_peak, "segmentation": ours.segmentation}


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve every block from its heap and never give freed memory back to the system
    (`mallopt`: no mmap for large blocks, no trimming), so that large temporaries are not page-faulted in again on
    every call. Returns False where this is not possible (not glibc). Irreversible for this process."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def bf16_stage(
    model: NACLIPForSemanticSegmentation,
    processor: NACLIPProcessor,
    image: np.ndarray,
    names: list[str],
    fp32: dict[str, Any],
    repeats: int,
) -> Row:
    """End to end with a bfloat16 copy of the model, against ours in fp32; labels compared with fp32's."""
    half = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        classes = encode_classes(half, processor, names)

    def end_to_end() -> Any:
        return segment_image(half, processor, image, classes)

    peak, result = peak_tensor_bytes(end_to_end)
    seconds = min(timed(end_to_end) for _ in range(max(repeats, 1)))
    agreement = (result.segmentation == fp32["segmentation"]).float().mean().item()
    return Row(
        key="bf16",
        stage="end to end, bf16 model",
        ours_s=seconds,
        ours_peak=peak,
        reference="ours, fp32",
        reference_s=fp32["seconds"],
        reference_peak=fp32["peak"],
        outputs=f"labels equal to fp32: {agreement:.2%}",
        note="random weights give small class margins; tests/test_performance_paths.py checks the golden cases",
    )


def sweep_slide_batch_size(
    model: NACLIPForSemanticSegmentation, sizes: Sequence[int], windows: int, repeats: int
) -> list[dict[str, Any]]:
    """Seconds per window of the vision pass (`encode_patches` + logits) when `windows` random windows run in
    batches of each size; the batch sizes alternate within each repeat."""
    crop = model.config.slide_crop or model.config.vision_config.image_size
    torch.manual_seed(0)
    pixels = torch.randn(windows, 3, crop, crop, dtype=model.dtype)
    text = F.normalize(torch.randn(12, model.config.projection_dim, dtype=model.dtype), dim=-1)

    def run(size: int) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                for start in range(0, windows, size):
                    model._window_logits(pixels[start : start + size], text, None)

        return call

    run(max(sizes))()  # warm-up
    times = best_times({str(size): run(size) for size in sizes}, repeats)
    return [{"batch": size, "seconds_per_window": times[str(size)] / windows} for size in sizes]


def sweep_text_batch_size(
    model: NACLIPForSemanticSegmentation,
    processor: NACLIPProcessor,
    names: Sequence[str],
    sizes: Sequence[int],
    repeats: int,
) -> list[dict[str, Any]]:
    """Seconds per name of `get_name_embeddings` (tokenising excluded) with each `text_batch_size`; the sizes
    alternate within each repeat."""
    text = processor.tokenize_class_names(list(names))
    saved = model.config.text_batch_size

    def run(size: int) -> Callable[[], None]:
        def call() -> None:
            model.config.text_batch_size = size
            model.get_name_embeddings(text["input_ids"], text["attention_mask"], text["num_templates"])

        return call

    try:
        run(min(sizes))()  # warm-up
        times = best_times({str(size): run(size) for size in sizes}, repeats)
    finally:
        model.config.text_batch_size = saved
    return [{"batch": size, "seconds_per_name": times[str(size)] / len(names)} for size in sizes]


# ------------------------------------------------------------------------------------------------ report
def machine_info() -> dict[str, Any]:
    """Date, CPU, threads and library versions."""
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": f"{cpu} ({os.cpu_count()} logical cores, {capability})",
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _mib(value: int | None) -> str:
    return "—" if value is None else f"{value / MIB:.1f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else (f"{value:.1f}×" if value >= 1 else f"{value:.3f}×")


def evaluate_targets(report: Report) -> None:
    """Compare the measured ratios with the performance targets (fp32 runs only)."""
    rows = {row.key: row for row in report.rows}
    checks = []
    if "text" in rows:
        checks.append(("text classifier vs baseline", rows["text"].speedup, TARGETS["text_speedup"], ">="))
    if "text_cached" in rows:
        checks.append(("text classifier, cached 2nd call vs uncached", rows["text_cached"].speedup,
                       TARGETS["cache_speedup"], ">="))  # fmt: skip
    if "end_to_end" in rows:
        checks.append(("end to end vs baseline", rows["end_to_end"].speedup, TARGETS["end_to_end_speedup"], ">="))
    if "pamr" in rows:
        checks.append(("PAMR time vs baseline", rows["pamr"].speedup, TARGETS["pamr_speedup"], ">="))
        checks.append(("PAMR peak memory / baseline", rows["pamr"].memory_ratio, TARGETS["pamr_memory_ratio"],
                       "<="))  # fmt: skip
    if "end_to_end_kept_memory" in rows:
        checks.append(("end to end vs baseline, malloc keeps freed memory", rows["end_to_end_kept_memory"].speedup,
                       TARGETS["end_to_end_speedup"], ">="))  # fmt: skip
    if "pamr_kept_memory" in rows:
        checks.append(("PAMR time vs baseline, malloc keeps freed memory", rows["pamr_kept_memory"].speedup,
                       TARGETS["pamr_speedup"], ">="))  # fmt: skip
    sliding = next((e for e in report.efficiency if e["pass"].startswith("sliding")), None)
    if sliding:
        checks.append(("sliding-window pass FLOP/s / matmul FLOP/s", sliding["fraction"],
                       TARGETS["vision_matmul_fraction"], ">="))  # fmt: skip
    for label, value, target, sense in checks:
        met = value is not None and (value >= target if sense == ">=" else value <= target)
        report.targets.append({"target": label, "measured": value, "required": f"{sense} {target:g}", "met": met})


def render(report: Report, markdown: bool) -> str:
    """The report as plain text or Markdown."""
    lines: list[str] = []
    title = "naclip-hf benchmark"
    lines += [f"## {title}" if markdown else title, ""]
    for key, value in {**report.machine, **report.settings}.items():
        lines.append(f"- {key}: {value}" if markdown else f"{key:>22}: {value}")
    lines.append("")
    header = ["Stage", "Ours (s)", "Ours peak (MiB)", "Compared with", "Time (s)", "Peak (MiB)", "Speed-up",
              "Memory (ours/other)", "Outputs", "Note"]  # fmt: skip
    table = [
        [row.stage, _seconds(row.ours_s), _mib(row.ours_peak), row.reference, _seconds(row.reference_s),
         _mib(row.reference_peak), _ratio(row.speedup), _ratio(row.memory_ratio), row.outputs, row.note]
        for row in report.rows
    ]  # fmt: skip
    lines += _table(header, table, markdown)
    lines.append("")
    header = ["Vision pass", "GFLOP", "Time (s)", "GFLOP/s", "fp32 matmul GFLOP/s", "Fraction"]
    table = [
        [e["pass"], f"{e['flops'] / 1e9:.1f}", _seconds(e["seconds"]), f"{e['rate'] / 1e9:.1f}",
         f"{e['matmul_rate'] / 1e9:.1f}", f"{e['fraction']:.0%}"]
        for e in report.efficiency
    ]  # fmt: skip
    lines += _table(header, table, markdown)
    if report.sweep:
        lines.append("")
        header = ["Windows per batch", "ms per window", "relative to the best"]
        best = min(entry["seconds_per_window"] for entry in report.sweep)
        table = [
            [str(e["batch"]), f"{e['seconds_per_window'] * 1e3:.1f}", f"{e['seconds_per_window'] / best:.2f}"]
            for e in report.sweep
        ]
        lines += _table(header, table, markdown)
    if report.text_sweep:
        lines.append("")
        header = ["Prompts per text batch", "ms per name", "relative to the best"]
        best = min(entry["seconds_per_name"] for entry in report.text_sweep)
        table = [
            [str(e["batch"]), f"{e['seconds_per_name'] * 1e3:.1f}", f"{e['seconds_per_name'] / best:.2f}"]
            for e in report.text_sweep
        ]
        lines += _table(header, table, markdown)
    if report.targets:
        lines.append("")
        if report.settings.get("model", "").startswith("tiny"):
            lines += ["Targets (they are for ViT-B/16; with --quick the sizes are too small for them to apply):", ""]
        header = ["Target", "Measured", "Required", "Met"]
        table = [
            [t["target"], "—" if t["measured"] is None else f"{t['measured']:.3g}", t["required"],
             "yes" if t["met"] else "NO"]
            for t in report.targets
        ]  # fmt: skip
        lines += _table(header, table, markdown)
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return out + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *rows]]


# -------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=None, help="class names of the text stage (default 171; 4 "
                        "with --quick)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per stage, the best is reported")
    parser.add_argument("--baseline-text-names", type=int, default=8, help="names the baseline text classifier "
                        "is timed on before scaling to --names (0: all)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny model and image (smoke test)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="dtype of the model, in both "
                        "modes (the targets are for fp32)")  # fmt: skip
    parser.add_argument("--slide-batch-size", type=int, default=None, help="windows per batch of our path "
                        "(default: the config's)")  # fmt: skip
    parser.add_argument("--text-batch-size", type=int, default=None, help="prompts per batch of our path "
                        "(default: the config's)")  # fmt: skip
    parser.add_argument("--sweep-slide-batch-size", action="store_true", help="also time the vision pass of "
                        "16 windows in batches of 1, 2, 4, 8 and 16 windows")  # fmt: skip
    parser.add_argument("--sweep-text-batch-size", action="store_true", help="also time the text classifier "
                        "of 16 names with 64, 128, 256 and 1024 prompts per batch")  # fmt: skip
    parser.add_argument("--no-kept-memory", action="store_true", help="skip PAMR and end to end with malloc "
                        "keeping freed memory")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--stages", default="text,image,bf16", help="comma-separated subset of text, image and "
                        "bf16 (default: all)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> Report:
    """Measure every stage; returns the report."""
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = {stage.strip() for stage in args.stages.split(",") if stage.strip()}
    unknown = stages - {"text", "image", "bf16"}
    if unknown:
        raise SystemExit(f"Unknown stages {sorted(unknown)}; choose from text, image, bf16.")
    setting = QUICK if args.quick else FULL
    names = class_names(args.names if args.names is not None else (4 if args.quick else 171))
    model = build_model(setting)
    if args.slide_batch_size:
        model.config.slide_batch_size = args.slide_batch_size
    if args.text_batch_size:
        model.config.text_batch_size = args.text_batch_size
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    processor = load_processor(setting.short_side)
    image = benchmark_image(setting.image_size)
    image_names = names[: setting.image_names] if len(names) >= setting.image_names else class_names(
        setting.image_names
    )
    report = Report(
        machine=machine_info(),
        settings={
            "model": "tiny CLIP (smoke test)" if args.quick else "CLIP ViT-B/16 shapes, random weights (seed 0)",
            "dtype": args.dtype,
            "text": f"{len(names)} COCO-Stuff names x {len(IMAGENET_TEMPLATES)} templates, "
            f"text_batch_size={model.config.text_batch_size}",
            "image": f"{setting.image_size[0]}x{setting.image_size[1]}, short side {setting.short_side}, "
            f"windows {setting.slide_crop}/{setting.slide_stride}, slide_batch_size={model.config.slide_batch_size}, "
            f"PAMR {model.config.pamr_steps} steps, dilations {model.config.pamr_dilations}, "
            f"{len(image_names)} names",
            "timing": f"best of {args.repeats} (ours and baseline alternating); memory: peak tensor bytes "
            "(torch.profiler)",
        },
    )
    # The matmul rate is sampled between stages; the best sample is the machine's rate.
    matmul_size, matmul_calls = (512, 5) if args.quick else (2048, 20)
    matmul_samples = [matmul_rate(matmul_size, matmul_calls)]
    # Image stages first, while the process's allocator is fresh (see "Allocator" in the module docstring).
    extra: dict[str, Any] = {}
    fp32_end_to_end: dict[str, Any] = {}
    if stages & {"image", "bf16"}:
        with torch.no_grad():
            classes = encode_classes(model, processor, image_names)
        pixel_values = processor.image_processor(image)["pixel_values"]
        rows, extra = vision_stages(model, pixel_values, classes.text_embeds, args.repeats)
        rows.append(pamr_stage(model, pixel_values, extra["logits"], image.shape[:2], args.repeats))
        row, fp32_end_to_end = end_to_end_stage(model, processor, image, classes, args.repeats)
        rows.append(row)
        if "image" in stages:
            report.rows += rows
        matmul_samples.append(matmul_rate(matmul_size, matmul_calls))
    if "bf16" in stages and args.dtype == "fp32":
        report.rows.append(bf16_stage(model, processor, image, image_names, fp32_end_to_end, args.repeats))
    if "text" in stages:
        with tempfile.TemporaryDirectory(prefix="naclip-text-cache-") as cache_dir:
            report.rows += text_stages(model, processor, names, args.baseline_text_names, 1, Path(cache_dir))
        matmul_samples.append(matmul_rate(matmul_size, matmul_calls))
    if args.sweep_text_batch_size:
        with torch.no_grad():
            report.text_sweep = sweep_text_batch_size(
                model, processor, class_names(4 if args.quick else 16), (64, 128, 256, 1024), args.repeats
            )
    if args.sweep_slide_batch_size:
        report.sweep = sweep_slide_batch_size(model, (1, 2, 4, 8, 16), 16, args.repeats)
        matmul_samples.append(matmul_rate(matmul_size, matmul_calls))
    # Last, as it cannot be undone: PAMR and end to end again with an allocator that keeps freed memory.
    if "image" in stages and not args.no_kept_memory and keep_freed_memory():
        note = "malloc keeps freed memory"
        report.rows.append(pamr_stage(model, pixel_values, extra["logits"], image.shape[:2], args.repeats,
                                      key="pamr_kept_memory", note=note))  # fmt: skip
        row, _ = end_to_end_stage(model, processor, image, classes, args.repeats, key="end_to_end_kept_memory",
                                  note=note)  # fmt: skip
        report.rows.append(row)
        matmul_samples.append(matmul_rate(matmul_size, matmul_calls))
    matmul = max(matmul_samples)
    for label in ("whole-image pass", "sliding windows") if "image" in stages else ():
        flops, seconds = extra[label]["flops"], extra[label]["seconds"]
        name = f"{label} ({extra['windows']} windows)" if label == "sliding windows" else label
        rate = flops / seconds
        report.efficiency.append(
            {"pass": name, "flops": flops, "seconds": seconds, "rate": rate, "matmul_rate": matmul,
             "fraction": rate / matmul}
        )  # fmt: skip
    report.settings["fp32 matmul samples (GFLOP/s)"] = ", ".join(f"{rate / 1e9:.1f}" for rate in matmul_samples)
    report.machine["load_average_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    if args.dtype == "fp32":
        evaluate_targets(report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(render(report, args.markdown))
    if args.json:
        payload = asdict(report)
        for row, data in zip(report.rows, payload["rows"]):
            data.update(speedup=row.speedup, memory_ratio=row.memory_ratio)
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
