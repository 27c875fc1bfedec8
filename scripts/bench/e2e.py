"""Sections `e2e` and `bf16`: `segment_image` (resize and normalise, sliding windows, upsampling, PAMR, softmax,
labels; class embeddings precomputed, as when one label set segments many images), ours next to
`baselines.baseline_segment_image`; and ours with the whole model in bfloat16 against ours in fp32."""

from __future__ import annotations

from typing import Any

import torch

from baselines import baseline_segment_image
from bench.common import Context, Row, SectionResult, Target, best_times, peak_tensor_bytes, timed
from naclip_hf.inference import encode_classes, segment_image

SPEEDUP_TARGET = 3.0


def measure(context: Context, key: str = "end_to_end", note: str = "") -> Row:
    """One end-to-end row (also used by the `kept_memory` section); leaves our time, peak and labels in
    `context.shared["end_to_end"]`."""
    model, baseline, processor, image = context.model, context.baseline_model, context.processor, context.image
    classes = context.image_classes

    def ours() -> Any:
        return segment_image(model, processor, image, classes)

    def theirs() -> Any:
        return baseline_segment_image(baseline, processor, image, classes.text_embeds, classes.name_to_class)

    ours_peak, ours_result = peak_tensor_bytes(ours)
    baseline_peak, baseline_result = peak_tensor_bytes(theirs)
    times = best_times({"ours": ours, "baseline": theirs}, context.repeats)
    agreement = (ours_result.segmentation == baseline_result.segmentation).float().mean().item()
    difference = (ours_result.probabilities - baseline_result.probabilities).abs().max().item()
    stage = f"end to end ({image.shape[0]}x{image.shape[1]} image, {len(classes.text_embeds)} names)"
    stage += f", {note}" if note else ""
    outputs = f"labels equal {agreement:.2%}, probabilities max abs diff {difference:.1e}"
    context.shared.setdefault(
        "end_to_end", {"seconds": times["ours"], "peak": ours_peak, "segmentation": ours_result.segmentation}
    )
    return Row(key, stage, times["ours"], ours_peak, "baseline", times["baseline"], baseline_peak, outputs)


def run(context: Context) -> SectionResult:
    row = measure(context)
    return SectionResult(rows=[row], targets=[Target("end to end vs baseline", row.speedup, SPEEDUP_TARGET)])


def run_bf16(context: Context) -> SectionResult:
    """End to end with a bfloat16 copy of the model, against ours in fp32; labels compared with fp32's."""
    if context.model.dtype != torch.float32:
        return SectionResult()
    fp32 = context.shared.get("end_to_end")
    if fp32 is None:
        measure(context)
        fp32 = context.shared["end_to_end"]
    from bench.common import build_model

    half = build_model(context.setting).to(torch.bfloat16)
    processor, image = context.processor, context.image
    with torch.no_grad():
        classes = encode_classes(half, processor, context.image_names)

    def ours() -> Any:
        return segment_image(half, processor, image, classes)

    peak, result = peak_tensor_bytes(ours)
    seconds = min(timed(ours) for _ in range(context.repeats))
    agreement = (result.segmentation == fp32["segmentation"]).float().mean().item()
    row = Row(
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
    return SectionResult(rows=[row])
