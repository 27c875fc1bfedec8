"""`naclip label`: segment every image of a `datasets` dataset and save a new dataset with a `segmentation` column.

Across processes (`torchrun` / `accelerate launch`), process `r` of `W` labels the contiguous shard `r` of the
split and saves it on its own, atomically; a rerun with the same number of processes skips the shards already
saved. The main process then joins the shards in order into the output dataset (`save_to_disk`), and pushes it
to the Hub with `--push-to-hub`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._common import (
    DelayedProgress,
    add_command,
    add_segmentation_options,
    check_model_source,
    run_options,
    settings_and_classes,
    settings_epilog,
)

SEGMENTATION_COLUMN = "segmentation"
PARTS_SUFFIX = ".parts"

DESCRIPTION = (
    "Segment every image of a dataset (a Hub dataset id, a folder saved with save_to_disk, an image folder, or "
    "parquet files) into the classes you name, and save a copy of the dataset with a 'segmentation' column of PNG "
    "label maps (pixel value = class id, as `naclip segment` writes them). The class names, model, dtype and "
    "settings are stored as JSON in the dataset's info.description. Runs across processes under torchrun or "
    "accelerate launch (one contiguous shard per process) and resumes by shard."
)
EXAMPLES = """Examples:
  naclip label ./photos --labels sky tree "road, street" --out photos_labelled
  naclip label scene_parse_150 --split validation --preset ade20k --out ade_val_naclip
  torchrun --nproc_per_node 4 -m naclip_hf.cli label data.parquet --labels-file labels.txt --out labelled

Reading the result:
  ds = datasets.load_from_disk("photos_labelled")
  classes = json.loads(ds.info.description)["class_labels"]
  ds[0]["segmentation"]  # PIL image, pixel value = index into classes"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `naclip label` to the subparsers of `naclip`."""
    parser = add_command(subparsers, "label", "segment a whole dataset and save it with a 'segmentation' column "
                         "(datasets save_to_disk)", DESCRIPTION, settings_epilog() + "\n\n" + EXAMPLES)  # fmt: skip
    parser.add_argument(
        "dataset", metavar="DATASET",
        help="a Hub dataset id, a folder written by save_to_disk, a folder of images (imagefolder), or a .parquet "
        "file",
    )  # fmt: skip
    parser.add_argument("--split", default="train", help="split to label (default: %(default)s)")
    parser.add_argument("--image-column", default="image", metavar="NAME", help="column holding the images "
                        "(default: %(default)s)")  # fmt: skip
    add_segmentation_options(parser, ("a benchmark's classes and settings", ""), "use a method's settings")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder of the new dataset (must not exist, unless --overwrite or a resumed run)")
    parser.add_argument("--overwrite", action="store_true", help="label again, replacing --out and its saved shards")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO",
                        help="also push the new dataset to this Hub repository (needs network and a token)")
    return parser


def load_source_dataset(source: str, split: str) -> Any:
    """The split `split` of a dataset: a folder saved with `save_to_disk`, a folder of images, parquet file(s),
    or a Hub id. Raises `ValueError` naming the dataset and what was tried."""
    import datasets

    path = Path(source).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"it has no split {split!r} (splits: {', '.join(loaded)}); pass --split")
                loaded = loaded[split]
            return loaded
        if path.is_dir():
            return datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
        if path.suffix == ".parquet":
            return datasets.load_dataset("parquet", data_files=str(path), split="train")
        if path.exists():
            raise ValueError("it is a file but not a .parquet file")
        return datasets.load_dataset(source, split=split)
    except (OSError, ValueError, FileNotFoundError) as error:
        raise ValueError(
            f"Could not load the dataset {source!r} ({error}); give a Hub id, a folder saved with save_to_disk, "
            "a folder of images, or a .parquet file."
        ) from None


def run(args: argparse.Namespace) -> int:
    """`naclip label`: label the dataset's shard of this process, save it, and (main process) join the shards."""
    overrides, short_side, classes, preset = settings_and_classes(args)
    out = Path(args.out)
    parts = out.with_name(out.name + PARTS_SUFFIX)
    if out.exists() and not args.overwrite:
        if (out / "dataset_info.json").is_file():
            print(f"{out} already holds a labelled dataset; pass --overwrite to label again.")
            return 0
        raise ValueError(f"--out {out} exists and is not a dataset written by naclip label; choose a new folder.")
    checkpoint = check_model_source(args.model)

    from ..distributed import ProcessGroup
    from ..fileio import staged_directory
    from ..segmenter import load_segmenter

    group = ProcessGroup.start()
    dataset = load_source_dataset(args.dataset, args.split)
    if args.image_column not in dataset.column_names:
        raise ValueError(
            f"The dataset has no column {args.image_column!r} (columns: {', '.join(dataset.column_names)}); pass "
            "--image-column NAME."
        )
    if SEGMENTATION_COLUMN in dataset.column_names:
        raise ValueError(f"The dataset already has a {SEGMENTATION_COLUMN!r} column; remove or rename it first.")
    if args.overwrite and group.is_main:
        for folder in (out, parts):
            shutil.rmtree(folder, ignore_errors=True)
    group.barrier()
    segmenter = load_segmenter(checkpoint, overrides, quantized=args.quantized, device=group.model_device,
                               dtype=args.dtype)  # fmt: skip
    label_set = segmenter.encode_classes(classes, cache_dir=True)
    options, recorded = run_options(segmenter, short_side)
    source = {"dataset": str(args.dataset), "split": args.split, "image_column": args.image_column}
    metadata = {"task": "naclip-segmentation", "class_labels": label_set.class_labels, "classes": label_set.classes,
                "model": str(args.model), "dtype": segmenter.dtype, "preset": preset, "method": args.method,
                "settings": recorded, "source": source}  # fmt: skip

    shard_dir = parts / f"shard-{group.rank:05d}-of-{group.world_size:05d}"
    error = None
    if not (shard_dir / "dataset_info.json").is_file():
        error = _label_shard(args, dataset, group, shard_dir, segmenter, label_set, options, metadata)
    else:
        print(f"naclip label: shard {group.rank + 1} of {group.world_size} already done ({shard_dir}), skipped",
              file=sys.stderr)  # fmt: skip
    errors = [message for message in group.gather(error) if message is not None]  # also waits for every process
    if not group.is_main:
        return 1 if errors else 0
    if errors:
        for message in errors:
            print(f"naclip label: error: {message}", file=sys.stderr)
        print(f"naclip label: {len(errors)} shard(s) failed; the others are saved in {parts}. Fix the input and run "
              "the same command again to label the failed shards only.", file=sys.stderr)  # fmt: skip
        return 1
    import datasets

    shards = [datasets.load_from_disk(str(parts / f"shard-{r:05d}-of-{group.world_size:05d}"))
              for r in range(group.world_size)]  # fmt: skip
    joined = datasets.concatenate_datasets(shards)
    joined.info.description = json.dumps(metadata, ensure_ascii=False)
    with staged_directory(out) as staging, _without_dataset_bars():
        joined.save_to_disk(str(staging))
    shutil.rmtree(parts, ignore_errors=True)
    print(f"Wrote {out} ({len(joined)} rows, column {SEGMENTATION_COLUMN!r}, {len(label_set.classes)} classes)")
    if args.push_to_hub:
        datasets.load_from_disk(str(out)).push_to_hub(args.push_to_hub)
        print(f"Pushed {out} to the Hub as {args.push_to_hub}")
    return 0


def _label_shard(
    args: argparse.Namespace, dataset: Any, group: Any, shard_dir: Path, segmenter: Any, label_set: Any,
    options: Any, metadata: dict[str, Any],
) -> str | None:
    """Label this process's contiguous shard with `segmenter` (a `naclip_hf.segmenter.Segmenter`) and save it
    atomically in `shard_dir`; the error message, if any."""
    import numpy as np

    from ..fileio import staged_directory

    shard = dataset.shard(num_shards=group.world_size, index=group.rank, contiguous=True)
    masks = []
    bar = DelayedProgress(len(shard), f"naclip label [shard {group.rank + 1}/{group.world_size}]", "image",
                          disable=not group.is_main)  # fmt: skip
    for row_index in range(len(shard)):
        try:
            image = shard[row_index][args.image_column]
            result = segmenter.segment(image, label_set, options, return_probabilities=False)
        except (OSError, RuntimeError, ValueError) as error:
            bar.close()
            return f"row {_global_row(len(dataset), group, row_index)} of {args.dataset}: {error}"
        masks.append({"bytes": _label_png(np.asarray(result.segmentation), len(label_set.classes)), "path": None})
        bar.update(1)
    bar.close()
    labelled = _with_segmentation(shard, masks, metadata)
    shard_dir.parent.mkdir(parents=True, exist_ok=True)
    with staged_directory(shard_dir) as staging, _without_dataset_bars():
        labelled.save_to_disk(str(staging))
    return None


@contextmanager
def _without_dataset_bars() -> Iterator[None]:
    """datasets' progress bars off: its save bar shows at once whatever the size (it renames itself per shard),
    and saving takes a fraction of the labelling, whose own bar is shown."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _global_row(total: int, group: Any, row_index: int) -> int:
    """The dataset row of `row_index` in this process's contiguous shard (as `Dataset.shard(contiguous=True)`)."""
    base, extra = divmod(total, group.world_size)
    return group.rank * base + min(group.rank, extra) + row_index


def _label_png(segmentation: Any, num_classes: int) -> bytes:
    """The label map as the PNG `naclip segment` writes (palette; 16-bit greyscale above 256 classes)."""
    import io

    from ..visualization import class_palette, label_map_image

    buffer = io.BytesIO()
    label_map_image(segmentation, class_palette(num_classes)).save(buffer, "PNG")
    return buffer.getvalue()


def _with_segmentation(shard: Any, masks: list[dict[str, Any]], metadata: dict[str, Any]) -> Any:
    import datasets

    labelled = shard.add_column(SEGMENTATION_COLUMN, masks, feature=datasets.Image())
    labelled.info.description = json.dumps(metadata, ensure_ascii=False)
    return labelled


__all__ = ["SEGMENTATION_COLUMN", "add_parser", "load_source_dataset", "run"]
