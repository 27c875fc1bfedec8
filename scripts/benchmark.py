"""Speed and memory of naclip-hf's default execution paths next to a baseline that makes the official code's choices.

    python scripts/benchmark.py                 # ViT-B/16, 171 names, fp32; about 5 minutes on 2 cores
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

Compute efficiency: FLOPs of one vision pass counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls,
convolutions, attention; 2 FLOPs per multiply-add), divided by its best time, against the machine's fp32 matmul
rate: the best of 20 `torch.mm` of two 2048x2048 matrices on the same threads, measured at the start and at the end
of the run (the higher is used).
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
    projection_dim=32, image_size=(94, 125), short_side=112, slide_crop=64, slide_stride=32, image_names=4,
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


def test_image(size: tuple[int, int]) -> np.ndarray:
    """The golden fixture's 375x500 RGB test image (uint8), resized to `size` if that differs."""
    from PIL import Image
    from safetensors.torch import load_file

    image = load_file(str(GOLDEN_DIR / "golden.safetensors"))["img_c/raw"].numpy()
    if image.shape[:2] != tuple(size):
        image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
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


def image_stages(
    model: NACLIPForSemanticSegmentation,
    processor: NACLIPProcessor,
    image: np.ndarray,
    classes: ClassEmbeddings,
    repeats: int,
) -> tuple[list[Row], dict[str, Any]]:
    """Whole-image pass, sliding windows, PAMR and end to end, ours next to the baseline. Also returns what the
    efficiency section and the bf16 check need."""
    inputs = processor.image_processor(image)
    pixel_values = inputs["pixel_values"]
    height, width = image.shape[:2]
    text_embeds = classes.text_embeds
    rows: list[Row] = []
    extra: dict[str, Any] = {"windows": len(modeling_naclip.sliding_windows(
        *pixel_values.shape[-2:], model.config.slide_crop, model.config.slide_stride))}  # fmt: skip

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
        stage = f"{label} ({shape}" + (f", {extra['windows']} windows)" if slide_crop else ")")
        rows.append(Row(key, stage, times["ours"], ours_peak, "baseline", times["baseline"], baseline_peak,
                        f"max abs diff {difference:.1e}"))  # fmt: skip
        extra[label] = {"flops": flops, "seconds": times["ours"]}
        if slide_crop:
            extra["logits"] = ours

    # PAMR on what post-processing feeds it: logits and guide image upsampled to the original size.
    config = model.config
    scores = F.interpolate(extra["logits"].float(), size=(height, width), mode="bilinear", align_corners=False)
    guide = F.interpolate(pixel_values.float(), size=(height, width), mode="bilinear", align_corners=False)

    def refine() -> torch.Tensor:
        return pamr(guide, scores, config.pamr_steps, config.pamr_dilations)

    def refine_reference() -> torch.Tensor:
        return pamr_reference(guide, scores, config.pamr_steps, config.pamr_dilations)

    ours_peak, ours = peak_tensor_bytes(refine)
    baseline_peak, baseline = peak_tensor_bytes(refine_reference)
    times = best_times({"ours": refine, "baseline": refine_reference}, repeats)
    difference = (ours - baseline).abs().max().item()
    stage = f"PAMR ({height}x{width}, {scores.shape[1]} names, {config.pamr_steps} steps)"
    outputs = f"max abs diff {difference:.1e}"
    rows.append(Row("pamr", stage, times["ours"], ours_peak, "baseline", times["baseline"], baseline_peak, outputs))

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
    stage = f"end to end ({height}x{width} image, {len(classes.text_embeds)} names)"
    outputs = f"labels equal {agreement:.2%}, probabilities max abs diff {difference:.1e}"
    rows.append(
        Row("end_to_end", stage, times["ours"], ours_peak, "baseline", times["baseline"], baseline_peak, outputs)
    )
    extra["end_to_end"] = {"seconds": times["ours"], "segmentation": ours.segmentation}
    return rows, extra


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
    return Row("bf16", "end to end, bf16 model", seconds, peak, "ours, fp32", fp32["seconds"], None,
               f"labels equal to fp32: {agreement:.2%}", "random weights: label margins are tiny, see the tests "
               "for the golden cases")  # fmt: skip


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
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--stages", default="text,image,bf16", help="comma-separated subset of text, image and "
                        "bf16 (default: all)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> Report:
    """Measure every stage; returns the report."""
    if args.threads:
        torch.set_num_threads(args.threads)
    setting = QUICK if args.quick else FULL
    names = class_names(args.names if args.names is not None else (4 if args.quick else 171))
    model = build_model(setting)
    if args.slide_batch_size:
        model.config.slide_batch_size = args.slide_batch_size
    if args.text_batch_size:
        model.config.text_batch_size = args.text_batch_size
    processor = load_processor(setting.short_side)
    image = test_image(setting.image_size)
    matmul_start = matmul_rate(calls=5 if args.quick else 20)
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
            f"{setting.image_names} names",
            "timing": f"best of {args.repeats} (ours and baseline alternating); memory: peak tensor bytes "
            "(torch.profiler)",
        },
    )
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    stages = {stage.strip() for stage in args.stages.split(",") if stage.strip()}
    unknown = stages - {"text", "image", "bf16"}
    if unknown:
        raise SystemExit(f"Unknown stages {sorted(unknown)}; choose from text, image, bf16.")
    if "text" in stages:
        with tempfile.TemporaryDirectory(prefix="naclip-text-cache-") as cache_dir:
            report.rows += text_stages(model, processor, names, args.baseline_text_names, 1, Path(cache_dir))
    extra: dict[str, Any] = {}
    if stages & {"image", "bf16"}:
        with torch.no_grad():
            classes = encode_classes(model, processor, names[: setting.image_names])
        image_rows, extra = image_stages(model, processor, image, classes, args.repeats)
        if "image" in stages:
            report.rows += image_rows
    if "bf16" in stages and args.dtype == "fp32":
        fp32 = extra["end_to_end"]
        report.rows.append(bf16_stage(model, processor, image, names[: setting.image_names], fp32, args.repeats))
    matmul = max(matmul_start, matmul_rate(calls=5 if args.quick else 20))
    for label in ("whole-image pass", "sliding windows") if "image" in stages else ():
        flops, seconds = extra[label]["flops"], extra[label]["seconds"]
        rate = flops / seconds
        report.efficiency.append({"pass": f"{label} ({extra['windows']} windows)" if label.startswith("sliding")
                                  else label, "flops": flops, "seconds": seconds, "rate": rate,
                                  "matmul_rate": matmul, "fraction": rate / matmul})  # fmt: skip
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
