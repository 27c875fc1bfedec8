"""`naclip compare`: one image segmented by several methods side by side (the NACLIP paper's Figure 2), or, with
`--attention-at X,Y`, each method's last-layer attention for the patch under that pixel (its Figure 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..methods import METHODS, describe_methods
from ..models.naclip.options import CALL_OPTIONS
from ._common import (
    add_command,
    add_dtype_option,
    add_label_options,
    add_model_option,
    add_set_option,
    check_model_source,
    classes_from_options,
    set_options,
    settings_epilog,
)

DEFAULT_METHODS = ("clip", "maskclip", "sclip", "clearclip", "naclip")
DEFAULT_OUT = "compare.png"
EXAMPLES = """Examples:
  naclip compare photo.jpg --labels cat "dog, puppy" grass --methods clip sclip naclip --out compare.png
  naclip compare photo.jpg --labels cat dog --attention-at 120,80 --out attention.png"""


def _point(text: str) -> tuple[int, int]:
    """argparse type for --attention-at: "X,Y" in pixels."""
    parts = text.replace(" ", "").split(",")
    try:
        x, y = (int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pixel X,Y (two integers, e.g. 120,80)") from None
    if x < 0 or y < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: X and Y must be >= 0")
    return x, y


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `naclip compare` to the subparsers of `naclip`."""
    parser = add_command(
        subparsers, "compare", "segment one image with several methods side by side, or compare their attention maps",
        "Draw one figure comparing methods on one image: the image, then each method's segmentation blended over it, "
        "with one legend (the NACLIP paper's Figure 2). With --attention-at X,Y, draw instead each method's "
        "last-layer attention of the patch under that pixel, over the whole image (its Figure 1). Each method runs "
        "with its own settings; --set applies to all of them. Methods: " + describe_methods(),
        settings_epilog() + "\n\n" + EXAMPLES,
    )
    parser.add_argument("image", metavar="IMAGE", help="an image file or http(s) URL")
    add_label_options(parser)
    parser.add_argument(
        "--methods", nargs="+", default=list(DEFAULT_METHODS), choices=tuple(METHODS), metavar="NAME",
        help=f"methods to compare, in order (default: {' '.join(DEFAULT_METHODS)}); one of {', '.join(METHODS)}",
    )  # fmt: skip
    parser.add_argument("--attention-at", type=_point, default=None, metavar="X,Y",
                        help="draw attention maps for the patch under this pixel (column X, row Y of the image)")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), metavar="FILE.png",
                        help="the figure to write (PNG; default: %(default)s)")  # fmt: skip
    parser.add_argument("--panel-height", type=int, default=256, metavar="PIXELS",
                        help="height of each panel in the figure (default: %(default)s)")  # fmt: skip
    parser.add_argument("--alpha", type=float, default=0.6, metavar="A",
                        help="opacity of the colours over the image, 0 to 1 (default: %(default)s)")  # fmt: skip
    add_model_option(parser)
    add_dtype_option(parser)
    add_set_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """`naclip compare`: check the arguments, load the model once, run every method, write the figure."""
    from .segment import ensure_writable_dir

    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha {args.alpha} must be between 0 and 1.")
    if args.panel_height < 64:
        raise ValueError(f"--panel-height {args.panel_height} is too small; use at least 64 pixels.")
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: the figure is a PNG; give a file name ending in .png.")
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file name such as {args.out / DEFAULT_OUT}.")
    methods = list(dict.fromkeys(args.methods))
    overrides = set_options(args)  # --templates-file's templates go into the model's config below
    if args.attention_at is None:
        classes = classes_from_options(args)
        if classes is None:
            raise ValueError('No labels given; name the classes with --labels cat "dog, puppy" ... or --labels-file '
                             "FILE (attention maps with --attention-at X,Y need none).")  # fmt: skip
    ensure_writable_dir(args.out.parent if str(args.out.parent) else Path("."), "--out FILE.png",
                        "folder of the figure")  # fmt: skip
    checkpoint = check_model_source(args.model)

    import numpy as np

    from ..figures import attention_figure, segment_with_methods, segmentation_figure
    from ..fileio import write_atomic
    from ..models.naclip.image_io import load_image
    from ..segmenter import load_segmenter

    image = load_image(args.image)
    # Settings that are not per call (text, positional embeddings) go into the model's config, for every method.
    config_overrides = {key: value for key, value in overrides.items() if key not in CALL_OPTIONS}
    per_call = {key: value for key, value in overrides.items() if key in CALL_OPTIONS}
    segmenter = load_segmenter(checkpoint, config_overrides, dtype=args.dtype)
    if args.attention_at is not None:
        found = segmenter.attention_maps(image, args.attention_at, methods, short_side=per_call.pop("short_side", None),
                                         overrides=per_call)  # fmt: skip
        maps = dict(zip(found.methods, found.heat))
        figure = attention_figure(image, maps, args.attention_at, alpha=args.alpha, panel_height=args.panel_height)
    else:
        label_set = segmenter.encode_classes(classes, cache_dir=True)
        results = segment_with_methods(segmenter, image, label_set, methods, per_call)
        segmentations = {name: np.asarray(result.segmentation) for name, result in results.items()}
        figure = segmentation_figure(image, segmentations, label_set.class_labels, alpha=args.alpha,
                                     panel_height=args.panel_height)  # fmt: skip
    write_atomic(args.out, lambda temporary: figure.save(temporary, "PNG"))
    print(f"Wrote {args.out} ({', '.join(methods)})")
    return 0


__all__ = ["DEFAULT_METHODS", "add_parser", "run"]
