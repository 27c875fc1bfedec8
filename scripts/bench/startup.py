"""Section `startup`: how fast a fresh process gets to work, each measured in subprocesses (wall time, median of
`--startup-runs` runs unless said otherwise).

- `naclip --help` next to `python -c "import torch"` (the help must not import torch);
- `python -c "import naclip_hf.inference"`: what `naclip segment` imports before it loads a model;
- `load_model` of a checkpoint with the run's shapes (random weights, saved to a temporary folder), in process;
- `naclip segment` on one image with `cli_classes` classes (13 for ViT-B/16), first call (empty label-embedding
  cache) and repeat call (cache filled by the first), next to `scripts/baselines.py segment`, which makes the
  official code's choices (no cache, so its repeat call does the work of its first; it is timed once).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import SCRIPTS, Context, Row, SectionResult, Table, Target, build_model, class_names, seconds

HELP_RATIO_TARGET = 0.5
FIRST_CALL_TARGET = 5.0
REPEAT_CALL_TARGET = 10.0


def _naclip_command() -> list[str]:
    """The `naclip` console script next to this Python (no shell shim), else `python -m naclip_hf.cli`."""
    script = Path(sys.executable).parent / "naclip"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "naclip_hf.cli"]


def wall_time(command: Sequence[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds until `command` exits; raises `RuntimeError` with its stderr when it fails."""
    start = time.perf_counter()
    completed = subprocess.run(list(command), capture_output=True, text=True, env=env, cwd=cwd, timeout=3600)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return elapsed


def median_time(command: Sequence[str], runs: int, env: dict[str, str], cwd: Path, warm_up: bool = True) -> float:
    if warm_up:
        wall_time(command, env, cwd)  # file-system caches
    return statistics.median(wall_time(command, env, cwd) for _ in range(runs))


def run(context: Context) -> SectionResult:
    from PIL import Image

    from naclip_hf.inference import load_model

    runs = context.args.startup_runs or (1 if context.quick else 5)
    with tempfile.TemporaryDirectory(prefix="naclip-startup-") as directory:
        work = Path(directory)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "NACLIP_CACHE": str(work / "text-cache"),
               "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
        python = sys.executable
        warm_up = not context.quick  # a smoke test needs no precision
        torch_s = median_time([python, "-c", "import torch"], runs, env, work, warm_up)
        help_s = median_time([*_naclip_command(), "--help"], runs, env, work, warm_up)
        import_s = median_time([python, "-c", "import naclip_hf.inference"], runs, env, work, warm_up)

        checkpoint = work / "checkpoint"
        build_model(context.setting).save_pretrained(checkpoint)
        context.processor.save_pretrained(checkpoint)
        load_model(checkpoint)  # warm-up: the file is in the page cache from here on, for every run below
        load_s = statistics.median(_timed_load(checkpoint) for _ in range(max(runs, 3)))

        image_path = work / "image.png"
        Image.fromarray(context.image).save(image_path)
        labels = work / "labels.txt"
        labels.write_text("\n".join(class_names(context.setting.cli_classes)) + "\n", encoding="utf-8")
        common = [str(image_path), "--model", str(checkpoint), "--labels-file", str(labels)]
        ours = [*_naclip_command(), "segment", *common, "--out", str(work / "ours")]
        first_s = wall_time(ours, env, work)
        repeat_s = statistics.median(wall_time(ours, env, work) for _ in range(max(runs // 2, 1)))
        baseline = [python, str(SCRIPTS / "baselines.py"), "segment", *common, "--out", str(work / "baseline")]
        baseline_s = wall_time(baseline, env, work)
        context.shared["baseline_command_s"] = baseline_s  # the onnx section compares with the same command

    classes = context.setting.cli_classes
    rows = [
        Row("cli_help", "`naclip --help`", help_s, None, "`python -c \"import torch\"`", torch_s, None,
            note="subprocess wall time"),
        Row("cli_first", f"`naclip segment`, 1 image, {classes} classes, first call", first_s, None,
            "baseline command", baseline_s, None, note="empty label-embedding cache; process start to exit"),
        Row("cli_repeat", f"`naclip segment`, 1 image, {classes} classes, repeat call", repeat_s, None,
            "baseline command", baseline_s, None,
            note="label embeddings from the disk cache; the baseline has no cache"),
    ]  # fmt: skip
    table = Table(
        "Start-up",
        ["Step", "Time (s)"],
        [
            ["`python -c \"import torch\"`", seconds(torch_s)],
            ["`naclip --help`", seconds(help_s)],
            ["`python -c \"import naclip_hf.inference\"` (what `naclip segment` imports)", seconds(import_s)],
            ["`load_model` of the saved checkpoint (in process, file cached)", seconds(load_s)],
            [f"`naclip segment`, first call ({classes} classes)", seconds(first_s)],
            [f"`naclip segment`, repeat call ({classes} classes)", seconds(repeat_s)],
            [f"baseline command ({classes} classes)", seconds(baseline_s)],
        ],
    )
    return SectionResult(
        rows=rows,
        tables=[table],
        targets=[
            Target("`naclip --help` time / `import torch` time", help_s / torch_s, HELP_RATIO_TARGET, "<="),
            Target("`naclip segment` first call vs baseline command", baseline_s / first_s, FIRST_CALL_TARGET),
            Target("`naclip segment` repeat call vs baseline command", baseline_s / repeat_s, REPEAT_CALL_TARGET),
        ],
    )


def _timed_load(checkpoint: Path) -> float:
    from naclip_hf.inference import load_model

    start = time.perf_counter()
    load_model(checkpoint)
    return time.perf_counter() - start
