"""Section `clipseg`: transformers' CLIPSeg next to ours, per image (the 375x500 test image), at 7 and 150 classes,
in fp32 and in bf16.

CLIPSeg as published: `CLIPSegForImageSegmentation` with the shapes of CIDAS/clipseg-rd64-refined (ViT-B/16
backbone: vision patch 16, where `CLIPSegConfig`'s default is 32; decoder width 64; the refined transposed
convolution), random weights from a fixed seed. Per image: its processor's steps (resize to 352x352, ImageNet
mean and std), then one backbone pass per prompt (CLIPSeg conditions its decoder on one prompt per image copy),
`CLIPSEG_BATCH` prompts per call, and its [prompts, 352, 352] logits resized bilinearly to the image size for
the argmax. Prompt embeddings come from CLIPSeg's own text tower beforehand, as ours are precomputed
(`encode_classes`), so neither time includes text.

Ours: `segment_image` with default settings. At 7 classes the times are the `precision` section's (measured
there if it has not run); at 150 classes the class embeddings use one template per name (the time of an image
does not depend on how the embeddings were made). Timing: CLIPSeg at 7 prompts and ours at 150 classes, best of
the run's repeats after a warm-up; CLIPSeg at 150 prompts, one call (after the 7-prompt warm-up). When this CPU
has no native bf16 matrix products (see the `precision` section), the bf16 runs at 150 classes and CLIPSeg's in
bf16 are skipped: they would take many minutes and be slower than fp32.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench import precision
from bench.common import Context, SectionResult, Table, Target, best_times, class_names, seconds
from naclip_hf.inference import encode_classes, segment_image

CLIPSEG_SIZE = 352
CLIPSEG_BATCH = 16
CLASS_COUNTS = (7, 150)
NACLIP_TO_CLIPSEG_TARGET = 1 / 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_clipseg(quick: bool, seed: int = 0) -> Any:
    """CLIPSeg with the published ViT-B/16 shapes (tiny ones with `quick`), random weights, fp32, eval."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    if quick:
        vision = {"patch_size": 16, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                  "num_attention_heads": 2}
        text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
        config = CLIPSegConfig(vision_config=vision, text_config=text, projection_dim=32, reduce_dim=16,
                               extract_layers=[1, 2, 3], use_complex_transposed_convolution=True)  # fmt: skip
    else:
        config = CLIPSegConfig(vision_config={"patch_size": 16}, reduce_dim=64, use_complex_transposed_convolution=True)
    torch.manual_seed(seed)
    return CLIPSegForImageSegmentation._from_config(config, attn_implementation="sdpa").eval()


def clipseg_pixels(image: np.ndarray, size: int) -> torch.Tensor:
    """CLIPSeg's processor steps: [1, 3, size, size] float32 (bilinear resize, rescale to [0, 1], ImageNet stats)."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    pixels = (resized - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()


def clipseg_segment(model: Any, image: np.ndarray, prompt_embeds: torch.Tensor, size: int) -> torch.Tensor:
    """Labels [H, W] of `image` for prompts of embeddings `prompt_embeds` [prompts, projection_dim]."""
    height, width = image.shape[:2]
    pixels = clipseg_pixels(image, size).to(model.dtype)
    logits = []
    with torch.no_grad():
        for first in range(0, len(prompt_embeds), CLIPSEG_BATCH):
            embeds = prompt_embeds[first : first + CLIPSEG_BATCH]
            batch = pixels.expand(len(embeds), -1, -1, -1)
            output = model(pixel_values=batch, conditional_embeddings=embeds)
            logits.append(output.logits.reshape(len(embeds), size, size))
        scores = torch.cat(logits)[None].float()
        scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
    return scores[0].argmax(dim=0)


def prompt_embeddings(model: Any, context: Context, count: int) -> torch.Tensor:
    """CLIPSeg's text embeddings [count, projection_dim] of the first `count` class names (fp32)."""
    encoded = context.processor.tokenizer(class_names(count), padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.get_conditional_embeddings(len(encoded["input_ids"]), encoded["input_ids"],
                                                encoded["attention_mask"])  # fmt: skip


def clipseg_times(context: Context, dtypes: list[str]) -> dict[tuple[str, int], float]:
    """CLIPSeg seconds per (dtype, prompts)."""
    fp32 = build_clipseg(context.quick)
    models = {name: build_clipseg(context.quick).to(precision.DTYPES[name]) if name != "fp32" else fp32
              for name in dtypes}  # fmt: skip
    embeds = {count: prompt_embeddings(fp32, context, count) for count in CLASS_COUNTS}
    times: dict[tuple[str, int], float] = {}
    size = 64 if context.quick else CLIPSEG_SIZE
    for count in CLASS_COUNTS:
        calls = {
            name: lambda model=model, count=count: clipseg_segment(
                model, context.image, embeds[count].to(model.dtype), size
            )
            for name, model in models.items()
        }  # fmt: skip
        if count == CLASS_COUNTS[0]:
            for call in calls.values():
                call()
            found = best_times(calls, context.repeats)
        else:
            found = best_times(calls, 1)
        times.update({(name, count): value for name, value in found.items()})
    return times


def naclip_times(context: Context, dtypes: list[str]) -> dict[tuple[str, int], float]:
    """Our seconds per (dtype, classes): 7 from the `precision` section, 150 measured here."""
    found = precision.measure(context)
    times = {key: value for key, value in found["per_image"].items() if key[1] == CLASS_COUNTS[0]}
    count = CLASS_COUNTS[1]
    with torch.no_grad():
        classes = encode_classes(context.model_in(torch.float32), context.processor, class_names(count),
                                 templates=["a photo of a {}."])  # fmt: skip
    calls = {}
    for name in dtypes:
        model = context.model_in(precision.DTYPES[name])
        calls[name] = lambda model=model: segment_image(model, context.processor, context.image, classes)
        calls[name]()
    times.update({(name, count): value for name, value in best_times(calls, context.repeats).items()})
    return times


def run(context: Context) -> SectionResult:
    start = time.perf_counter()
    fast_bf16 = precision.measure(context)["fast_bf16"]
    dtypes = ["fp32", "bf16"] if fast_bf16 else ["fp32"]
    ours = naclip_times(context, dtypes)
    theirs = clipseg_times(context, dtypes)
    skipped = "skipped: bf16 matmul slower than fp32 on this CPU"
    rows = []
    for count in CLASS_COUNTS:
        for name in precision.DTYPES:
            mine, other = ours.get((name, count)), theirs.get((name, count))
            cells = [skipped if value is None else seconds(value) for value in (mine, other)]
            speedup = "—" if mine is None or other is None else f"{other / mine:.1f}×"
            rows.append([str(count), name, *cells, speedup])
    table = Table(
        "Per image: ours vs CLIPSeg ViT-B/16 (352 px, one backbone pass per prompt)",
        ["Classes", "dtype", "naclip-hf (s)", "CLIPSeg ViT-B/16, 352 px (s)", "CLIPSeg / naclip-hf"],
        rows,
    )  # fmt: skip
    first = CLASS_COUNTS[0]
    best_clipseg = min(value for (name, count), value in theirs.items() if count == first)
    bf16 = ours.get(("bf16", first))
    targets = [
        Target(f"naclip-hf bf16 / CLIPSeg best dtype, {first} classes", None if bf16 is None else bf16 / best_clipseg,
               NACLIP_TO_CLIPSEG_TARGET, "<="),
    ]  # fmt: skip
    settings = {"clipseg": f"{CLIPSEG_BATCH} prompts per call; section {time.perf_counter() - start:.0f} s"}
    return SectionResult(tables=[table], targets=targets, settings=settings)
