"""Section `vision`: the whole-image pass and the sliding windows, ours (SDPA, `slide_batch_size` windows per call)
next to the baseline (eager attention, one window per call); FLOP/s against the machine's matmul rate."""

from __future__ import annotations

from typing import Any

import torch

from baselines import baseline_logits
from bench.common import (
    Context,
    Row,
    SectionResult,
    Table,
    Target,
    best_times,
    count_flops,
    peak_tensor_bytes,
    seconds,
)
from naclip_hf.models.naclip.modeling_naclip import sliding_windows

MATMUL_FRACTION_TARGET = 0.60


def run(context: Context) -> SectionResult:
    model, baseline = context.model, context.baseline_model
    pixel_values, text_embeds = context.pixel_values, context.image_classes.text_embeds
    crop, stride = model.config.slide_crop, model.config.slide_stride
    windows = len(sliding_windows(*pixel_values.shape[-2:], crop, stride))
    shape = "x".join(map(str, pixel_values.shape[-2:]))
    rows: list[Row] = []
    passes: list[dict[str, Any]] = []
    for key, label, slide_crop in (("whole", "whole-image pass", 0), ("sliding", "sliding windows", crop)):

        def ours(slide_crop: int = slide_crop) -> torch.Tensor:
            with torch.no_grad():
                return model(pixel_values=pixel_values, text_embeds=text_embeds, slide_crop=slide_crop).logits

        def theirs(slide_crop: int = slide_crop) -> torch.Tensor:
            return baseline_logits(baseline, pixel_values, text_embeds, slide_crop=slide_crop)

        ours_peak, ours_logits = peak_tensor_bytes(ours)
        baseline_peak, baseline_logits_ = peak_tensor_bytes(theirs)
        times = best_times({"ours": ours, "baseline": theirs}, context.repeats)
        difference = (ours_logits - baseline_logits_).abs().max().item()
        stage = f"{label} ({shape}" + (f", {windows} windows)" if slide_crop else ")")
        outputs = f"max abs diff {difference:.1e}"
        rows.append(Row(key, stage, times["ours"], ours_peak, "baseline", times["baseline"], baseline_peak, outputs))
        name = f"{label} ({windows} windows)" if slide_crop else label
        passes.append({"pass": name, "flops": count_flops(ours), "seconds": times["ours"]})
        if slide_crop:
            context.shared["sliding_logits"] = ours_logits

    def finish(context: Context) -> SectionResult:
        rate = max(context.matmul_samples)
        table = Table(
            "Vision pass efficiency",
            ["Vision pass", "GFLOP", "Time (s)", "GFLOP/s", "fp32 matmul GFLOP/s", "Fraction"],
            [
                [p["pass"], f"{p['flops'] / 1e9:.1f}", seconds(p["seconds"]), f"{p['flops'] / p['seconds'] / 1e9:.1f}",
                 f"{rate / 1e9:.1f}", f"{p['flops'] / p['seconds'] / rate:.0%}"]
                for p in passes
            ],
        )  # fmt: skip
        sliding = passes[-1]
        target = Target(
            "sliding-window pass FLOP/s / matmul FLOP/s", sliding["flops"] / sliding["seconds"] / rate,
            MATMUL_FRACTION_TARGET,
        )  # fmt: skip
        return SectionResult(tables=[table], targets=[target])

    return SectionResult(rows=rows, finish=finish)
