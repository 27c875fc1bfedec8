"""The official NACLIP code's execution choices, rebuilt from naclip-hf's pieces, to measure and check against.

Nothing here is used by the package: the benchmark (`scripts/benchmark.py`) times our default paths next to these,
and `tests/test_performance_paths.py` checks that both compute the same function. The library is never patched:
the baseline runs a model that shares our model's weights but has its own config (eager attention), and does its
own post-processing with the reference PAMR.

- Text: one text-tower call per name, its prompts padded to 77 tokens (causal mask only): `embed_names_one_by_one`.
- Vision: eager attention, one sliding window per call: `eager_twin` + `baseline_logits`.
- PAMR: `pamr_reference`, which materialises every shifted copy of the scores at once.
- End to end: `baseline_segment_image`; as a command, like the official demo (no label-embedding cache):

    python scripts/baselines.py segment IMAGE --model DIR --labels-file FILE --out DIR
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
try:
    import naclip_hf  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO / "src"))

from naclip_hf.models.naclip.image_utils import NEIGHBOUR_OFFSETS, WINDOW_OFFSETS  # noqa: E402
from naclip_hf.models.naclip.postprocessing_naclip import post_process_image  # noqa: E402
from naclip_hf.models.naclip.templates import IMAGENET_TEMPLATES  # noqa: E402

OFFICIAL_CONTEXT_LENGTH = 77


def pamr_reference(
    image: torch.Tensor, scores: torch.Tensor, num_iter: int, dilations: Sequence[int]
) -> torch.Tensor:
    """PAMR as the reference implementation computes it: every shifted copy of the scores for every dilation is
    materialised at once ([B, C, 8·len(dilations), H, W]) in each iteration.

    Args:
        image: guide image [B, K, H, W]; scores: [B, C, h, w] (resized to H × W first).
    Returns:
        refined scores [B, C, H, W].
    """
    if num_iter <= 0:
        return scores
    scores = F.interpolate(scores, size=image.shape[-2:], mode="bilinear", align_corners=True)
    height, width = image.shape[-2:]

    def neighbourhood(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        b, k = x.shape[:2]
        flat = x.reshape(b * k, 1, height, width)
        out = torch.cat(
            [F.conv2d(F.pad(flat, [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations], dim=1
        )
        return out.view(b, k, -1, height, width)

    def kernel_from(offsets, centre: float, neighbour: float) -> torch.Tensor:
        kernel = torch.zeros(len(offsets), 1, 3, 3, dtype=image.dtype, device=image.device)
        for i, (dy, dx) in enumerate(offsets):
            kernel[i, 0, 1, 1] += centre
            kernel[i, 0, 1 + dy, 1 + dx] += neighbour
        return kernel

    spread = neighbourhood(image, kernel_from(WINDOW_OFFSETS, 0.0, 1.0)).std(dim=2, keepdim=True)
    diff = neighbourhood(image, kernel_from(NEIGHBOUR_OFFSETS, 1.0, -1.0)).abs()
    affinity = (-diff / (1e-8 + 0.1 * spread)).mean(dim=1, keepdim=True).softmax(dim=2)
    copy_kernel = kernel_from(NEIGHBOUR_OFFSETS, 0.0, 1.0).to(scores.dtype)
    for _ in range(num_iter):
        scores = (neighbourhood(scores, copy_kernel) * affinity).sum(dim=2)
    return scores


def eager_twin(model: Any) -> Any:
    """A model of `model`'s class sharing its weights (no copy) with its own config set to eager attention."""
    config = copy.deepcopy(model.config)  # `_from_config` would set the attention on the model's own config
    with torch.device("meta"):
        twin = type(model)._from_config(config, attn_implementation="eager")
    twin.load_state_dict(model.state_dict(keep_vars=True), assign=True, strict=True)
    for name, buffer in model.named_buffers():  # non-persistent buffers are not in the state dict
        owner, _, leaf = name.rpartition(".")
        module = twin.get_submodule(owner)
        module.register_buffer(leaf, buffer, persistent=leaf in module.state_dict(keep_vars=True))
    twin.config.name_or_path = model.config.name_or_path
    return twin.eval()


@torch.no_grad()
def embed_names_one_by_one(
    model: Any, tokenizer: Any, names: Sequence[str], templates: Sequence[str] = IMAGENET_TEMPLATES
) -> torch.Tensor:
    """The official text classifier: per name, its prompts padded to 77 tokens in one text-tower call (causal mask
    only, no padding mask), each prompt embedding L2-normalised, averaged, normalised again. Returns [names, D]."""
    rows = []
    for name in names:
        tokens = tokenizer(
            [template.format(name) for template in templates],
            padding="max_length",
            max_length=OFFICIAL_CONTEXT_LENGTH,
            truncation=True,
            return_tensors="pt",
        )
        features = F.normalize(model.get_text_features(tokens["input_ids"].to(model.device)), dim=-1)
        rows.append(F.normalize(features.mean(dim=0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def baseline_logits(model: Any, pixel_values: torch.Tensor, text_embeds: torch.Tensor, **options: Any) -> torch.Tensor:
    """The vision pass one sliding window per call (`model` should be an `eager_twin`): logits [B, names, H, W]."""
    return model(pixel_values=pixel_values, text_embeds=text_embeds, slide_batch_size=1, **options).logits


def baseline_post_process(
    logits: torch.Tensor,
    pixel_values: torch.Tensor,
    size: tuple[int, int],
    name_to_class: torch.Tensor,
    logit_scale: float,
    prob_thd: float,
    pamr_steps: int,
    pamr_dilations: Sequence[int],
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-processing with the reference PAMR: (probabilities [B, classes, H, W], labels [B, H, W]).

    The logits and the guide are upsampled and refined here; the library's `post_process_image` (PAMR off) then
    does the softmax, synonyms and thresholds (its resize to the same size is the identity). `options`: the other
    post-processing options, passed on to it."""
    logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    if pamr_steps > 0:
        guide = F.interpolate(pixel_values.float(), size=size, mode="bilinear", align_corners=False)
        logits = pamr_reference(guide, logits, pamr_steps, pamr_dilations)
    results = [post_process_image(logits[image : image + 1], None, size, name_to_class, logit_scale, prob_thd, 0,
                                  pamr_dilations, return_probabilities=True, **options)
               for image in range(len(logits))]  # fmt: skip
    return torch.stack([r.probabilities for r in results]), torch.stack([r.segmentation for r in results])


@torch.no_grad()
def baseline_segment_image(
    model: Any, processor: Any, image: Any, text_embeds: torch.Tensor, name_to_class: torch.Tensor, **options: Any
) -> Any:
    """`naclip_hf.inference.segment_image` made the official way (`model` should be an `eager_twin`)."""
    from naclip_hf.inference import SegmentationResult

    resolved = model.config.inference_options(**options)
    forward_options, post_options = resolved.of_stage("block", "windows"), resolved.of_stage("post")
    forward_options.pop("slide_batch_size")
    inputs = processor.image_processor(image)
    pixel_values = inputs["pixel_values"].to(model.device, model.dtype)
    logits = baseline_logits(model, pixel_values, text_embeds.to(model.device), **forward_options)
    size = tuple(int(v) for v in inputs.original_sizes[0])
    probabilities, segmentation = baseline_post_process(logits, pixel_values, size, name_to_class, **post_options)
    return SegmentationResult(logits[0].float().cpu(), probabilities[0].cpu(), segmentation[0].cpu())


def main(argv: Sequence[str] | None = None) -> int:
    """`segment`: one image with the official execution choices, written as a label-map PNG."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    segment = commands.add_parser("segment", help="segment one image the official way")
    segment.add_argument("image", type=Path)
    segment.add_argument("--model", type=Path, required=True, help="checkpoint folder")
    segment.add_argument("--labels-file", type=Path, required=True, help="one class per line, synonyms after ', '")
    segment.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)

    import numpy as np
    from PIL import Image

    from naclip_hf import NACLIPForSemanticSegmentation
    from naclip_hf.inference import load_processor
    from naclip_hf.label_files import read_labels_file
    from naclip_hf.models.naclip.labels import flatten_class_names

    model = NACLIPForSemanticSegmentation.from_pretrained(str(args.model), attn_implementation="eager").eval()
    processor = load_processor(args.model)
    names, name_to_class = flatten_class_names(read_labels_file(args.labels_file))
    text_embeds = embed_names_one_by_one(model, processor.tokenizer, names)
    result = baseline_segment_image(
        model, processor, str(args.image), text_embeds, torch.tensor(name_to_class, dtype=torch.long)
    )
    args.out.mkdir(parents=True, exist_ok=True)
    labels = result.segmentation.numpy().astype(np.uint8)
    Image.fromarray(labels, mode="P").save(args.out / f"{args.image.stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
