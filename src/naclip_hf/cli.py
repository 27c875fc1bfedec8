"""The `naclip` command line: convert checkpoints, segment images, evaluate on benchmarks, write model cards."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fileio import write_atomic

EPILOG_SET = (
    "Settings for --set: arch, attn_strategy, gaussian_std, logit_scale, prob_thd, slide_crop, slide_stride, "
    "slide_batch_size, pamr_steps, pamr_dilations (e.g. 8,16), pos_embed_interpolation, text_batch_size, "
    "short_side."
)

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
DEFAULT_OUT_DIR = "naclip_out"
DEFAULT_MODEL_ID = "openai/clip-vit-base-patch16"  # inference.DEFAULT_CHECKPOINT, without importing torch
SEGMENT_DESCRIPTION = textwrap.fill(
    "Segment images into any classes named in text. For every image, write into --out a palette label map, "
    "an overlay of the class colours with a legend naming the classes present, and a JSON summary (see "
    "'Outputs' below). The model is loaded once for all images. Exit status: 0 when every image was segmented, "
    "1 when some input could not be read, segmented or written (the others are still processed and each "
    "failure is reported on stderr), 2 for a usage or setup error (labels, settings, output folder, model).",
    width=100,
)
SEGMENT_EPILOG = (
    textwrap.fill(EPILOG_SET, width=100)
    + "\n\nExamples:\n"
    + '  naclip segment photo.jpg --labels cat "dog, puppy" grass sky\n'
    + "  naclip segment photos/ --labels-file labels.txt --out results/ --set short_side=448\n"
    + "  naclip segment street.png --preset cityscapes --set slide_stride=224\n"
    + "  naclip segment photo.jpg --labels-file labels.txt --save-scores photo.safetensors\n"
    + "\nOutputs per image in --out (stem = file name without extension; repeated stems get -2, -3, ...):\n"
    + "  <stem>_labels.png   palette PNG, pixel value = class id (16-bit greyscale above 256 classes)\n"
    + "  <stem>_overlay.png  the image blended with the class colours, legend in the top-left corner\n"
    + "  <stem>.json         image, size, classes, pixel share of each class present, settings, model\n"
    + "  <stem>.scores.safetensors  with --scores"
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
        help="segment images into the classes you name (label maps, overlays, JSON summaries)",
        description=SEGMENT_DESCRIPTION,
        epilog=SEGMENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    segment.add_argument(
        "images",
        nargs="*",
        type=Path,
        metavar="IMAGE",
        help="image files and/or folders; a folder contributes its images (by extension: "
        f"{', '.join(IMAGE_EXTENSIONS)}), sorted by name, not recursing into subfolders",
    )
    labels = segment.add_mutually_exclusive_group()
    labels.add_argument(
        "--labels",
        nargs="+",
        default=None,
        metavar="CLASS",
        help="class names, one argument per class (class id = position); synonyms of a class go in the same "
        'argument, separated by commas, e.g. --labels cat "dog, puppy" sky. Put the images before --labels '
        "(or end the list with --)",
    )
    labels.add_argument(
        "--labels-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="text file, one class per line (line index = class id), synonyms separated by ', '",
    )
    segment.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="use a benchmark's classes and inference settings (slide_crop, slide_stride, prob_thd, "
        "short_side): voc21, voc20, context60, context59, coco_object, coco_stuff, ade20k, cityscapes. "
        "--set overrides its settings; --labels / --labels-file replace its classes",
    )
    segment.add_argument(
        "--model",
        default=None,
        metavar="ID_OR_DIR",
        help=f"checkpoint folder or Hub id (default: {DEFAULT_MODEL_ID})",
    )
    segment.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a NACLIP setting (repeatable), e.g. --set attn_strategy=csa --set short_side=448; "
        "the keys are listed below",
    )
    segment.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"folder for the label maps, overlays and JSON summaries, created if missing (default: "
        f"./{DEFAULT_OUT_DIR}; when --save-scores is given without --out, only the scores file is written)",
    )
    segment.add_argument(
        "--alpha",
        type=_opacity,
        default=0.5,
        metavar="A",
        help="opacity of the class colours in the overlay, 0 to 1 (default: %(default)s)",
    )
    segment.add_argument(
        "--save-scores",
        type=Path,
        default=None,
        metavar="OUT.safetensors",
        help="for a single image: write its logits [names, h, w], probabilities [classes, H, W] and "
        "segmentation [H, W] to this file (see --scores for several images)",
    )
    segment.add_argument(
        "--scores",
        action="store_true",
        help="write <stem>.scores.safetensors (logits, probabilities, segmentation) into --out for every image",
    )
    segment.set_defaults(handler=run_segment)

    evaluate = commands.add_parser(
        "evaluate",
        help="score mIoU on a benchmark (runs on several processes under `accelerate launch` or torchrun)",
        description="Evaluate NACLIP on one of the eight benchmarks (or a Hub dataset) and report mIoU next to the "
        "published number. Under `accelerate launch` / torchrun the images are split across processes and the "
        "confusion matrices summed.",
        epilog=EPILOG_SET,
    )
    evaluate.add_argument("--preset", required=True,
                          help="benchmark: voc21, voc20, context60, context59, coco_object, coco_stuff, ade20k, "
                          "cityscapes")
    evaluate.add_argument("--data-root", type=Path, default=None,
                          help="dataset folder in its usual layout (e.g. VOCdevkit/VOC2012)")
    evaluate.add_argument("--dataset", default=None, metavar="ID_OR_PATH",
                          help="a Hub dataset id or saved dataset folder instead of --data-root")
    evaluate.add_argument("--image-column", default="image", help="image column of --dataset (default: image)")
    evaluate.add_argument("--label-column", default="label", help="label column of --dataset (default: label)")
    evaluate.add_argument("--split", default=None, help="split to evaluate (default: the preset's validation split)")
    evaluate.add_argument("--model", default=None, help="checkpoint folder or Hub id (default: "
                          "openai/clip-vit-base-patch16)")
    evaluate.add_argument("--pamr", choices=("on", "off"), default=None,
                          help="PAMR refinement on or off (default: the model's setting)")
    evaluate.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N images")
    evaluate.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                          help="override a NACLIP setting (repeatable)")
    evaluate.add_argument("--out", type=Path, default=None, metavar="results.json",
                          help="write mIoU, per-class IoU, settings and the published number as JSON")
    evaluate.set_defaults(handler=run_evaluate)

    card = commands.add_parser(
        "card",
        help="write a model card (README.md) for a saved model folder",
        description="Fill in the model card template for a saved NACLIP/CLIP model folder, optionally with "
        "evaluation results (JSON files written by `naclip evaluate --out`).",
    )
    card.add_argument("model_dir", type=Path, help="saved model folder")
    card.add_argument("--results", type=Path, nargs="*", default=[], metavar="results.json",
                      help="evaluation results to list in the card's model-index")
    card.add_argument("--base-model", default="openai/clip-vit-base-patch16", help="base CLIP checkpoint id")
    card.add_argument("--out", type=Path, default=None, help="where to write the card (default: MODEL_DIR/README.md)")
    card.set_defaults(handler=run_card)
    return parser


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.runner import evaluate_from_args

    return evaluate_from_args(args)


def run_card(args: argparse.Namespace) -> int:
    from .hub_card import write_model_card_from_args

    return write_model_card_from_args(args)


def run_convert(args: argparse.Namespace) -> int:
    from .conversion import convert_openai_checkpoint

    output = convert_openai_checkpoint(args.source, args.output_dir, args.tokenizer)
    print(f"Wrote {output}")
    return 0


def run_segment(args: argparse.Namespace) -> int:
    """`naclip segment`: check labels, settings, inputs and outputs, load the model once, segment every image.

    Returns 0 when every image was segmented and 1 when some failed (each failure is reported on stderr as it
    happens); problems found before loading the model raise `ValueError` / `OSError`.
    """
    from PIL import Image

    overrides, short_side, classes, preset = _segment_settings_and_classes(args)
    out_dir = args.out
    if out_dir is None and args.save_scores is None:
        out_dir = Path(DEFAULT_OUT_DIR)
    if args.scores and out_dir is None:
        raise ValueError("--scores writes <stem>.scores.safetensors into the output folder; pass --out DIR.")
    if not args.images:
        raise ValueError(_no_images_message(args.labels))
    images, failures = _collect_images(args.images, out_dir)
    total = len(images) + len(failures)
    if args.save_scores is not None and total != 1:
        raise ValueError(
            f"--save-scores {args.save_scores} writes one file but {total} images were given; pass a single "
            "image, or use --scores (with --out DIR) to write <stem>.scores.safetensors for every image."
        )
    if out_dir is not None:
        _ensure_writable_dir(out_dir, "--out DIR")
    if args.save_scores is not None:
        if args.save_scores.is_dir():
            raise ValueError(f"--save-scores {args.save_scores} is a folder; give a file name (OUT.safetensors).")
        _ensure_writable_dir(args.save_scores.parent, "--save-scores OUT.safetensors", "folder of the scores file")
    for path, reason in failures:
        _report_failure(path, reason)
    if not images:
        return _finish(total, failures)

    from tqdm import tqdm

    from .inference import encode_classes, load_model, load_processor, segment_image

    model_id = args.model or DEFAULT_MODEL_ID
    model = load_model(model_id, overrides)
    processor = load_processor(model_id)
    embeddings = encode_classes(model=model, processor=processor, classes=classes, cache_dir=True)
    if short_side is None:
        short_side = processor.image_processor.short_side
    from .configuration_naclip import NACLIP_SETTINGS

    settings = {key: _jsonable(getattr(model.config, key)) for key in NACLIP_SETTINGS}
    settings["short_side"] = short_side
    context = {"model": str(model_id), "preset": preset, "settings": settings}
    progress = tqdm(
        images, desc="naclip segment", unit="image", file=sys.stderr, disable=len(images) < 2, dynamic_ncols=True
    )
    unreadable = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
    for path, stem in zip(progress, _output_stems(images)):
        try:
            image = _read_image(path)
        except unreadable as error:
            failures.append((path, f"not a readable image ({error})"))
            _report_failure(*failures[-1], progress)
            continue
        try:
            result = segment_image(model, processor, image, classes=embeddings, short_side=short_side)
        except (RuntimeError, ValueError) as error:
            failures.append((path, f"segmentation failed ({error})"))
            _report_failure(*failures[-1], progress)
            continue
        try:
            lines = _write_outputs(args, out_dir, stem, path, image, result, embeddings, context)
        except OSError as error:
            failures.append((path, f"could not write the outputs ({error})"))
            _report_failure(*failures[-1], progress)
            continue
        for line in lines:
            progress.write(line, file=sys.stdout)
    progress.close()
    return _finish(total, failures)




def _opacity(text: str) -> float:
    """argparse type for --alpha: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return value


def _segment_settings_and_classes(
    args: argparse.Namespace,
) -> tuple[dict[str, Any], int | None, list[list[str]], str | None]:
    """Config overrides, short side, classes and preset name from --preset, --set and the label options.

    The preset's settings come first so that --set overrides them; --labels / --labels-file replace its classes.
    """
    from .inference import parse_setting_overrides
    from .labels import parse_class_entries, read_labels_file

    preset = None
    pairs: list[str] = []
    if args.preset is not None:
        from .presets import get_preset

        preset = get_preset(args.preset)
        pairs = [f"{key}={value}" for key, value in preset.model_settings().items()]
    overrides, short_side = parse_setting_overrides([*pairs, *args.settings])
    if args.labels is not None:
        classes = parse_class_entries(args.labels)
    elif args.labels_file is not None:
        classes = read_labels_file(args.labels_file)
    elif preset is not None:
        classes = preset.class_names()
    else:
        raise ValueError(
            'No labels given; name the classes with --labels cat "dog, puppy" ..., --labels-file FILE (one class '
            "per line) or --preset NAME (a benchmark's classes)."
        )
    return overrides, short_side, classes, None if preset is None else preset.name


def _no_images_message(labels: Sequence[str] | None) -> str:
    message = "No images given; name image files or folders, e.g. naclip segment photo.jpg --labels cat dog."
    taken = [label for label in labels or [] if Path(label).exists()]
    if taken:
        message += (
            f" {taken[0]!r} was read as a class name: put the images before --labels, or end the label list with --."
        )
    return message


def _collect_images(paths: Sequence[Path], out_dir: Path | None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files named or found in the named folders (sorted by name), and the inputs that are missing.

    In a folder only files with an image extension count; in the output folder itself the label maps and
    overlays of an earlier run are skipped. A file named twice is segmented once.
    """
    images: list[Path] = []
    failures: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    out_resolved = out_dir.resolve() if out_dir is not None else None
    for path in paths:
        if path.is_dir():
            found = sorted(
                (entry for entry in path.iterdir() if entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file()),
                key=lambda entry: entry.name,
            )
            if path.resolve() == out_resolved:
                found = [entry for entry in found if not entry.name.endswith(("_labels.png", "_overlay.png"))]
            if not found:
                failures.append((path, f"folder holds no images ({', '.join(IMAGE_EXTENSIONS)})"))
        elif path.exists():
            found = [path]
        else:
            failures.append((path, "no such file or folder"))
            continue
        for entry in found:
            if entry.resolve() not in seen:
                seen.add(entry.resolve())
                images.append(entry)
    return images, failures


def _ensure_writable_dir(path: Path, option: str, what: str = "output folder") -> None:
    """Create the folder if needed and check that a file can be written in it (before any model is loaded)."""
    if path.exists() and not path.is_dir():
        raise OSError(f"The {what} {path} is an existing file, not a folder; choose a folder with {option}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".naclip-write-check-", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OSError(
            f"Cannot write to the {what} {path} ({error.strerror or error}); make it writable or choose "
            f"another folder with {option}."
        ) from None


def _output_stems(paths: Sequence[Path]) -> list[str]:
    """File stems for the outputs, made unique (case-insensitively) with -2, -3, ... in input order."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem = path.stem or "image"
        candidate, number = stem, 2
        while candidate.casefold() in used:
            candidate, number = f"{stem}-{number}", number + 1
        used.add(candidate.casefold())
        stems.append(candidate)
    return stems


def _read_image(path: Path) -> Any:
    """The image as RGB, turned upright by its EXIF orientation; raises what PIL raises for unreadable files."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
        return (upright if upright is not None else image).convert("RGB")


def _write_outputs(
    args: argparse.Namespace,
    out_dir: Path | None,
    stem: str,
    path: Path,
    image: Any,
    result: Any,
    embeddings: Any,
    context: dict[str, Any],
) -> list[str]:
    """Write the scores file and/or the label map, overlay (and scores) and JSON summary; return stdout lines."""
    from .inference import save_scores
    from .visualization import class_palette, class_shares, label_map_image, overlay_image

    metadata = {"classes": embeddings.classes, "image": str(path)}
    lines = []
    if args.save_scores is not None:
        save_scores(args.save_scores, result, metadata)
        lines.append(f"Wrote {args.save_scores}")
    if out_dir is None:
        return lines
    labels = embeddings.class_labels
    segmentation = result.segmentation.numpy()
    palette = class_palette(len(labels))
    outputs = {"label_map": f"{stem}_labels.png", "overlay": f"{stem}_overlay.png"}
    write_atomic(out_dir / outputs["label_map"], lambda tmp: label_map_image(segmentation, palette).save(tmp, "PNG"))
    overlay = overlay_image(image, segmentation, labels, palette, alpha=args.alpha)
    write_atomic(out_dir / outputs["overlay"], lambda tmp: overlay.save(tmp, "PNG"))
    if args.scores:
        outputs["scores"] = f"{stem}.scores.safetensors"
        save_scores(out_dir / outputs["scores"], result, metadata)
    shares = class_shares(segmentation, labels)
    summary = {
        "image": str(path.resolve()),
        "size": {"width": image.width, "height": image.height},
        "model": context["model"],
        "preset": context["preset"],
        "classes": [{"id": index, "label": names[0], "names": names} for index, names in enumerate(embeddings.classes)],
        "class_shares": shares,
        "settings": context["settings"],
        "outputs": outputs,
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    write_atomic(out_dir / f"{stem}.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    top = ", ".join(f"{label} {share:.0%}" for label, share in list(shares.items())[:3])
    more = ", ..." if len(shares) > 3 else ""
    lines.append(f"{path} -> {out_dir / outputs['overlay']} ({top}{more})")
    return lines


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _report_failure(path: Path, reason: str, progress: Any = None) -> None:
    message = f"naclip segment: error: {path}: {reason}"
    if progress is not None:
        progress.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


def _finish(total: int, failures: Sequence[tuple[Path, str]]) -> int:
    if not failures:
        return 0
    names = ", ".join(str(path) for path, _ in failures)
    print(f"naclip segment: {len(failures)} of {total} inputs failed: {names}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `naclip` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError, TypeError) as error:
        print(f"naclip {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"naclip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
