"""Section `precision`: ours per image in float32 and in bfloat16, end to end (the 375x500 test image, 7 and 13
names, default settings: windows 224/112, PAMR 10 steps); where the time goes, stage by stage; the vision tower's
FLOP rate against the bf16 matmul rate measured in this run; and how many bf16 labels equal fp32's.

Class embeddings are computed once, by the fp32 model, and given to both dtypes (the model casts them): the
comparison is of the image path, as when a label set embedded once segments many images.

The matmul rates are of `torch.mm` on two 2048x2048 matrices, best of 20 (`common.matmul_rate`). A CPU without
native bf16 matrix products (no AVX512-BF16 or AMX) runs bf16 ones on a slow fallback, many times slower than fp32:
when the bf16 rate measured here is below the fp32 rate, bf16 end to end is timed once at 7 names and the other
bf16 measurements are skipped (the tables say so), since they would take many minutes and show nothing new.

Stages (`stage_times`): resize and normalise (`image_processor(image)`); the vision tower (`encode_patches` on the
stacked sliding windows, in `slide_batch_size` batches); the window head (the model's forward minus the tower:
cutting the windows, projection, similarity at patch resolution, upsampling to the windows, accumulation);
post-processing without PAMR (upsampling to the original size, softmax, labels) and PAMR (post-processing with
minus without); the rest of `segment_image` (casts and copies of inputs and outputs). Stages are differences of
calls timed separately: on a busy machine a small one can come out negative. The tower's own time is also split by
operator (`torch.profiler`, one call), for each dtype measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from bench.common import (
    Context,
    SectionResult,
    Table,
    Target,
    best_times,
    class_names,
    count_flops,
    cpu_profile,
    matmul_rate,
    seconds,
)
from naclip_hf.inference import encode_classes, segment_image
from naclip_hf.models.naclip.image_utils import sliding_windows, window_tokens
from naclip_hf.models.naclip.options import window_batch_size

NAME_COUNTS = (7, 13)
BF16_TO_FP32_TARGET = 0.4
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STAGES = (
    ("preprocess", "resize and normalise"),
    ("tower", "vision tower (sliding windows)"),
    ("head", "window head: projection, similarity, upsampling to windows, accumulation"),
    ("post", "post-processing without PAMR: upsampling to the image, softmax, labels"),
    ("pamr", "PAMR"),
    ("rest", "rest of segment_image: casts and copies"),
)


def matmul_rates(context: Context) -> dict[str, float]:
    """fp32 and bf16 matmul FLOP/s of this run (fp32: the best sample so far, plus one now). The bf16 rate is probed
    on small matrices first: on a CPU without native bf16 products a 2048x2048 product takes minutes."""
    context.sample_matmul_rate()
    size, calls = (512, 5) if context.quick else (2048, 20)
    rates = {"fp32": max(context.matmul_samples)}
    probe = matmul_rate(256, 3, torch.bfloat16)
    rates["bf16"] = matmul_rate(size, calls, torch.bfloat16) if probe > rates["fp32"] / 8 else probe
    context.shared["matmul_rates"] = rates
    return rates


def tower_call(model: Any, pixel_values: torch.Tensor) -> Callable[[], Any]:
    """The vision tower on the sliding windows of `pixel_values` [1, 3, H, W], as the forward batches them."""
    config = model.config
    boxes = sliding_windows(*pixel_values.shape[-2:], config.slide_crop, config.slide_stride)
    windows = torch.stack([pixel_values[0, :, a:b, c:d] for a, b, c, d in boxes])
    tokens = window_tokens(*pixel_values.shape[-2:], config.slide_crop, config.vision_config.patch_size)
    step = window_batch_size(config.slide_batch_size, tokens, windows.element_size(), windows.device.type == "cpu")

    def tower() -> list[torch.Tensor]:
        with torch.no_grad():
            return [model.encode_patches(windows[i : i + step]).last_hidden_state for i in range(0, len(windows), step)]

    return tower


def stage_calls(model: Any, context: Context, classes: Any) -> dict[str, Callable[[], Any]]:
    """One call per measured piece of `segment_image` (see the module docstring)."""
    image_processor, image = context.processor.image_processor, context.image
    inputs = image_processor(image)
    pixel_values = inputs["pixel_values"].to(model.dtype)
    text_embeds = classes.text_embeds
    post_options = model.config.inference_options().of_stage("post")
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, text_embeds=text_embeds).logits

    def post(steps: int) -> Callable[[], Any]:
        return lambda: image_processor.post_process_semantic_segmentation(
            logits, target_sizes=inputs.original_sizes, pixel_values=pixel_values, name_to_class=classes.name_to_class,
            return_probabilities=True, return_class_scores=True, **{**post_options, "pamr_steps": steps},
        )  # fmt: skip

    def forward() -> Any:
        with torch.no_grad():
            return model(pixel_values=pixel_values, text_embeds=text_embeds)

    return {
        "end_to_end": lambda: segment_image(model, context.processor, image, classes),
        "preprocess": lambda: image_processor(image),
        "tower": tower_call(model, pixel_values),
        "forward": forward,
        "post": post(0),
        "post_pamr": post(post_options["pamr_steps"]),
    }


def tower_operators(model: Any, context: Context, top: int = 8) -> list[tuple[str, float]]:
    """The vision tower's `top` operators by self CPU time in one call, (name, seconds), then the rest."""
    tower = tower_call(model, context.processor.image_processor(context.image)["pixel_values"].to(model.dtype))
    tower()
    with cpu_profile() as profiler:
        tower()
    totals = sorted(((event.key, event.self_cpu_time_total / 1e6) for event in profiler.key_averages()),
                    key=lambda item: -item[1])  # fmt: skip
    return [*totals[:top], ("other operators", sum(value for _, value in totals[top:]))]


def stage_times(model: Any, context: Context, classes: Any) -> dict[str, float]:
    """Seconds of each stage of `STAGES` and of `end_to_end` (best of the run's repeats after a warm-up)."""
    calls = stage_calls(model, context, classes)
    for call in calls.values():
        call()
    times = best_times(calls, context.repeats)
    stages = {
        "end_to_end": times["end_to_end"],
        "preprocess": times["preprocess"],
        "tower": times["tower"],
        "head": times["forward"] - times["tower"],
        "post": times["post"],
        "pamr": times["post_pamr"] - times["post"],
    }
    stages["rest"] = times["end_to_end"] - times["preprocess"] - times["forward"] - times["post_pamr"]
    return stages


def end_to_end(
    context: Context, classes: Any, dtypes: list[str], repeats: int
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """`segment_image` per dtype: (seconds, labels). Seconds are the best of `repeats` calls after a warm-up call
    (dtypes alternating), or with `repeats=0` the warm-up call's own."""
    calls: dict[str, Callable[[], Any]] = {}
    labels: dict[str, torch.Tensor] = {}
    first: dict[str, float] = {}
    for name in dtypes:
        model = context.model_in(DTYPES[name])
        calls[name] = lambda model=model: segment_image(model, context.processor, context.image, classes)
        start = time.perf_counter()
        labels[name] = calls[name]().segmentation
        first[name] = time.perf_counter() - start
    return (best_times(calls, repeats) if repeats else first), labels


def measure(context: Context) -> dict[str, Any]:
    """Every measurement of the section (also what the `clipseg` section reuses, from `context.shared`)."""
    if "precision" in context.shared:
        return context.shared["precision"]
    rates = matmul_rates(context)
    fast_bf16 = rates["bf16"] > rates["fp32"]
    fp32_model = context.model_in(torch.float32)
    with torch.no_grad():
        classes = {count: encode_classes(fp32_model, context.processor, class_names(count)) for count in NAME_COUNTS}
    per_image: dict[tuple[str, int], float] = {}
    agreement: dict[int, float] = {}
    for count in NAME_COUNTS:
        times, labels = end_to_end(context, classes[count], ["fp32", "bf16"] if fast_bf16 else ["fp32"],
                                   context.repeats)  # fmt: skip
        if not fast_bf16 and count == NAME_COUNTS[0]:
            once, once_labels = end_to_end(context, classes[count], ["bf16"], 0)
            times.update(once)
            labels.update(once_labels)
        per_image.update({(name, count): value for name, value in times.items()})
        if "bf16" in labels:
            agreement[count] = (labels["bf16"] == labels["fp32"]).float().mean().item()
    first = classes[NAME_COUNTS[0]]
    stages = {"fp32": stage_times(fp32_model, context, first)}
    if fast_bf16:
        stages["bf16"] = stage_times(context.model_in(torch.bfloat16), context, first)
    pixel_values = context.processor.image_processor(context.image)["pixel_values"]
    tower_flops = count_flops(tower_call(fp32_model, pixel_values))
    operators = {name: tower_operators(context.model_in(DTYPES[name]), context) for name in stages}
    context.shared["precision"] = {
        "rates": rates, "fast_bf16": fast_bf16, "per_image": per_image, "agreement": agreement, "stages": stages,
        "tower_flops": tower_flops, "operators": operators,
    }  # fmt: skip
    return context.shared["precision"]


def run(context: Context) -> SectionResult:
    found = measure(context)
    rates, per_image, stages = found["rates"], found["per_image"], found["stages"]
    skipped = "skipped: bf16 matmul slower than fp32 on this CPU"
    rows = []
    for count in NAME_COUNTS:
        fp32, bf16 = per_image[("fp32", count)], per_image.get(("bf16", count))
        rows.append([
            str(count), seconds(fp32), skipped if bf16 is None else seconds(bf16),
            "—" if bf16 is None else f"{bf16 / fp32:.2f}",
            f"{found['agreement'][count]:.2%}" if count in found["agreement"] else "—",
        ])  # fmt: skip
    size = "x".join(map(str, context.image.shape[:2]))
    once = "" if found["fast_bf16"] else ", one call"
    e2e = Table(f"Per image, end to end ({size} image){once}",
                ["Names (end to end)", "fp32 (s)", f"bf16 (s){once}", "bf16 / fp32", "bf16 labels equal to fp32"],
                rows)  # fmt: skip
    total = {name: times["end_to_end"] for name, times in stages.items()}
    breakdown = Table(
        f"Where the time goes ({NAME_COUNTS[0]} names, best of {context.repeats})",
        [f"Stage ({NAME_COUNTS[0]} names)", *[f"{name} (s)" for name in stages], *[f"{name} share" for name in stages]],
        [[label, *[seconds(times[key]) for times in stages.values()],
          *[f"{times[key] / total[name]:.1%}" for name, times in stages.items()]] for key, label in STAGES]
        + [["end to end", *[seconds(value) for value in total.values()], *["100%" for _ in total]]],
    )  # fmt: skip
    flops = found["tower_flops"]
    tower_rows = []
    for name, times in stages.items():
        rate = rates[name]
        achieved = flops / times["tower"]
        tower_rows.append([
            name, f"{flops / 1e9:.1f}", f"{rate / 1e9:.1f}", seconds(flops / rate), seconds(times["tower"]),
            f"{achieved / 1e9:.1f}", f"{achieved / rate:.0%}", f"{flops / times['end_to_end'] / rate:.0%}",
        ])  # fmt: skip
    if "bf16" not in stages:
        tower_rows.append(["bf16", f"{flops / 1e9:.1f}", f"{rates['bf16'] / 1e9:.1f}", seconds(flops / rates["bf16"]),
                           skipped, "—", "—", "—"])  # fmt: skip
    tower = Table(
        "Vision tower against the matmul rate of its dtype (this run)",
        ["Vision tower", "GFLOP", "matmul GFLOP/s", "Limit (s)", "Tower (s)", "Tower GFLOP/s", "Share of the limit",
         "End to end share"],
        tower_rows,
    )  # fmt: skip
    profiles = [
        Table(f"Vision tower by operator, {name} (torch.profiler, one call)",
              [f"Operator ({name} tower, one call)", "Self CPU (s)", "Share"],
              [[key, f"{value:.3f}", f"{value / sum(v for _, v in rows_):.1%}"] for key, value in rows_])
        for name, rows_ in found["operators"].items()
    ]  # fmt: skip
    first = NAME_COUNTS[0]
    bf16 = per_image.get(("bf16", first))
    ratio_ = None if bf16 is None else bf16 / per_image[("fp32", first)]
    targets = [Target(f"bf16 / fp32 end to end, {first} names", ratio_, BF16_TO_FP32_TARGET, "<=")]
    settings = {
        "precision": f"matmul GFLOP/s fp32 {rates['fp32'] / 1e9:.1f}, bf16 {rates['bf16'] / 1e9:.1f}"
        + ("" if found["fast_bf16"] else " (no native bf16 matrix products: bf16 timed once, at "
           f"{first} names)"),
    }  # fmt: skip
    return SectionResult(tables=[e2e, breakdown, tower, *profiles], targets=targets, settings=settings)
