"""`naclip export`: write a model as ONNX (the segmentation graph and the text graph), with its settings, tokenizer
and (optionally) the text embeddings of a label set, for onnxruntime (Python, `naclip_hf.export.runtime`) and
onnxruntime-web / transformers.js.

Labels, settings and the output folder are checked before torch is imported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..export.layout import check_exportable
from ..models.naclip.options import DEFAULTS
from ._common import (
    add_command,
    add_dtype_option,
    add_label_options,
    add_method_option,
    add_preset_option,
    add_set_option,
    check_model_source,
    settings_and_classes,
)

DESCRIPTION = (
    "Export a NACLIP model to ONNX for inference without PyTorch: OUT/onnx/model.onnx (one window of the model: "
    "pixel_values [B, 3, H, W] and text_embeds [N, D] in, logits [B, N, H, W] out, any B, N, H, W), "
    "OUT/onnx/text_model.onnx (prompt token ids in, normalised prompt features out) with tokenizer.json, so that "
    "any class names can be segmented, config.json and preprocessor_config.json with the inference settings, and "
    "with labels classes.json and class_embeddings.safetensors (those names' text embeddings, computed once). "
    "`naclip segment --model OUT --labels ...` then runs it with onnxruntime. Needs the extra [onnx] "
    "(pip install 'naclip-hf[onnx]')."
)
EXAMPLES = """Examples:
  naclip export openai/clip-vit-base-patch16 naclip-onnx --quantize
  naclip export ./clip-b16 voc21-onnx --preset voc21 --set pamr_steps=0
  naclip segment photo.jpg --model naclip-onnx --labels cat "dog, puppy" sky
  naclip segment photo.jpg --model naclip-onnx --quantized --labels-file labels.txt"""


EXPORT_DTYPE_HELP = (
    "precision of the exported graphs: float32 (the default; exact to the official code; also what auto gives, as "
    "the graphs run on other machines) or float16 (half the size; onnxruntime's CPU provider runs it by casting to "
    "float32 where it has no float16 kernel, so it is not faster there; GPUs and WebGPU run it natively; not with "
    "--quantize). bfloat16 is refused: onnxruntime's CPU provider cannot run bfloat16 graphs. Class embeddings are "
    "computed in float32 either way"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `naclip export` to the subparsers of `naclip`."""
    parser = add_command(subparsers, "export", "export a model to ONNX (vision and text graphs, optionally a label "
                         "set's embeddings) for onnxruntime and the web", DESCRIPTION, EXAMPLES)  # fmt: skip
    parser.add_argument("model", metavar="MODEL", help="checkpoint folder (config.json + weights) or Hub id")
    parser.add_argument("out", type=Path, metavar="OUT", help="new (or empty) folder to write")
    add_label_options(parser, "; their text embeddings are stored with the export (other names are embedded by "
                      "the exported text graph when used)")
    add_preset_option(parser, "a benchmark's classes and inference settings", "; --set overrides its settings, "
                      "--labels / --labels-file replace its classes")  # fmt: skip
    add_method_option(parser, "export with a method's settings (over the preset's; --set overrides them)")
    add_set_option(parser)
    parser.add_argument(
        "--quantize", action="store_true",
        help="also write the int8 graphs onnx/model_quantized.onnx (unsigned weights, right on every CPU) and "
        "onnx/model_int8.onnx (signed weights, 3-4x faster on CPUs with VNNI or AMX), each about 4x smaller",
    )  # fmt: skip
    add_dtype_option(parser, help_text=EXPORT_DTYPE_HELP)
    return parser


def run(args: argparse.Namespace) -> int:
    """`naclip export`: check the options and the output folder, load the model, export, print what was written."""
    overrides, short_side, classes, _ = settings_and_classes(args, classes_required=False,
                                                             method_names_classes=False)  # fmt: skip
    check_exportable(overrides.get("arch", DEFAULTS["arch"]))
    out = args.out
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise OSError(f"{out} exists and is not an empty folder; choose a new folder for the export.")
    check_model_source(args.model, "MODEL")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise OSError(
            f"naclip export needs onnx, onnxscript and onnxruntime ({error}); install them with "
            "`pip install 'naclip-hf[onnx]'`."
        ) from None

    from ..export.onnx_export import export_onnx

    report = export_onnx(args.model, out, classes, overrides=overrides, short_side=short_side,
                         quantize=args.quantize, dtype=args.dtype)  # fmt: skip
    for name, size in report.files.items():
        print(f"  {name:<36} {size / 2**20:9.2f} MiB")
    what = f"{len(classes)} classes stored" if classes is not None else "no classes stored"
    print(
        f"Wrote {out} ({what}; any class names via the text graph) in {report.seconds:.1f} s; ONNX logits within "
        f"{report.max_abs_diff:.1e} of PyTorch, text features within {report.text_max_abs_diff:.1e}.",
        file=sys.stdout,
    )
    return 0


__all__ = ["add_parser", "run"]
