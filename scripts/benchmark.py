"""Speed and memory of naclip-hf's default execution paths next to a baseline that makes the official code's choices.

    python scripts/benchmark.py --markdown            # every section, ViT-B/16 shapes; about 15 minutes on 2 cores
    python scripts/benchmark.py --sections text,pamr  # some sections only
    python scripts/benchmark.py --quick               # tiny model and image: a smoke test of a few seconds
    python scripts/benchmark.py --sections scale --scale-parts command  # the whole command on a large image only
    python scripts/benchmark.py --sections methods --official-dir DIR   # the methods, and the official code in DIR

Sections (run in this order; `--sections` picks some, default all)
    vision        whole-image pass and sliding windows, ours next to the baseline; FLOP/s vs the matmul rate
    pamr          PAMR refinement of the upsampled logit maps, ours next to the reference formulation
    e2e           `segment_image` end to end (class embeddings precomputed), ours next to the baseline
    bf16          end to end with the model in bfloat16, against ours in fp32
    precision     fp32 and bf16 per image (7 and 13 names), stage by stage; the bf16 tower vs the bf16 matmul rate
    clipseg       transformers' CLIPSeg (ViT-B/16, 352 px, one backbone pass per prompt) vs ours, 7 and 150 classes,
                  fp32 and bf16
    methods       every method per image (fp32, bf16) as a ratio to NACLIP; with --official-dir, SC-CLIP, SFP and
                  ResCLIP against their official code in the same process (see bench/methods.py)
    text          text classifier for N names x 80 templates; its second call from the disk cache
    startup       `naclip --help` vs `import torch`, import and load times, `naclip segment` first and repeat
                  calls vs the baseline command
    batch_sizes   sweeps of `slide_batch_size` and `text_batch_size` (the defaults in naclip_hf.models.naclip.options)
    scale         large images end to end (peak RSS, 12000x9000 and 4000x3000 with 150 classes) and images/s
                  of `naclip segment` on 1 vs 2 processes (see bench/scale.py; `--scale-parts` picks some of
                  images, command, throughput)
    kept_memory   PAMR and end to end again with malloc keeping freed memory (last: it cannot be undone)
The image sections run first, in the fresh process, as for the first image a user segments: whether large
blocks are page-faulted in again depends on what the process allocated before.

Adding a section: write `scripts/bench/<name>.py` with `run(context: Context) -> SectionResult` (see
`bench/common.py`: `context` builds the model, the baseline model and the inputs on first use; a section returns
rows of the main table, extra `Table`s and `Target`s), then add one entry to `SECTIONS` below. Nothing else
changes: the driver prints and serialises whatever sections return.

Model and inputs
    A CLIP with ViT-B/16 shapes (vision: 768 wide, 12 layers, 12 heads, patch 16, 224 pixels; text: 512 wide,
    12 layers, 8 heads, vocabulary 49408, 77 positions; projection 512), randomly initialised from a fixed seed:
    speed and memory do not depend on the weight values, and nothing is downloaded. Tokenizer: the CLIP BPE of
    `tests/fixtures/golden/tokenizer`. Class names: the 171 classes of COCO-Stuff (`cls_coco_stuff.txt`; one name
    each); `--names N` takes the first N. Image: the 375x500 RGB test image `img_c` of the golden fixture, resized
    to a short side of 336 (336x448, six 224-pixel windows at stride 112); 12 names; PAMR with 10 steps at
    dilations 8 and 16. The command-line runs segment that image into the first 13 classes.

Baseline (scripts/baselines.py): the official execution choices, computed from library pieces without patching
the library. Text: one text-tower call per name with its 80 prompts padded to 77 tokens (causal mask only).
Vision: a model sharing our weights under a config with eager attention, one sliding window per call. PAMR:
`pamr_reference`, which materialises every shifted copy of the scores at once. The "Outputs" column says how far
our outputs are from the baseline's (they compute the same function).

Timing: wall-clock time (`time.perf_counter`), the best of `--repeats` runs after a warm-up run, with ours and the
baseline alternating within each repeat: other processes on a shared machine only ever slow a run down. Start-up
times are medians of subprocess runs. Ratios ("Speed-up", targets) compare timings of the same run.

Memory: the peak of live tensor bytes during the stage, above what was allocated when it started, from the
allocation and free events that `torch.profiler` records with `profile_memory=True` (in the warm-up run). It is
exact for tensors (activations, temporaries, outputs) and leaves out the weights, Python objects and scratch
space that MKL or oneDNN allocate themselves.

Allocator: with glibc's default settings, a block above a threshold (at most 32 MiB) is mmap-ed when allocated and
returned to the system when freed, so every use page-faults it in again. The reference PAMR allocates 70-140 MiB
temporaries in each of its 10 steps and spends most of its time in those page faults; ours keeps its temporaries
small. The `kept_memory` section measures PAMR and end to end again with malloc keeping freed memory, the best
case for the baseline.

Compute efficiency: FLOPs of one vision pass counted by `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per
multiply-add), divided by its best time, against the machine's fp32 matmul rate: the best of 20 `torch.mm` of two
2048x2048 matrices, sampled between sections.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench import (  # noqa: E402
    batch_sizes,
    clipseg,
    e2e,
    kept_memory,
    methods,
    onnx,
    pamr,
    precision,
    scale,
    startup,
    text,
    vision,
)
from bench.common import (  # noqa: E402
    QUICK,
    Context,
    Row,
    SectionResult,
    Table,
    Target,
    benchmark_image,
    build_model,
    load_processor,
    mib,
    peak_tensor_bytes,
    ratio,
    seconds,
)

# Every section, in the order they run. A new section: one module in scripts/bench/ and one entry here.
SECTIONS: dict[str, Callable[[Context], SectionResult]] = {
    "vision": vision.run,
    "pamr": pamr.run,
    "e2e": e2e.run,
    "bf16": e2e.run_bf16,
    "precision": precision.run,
    "clipseg": clipseg.run,
    "methods": methods.run,
    "text": text.run,
    "startup": startup.run,
    "onnx": onnx.run,
    "batch_sizes": batch_sizes.run,
    "scale": scale.run,
    "kept_memory": kept_memory.run,
}

__all__ = ["QUICK", "SECTIONS", "benchmark_image", "build_model", "load_processor", "main", "peak_tensor_bytes"]


def machine_info() -> dict[str, Any]:
    """Date, CPU, threads and library versions."""
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": f"{cpu} ({os.cpu_count()} logical cores, {capability})",
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated sections to run, of "
                        f"{', '.join(SECTIONS)} (default: all)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny model and image (smoke test)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per stage, the best is reported")
    parser.add_argument("--names", type=int, default=None, help="class names of the text section (default 171; "
                        "4 with --quick)")  # fmt: skip
    parser.add_argument("--baseline-text-names", type=int, default=8, help="names the baseline text classifier "
                        "is timed on before scaling to --names (0: all)")  # fmt: skip
    parser.add_argument("--startup-runs", type=int, default=None, help="subprocess runs per start-up "
                        "measurement, the median is reported (default 5; 1 with --quick)")  # fmt: skip
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="dtype of the model, in both "
                        "modes (the targets are for fp32)")  # fmt: skip
    parser.add_argument("--slide-batch-size", type=int, default=None, help="windows per batch of our path "
                        "(default: the config's)")  # fmt: skip
    parser.add_argument("--text-batch-size", type=int, default=None, help="prompts per batch of our path "
                        "(default: the config's)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--official-dir", type=Path, default=None, metavar="DIR", help="folder holding checkouts "
                        "of the official SC-CLIP, SFP and ResCLIP code (DIR/SC-CLIP, DIR/SFP, DIR/ResCLIP), timed "
                        "by the methods section (default: that part is skipped)")  # fmt: skip
    parser.add_argument("--scale-parts", default=",".join(scale.PARTS), help="comma-separated parts of the scale "
                        f"section, of {', '.join(scale.PARTS)} (default: all)")  # fmt: skip
    args = parser.parse_args(argv)
    args.section_list = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in args.section_list if name not in SECTIONS]
    if unknown or not args.section_list:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    args.scale_part_list = [name.strip() for name in args.scale_parts.split(",") if name.strip()]
    unknown = [name for name in args.scale_part_list if name not in scale.PARTS]
    if unknown or not args.scale_part_list:
        parser.error(f"unknown scale parts {unknown}; choose from {', '.join(scale.PARTS)}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen sections in `SECTIONS` order; returns the report."""
    if args.threads:
        torch.set_num_threads(args.threads)
    context = Context(args)
    model = context.model
    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {
            "model": "tiny CLIP (smoke test)" if args.quick else "CLIP ViT-B/16 shapes, random weights (seed 0)",
            "dtype": args.dtype,
            "image": f"{context.setting.image_size[0]}x{context.setting.image_size[1]}, short side "
            f"{context.setting.short_side}, windows {context.setting.slide_crop}/{context.setting.slide_stride}, "
            f"slide_batch_size={model.config.slide_batch_size or 'by precision'}, PAMR {model.config.pamr_steps} "
            f"steps, dilations "
            f"{model.config.pamr_dilations}, {context.setting.image_names} names",
            "timing": f"best of {args.repeats} (ours and baseline alternating); memory: peak tensor bytes "
            "(torch.profiler)",
            "sections": ", ".join(name for name in SECTIONS if name in args.section_list),
        },
        "rows": [],
        "tables": [],
        "targets": [],
    }
    results: list[SectionResult] = []
    durations: dict[str, float] = {}
    context.sample_matmul_rate()
    for name, section in SECTIONS.items():
        if name in args.section_list:
            start = time.perf_counter()
            results.append(section(context))
            durations[name] = time.perf_counter() - start
            context.sample_matmul_rate()
    results += [result.finish(context) for result in list(results) if result.finish is not None]
    for result in results:
        report["rows"] += result.rows
        report["tables"] += result.tables
        report["targets"] += [] if args.dtype != "fp32" else result.targets
        report["settings"].update(result.settings)
    report["settings"]["fp32 matmul samples (GFLOP/s)"] = ", ".join(
        f"{rate / 1e9:.1f}" for rate in context.matmul_samples
    )
    report["settings"]["section wall times (s)"] = ", ".join(f"{k} {v:.0f}" for k, v in durations.items())
    report["machine"]["load_average_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return report


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return out + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *rows]]


def render(report: dict[str, Any], markdown: bool) -> str:
    """The report as plain text or Markdown."""
    lines = ["## naclip-hf benchmark" if markdown else "naclip-hf benchmark", ""]
    for key, value in {**report["machine"], **report["settings"]}.items():
        lines.append(f"- {key}: {value}" if markdown else f"{key:>30}: {value}")
    rows: list[Row] = report["rows"]
    if rows:
        header = ["Stage", "Ours (s)", "Ours peak (MiB)", "Compared with", "Time (s)", "Peak (MiB)", "Speed-up",
                  "Memory (ours/other)", "Outputs", "Note"]  # fmt: skip
        table = [
            [row.stage, seconds(row.ours_s), mib(row.ours_peak), row.reference, seconds(row.reference_s),
             mib(row.reference_peak), ratio(row.speedup), ratio(row.memory_ratio), row.outputs, row.note]
            for row in rows
        ]  # fmt: skip
        lines += ["", *_table(header, table, markdown)]
    extra: list[Table] = report["tables"]
    for table in extra:
        lines += ["", *_table(table.header, table.rows, markdown)]
    targets: list[Target] = report["targets"]
    if targets:
        lines.append("")
        if report["settings"]["model"].startswith("tiny"):
            lines += ["Targets (they are for ViT-B/16; with --quick the sizes are too small for them to apply):", ""]
        table = [
            [t.target, "—" if t.measured is None else f"{t.measured:.3g}", f"{t.sense} {t.required:g}",
             "yes" if t.met else "NO"]
            for t in targets
        ]  # fmt: skip
        lines += _table(["Target", "Measured", "Required", "Met"], table, markdown)
    return "\n".join(lines)


def to_json(report: dict[str, Any]) -> dict[str, Any]:
    """The report as JSON-ready data (rows with their ratios, targets with `met`)."""
    rows = [{**asdict(row), "speedup": row.speedup, "memory_ratio": row.memory_ratio} for row in report["rows"]]
    targets = [{**asdict(target), "met": target.met} for target in report["targets"]]
    tables = [asdict(table) for table in report["tables"]]
    return {"machine": report["machine"], "settings": report["settings"], "rows": rows, "tables": tables,
            "targets": targets}  # fmt: skip


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The quiet of the `naclip` commands (`naclip_hf.cli._common.quiet_libraries`), and no progress bars from
    transformers or huggingface_hub (the sections save and load checkpoints): the output is the report alone."""
    import huggingface_hub.utils
    import transformers.utils.logging

    from naclip_hf.cli._common import quiet_libraries

    bars = transformers.utils.logging.is_progress_bar_enabled(), not huggingface_hub.utils.are_progress_bars_disabled()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    try:
        with quiet_libraries():
            yield
    finally:
        if bars[0]:
            transformers.utils.logging.enable_progress_bar()
        if bars[1]:
            huggingface_hub.utils.enable_progress_bars()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with quiet():
        report = run(args)
    print(render(report, args.markdown))
    if args.json:
        args.json.write_text(json.dumps(to_json(report), indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
