"""`naclip card`: write a model card (README.md with Hub metadata) for a saved model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.naclip.options import DEFAULT_CHECKPOINT
from ._common import add_command


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `naclip card` to the subparsers of `naclip`."""
    parser = add_command(
        subparsers, "card", "write a model card (README.md) for a saved model folder",
        "Fill in the model card template for a saved NACLIP/CLIP model folder, optionally with "
        "evaluation results (JSON files written by `naclip evaluate --out`).", wrap=False,
    )  # fmt: skip
    parser.add_argument("model_dir", type=Path, help="saved model folder")
    parser.add_argument(
        "--results", type=Path, nargs="*", default=[], metavar="results.json",
        help="evaluation results to list in the card's model-index",
    )  # fmt: skip
    parser.add_argument(
        "--base-model", default=DEFAULT_CHECKPOINT, help="base CLIP checkpoint id (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write the card (default: MODEL_DIR/README.md)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Render the card of `args.model_dir` with `args.results` and write it to `args.out`; prints the path."""
    from ..hub_card import write_model_card

    path = write_model_card(args.model_dir, list(args.results or []), args.base_model, args.out)
    print(f"Wrote {path}")
    return 0


__all__ = ["add_parser", "run"]
