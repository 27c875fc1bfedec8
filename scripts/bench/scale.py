"""Section `scale`: large images and many images.

- Large images end to end (`segment_image` with `return_probabilities=False`, as `naclip segment` runs it: resize,
  sliding windows, then tiled post-processing at the full size with PAMR): a 12000x9000 image with 3 and with 20
  classes, and a 4000x3000 image with 150 classes (ADE20K's count). Each runs in a fresh subprocess, whose peak
  resident memory (`ru_maxrss`: model, image, label map, everything) is the number reported; the target is
  3 GiB. Class embeddings are random unit vectors (the text tower does not change the image path's memory).
- The whole command on a large image: `naclip segment IMG --labels a b c d --out DIR` on a 12000x9000 JPEG (smooth
  random colour fields with grain), PAMR on, under `/usr/bin/time -v`: its "Maximum resident set size" covers the
  decoding, the text classifier, segmentation and every output (label map, overlay with legend, JSON summary).
  The target is 3 GiB.
- Throughput of `naclip segment` over a folder of images on CPU: one process (all threads) against two processes
  under `torchrun` (one thread each), in images per second (model loading included, as a user would time it).

`--scale-parts` picks some of these parts: `images` (the large images), `command` (the whole command) and
`throughput`.

`--quick` shrinks everything (a tiny model, 1200x900 and 400x300 images, 8 images) to a smoke test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import REPO, SCRIPTS, Context, Row, SectionResult, Table, Target, build_model, load_processor

GIB = 2**30
PEAK_TARGET_GIB = 3.0
LARGE_CASES = [((9000, 12000), 3), ((9000, 12000), 20), ((3000, 4000), 150)]
QUICK_CASES = [((900, 1200), 3), ((300, 400), 20)]
COMMAND_IMAGE = (9000, 12000)
QUICK_COMMAND_IMAGE = (900, 1200)
COMMAND_LABELS = ["a", "b", "c", "d"]
PARTS = ("images", "command", "throughput")

# Run in a fresh interpreter: build the model, segment one random image, print seconds and peak RSS as JSON.
_LARGE_IMAGE_RUN = r"""
import json, resource, sys, time
import numpy as np, torch
sys.path.insert(0, {scripts!r})
from bench.common import FULL, QUICK, build_model, load_processor
from naclip_hf.inference import ClassEmbeddings, segment_image
setting = QUICK if {quick!r} else FULL
model = build_model(setting)
processor = load_processor(setting.short_side)
height, width, classes = {height}, {width}, {classes}
embeds = torch.nn.functional.normalize(torch.randn(classes, model.config.projection_dim), dim=-1)
names = ClassEmbeddings(embeds, torch.arange(classes), [[f"class {{i}}"] for i in range(classes)])
image = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
start = time.perf_counter()
result = segment_image(model, processor, image, names, return_probabilities=False)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"seconds": seconds, "peak": peak, "labels": int(result.segmentation.unique().numel())}}))
"""


def large_image(height: int, width: int, classes: int, quick: bool) -> dict[str, float]:
    code = _LARGE_IMAGE_RUN.format(scripts=str(SCRIPTS), quick=quick, height=height, width=width, classes=classes)
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def command_image(path: Path, height: int, width: int) -> None:
    """A JPEG of `height` x `width` that compresses and decodes like a photo: smooth random colour fields (a
    coarse random grid upsampled bicubically) with fine grain."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, size=(max(2, height // 200), max(2, width // 200), 3),
                                          dtype=np.uint8))  # fmt: skip
    pixels = np.asarray(coarse.resize((width, height), Image.BICUBIC)).astype(np.int16)
    grain = rng.integers(-12, 13, size=(-(-height // 4), -(-width // 4), 3), dtype=np.int16)
    pixels += np.repeat(np.repeat(grain, 4, axis=0), 4, axis=1)[:height, :width]
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def save_checkpoint(setting, folder: Path) -> None:
    """A checkpoint folder of `setting`'s shapes with random weights, as `naclip segment --model` reads it."""
    build_model(setting).save_pretrained(folder)
    load_processor(setting.short_side).save_pretrained(folder)


def _max_rss_command(argv: list[str]) -> list[str]:
    """`argv` run so that its peak resident memory is printed on stderr: under `/usr/bin/time -v` ("Maximum
    resident set size (kbytes): N"), else under a Python parent printing the same line from `getrusage`."""
    if os.path.exists("/usr/bin/time"):
        return ["/usr/bin/time", "-v", *argv]
    report = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
              "print(f'Maximum resident set size (kbytes): "
              "{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); sys.exit(code)")
    return [sys.executable, "-c", report, *argv]  # fmt: skip


def segment_command(setting, height: int, width: int) -> dict[str, float]:
    """Seconds and peak resident bytes of the whole `naclip segment` command on a `height` x `width` JPEG into
    4 classes (PAMR on, every output written), in a fresh process."""
    work = Path(tempfile.mkdtemp(prefix="naclip-bench-command-"))
    try:
        image, checkpoint, out = work / "large.jpg", work / "model", work / "out"
        command_image(image, height, width)
        save_checkpoint(setting, checkpoint)
        argv = [sys.executable, "-m", "naclip_hf.cli", "segment", str(image), "--model", str(checkpoint),
                "--labels", *COMMAND_LABELS, "--out", str(out)]  # fmt: skip
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        start = time.perf_counter()
        completed = subprocess.run(_max_rss_command(argv), env=env, capture_output=True, text=True,
                                   stdin=subprocess.DEVNULL)  # fmt: skip
        seconds = time.perf_counter() - start
        if completed.returncode != 0:
            raise RuntimeError(f"naclip segment failed ({completed.returncode}): {completed.stderr[-2000:]}")
        written = sorted(path.name for path in out.iterdir())
        if written != ["large.json", "large_labels.png", "large_overlay.png"]:
            raise RuntimeError(f"naclip segment wrote {written}, not the label map, overlay and summary.")
        kbytes = [line for line in completed.stderr.splitlines() if "Maximum resident set size" in line]
        return {"seconds": seconds, "peak": int(kbytes[-1].rsplit(":", 1)[1]) * 1024}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def throughput(setting, count: int) -> dict[str, float]:
    """Images per second of `naclip segment` over `count` 375x500 images, 1 process vs 2 under torchrun."""
    work = Path(tempfile.mkdtemp(prefix="naclip-bench-scale-"))
    try:
        checkpoint = work / "model"
        save_checkpoint(setting, checkpoint)
        config = json.loads((checkpoint / "config.json").read_text())
        config["prompt_templates"] = ["a photo of a {}."]  # the text tower is not what this measures
        (checkpoint / "config.json").write_text(json.dumps(config))
        images = work / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        for index in range(count):
            Image.fromarray(rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)).save(images / f"{index:03d}.png")
        argv = ["-m", "naclip_hf.cli", "segment", str(images), "--labels", "sky", "tree", "road", "person", "car",
                "--model", str(checkpoint)]  # fmt: skip
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        rates = {}
        for name, prefix, threads in (
            ("1 process", [sys.executable], str(os.cpu_count() or 1)),
            ("2 processes", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(_free_port())], "1"),
        ):  # fmt: skip
            out = work / name.replace(" ", "_")
            start = time.perf_counter()
            subprocess.run([*prefix, *argv, "--out", str(out)], env={**env, "OMP_NUM_THREADS": threads}, check=True,
                           capture_output=True)  # fmt: skip
            rates[name] = count / (time.perf_counter() - start)
        return rates
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(context: Context) -> SectionResult:
    quick = context.quick
    parts = getattr(context.args, "scale_part_list", PARTS)
    rows, targets, table, settings = [], [], [], {"repo": str(REPO)}
    cases = (QUICK_CASES if quick else LARGE_CASES) if "images" in parts else []
    for (height, width), classes in cases:
        measured = large_image(height, width, classes, quick)
        stage = f"large image {width}x{height}, {classes} classes, PAMR on"
        rows.append(Row(f"large_{width}x{height}_{classes}", stage, measured["seconds"], None, "", None, None,
                        note="peak = process RSS, model included"))  # fmt: skip
        table.append([stage, f"{measured['seconds']:.1f}", f"{measured['peak'] / GIB:.2f}"])
        targets.append(Target(f"peak memory (GiB), {stage}", measured["peak"] / GIB, PEAK_TARGET_GIB, "<="))
    if "command" in parts:
        height, width = QUICK_COMMAND_IMAGE if quick else COMMAND_IMAGE
        measured = segment_command(context.setting, height, width)
        stage = f"naclip segment, {width}x{height} JPEG, {len(COMMAND_LABELS)} classes, PAMR on, every output"
        rows.append(Row(f"command_{width}x{height}_{len(COMMAND_LABELS)}", stage, measured["seconds"], None, "", None,
                        None, note="peak = Maximum resident set size of /usr/bin/time -v"))  # fmt: skip
        table.append([stage, f"{measured['seconds']:.1f}", f"{measured['peak'] / GIB:.2f}"])
        targets.append(Target(f"peak memory (GiB), {stage}", measured["peak"] / GIB, PEAK_TARGET_GIB, "<="))
    if "throughput" in parts:
        rates = throughput(context.setting, 8 if quick else 50)
        settings["scale_throughput_ratio_2_vs_1"] = round(rates["2 processes"] / rates["1 process"], 3)
        table.append(["naclip segment, images/s: 1 process (all threads)", f"{rates['1 process']:.2f}", ""])
        table.append(["naclip segment, images/s: 2 processes (torchrun, 1 thread each)",
                      f"{rates['2 processes']:.2f}", ""])  # fmt: skip
    return SectionResult(
        rows=rows,
        targets=targets,
        tables=[Table("Large jobs", ["run", "seconds or images/s", "peak RSS (GiB)"], table)],
        settings=settings,
    )
