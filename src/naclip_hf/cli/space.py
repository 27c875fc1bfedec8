"""`naclip space`: write a Hugging Face Space folder that runs the demo (`naclip demo`) on a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_command, add_model_option


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `naclip space` to the subparsers of `naclip`."""
    parser = add_command(
        subparsers, "space", "write a Hugging Face Space folder running the demo",
        "Write a Space folder (app.py, requirements.txt, README.md with the Space's settings; a local "
        "checkpoint is copied into model/) that runs the same app as `naclip demo`. Upload it with "
        "`hf upload OWNER/SPACE OUT_DIR --repo-type space`.", wrap=False,
    )  # fmt: skip
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the folder to create (must be new or empty)")
    add_model_option(parser)
    parser.add_argument("--title", default=None, help="the Space's title (default: naclip_hf.demo.space.DEFAULT_TITLE)")
    parser.add_argument(
        "--requirement", default=None, metavar="REQ",
        help='pip requirement installing naclip-hf in the Space (default: "naclip-hf[demo]>=<this version>"; e.g. '
        '"naclip-hf[demo] @ git+https://github.com/OWNER/naclip-hf")',
    )  # fmt: skip
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the Space folder; prints where it is and how to upload it."""
    from ..demo.space import DEFAULT_TITLE, write_space

    folder = write_space(args.out_dir, args.model, title=args.title or DEFAULT_TITLE, requirement=args.requirement)
    print(f"Wrote the Space folder {folder}; upload it with: hf upload OWNER/SPACE {folder} --repo-type space")
    return 0


__all__ = ["add_parser", "run"]
