"""Section `pamr`: PAMR on what post-processing feeds it (the sliding-window logits and the guide image upsampled
to the original size), ours next to the reference formulation (`baselines.pamr_reference`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from baselines import pamr_reference
from bench.common import Context, Row, SectionResult, Target, best_times, peak_tensor_bytes
from naclip_hf.models.naclip.postprocessing_naclip import pamr

SPEEDUP_TARGET = 5.0
MEMORY_RATIO_TARGET = 0.25


def measure(context: Context, key: str = "pamr", note: str = "") -> Row:
    """One PAMR row (also used by the `kept_memory` section)."""
    logits = context.shared.get("sliding_logits")
    if logits is None:
        logits = context.sliding_logits
    size = context.image.shape[:2]
    steps, dilations = context.model.config.pamr_steps, context.model.config.pamr_dilations
    scores = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    guide = F.interpolate(context.pixel_values.float(), size=size, mode="bilinear", align_corners=False)

    def ours() -> torch.Tensor:
        return pamr(guide, scores, steps, dilations)

    def theirs() -> torch.Tensor:
        return pamr_reference(guide, scores, steps, dilations)

    ours_peak, ours_scores = peak_tensor_bytes(ours)
    baseline_peak, baseline_scores = peak_tensor_bytes(theirs)
    times = best_times({"ours": ours, "baseline": theirs}, context.repeats)
    difference = (ours_scores - baseline_scores).abs().max().item()
    stage = f"PAMR ({size[0]}x{size[1]}, {scores.shape[1]} names, {steps} steps)" + (f", {note}" if note else "")
    outputs = f"max abs diff {difference:.1e}"
    return Row(key, stage, times["ours"], ours_peak, "baseline", times["baseline"], baseline_peak, outputs)


def run(context: Context) -> SectionResult:
    row = measure(context)
    return SectionResult(
        rows=[row],
        targets=[
            Target("PAMR time vs baseline", row.speedup, SPEEDUP_TARGET),
            Target("PAMR peak memory / baseline", row.memory_ratio, MEMORY_RATIO_TARGET, "<="),
        ],
    )
