"""Section `onnx`: the ONNX export and its torch-free runtime (`naclip_hf.export`).

- `export_onnx` of a checkpoint with the run's shapes (random weights, saved to a temporary folder) with the
  `cli_classes` class names stored and `--quantize`: time and file sizes (the vision graph, its int8 copy and the
  text graph);
- one image segmented end to end in process (resize, windows, post-processing; class embeddings precomputed) with
  each runtime variant (onnxruntime fp32 with the sliding windows batched into one graph run, fp32 with one window
  per run, int8) and PyTorch (`segment_image`), all alternating; labels compared; the fastest variant against
  PyTorch;
- the first call with names never embedded before (text graph loaded, `cli_classes` names embedded, the image
  segmented; no disk cache) on a loaded segmenter, next to PyTorch's first call with new names (`encode_classes` +
  `segment_image` on a loaded model), alternating, a new label set each repeat;
- `naclip segment` on the export, start to exit (a new process each time; median of `--startup-runs`), next to
  `naclip segment` on the checkpoint (repeat call, label embeddings from the disk cache) and the baseline command
  (`scripts/baselines.py segment`, the official code's choices). The baseline command's time is taken from the
  `startup` section when it ran in this process (`context.shared["baseline_command_s"]`), otherwise measured here.

Needs `onnx`, `onnxscript` and `onnxruntime` (`pip install -e .[onnx]`).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    MIB,
    SCRIPTS,
    Context,
    Row,
    SectionResult,
    Table,
    Target,
    best_times,
    build_model,
    class_names,
    seconds,
)

CLI_REPEAT_TARGET = 20.0
# The fastest runtime variant per image against PyTorch fp32 (speed-up, at least).
IMAGE_SPEEDUP_TARGET = 1.0
# The first call with new names on the export against PyTorch's (time ratio, at most).
FIRST_CALL_RATIO_TARGET = 2.0


def _naclip_command() -> list[str]:
    script = Path(sys.executable).parent / "naclip"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "naclip_hf.cli"]


def _wall_time(command: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=3600)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return elapsed


def _first_calls(
    export_dir: Path, model: Any, processor: Any, image: Any, context: Context
) -> tuple[float, float, float]:
    """Best first-call times with new names (onnxruntime fp32, PyTorch) and the labels' lowest agreement. Repeat r
    takes the (r + 2)-th `cli_classes` names of the class list (the first ones are stored with the export), on a
    segmenter loaded for it (not timed) and on the loaded model (neither has them cached)."""
    from naclip_hf.export.runtime import ExportedSegmenter
    from naclip_hf.inference import encode_classes, segment_image

    count = context.setting.cli_classes
    onnx_times, torch_times, agreement = [], [], 1.0
    for repeat in range(max(context.repeats, 1)):
        names = class_names((repeat + 2) * count)[-count:]
        segmenter = ExportedSegmenter(export_dir)
        start = time.perf_counter()
        result = segmenter.segment(image, names)
        onnx_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        expected = segment_image(model, processor, image, encode_classes(model, processor, names))
        torch_times.append(time.perf_counter() - start)
        agreement = min(agreement, float((result.segmentation == expected.segmentation.numpy()).mean()))
    return min(onnx_times), min(torch_times), agreement


def run(context: Context) -> SectionResult:
    from PIL import Image

    from naclip_hf.export.onnx_export import export_onnx
    from naclip_hf.export.runtime import ExportedSegmenter
    from naclip_hf.inference import encode_classes, load_model, load_processor, segment_image

    runs = context.args.startup_runs or (1 if context.quick else 5)
    names = class_names(context.setting.cli_classes)
    with tempfile.TemporaryDirectory(prefix="naclip-onnx-") as directory:
        work = Path(directory)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "NACLIP_CACHE": str(work / "text-cache"),
               "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
        checkpoint = work / "checkpoint"
        build_model(context.setting).save_pretrained(checkpoint)
        context.processor.save_pretrained(checkpoint)
        export_dir = work / "export"
        start = time.perf_counter()
        report = export_onnx(checkpoint, export_dir, names, quantize=True)
        export_s = time.perf_counter() - start

        # In process: the same image and classes through every path.
        model, processor = load_model(checkpoint), load_processor(checkpoint)
        classes = encode_classes(model, processor, names)
        image = context.image
        variants = {
            "onnxruntime fp32": ExportedSegmenter(export_dir),
            "onnxruntime fp32, one window per run": ExportedSegmenter(export_dir, {"slide_batch_size": 1}),
            "onnxruntime int8": ExportedSegmenter(export_dir, quantized=True),
        }
        paths: dict[str, Any] = {name: (lambda s=segmenter: s.segment(image)) for name, segmenter in variants.items()}
        paths["PyTorch"] = lambda: segment_image(model, processor, image, classes)
        results = {name: path() for name, path in paths.items()}  # warm-up, and the outputs compared
        times = best_times(paths, context.repeats)
        reference = results["PyTorch"]
        expected_labels = reference.segmentation.numpy()
        agreement = {name: float((np.asarray(r.segmentation) == expected_labels).mean()) for name, r in results.items()}
        fp32_probs = float(abs(results["onnxruntime fp32"].probabilities - reference.probabilities.numpy()).max())
        int8_vs_fp32 = float(
            (results["onnxruntime int8"].segmentation == results["onnxruntime fp32"].segmentation).mean()
        )
        fastest = min(variants, key=times.__getitem__)
        first_onnx, first_torch, first_agreement = _first_calls(export_dir, model, processor, image, context)

        # Command line, process start to exit.
        image_path = work / "image.png"
        Image.fromarray(image).save(image_path)
        labels = work / "labels.txt"
        labels.write_text("\n".join(names) + "\n", encoding="utf-8")
        common = [str(image_path), "--labels-file", str(labels)]
        onnx_cli = [*_naclip_command(), "segment", *common, "--model", str(export_dir), "--out", str(work / "o")]
        torch_cli = [*_naclip_command(), "segment", *common, "--model", str(checkpoint), "--out", str(work / "t")]
        _wall_time(onnx_cli, env, work)  # warm-up: file-system caches
        _wall_time(torch_cli, env, work)  # first call: fills the label-embedding cache
        onnx_cli_s = statistics.median(_wall_time(onnx_cli, env, work) for _ in range(runs))
        torch_cli_s = statistics.median(_wall_time(torch_cli, env, work) for _ in range(runs))
        baseline_s = context.shared.get("baseline_command_s")
        if baseline_s is None:
            baseline = [sys.executable, str(SCRIPTS / "baselines.py"), "segment", *common, "--model",
                        str(checkpoint), "--out", str(work / "b")]  # fmt: skip
            baseline_s = _wall_time(baseline, env, work)

    image_text = f"{image.shape[0]}x{image.shape[1]} image, {len(names)} names"
    one_window = "onnxruntime fp32, one window per run"
    first_text = f"{image_text}, {len(names)} new names"
    rows = [
        Row("onnx_image_fp32", f"onnxruntime fp32, end to end ({image_text})", times["onnxruntime fp32"], None,
            "PyTorch", times["PyTorch"], None,
            outputs=f"labels equal {agreement['onnxruntime fp32']:.2%}, probabilities max abs diff {fp32_probs:.1e}"),
        Row("onnx_image_fp32_one_window_per_run", f"{one_window}, end to end ({image_text})",
            times[one_window], None, "onnxruntime fp32", times["onnxruntime fp32"], None,
            outputs=f"labels equal to PyTorch {agreement[one_window]:.2%}", note="windows batched vs one per run"),
        Row("onnx_image_int8", f"onnxruntime int8, end to end ({image_text})", times["onnxruntime int8"], None,
            "PyTorch", times["PyTorch"], None,
            outputs=f"labels equal to PyTorch {agreement['onnxruntime int8']:.2%}, to fp32 {int8_vs_fp32:.2%}",
            note=f"{variants['onnxruntime int8'].graph_path.name}, the int8 graph `--quantized` runs on this CPU"),
        Row("onnx_first_call_new_names", f"onnxruntime fp32, first call with new names ({first_text})", first_onnx,
            None, "PyTorch first call", first_torch, None, outputs=f"labels equal {first_agreement:.2%}",
            note="text graph loaded and run, names embedded, image segmented; no disk cache"),
        Row("onnx_cli_repeat", f"`naclip segment` on the export, 1 image, {len(names)} classes", onnx_cli_s, None,
            "baseline command", baseline_s, None, note="process start to exit; label embeddings stored"),
    ]  # fmt: skip
    sizes = [[name, f"{size / MIB:.2f}"] for name, size in report.files.items()]
    tables = [
        Table("ONNX export", ["File", "Size (MiB)"], [["(export time, s)", seconds(export_s)], *sizes]),
        Table(
            "ONNX runtime",
            ["Path", "Time (s)", "Labels equal to PyTorch"],
            [[name, seconds(times[name]), f"{agreement[name]:.2%}"] for name in paths]
            + [
                [f"onnxruntime fp32, first call with {len(names)} new names", seconds(first_onnx),
                 f"{first_agreement:.2%}"],
                [f"PyTorch, first call with {len(names)} new names", seconds(first_torch), ""],
            ]
            + [
                ["`naclip segment` on the export (start to exit)", seconds(onnx_cli_s), ""],
                ["`naclip segment` on the checkpoint, repeat call (start to exit)", seconds(torch_cli_s), ""],
                ["baseline command (start to exit)", seconds(baseline_s), ""],
            ],
        ),
    ]
    targets = [
        Target("`naclip segment` on an export vs baseline command", baseline_s / onnx_cli_s, CLI_REPEAT_TARGET),
        Target(f"fastest export variant per image ({fastest}) vs PyTorch fp32", times["PyTorch"] / times[fastest],
               IMAGE_SPEEDUP_TARGET),
        Target("first call with new names, onnxruntime / PyTorch (time ratio)", first_onnx / first_torch,
               FIRST_CALL_RATIO_TARGET, "<="),
    ]  # fmt: skip
    return SectionResult(rows=rows, tables=tables, targets=targets, settings={"onnx_max_abs_diff": report.max_abs_diff})
