"""Print how closely naclip-hf reproduces the official NACLIP outputs of the golden fixture.

The fixture (tests/fixtures/golden) holds a tiny random CLIP in OpenAI's layout and the official code's outputs for
14 cases. This script converts the weights, loads them with `from_pretrained` under each case's settings, runs the
model on the fixture's (already resized) input, and prints the largest differences next to the tolerances.

    python scripts/parity_report.py [--attn-implementation sdpa|eager] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

from naclip_hf import NACLIPForSemanticSegmentation
from naclip_hf.conversion import convert_openai_checkpoint
from naclip_hf.inference import encode_classes, load_processor

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "golden"
# manifest key -> NACLIPConfig field
SETTING_NAMES = {
    "arch": "arch",
    "attn": "attn_strategy",
    "std": "gaussian_std",
    "pamr_steps": "pamr_steps",
    "pamr_stride": "pamr_dilations",
    "prob_thd": "prob_thd",
    "logit_scale": "logit_scale",
    "slide_crop": "slide_crop",
    "slide_stride": "slide_stride",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attn-implementation", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()

    golden = load_file(str(GOLDEN / "golden.safetensors"))
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        checkpoint = convert_openai_checkpoint(
            GOLDEN / "openai_clip_tiny.safetensors", Path(workdir) / "tiny", GOLDEN / "tokenizer"
        )
        processor = load_processor(checkpoint)
        model = NACLIPForSemanticSegmentation.from_pretrained(checkpoint, attn_implementation=args.attn_implementation)
        classes = encode_classes(model, processor, manifest["classes"])
        text_diff = (classes.text_embeds - golden["text/query_features"]).abs().max().item()
        for case in manifest["cases"]:
            merged = {**manifest["defaults"], **case}
            overrides = {field: merged[key] for key, field in SETTING_NAMES.items()}
            model = NACLIPForSemanticSegmentation.from_pretrained(
                checkpoint, attn_implementation=args.attn_implementation, **overrides
            ).eval()
            raw = golden[f"{case['image']}/raw"]
            fed = raw if case["short_side"] == 0 else golden[f"{case['image']}/resized_{case['short_side']}"]
            pixel_values = processor.image_processor(fed.numpy(), short_side=0)["pixel_values"]
            with torch.no_grad():  # the case's settings, from the config
                outputs = model(pixel_values=pixel_values, text_embeds=classes.text_embeds)
            logits = outputs.logits
            (result,) = processor.image_processor.post_process_semantic_segmentation(
                outputs,
                target_sizes=[raw.shape[:2]],
                pixel_values=pixel_values,
                name_to_class=classes.name_to_class,
                return_probabilities=True,
            )
            case_id = case["id"]
            rows.append(
                (
                    case_id,
                    (logits[0][:, ::4, ::4] - golden[f"{case_id}/logits_processed"]).abs().max().item(),
                    (result["probabilities"][:, ::4, ::4] - golden[f"{case_id}/probs_sub4"]).abs().max().item(),
                    (result["segmentation"] == golden[f"{case_id}/pred"].long()).float().mean().item(),
                )
            )

    attention = args.attn_implementation.upper()
    print(f"Attention: {attention}. Text features: max |diff| = {text_diff:.1e} (tolerance 1e-5).")
    if args.markdown:
        print("\n| case | logits max abs diff (≤ 1e-4) | probabilities max abs diff (≤ 1e-3) ", end="")
        print("| equal labels (≥ 99.9 %) |")
        print("|---|---|---|---|")
        for case_id, logit_diff, prob_diff, equal in rows:
            print(f"| {case_id} | {logit_diff:.1e} | {prob_diff:.1e} | {equal:.4%} |")
    else:
        print(f"{'case':28s} {'logits':>9s} {'probs':>9s} {'labels':>9s}")
        for case_id, logit_diff, prob_diff, equal in rows:
            print(f"{case_id:28s} {logit_diff:9.1e} {prob_diff:9.1e} {equal:9.4%}")


if __name__ == "__main__":
    main()
