"""The `naclip` command line: one module per command, each imported only when its command runs.

`main` parses the arguments (argparse, the standard library and `naclip_hf.models.naclip.options` /
`naclip_hf.benchmarks` only), so that `naclip --help`, `naclip COMMAND --help` and usage errors are answered
without importing torch or transformers. A command's `run(args)` imports what it needs.

Exit status: 0 success, 1 some inputs failed (the others were processed), 2 usage or setup error, 130
interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .segment import DEFAULT_OUT_DIR

COMMANDS: tuple[str, ...] = ("segment", "label", "evaluate", "compare", "convert", "card", "export", "demo", "space")
"""The commands, in the order `naclip --help` lists them; each is the module `naclip_hf.cli.<command>`."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("naclip-hf")
    except PackageNotFoundError:
        return "unknown (naclip-hf is not installed; install it with `pip install -e .`)"


def build_parser() -> argparse.ArgumentParser:
    """The parser of `naclip` with one subparser per command (see `COMMANDS`)."""
    parser = argparse.ArgumentParser(
        prog="naclip",
        description="NACLIP: training-free open-vocabulary semantic segmentation with CLIP.",
    )
    parser.add_argument("--version", action="version", version=f"naclip-hf {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        subparser = module.add_parser(commands)
        subparser.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `naclip` command line with `argv` (default: `sys.argv[1:]`); returns the exit status.

    Errors found by a command (`ValueError`, `OSError`, `TypeError`) are printed as one line
    `naclip COMMAND: error: ...` with status 2 unless the command chose another status; Ctrl-C prints
    `naclip COMMAND: interrupted` with status 130.
    """
    command = "naclip"
    try:
        args = build_parser().parse_args(argv)
        command = f"naclip {args.command}"
        from ._common import quiet_libraries

        with quiet_libraries():  # no third-party warnings; progress bars only for long work
            return int(args.run(args))
    except (ValueError, OSError, TypeError) as error:
        code = getattr(error, "exit_status", 2)
        print(f"{command}: error: {error}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "DEFAULT_OUT_DIR", "build_parser", "main"]
