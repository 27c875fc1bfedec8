"""`naclip evaluate`: mIoU of NACLIP on a benchmark, on one process or split across several (`accelerate launch`,
torchrun).

Order of work: arguments and settings (no torch), then the whole dataset is checked (every pair present, every
header readable, label and image sizes equal; all problems reported at once, exit 2), then the model is loaded
once with the run's settings, then the images are evaluated. A failure during the run names the file and, with
`--out`, writes the scores of the images done so far, marked `"partial": true` (exit 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..benchmarks import get_benchmark
from ..methods import comparison_table, get_method
from ._common import (
    CommandError,
    add_command,
    add_dtype_option,
    add_method_option,
    add_model_option,
    add_preset_classes_option,
    add_preset_option,
    add_set_option,
    check_model_source,
    names_method,
    set_options,
    settings_epilog,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `naclip evaluate` to the subparsers of `naclip`."""
    parser = add_command(
        subparsers, "evaluate", "score mIoU on a benchmark (runs on several processes under `accelerate launch` or "
        "torchrun)", "Evaluate NACLIP on a benchmark (or a Hub dataset) and report mIoU next to the published number. "
        "The whole dataset is checked before the model is loaded. Under `accelerate launch` / torchrun the images "
        "are split across processes and the confusion matrices summed. Exit status: 0 done, 1 an image failed during "
        "the run (with --out, the results so far are written, marked partial), 2 a usage, setup or data error, 130 "
        "interrupted.", settings_epilog(),
    )  # fmt: skip
    add_preset_option(parser, "benchmark", required=True)
    parser.add_argument("--data-root", type=Path, default=None,
                        help="dataset folder in its usual layout (e.g. VOCdevkit/VOC2012)")  # fmt: skip
    parser.add_argument("--dataset", default=None, metavar="ID_OR_PATH",
                        help="a Hub dataset id or saved dataset folder instead of --data-root")  # fmt: skip
    parser.add_argument("--image-column", default="image", help="image column of --dataset (default: image)")
    parser.add_argument("--label-column", default="label", help="label column of --dataset (default: label)")
    parser.add_argument("--split", default="val", help="split to evaluate (default: %(default)s)")
    add_method_option(parser, "evaluate a method with its own settings for this benchmark (--pamr and --set "
                      "override them) and compare with its published numbers")  # fmt: skip
    add_preset_classes_option(parser)
    add_model_option(parser)
    add_dtype_option(parser, "; the results record it")
    parser.add_argument("--pamr", choices=("on", "off"), default=None,
                        help="PAMR refinement on or off (default: the model's setting)")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N images")
    add_set_option(parser)
    parser.add_argument("--out", type=Path, default=None, metavar="results.json",
                        help="write mIoU, per-class IoU, settings and the published number as JSON")  # fmt: skip
    return parser


def run(args: argparse.Namespace) -> int:
    """`naclip evaluate`: check, load the data and check it, load the model, evaluate, report (main process)."""
    benchmark = get_benchmark(args.preset)
    user = set_options(args)
    pamr = {"on": True, "off": False, None: None}[args.pamr]
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit} must be a positive number of images.")
    out = args.out
    if out is not None and out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name such as {out / 'results.json'}.")

    from ..evaluation.datasets import find_dataset_problems
    from ..evaluation.runner import (
        EvaluationFailed,
        evaluate_preset,
        load_evaluation_dataset,
        resolve_settings,
    )
    from ..models.naclip.options import check_settings

    # The benchmark's settings, then the method's (for this benchmark), then --pamr, then --set.
    method = get_method(args.method) if args.method is not None else None
    method_settings = method.settings_for(benchmark) if method is not None else {}
    if pamr is not None:
        method_settings.pop("pamr_steps", None)
    user = {**method_settings, **user}
    run_settings = check_settings(resolve_settings(benchmark, pamr, user))
    # The class names the method's official code uses on this benchmark, unless --preset-classes.
    classes_file = benchmark.classes_file_for(names_method(args, args.method))
    classes = benchmark.class_names(method=names_method(args, args.method))
    dataset = load_evaluation_dataset(
        benchmark, data_root=args.data_root, dataset=args.dataset, split=args.split,
        image_column=args.image_column, label_column=args.label_column, limit=args.limit,
    )  # fmt: skip
    data = str(args.data_root) if args.data_root is not None else str(args.dataset)
    problems = find_dataset_problems(dataset)
    if problems:
        raise CommandError(
            f"{len(problems)} problem(s) in the {benchmark.name} data at {data}; fix or remove these files, "
            "then run again:\n  - " + "\n  - ".join(problems)
        )
    checkpoint = check_model_source(args.model)

    from ..distributed import ProcessGroup
    from ..segmenter import load_segmenter

    group = ProcessGroup.start()
    is_main = group.is_main
    if not is_main:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    overrides = {key: value for key, value in run_settings.items() if key != "short_side"}
    segmenter = load_segmenter(checkpoint, overrides, device=group.model_device, dtype=args.dtype)
    try:
        result = evaluate_preset(
            segmenter, None, benchmark, dataset, pamr=pamr, short_side=run_settings["short_side"],
            limit=args.limit, overrides=user, split=args.split, classes=classes, processes=group,
        )  # fmt: skip
    except EvaluationFailed as failure:
        message = str(failure)
        partial = failure.partial
        if is_main and partial is not None:
            partial.settings.update(data=data, classes_file=classes_file)
            print(partial.format_report(), flush=True)
            if out is not None:
                partial.write_json(out)
                message += (
                    f"; partial results ({partial.num_images_done} of {partial.num_images} images) written to {out}, "
                    'marked "partial": true'
                )
        raise CommandError(message, exit_status=1) from None
    result.settings.update(data=data, classes_file=classes_file)
    if method is not None:
        result.settings["method"] = method.name
        if method.name != "naclip":  # the benchmark's published numbers are NACLIP's
            result.published = {}
    if is_main:
        print(result.format_report(), flush=True)
        if method is not None and result.miou_percent is not None:
            pamr_on = run_settings.get("pamr_steps", segmenter.config.pamr_steps) > 0
            print(comparison_table({(method.name, pamr_on): {benchmark.name: result.miou_percent}}, [benchmark]))
        if out is not None:
            result.write_json(out)
            print(f"Wrote {out}", flush=True)
    return 0


__all__ = ["add_parser", "run"]
