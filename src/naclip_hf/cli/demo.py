"""`naclip demo`: serve the interactive demo (Gradio) on a checkpoint: a Segment tab, an Attention tab and the
`/segment` API endpoint. Needs the `demo` extra (`pip install "naclip-hf[demo]"`); `--help` imports neither Gradio
nor torch."""

from __future__ import annotations

import argparse

from ..methods import DEFAULT_METHOD
from ._common import (
    CommandError,
    add_command,
    add_dtype_option,
    add_method_option,
    add_model_option,
    check_model_source,
    number_type,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
INSTALL_HINT = 'pip install "naclip-hf[demo]"'

DESCRIPTION = (
    "Serve the NACLIP demo in the browser: segment an image into classes typed as text (or a benchmark's classes) "
    "with a method (NACLIP, CLIP, SCLIP, ...) and, over its settings, the attention strategy, PAMR and threshold "
    "of your choice; and compare where one clicked patch looks under several methods (CLIP, SCLIP and NACLIP at "
    "first). The app also answers API calls at /segment (gradio_client). It runs offline on a "
    "local checkpoint, or on a folder written by `naclip export` (onnxruntime, no PyTorch: the exported last "
    "block; attention maps need the PyTorch checkpoint). "
    f"Needs the demo's dependencies: {INSTALL_HINT}."
)
EXAMPLES = """Examples:
  naclip demo                                   # openai/clip-vit-base-patch16, http://127.0.0.1:7860
  naclip demo --model ./clip-b16 --port 8080    # a local checkpoint (e.g. written by naclip convert)
  naclip demo --host 0.0.0.0                    # reachable from other machines
  naclip demo --method sclip                    # the page (and /segment) start with SCLIP's settings
  naclip demo --model naclip-onnx               # a folder written by naclip export, on onnxruntime
  naclip space my-space --model openai/clip-vit-base-patch16   # the same app as a Hugging Face Space"""


# argparse types of --port (1-65535) and --concurrency (a positive number).
_port = number_type(int, lambda port: 1 <= port <= 65535, "{text!r} is not a port number (1-65535)",
                    "{value} is not a port number (1-65535)")  # fmt: skip
_concurrency = number_type(int, lambda value: value >= 1, "{text!r} must be a positive number of requests",
                           "{text!r} must be a positive number of requests")  # fmt: skip


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `naclip demo` to the subparsers of `naclip`."""
    parser = add_command(subparsers, "demo", "serve the interactive demo in the browser (Gradio; extra [demo])",
                         DESCRIPTION, EXAMPLES)  # fmt: skip
    add_model_option(parser)
    add_method_option(parser, f"the page's method at first and the /segment endpoint's default (default: "
                      f"{DEFAULT_METHOD}; with an export, its stored settings)")  # fmt: skip
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT,
        help="port to listen on (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--share", action="store_true", help="also make a temporary public link through Gradio's share servers"
    )
    parser.add_argument(
        "--concurrency", type=_concurrency, default=None, metavar="N",
        help="requests computed at once (default: naclip_hf.demo.app.DEFAULT_CONCURRENCY); more wait in a queue",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="torch device for the model, e.g. cuda (default: the CPU)")
    add_dtype_option(parser, " (auto decides for --device); an export runs in the precision it was exported in")
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model, build the app and serve it until interrupted."""
    checkpoint = check_model_source(args.model)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise CommandError(f"the demo needs Gradio, which is not installed; install it with: {INSTALL_HINT}") from None
    from ..demo.app import DEFAULT_CONCURRENCY, build_demo
    # Without --method, build_demo starts at the default method, or at an export's stored settings.
    demo = build_demo(
        checkpoint, method=args.method, concurrency=args.concurrency or DEFAULT_CONCURRENCY, device=args.device,
        dtype=args.dtype,
    )
    # Gradio's own start-up lines (with its advice on share links) are replaced by one line of ours.
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True, quiet=True,
                prevent_thread_lock=True)  # fmt: skip
    print(f"naclip demo: serving {args.model} on {demo.share_url or demo.local_url} (Ctrl-C to stop)", flush=True)
    demo.block_thread()
    return 0


__all__ = ["add_parser", "run"]
