"""Evaluate NACLIP on the benchmarks of the paper, with and without PAMR, and print the paper's table.

The benchmarks, their order (the paper's Table 1) and the published numbers come from `naclip_hf.benchmarks`.
Give each dataset folder with `--roots NAME=DIR` (NAME: a preset, or `voc` for voc21+voc20, `context` for
context60+context59, `coco` for coco_object+coco_stuff) and/or a JSON file `--data-config roots.json` holding
`{"NAME": "DIR", ...}`. Benchmarks without a folder are shown as "—" and skipped.

    python scripts/run_all_benchmarks.py --model openai/clip-vit-base-patch16 --out-dir results \\
        --roots voc=data/VOCdevkit/VOC2012 context=data/VOCdevkit/VOC2010 coco=data/coco_stuff164k \\
        ade20k=data/ADEChallengeData2016 cityscapes=data/cityscapes --markdown

Every run writes `OUT_DIR/<preset>_<pamr|no_pamr>.json` (the format of `naclip evaluate --out`); the table is
written to `OUT_DIR/table.md` and `OUT_DIR/summary.json`. `--from-results OUT_DIR` prints the table again from
those files without evaluating. On several processes (`torchrun --nproc_per_node N scripts/run_all_benchmarks.py
...`) the images of every benchmark are split across the processes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from naclip_hf.benchmarks import BENCHMARKS, PUBLISHED_KEYS, get_benchmark, paper_benchmarks
from naclip_hf.fileio import write_text_atomic
from naclip_hf.methods import METHODS, comparison_table, get_method
from naclip_hf.models.naclip.options import DEFAULT_CHECKPOINT

PAPER_ORDER: tuple[str, ...] = tuple(benchmark.name for benchmark in paper_benchmarks())
"""The benchmarks with published numbers, in the column order of Table 1 in the paper."""

PUBLISHED_AVERAGES: dict[str, float] = {
    key: sum(get_benchmark(name).published[key] for name in PAPER_ORDER) / len(PAPER_ORDER) for key in PUBLISHED_KEYS
}
"""The averages of the published numbers over those benchmarks (the paper's "avg" column, before rounding)."""

ROOT_ALIASES: dict[str, tuple[str, ...]] = {
    "voc": ("voc21", "voc20"),
    "context": ("context60", "context59"),
    "coco": ("coco_object", "coco_stuff"),
}
"""Names that set the folder of several presets sharing one dataset."""

PAMR_MODES: dict[str, tuple[bool, ...]] = {"both": (False, True), "on": (True,), "off": (False,)}

MISSING = "—"

# (row label, source, key): source "ours" reads our results (key = PAMR on), "published" the preset's numbers.
ROWS: tuple[tuple[str, str, Any], ...] = (
    ("ours, no PAMR", "ours", False),
    ("paper, no PAMR", "published", "paper_no_pamr"),
    ("ours, PAMR", "ours", True),
    ("paper, PAMR", "published", "paper_pamr"),
    ("repo, PAMR", "published", "repo_pamr"),
)


def result_filename(preset: str, pamr: bool) -> str:
    """File name of one run's JSON in the output folder."""
    return f"{preset}_{'pamr' if pamr else 'no_pamr'}.json"


def parse_roots(pairs: Sequence[str], config: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Preset name -> data folder, from `NAME=DIR` pairs (winning) and a `{NAME: DIR}` mapping.

    NAME is a preset or an alias (`voc`, `context`, `coco`); an alias sets every preset it covers. Raises
    `ValueError` for an unknown name or a malformed pair.
    """
    items: list[tuple[str, str]] = list((config or {}).items())
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ValueError(f"--roots entry {pair!r} is not of the form NAME=DIR (e.g. voc=data/VOC2012).")
        items.append((name.strip(), folder.strip()))
    roots: dict[str, Path] = {}
    for name, folder in items:
        if name in ROOT_ALIASES:
            presets = ROOT_ALIASES[name]
        elif name in BENCHMARKS:
            presets = (name,)
        else:
            valid = ", ".join([*BENCHMARKS, *ROOT_ALIASES])
            raise ValueError(f"Unknown benchmark {name!r} for a data folder; use one of: {valid}.")
        for preset in presets:
            roots[preset] = Path(folder).expanduser()
    return roots


def read_data_config(path: Path | None) -> dict[str, str]:
    """The `{NAME: DIR}` mapping of a `--data-config` JSON file (relative folders are relative to the file)."""
    if path is None:
        return {}
    if not path.is_file():
        raise FileNotFoundError(f"--data-config file {path} does not exist.")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f'--data-config {path} must hold a JSON object of NAME: "DIR" pairs.')
    return {
        name: str((path.parent / folder) if not Path(folder).is_absolute() else folder) for name, folder in data.items()
    }


def _fmt(value: float | None, decimals: int) -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{decimals}f}"


def build_table(results: Mapping[tuple[str, bool], float | None]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and footnotes of the paper's table, from `{(preset, pamr): mIoU %}` of our runs."""
    header = ["", *PAPER_ORDER, "avg"]
    rows: list[list[str]] = []
    notes: list[str] = []
    for label, source, key in ROWS:
        if source == "ours":
            values = [results.get((preset, key)) for preset in PAPER_ORDER]
            done = [v for v in values if v is not None]
            average = sum(done) / len(done) if len(done) == len(PAPER_ORDER) else None
            rows.append([label, *(_fmt(v, 2) for v in values), _fmt(average, 2)])
            if done and len(done) < len(PAPER_ORDER):
                paper_key = "paper_pamr" if key else "paper_no_pamr"
                subset = [p for p, v in zip(PAPER_ORDER, values) if v is not None]
                paper = sum(get_benchmark(p).published[paper_key] for p in subset) / len(subset)
                notes.append(
                    f"{label}: average over the {len(subset)} evaluated benchmarks {sum(done) / len(done):.2f} "
                    f"(paper on the same benchmarks: {paper:.2f})"
                )
        else:
            decimals = 2 if key == "repo_pamr" else 1
            values = [get_benchmark(preset).published[key] for preset in PAPER_ORDER]
            rows.append([label, *(_fmt(v, decimals) for v in values), _fmt(PUBLISHED_AVERAGES[key], decimals)])
    return header, rows, notes


def format_table(results: Mapping[tuple[str, bool], float | None], markdown: bool = False) -> str:
    """The paper's table (plain text or Markdown) with our mIoU (%) next to the published numbers."""
    header, rows, notes = build_table(results)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
                 for row in [header, *rows]]  # fmt: skip
        lines.insert(1, "-" * len(lines[0]))
    if notes:
        lines.append("")
        lines += [f"{'- ' if markdown else ''}{note}" for note in notes]
    return "\n".join(lines)


def load_results(folder: Path) -> dict[tuple[str, bool], float | None]:
    """`{(preset, pamr): mIoU %}` from the run files found in `folder`."""
    results: dict[tuple[str, bool], float | None] = {}
    for preset in PAPER_ORDER:
        for pamr in (False, True):
            path = folder / result_filename(preset, pamr)
            if path.is_file():
                results[(preset, pamr)] = json.loads(path.read_text(encoding="utf-8")).get("miou_percent")
    return results


def run_benchmarks(
    roots: Mapping[str, Path],
    model_id: str,
    out_dir: Path,
    pamr_modes: Sequence[bool] = (False, True),
    limit: int | None = None,
    split: str = "val",
    settings: Sequence[str] = (),
    progress: bool = True,
    method: str | None = None,
) -> tuple[dict[tuple[str, bool], float | None], dict[str, str]]:
    """Evaluate every preset that has a data folder, in the paper's order, once per PAMR mode.

    With `method` (a name of `naclip_hf.methods`), each benchmark runs with that method's settings and class names
    for it (PAMR as the mode says; the `settings` given win).

    Returns `{(preset, pamr): mIoU %}` and `{preset: error message}` for presets that could not be evaluated
    (the others still run). Each run's result is written to `out_dir` on the main process.
    """
    from naclip_hf.cli._common import parse_set_options
    from naclip_hf.distributed import ProcessGroup
    from naclip_hf.evaluation.datasets import load_benchmark_dataset
    from naclip_hf.evaluation.runner import EvaluationFailed, evaluate_preset
    from naclip_hf.inference import encode_classes, load_model, load_processor

    overrides = parse_set_options(list(settings))
    short_side = overrides.get("short_side")
    group = ProcessGroup.start()
    is_main = group.is_main
    # The settings given apply to every run; each benchmark's own and PAMR go to every call (the model is shared).
    model = load_model(
        model_id,
        {key: value for key, value in overrides.items() if key != "short_side"},
        device=group.model_device,
    )
    processor = load_processor(model_id)
    results: dict[tuple[str, bool], float | None] = {}
    errors: dict[str, str] = {}
    for name in PAPER_ORDER:
        if name not in roots:
            continue
        try:
            dataset = load_benchmark_dataset(name, roots[name], split=split, limit=limit)
            embeddings = encode_classes(
                model=model, processor=processor, classes=get_benchmark(name).class_names(method=method), cache_dir=True
            )
            run_overrides = dict(overrides)
            if method is not None:
                own = get_method(method).settings_for(name)
                own.pop("pamr_steps", None)  # each run sets PAMR on or off
                run_overrides = {**own, **overrides}
            for pamr in pamr_modes:
                result = evaluate_preset(
                    model, processor, name, dataset, pamr=pamr, short_side=run_overrides.get("short_side", short_side),
                    overrides=run_overrides,
                    split=split, class_embeddings=embeddings, processes=group, progress=progress and is_main,
                )  # fmt: skip
                results[(name, pamr)] = result.miou_percent
                if is_main:
                    result.write_json(out_dir / result_filename(name, pamr))
                    published = result.published.get("paper_pamr" if pamr else "paper_no_pamr")
                    if method not in (None, "naclip"):
                        reference = get_method(method).published_result(pamr)
                        published = None if reference is None else reference.miou.get(name)
                    print(
                        f"{method or ''} {name:<12} PAMR {'on ' if pamr else 'off'}  mIoU "
                        f"{_fmt(result.miou_percent, 2):>6}  (paper {_fmt(published, 1)})  {result.num_images} "
                        f"images, {result.elapsed_seconds:.0f} s".lstrip(),
                        flush=True,
                    )
        except EvaluationFailed as failure:  # the scores of the images done are kept, marked partial
            errors[name] = str(failure)
            if is_main and failure.partial is not None:
                failure.partial.write_json(out_dir / result_filename(name, failure.partial.pamr))
            if is_main:
                print(f"{name:<12} failed: {failure}", file=sys.stderr, flush=True)
        except (ValueError, OSError) as error:
            errors[name] = str(error)
            if is_main:
                print(f"{name:<12} skipped: {error}", file=sys.stderr, flush=True)
    return results, errors


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the script."""
    parser = argparse.ArgumentParser(
        description="Evaluate NACLIP on the paper's benchmarks and print Table 1 next to the published numbers.",
    )
    parser.add_argument("--roots", nargs="*", default=[], metavar="NAME=DIR",
                        help="data folders: a preset (voc21, context60, ...) or voc / context / coco for both "
                        "presets of a dataset")  # fmt: skip
    parser.add_argument("--data-config", type=Path, default=None, metavar="JSON",
                        help='JSON file {"NAME": "DIR", ...}; --roots entries win')  # fmt: skip
    parser.add_argument("--model", default=DEFAULT_CHECKPOINT,
                        help="checkpoint folder or Hub id (default: %(default)s)")  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=Path("benchmark_results"),
                        help="folder for the per-run JSON files, table.md and summary.json")  # fmt: skip
    parser.add_argument("--pamr", choices=tuple(PAMR_MODES), default="both", help="which PAMR settings to run")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images per benchmark")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="override a NACLIP setting of every run (repeatable), as in naclip evaluate")  # fmt: skip
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--from-results", type=Path, default=None, metavar="DIR",
                        help="print the table from the JSON files in DIR without evaluating")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--methods", nargs="+", default=None, choices=tuple(METHODS), metavar="NAME",
                        help="compare these methods (naclip_hf.methods), each with its own settings per benchmark, "
                        "in a table of methods × benchmarks next to their published numbers")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks (or read earlier results) and print the table; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.from_results is not None:
            if not args.from_results.is_dir():
                raise FileNotFoundError(f"--from-results folder {args.from_results} does not exist.")
            print(format_table(load_results(args.from_results), markdown=args.markdown))
            return 0
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit {args.limit} must be a positive number of images.")
        roots = parse_roots(args.roots, read_data_config(args.data_config))
        if not roots:
            raise ValueError("No data folders given; pass --roots NAME=DIR ... and/or --data-config JSON.")
        missing = [name for name in PAPER_ORDER if name not in roots]
        if missing:
            print(f"No data folder for {', '.join(missing)}: shown as {MISSING}.", flush=True)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        if args.methods is not None:
            return _compare_methods(args, roots)
        results, errors = run_benchmarks(
            roots, args.model, args.out_dir, PAMR_MODES[args.pamr], limit=args.limit, split=args.split,
            settings=args.settings, progress=not args.no_progress,
        )  # fmt: skip
    except (ValueError, OSError) as error:
        print(f"run_all_benchmarks: error: {error}", file=sys.stderr)
        return 2
    from naclip_hf.distributed import ProcessGroup

    if not ProcessGroup.start().is_main:
        return 1 if errors else 0
    table = format_table(results, markdown=args.markdown)
    print()
    print(table)
    if args.limit is not None:
        print(f"(--limit {args.limit}: only the first {args.limit} images of each benchmark; not comparable.)")
    write_text_atomic(args.out_dir / "table.md", format_table(results, markdown=True) + "\n")
    summary = {
        "model": args.model,
        "limit": args.limit,
        "split": args.split,
        "settings": list(args.settings),
        "miou_percent": {f"{p}_{'pamr' if m else 'no_pamr'}": v for (p, m), v in results.items()},
        "errors": errors,
        "published": {p: dict(get_benchmark(p).published) for p in PAPER_ORDER},
    }
    write_text_atomic(args.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"Wrote {args.out_dir / 'table.md'} and {args.out_dir / 'summary.json'}")
    if errors:
        print(f"{len(errors)} benchmark(s) failed: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


def _compare_methods(args: argparse.Namespace, roots: Mapping[str, Path]) -> int:
    """Run every method of `--methods` on the benchmarks and print the table of methods × benchmarks."""
    from naclip_hf.distributed import ProcessGroup

    measured: dict[tuple[str, bool], dict[str, float]] = {}
    errors: dict[str, str] = {}
    for method in dict.fromkeys(args.methods):
        results, failed = run_benchmarks(
            roots, args.model, args.out_dir / method, PAMR_MODES[args.pamr], limit=args.limit, split=args.split,
            settings=args.settings, progress=not args.no_progress, method=method,
        )  # fmt: skip
        for (name, pamr), miou in results.items():
            if miou is not None:
                measured.setdefault((method, pamr), {})[name] = miou
        errors.update({f"{method}/{name}": message for name, message in failed.items()})
    if not ProcessGroup.start().is_main:
        return 1 if errors else 0
    table = comparison_table(measured, PAPER_ORDER)
    print()
    print(table)
    write_text_atomic(args.out_dir / "methods_table.md", table + "\n")
    print(f"Wrote {args.out_dir / 'methods_table.md'}")
    if errors:
        print(f"{len(errors)} run(s) failed: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
