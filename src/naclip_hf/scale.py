"""Large jobs: resuming an interrupted run, and refusing images that cannot fit in memory before starting them
(splitting work across processes is `naclip_hf.distributed`).

Resume: an image's outputs are complete when its JSON summary exists and every file it lists exists. The summary
is written last (every file atomically), so an interrupted run leaves either complete outputs or files a rerun
redoes.

Memory: `estimate_image_peak_bytes` adds up what segmenting one image at its full size needs (the image, then
the larger of the tiled post-processing with its label map and the writing of the files); `memory_problem`
compares it with the memory available (`/proc/meminfo` MemAvailable, or `$NACLIP_MEMORY_LIMIT`).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path

MEMORY_LIMIT_ENV = "NACLIP_MEMORY_LIMIT"
"""Environment variable capping the memory an image may use (bytes, or a number with KiB/MiB/GiB/KB/MB/GB)."""
OUTPUT_BYTES_PER_PIXEL = 9
"""Bytes per pixel of writing one image's files: the label map narrowed to one byte per pixel, and the overlay, a
Pillow RGB image (4 bytes per pixel), with its copy carrying the legend (blending and PNG encoding run in bands)."""
MODEL_BYTES = 1 << 30
"""Memory counted for the model, its activations and the interpreter when checking whether an image fits."""


# ------------------------------------------------------------------------------------------------------------ resume
def is_complete(out_dir: str | os.PathLike, stem: str, expected: Iterable[str] = ()) -> bool:
    """Whether the outputs of `stem` in `out_dir` are complete: `<stem>.json` exists, is a JSON summary, and every
    file in its `outputs` (and every key of `expected` among them, e.g. "scores" when scores are asked for) exists.
    """
    summary = Path(out_dir) / f"{stem}.json"
    try:
        outputs = json.loads(summary.read_text(encoding="utf-8")).get("outputs")
    except (OSError, ValueError, AttributeError):
        return False
    if not isinstance(outputs, dict) or any(key not in outputs for key in expected):
        return False
    return all(isinstance(name, str) and (Path(out_dir) / name).is_file() for name in outputs.values())


def run_summary(segmented: int, skipped: int, failed: int, world_size: int = 1) -> str:
    """One line for the end of a run: "N segmented, M already done (skipped), K failed"."""
    where = f" on {world_size} processes" if world_size > 1 else ""
    return f"{segmented} segmented, {skipped} already done (skipped), {failed} failed{where}"


# ------------------------------------------------------------------------------------------------------------ memory
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "t": 1000**4, "tb": 1000**4, "tib": 1 << 40}  # fmt: skip


def parse_bytes(text: str) -> int:
    """`"3GiB"`, `"512 MB"`, `"1e9"` -> bytes; `ValueError` naming the accepted forms."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"{text!r} is not an amount of memory; write e.g. 4GiB, 512MiB, 2GB or a number of bytes.")
    try:
        value = float(match.group(1)) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not an amount of memory; write e.g. 4GiB or 512MiB.") from None
    if value <= 0:
        raise ValueError(f"{text!r} must be a positive amount of memory.")
    return int(value)


def available_memory_bytes() -> int | None:
    """Memory an image may use: `$NACLIP_MEMORY_LIMIT` when set, else MemAvailable of `/proc/meminfo`, else
    None (unknown: no check)."""
    limit = os.environ.get(MEMORY_LIMIT_ENV)
    if limit:
        try:
            return parse_bytes(limit)
        except ValueError as error:
            raise ValueError(f"${MEMORY_LIMIT_ENV}: {error}") from None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def estimate_image_peak_bytes(
    height: int, width: int, num_names: int, num_classes: int, pamr_steps: int, pamr_dilations: Sequence[int],
    return_probabilities: bool = False, max_tile_bytes: int | None = None, write_outputs: bool = True,
) -> int:
    """Estimated peak memory of segmenting one `height` × `width` image (beyond the model) with the tiled PyTorch
    post-processing (`estimate_post_processing_bytes`): see `image_peak_bytes`."""
    from .models.naclip.postprocessing_naclip import estimate_post_processing_bytes

    post = estimate_post_processing_bytes(
        height, width, num_names, num_classes, pamr_steps, pamr_dilations, return_probabilities, max_tile_bytes
    )
    return image_peak_bytes(height, width, post, num_classes, return_probabilities, write_outputs)


def image_peak_bytes(
    height: int,
    width: int,
    post_processing_bytes: int,
    num_classes: int,
    return_probabilities: bool = False,
    write_outputs: bool = True,
) -> int:
    """Estimated peak memory of segmenting one `height` × `width` image (beyond the model) whose post-processing
    peaks at `post_processing_bytes` with its full-size outputs: the decoded image plus the larger of the two
    phases that follow it, the post-processing and, with `write_outputs`, writing its files (the int64 label map is
    narrowed and freed in between; the probabilities, asked for to write scores, and the int64 label map then stay
    until the scores are written)."""
    pixels = height * width
    if not write_outputs:
        return 3 * pixels + post_processing_bytes
    kept = (4 * num_classes + 8) * pixels if return_probabilities else 0
    return 3 * pixels + max(post_processing_bytes, kept + OUTPUT_BYTES_PER_PIXEL * pixels)


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc's; other C libraries may lack it
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Give the memory that the C allocator keeps after frees back to the system (glibc's `malloc_trim`; nothing
    where it is missing).

    Tensors freed by PyTorch's worker threads stay in those threads' malloc arenas, which Pillow and numpy in the
    main thread do not reuse: after the post-processing of a 12000x9000 image, drawing its overlay would otherwise
    add its memory on top of about 0.7 GiB of freed tiles."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def format_bytes(value: float) -> str:
    """`3.2 GiB`-style text."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def memory_problem(needed: int, available: int | None = None) -> str | None:
    """None when `needed` bytes (plus `MODEL_BYTES`) fit in `available` (default: `available_memory_bytes()`),
    else the reason to skip the image, with what to do."""
    if available is None:
        available = available_memory_bytes()
    if available is None or needed + MODEL_BYTES <= available:
        return None
    return (
        f"needs about {format_bytes(needed + MODEL_BYTES)} of memory but {format_bytes(available)} is available "
        f"(${MEMORY_LIMIT_ENV} or MemAvailable); skipped. Free memory, run fewer processes at once, or resize the "
        "image"
    )


__all__ = [
    "MEMORY_LIMIT_ENV",
    "MODEL_BYTES",
    "OUTPUT_BYTES_PER_PIXEL",
    "available_memory_bytes",
    "estimate_image_peak_bytes",
    "format_bytes",
    "image_peak_bytes",
    "is_complete",
    "memory_problem",
    "parse_bytes",
    "release_free_memory",
    "run_summary",
]
