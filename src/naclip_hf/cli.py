"""The `naclip` command line: convert checkpoints, segment images."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EPILOG_SET = (
    "Settings for --set: arch, attn_strategy, gaussian_std, logit_scale, prob_thd, slide_crop, slide_stride, "
    "slide_batch_size, pamr_steps, pamr_dilations (e.g. 8,16), pos_embed_interpolation, text_batch_size, "
    "short_side."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="naclip",
        description="NACLIP: training-free open-vocabulary semantic segmentation with CLIP.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="convert OpenAI CLIP weights (.pt or .safetensors) to a transformers checkpoint folder",
        description="Convert CLIP weights in OpenAI's layout into a checkpoint folder that "
        "NACLIPForSemanticSegmentation.from_pretrained (and the pipeline) can load.",
    )
    convert.add_argument("source", type=Path, help="OpenAI CLIP weights: a .pt file as published, or .safetensors")
    convert.add_argument("output_dir", type=Path, help="new folder to write (must not exist or be empty)")
    convert.add_argument(
        "--tokenizer", type=Path, default=None, metavar="DIR",
        help="folder with the CLIP BPE vocab.json and merges.txt; saved with the model so it is self-contained",
    )  # fmt: skip
    convert.set_defaults(handler=run_convert)

    segment = commands.add_parser(
        "segment",
        help="segment an image into the classes you name",
        description="Segment an image into any classes named in text.",
        epilog=EPILOG_SET,
    )
    segment.add_argument("images", nargs="+", type=Path, help="image file")
    segment.add_argument("--model", default=None, help="checkpoint folder or Hub id (default: %(default)s → "
                         "openai/clip-vit-base-patch16)")
    segment.add_argument("--labels-file", type=Path, default=None,
                         help="text file, one class per line (line index = class id), synonyms separated by ', '")
    segment.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                         help="override a NACLIP setting (repeatable), e.g. --set attn_strategy=csa")
    segment.add_argument("--save-scores", type=Path, default=None, metavar="OUT.safetensors",
                         help="write logits [names, h, w], probabilities [classes, H, W] and segmentation [H, W]")
    segment.set_defaults(handler=run_segment)
    return parser


def run_convert(args: argparse.Namespace) -> int:
    from .conversion import convert_openai_checkpoint

    output = convert_openai_checkpoint(args.source, args.output_dir, args.tokenizer)
    print(f"Wrote {output}")
    return 0


def run_segment(args: argparse.Namespace) -> int:
    from PIL import Image

    from .inference import DEFAULT_CHECKPOINT, encode_classes, load_model, load_processor, parse_setting_overrides
    from .inference import save_scores, segment_image
    from .labels import read_labels_file

    overrides, short_side = parse_setting_overrides(args.settings)
    if args.labels_file is None:
        raise ValueError("No labels given; pass --labels-file FILE (one class per line).")
    classes = read_labels_file(args.labels_file)
    model_id = args.model or DEFAULT_CHECKPOINT
    model = load_model(model_id, overrides)
    processor = load_processor(model_id)
    embeddings = encode_classes(model, processor, classes)
    if args.save_scores is not None and len(args.images) > 1:
        raise ValueError("--save-scores writes one file: pass a single image.")
    for path in args.images:
        with Image.open(path) as image:
            result = segment_image(model, processor, image, embeddings, short_side)
        if args.save_scores is not None:
            save_scores(args.save_scores, result, {"classes": embeddings.classes, "image": str(path)})
            print(f"Wrote {args.save_scores}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError, TypeError) as error:
        print(f"naclip {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
