"""`naclip convert`: OpenAI CLIP weights (.pt, state dict or .safetensors) to a transformers checkpoint folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_command


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `naclip convert` to the subparsers of `naclip`."""
    parser = add_command(
        subparsers, "convert", "convert OpenAI CLIP weights (.pt or .safetensors) to a transformers checkpoint folder",
        "Convert CLIP weights in OpenAI's layout into a checkpoint folder that NACLIPForSemanticSegmentation."
        "from_pretrained (and the pipeline) can load. The folder appears complete or not at all.", wrap=False,
    )  # fmt: skip
    parser.add_argument("source", type=Path, help="OpenAI CLIP weights: a .pt file as published, or .safetensors")
    parser.add_argument("output_dir", type=Path, help="new folder to write (must not exist or be empty)")
    parser.add_argument(
        "--tokenizer", type=Path, default=None, metavar="DIR",
        help="folder with the CLIP BPE vocab.json and merges.txt; saved with the model so it is self-contained",
    )  # fmt: skip
    return parser


def run(args: argparse.Namespace) -> int:
    """Convert `args.source` into `args.output_dir` (with `args.tokenizer`); prints the folder written."""
    from ..conversion import convert_openai_checkpoint

    output = convert_openai_checkpoint(args.source, args.output_dir, args.tokenizer)
    print(f"Wrote {output}")
    return 0


__all__ = ["add_parser", "run"]
