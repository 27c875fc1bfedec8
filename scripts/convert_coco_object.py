"""Make COCO-Object label maps from COCO-Stuff 164k ones (NACLIP / MMSeg evaluation protocol).

Reads `COCO_ROOT/annotations/<split>/*_labelTrainIds.png` (train ids: 0..79 things, 80..170 stuff, 255 ignore)
and writes `*_instanceTrainIds.png` next to each: 0 = background (all stuff), 1..80 = things, 255 = ignore.

Usage: python scripts/convert_coco_object.py COCO_ROOT [--split val2017] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from naclip_hf.evaluation.datasets import coco_stuff_to_coco_object, read_label_map
from naclip_hf.fileio import write_atomic

STUFF_SUFFIX = "_labelTrainIds.png"
OBJECT_SUFFIX = "_instanceTrainIds.png"


def write_png_atomically(array: np.ndarray, destination: Path) -> None:
    """Save `array` as a grayscale PNG at `destination`, complete or not at all."""
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    write_atomic(destination, lambda temporary: image.save(temporary, format="PNG"))


def convert_folder(folder: Path, overwrite: bool = False, show_progress: bool = True) -> tuple[int, int]:
    """Convert every COCO-Stuff label map in `folder`; returns (written, skipped because already present)."""
    sources = sorted(folder.glob(f"*{STUFF_SUFFIX}"))
    if not sources:
        raise FileNotFoundError(
            f"No '*{STUFF_SUFFIX}' label maps in {folder}; make the COCO-Stuff train-id labels first "
            "(MMSeg's tools/dataset_converters/coco_stuff164k.py)."
        )
    written = skipped = 0
    for source in tqdm(sources, desc=f"COCO-Object {folder.name}", unit="map", disable=not show_progress):
        destination = source.with_name(source.name[: -len(STUFF_SUFFIX)] + OBJECT_SUFFIX)
        if destination.exists() and not overwrite:
            skipped += 1
            continue
        try:
            converted = coco_stuff_to_coco_object(read_label_map(source, reduce_zero_label=False))
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        write_png_atomically(converted, destination)
        written += 1
    return written, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "coco_root", type=Path, help="folder holding images/ and annotations/ (coco_stuff164k)"
    )
    parser.add_argument(
        "--split", default="val2017", help="annotation subfolder to convert (default: val2017)"
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite label maps that already exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    split = args.split if args.split.endswith("2017") else f"{args.split}2017"
    folder = args.coco_root / "annotations" / split
    if not folder.is_dir():
        print(
            f"error: {folder} does not exist; COCO_ROOT must directly contain annotations/{split}/.",
            file=sys.stderr,
        )
        return 2
    try:
        written, skipped = convert_folder(folder, overwrite=args.overwrite, show_progress=not args.quiet)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {written} COCO-Object label maps to {folder} ({skipped} already present, kept).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
