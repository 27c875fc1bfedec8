"""Benchmark dataset loaders (MMSeg folder layouts and Hub datasets), a check of every image/label pair before
a run, and label-map helpers."""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

from ..benchmarks import Benchmark, get_benchmark

IGNORE_INDEX = 255
COCO_STUFF_NUM_THINGS = 80
COCO_STUFF_NUM_CLASSES = 171
_MAX_NAMED = 5


@dataclass(frozen=True)
class _Layout:
    """Where images and labels of one MMSeg-style dataset live, relative to the data root."""

    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    example_root: str
    list_file: str | None = None
    nested: bool = False
    label_hint: str = ""


# image_dir, label_dir, image_suffix, label_suffix, example_root, then the optional fields by name.
_LAYOUTS: dict[str, _Layout] = {
    "voc": _Layout("JPEGImages", "SegmentationClass", ".jpg", ".png", "VOCdevkit/VOC2012",
                   list_file="ImageSets/Segmentation/{split}.txt"),
    "context": _Layout("JPEGImages", "SegmentationClassContext", ".jpg", ".png", "VOCdevkit/VOC2010",
                       list_file="ImageSets/SegmentationContext/{split}.txt",
                       label_hint="PASCAL Context labels are made with MMSeg's "
                       "tools/dataset_converters/pascal_context.py."),
    "coco_object": _Layout("images/{split}", "annotations/{split}", ".jpg", "_instanceTrainIds.png", "coco_stuff164k",
                           label_hint="Make COCO-Object labels from the COCO-Stuff ones with "
                           "scripts/convert_coco_object.py."),
    "coco_stuff": _Layout("images/{split}", "annotations/{split}", ".jpg", "_labelTrainIds.png", "coco_stuff164k",
                          label_hint="Make COCO-Stuff train-id labels with MMSeg's "
                          "tools/dataset_converters/coco_stuff164k.py."),
    "ade20k": _Layout("images/{split}", "annotations/{split}", ".jpg", ".png", "ADEChallengeData2016"),
    "cityscapes": _Layout("leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png", "_gtFine_labelTrainIds.png",
                          "cityscapes", nested=True,
                          label_hint="Cityscapes train-id labels are made with MMSeg's "
                          "tools/dataset_converters/cityscapes.py (or cityscapesscripts' createTrainIdLabelImgs)."),
}  # fmt: skip


def _name_some(paths: Sequence[Path | str]) -> str:
    names = [Path(p).name for p in paths[:_MAX_NAMED]]
    more = f" (and {len(paths) - _MAX_NAMED} more)" if len(paths) > _MAX_NAMED else ""
    return ", ".join(names) + more


def _require_dir(root: Path, relative: str, what: str, spec: _Layout) -> Path:
    folder = root / relative
    if not folder.is_dir():
        present = sorted(entry.name for entry in root.iterdir())[:10]
        raise FileNotFoundError(
            f"{what} folder {folder} does not exist. The data root must be the folder that directly contains "
            f"{relative!r} (e.g. .../{spec.example_root}); check the data root and the split. "
            f"The data root holds: {present}."
        )
    return folder


def _files_by_key(folder: Path, suffix: str, nested: bool) -> dict[str, Path]:
    """Files ending in `suffix`, keyed by their path relative to `folder` without the suffix."""
    pattern = f"*/*{suffix}" if nested else f"*{suffix}"
    found: dict[str, Path] = {}
    for path in folder.glob(pattern):
        if path.is_file():
            relative = path.relative_to(folder).as_posix()
            found[relative[: -len(suffix)]] = path
    return found


def _load_listed_pairs(root: Path, spec: _Layout, split: str) -> list[tuple[str, Path, Path]]:
    assert spec.list_file is not None
    image_dir = _require_dir(root, spec.image_dir, "Image", spec)
    label_dir = _require_dir(root, spec.label_dir, "Label", spec)
    list_path = root / spec.list_file.format(split=split)
    if not list_path.is_file():
        available = (sorted(p.stem for p in list_path.parent.glob("*.txt")) if list_path.parent.is_dir() else [])
        raise FileNotFoundError(
            f"Split list {list_path} does not exist (split={split!r}). "
            f"Splits found next to it: {available or 'none'}; "
            f"pass one of them as split, or check that the data root is the folder that directly contains "
            f"{spec.list_file.split('/')[0]!r} (e.g. .../{spec.example_root})."
        )
    ids = sorted({line.strip() for line in list_path.read_text(encoding="utf-8").splitlines() if line.strip()})
    if not ids:
        raise ValueError(f"No images found: the split list {list_path} is empty; list one image id per line.")
    pairs = [(i, image_dir / f"{i}{spec.image_suffix}", label_dir / f"{i}{spec.label_suffix}") for i in ids]
    no_image = [image for _, image, _ in pairs if not image.is_file()]
    no_label = [label for _, _, label in pairs if not label.is_file()]
    problems = []
    if no_image:
        problems.append(
            f"{len(no_image)} image(s) listed in {list_path} are missing from {image_dir}: {_name_some(no_image)}. "
            "Add the missing images or remove their ids from the split list."
        )
    if no_label:
        problems.append(
            f"{len(no_label)} image(s) listed in {list_path} have no label file in {label_dir}: "
            f"{_name_some(no_label)}. Add the missing label maps or remove their ids from the split list. "
            f"{spec.label_hint}".rstrip()
        )
    if problems:
        raise FileNotFoundError(" ".join(problems))
    return pairs


def _load_globbed_pairs(root: Path, spec: _Layout, split: str) -> list[tuple[str, Path, Path]]:
    image_dir = _require_dir(root, spec.image_dir.format(split=split), "Image", spec)
    label_dir = _require_dir(root, spec.label_dir.format(split=split), "Label", spec)
    images = _files_by_key(image_dir, spec.image_suffix, spec.nested)
    labels = _files_by_key(label_dir, spec.label_suffix, spec.nested)
    if not images:
        where = f"{image_dir}/*/" if spec.nested else f"{image_dir}/"
        raise FileNotFoundError(
            f"No images found: nothing matches {where}*{spec.image_suffix}. "
            "Check the data root and the split."
        )
    no_label = sorted(key for key in images if key not in labels)
    no_image = sorted(key for key in labels if key not in images)
    problems = []
    if no_label:
        problems.append(
            f"{len(no_label)} image(s) in {image_dir} have no label file '<name>{spec.label_suffix}' "
            f"in {label_dir}: {_name_some([images[k] for k in no_label])}. "
            "Add the missing label maps or remove those images. "
            f"{spec.label_hint}".rstrip()
        )
    if no_image:
        problems.append(
            f"{len(no_image)} label file(s) in {label_dir} have no image '<name>{spec.image_suffix}' "
            f"in {image_dir}: {_name_some([labels[k] for k in no_image])}. "
            "Add the missing images or remove those label files."
        )
    if problems:
        raise FileNotFoundError(" ".join(problems))
    return [(Path(key).name, images[key], labels[key]) for key in images]


def check_limit(limit: int | None) -> None:
    """`ValueError` unless `limit` (the number of rows to keep) is a positive integer or None."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r} must be a positive integer (or None for the whole split).")


def load_benchmark_dataset(
    benchmark: str | Benchmark, data_root: str | os.PathLike, split: str = "val", limit: int | None = None
) -> datasets.Dataset:
    """Image/label file pairs of a benchmark on disk, as a `datasets.Dataset` with columns image, label, id.

    `benchmark` is a name of `naclip_hf.benchmarks.BENCHMARKS` (or the descriptor). `data_root` is the folder
    that directly contains the layout's subfolders (e.g. `VOCdevkit/VOC2012` for voc21, `ADEChallengeData2016`
    for ade20k). `split` is mapped to its folder by the benchmark ("val" -> "val2017" for COCO). Rows are sorted
    by id; `limit` keeps the first rows only. Missing images and missing labels are reported together.
    """
    preset = get_benchmark(benchmark)
    check_limit(limit)
    spec = _LAYOUTS.get(preset.layout)
    if spec is None:
        raise ValueError(
            f"Benchmark {preset.name!r} has layout {preset.layout!r}, which is not a known dataset layout; use "
            f"one of {', '.join(_LAYOUTS)}."
        )
    root = Path(data_root).expanduser().absolute()
    if not root.is_dir():
        raise FileNotFoundError(
            f"Data root {root} does not exist (or is not a folder); pass the folder that directly "
            f"contains the {preset.name} data (e.g. .../{spec.example_root})."
        )
    folder_split = preset.split_folder(split)
    if spec.list_file is not None:
        pairs = _load_listed_pairs(root, spec, folder_split)
    else:
        pairs = _load_globbed_pairs(root, spec, folder_split)
    ids = [item[0] for item in pairs]
    if len(set(ids)) != len(ids):
        repeated = sorted(i for i, count in Counter(ids).items() if count > 1)
        raise ValueError(f"Image ids are not unique in {root}: {repeated[:_MAX_NAMED]}; each image needs its own name.")
    pairs.sort(key=lambda item: item[0])
    if limit is not None:
        pairs = pairs[:limit]
    return datasets.Dataset.from_dict(
        {
            "image": [str(image) for _, image, _ in pairs],
            "label": [str(label) for _, _, label in pairs],
            "id": [i for i, _, _ in pairs],
        }
    )


_SPLIT_ALIASES = {"val": "validation", "validation": "val", "train": "training", "training": "train"}


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _pick_split(loaded: datasets.Dataset | datasets.DatasetDict, split: str, source: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.Dataset):
        return loaded
    for name in (split, _SPLIT_ALIASES.get(split)):
        if name is not None and name in loaded:
            return loaded[name]
    raise ValueError(f"Split {split!r} not found in {source}; available splits: {sorted(loaded)}.")


def load_hub_dataset(
    dataset_id_or_path: str | os.PathLike,
    split: str,
    image_column: str,
    label_column: str,
    limit: int | None = None,
) -> datasets.Dataset:
    """A Hub dataset (or local data folder or `save_to_disk` folder) with columns renamed to image and label.

    `image_column` and `label_column` name the image and the segmentation map columns (images or paths). An
    existing column already called "image" or "label" that is not one of them is kept as "original_image" /
    "original_label". A string "id" column (the row index) is added when there is none.
    """
    check_limit(limit)
    if image_column == label_column:
        raise ValueError(f"image_column and label_column are both {image_column!r}; they must name two columns.")
    source = str(dataset_id_or_path)
    local = Path(source).expanduser()
    if local.is_dir() and _is_saved_dataset(local):
        dataset = _pick_split(datasets.load_from_disk(str(local)), split, source)
    else:
        try:
            loaded = datasets.load_dataset(source, split=split)
        except ValueError as error:
            alias = _SPLIT_ALIASES.get(split)
            if alias is None or "split" not in str(error).lower():
                raise
            loaded = datasets.load_dataset(source, split=alias)
        dataset = _pick_split(loaded, split, source)
    available = list(dataset.column_names)
    for role, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in available:
            raise ValueError(
                f"Column {column!r} (given as {role}) is not in dataset {source!r} (split {split!r}); "
                f"available columns: {available}."
            )
    mapping = {image_column: "image", label_column: "label"}
    for target in ("image", "label"):
        if target in available and target not in mapping:
            backup = f"original_{target}"
            while backup in available:
                backup = f"original_{backup}"
            mapping[target] = backup
    mapping = {old: new for old, new in mapping.items() if old != new}
    if mapping:
        dataset = dataset.rename_columns(mapping)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if "id" not in dataset.column_names:
        dataset = dataset.add_column("id", [str(index) for index in range(len(dataset))])
    return dataset


def open_cell(value: Any, what: str) -> Any:
    """What a dataset cell holds, ready for `PIL.Image.open`: a `{"bytes"}` dict as a stream, a `{"path"}` dict as
    its path; paths are checked (`FileNotFoundError`); arrays and PIL images are returned as they are."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return io.BytesIO(value["bytes"])
        if value.get("path") is None:
            raise ValueError(f"{what} dict has neither 'bytes' nor 'path'; give a path, a PIL image or an array.")
        value = value["path"]
    if isinstance(value, (str, os.PathLike)) and not Path(value).is_file():
        raise FileNotFoundError(f"{what} {value} does not exist.")
    return value


def describe_cell(value: Any, fallback: str) -> str:
    """The file behind a dataset cell (its path) for messages, else `fallback` (in-memory data)."""
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return fallback


def _open_label(path_or_image: Any) -> np.ndarray:
    path_or_image = open_cell(path_or_image, "Label map")
    if isinstance(path_or_image, np.ndarray):
        return path_or_image
    name = str(path_or_image) if isinstance(path_or_image, (str, os.PathLike)) else "label image"
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    if image.mode in ("P", "L"):
        return np.asarray(image)
    if image.mode == "1":
        return np.asarray(image.convert("L"))
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        return np.asarray(image).astype(np.int64)
    raise ValueError(
        f"{name} has mode {image.mode!r}; label maps must be single-channel PNGs of class ids (grayscale or "
        "palette). Convert colour-coded maps to class ids first."
    )


def read_label_map(path_or_image: Any, reduce_zero_label: bool) -> np.ndarray:
    """A label map as an HxW array of class ids (palette PNGs give their indices, not colours).

    Accepts a path, a PIL image, an array or a `{"bytes"/"path"}` dict. The result is uint8 for 8-bit maps and
    int64 for 16/32-bit ones. With `reduce_zero_label`, 0 becomes 255 (ignore) and every other id drops by one
    (255 stays 255).
    """
    label = _open_label(path_or_image)
    if label.ndim != 2:
        raise ValueError(f"Label map has shape {label.shape}; expected a single-channel HxW map of class ids.")
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"Label map has dtype {label.dtype}; expected integer class ids.")
    if label.dtype != np.uint8:
        label = label.astype(np.int64)
    if not reduce_zero_label:
        return label.copy()
    reduced = label - 1
    reduced[(label == 0) | (label == IGNORE_INDEX)] = IGNORE_INDEX
    return reduced.astype(label.dtype)


def _size_hw(image_size: Any) -> tuple[int, int]:
    if isinstance(image_size, Image.Image):
        return image_size.height, image_size.width
    if isinstance(image_size, np.ndarray):
        return int(image_size.shape[0]), int(image_size.shape[1])
    height, width = image_size
    return int(height), int(width)


def check_label_map(
    label: np.ndarray,
    num_classes: int,
    image_size: tuple[int, int] | Image.Image | np.ndarray,
    ignore_index: int = IGNORE_INDEX,
) -> None:
    """Raise `ValueError` unless `label` is an HxW map of the image's size with ids in [0, num_classes).

    `ignore_index` pixels are allowed too. `image_size` is `(height, width)`, or the image itself (a PIL image
    or an HxW(xC) array).
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"Label map has shape {label.shape}; expected a single-channel HxW map of class ids.")
    height, width = _size_hw(image_size)
    if label.shape != (height, width):
        raise ValueError(
            f"Label map size {label.shape[0]}x{label.shape[1]} (HxW) differs from the image size "
            f"{height}x{width} (HxW); each label map must be pixel-aligned with its image."
        )
    values = np.unique(label)
    bad = [int(v) for v in values if (v < 0 or v >= num_classes) and v != ignore_index]
    if bad:
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise ValueError(
            f"Label map has values {shown} outside [0, {num_classes}) that are not the ignore index "
            f"{ignore_index}; "
            "check that the labels, the preset (class count) and reduce_zero_label match."
        )


_LABEL_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L")


def _header(value: Any) -> tuple[tuple[int, int], str | None]:
    """(height, width) and PIL mode of an image cell, reading only the file's header where there is a file."""
    if isinstance(value, np.ndarray):
        return (int(value.shape[0]), int(value.shape[1])) if value.ndim >= 2 else (0, 0), None
    if isinstance(value, Image.Image):
        return (value.height, value.width), value.mode
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = io.BytesIO(value["bytes"])
        elif value.get("path") is not None:
            value = value["path"]
        else:
            raise ValueError("the cell has neither 'bytes' nor 'path'")
    if isinstance(value, (str, os.PathLike)) and not Path(value).is_file():
        raise FileNotFoundError("the file does not exist")
    with Image.open(value) as image:  # reads the header only; pixels are decoded on .load()
        return (image.height, image.width), image.mode


def find_dataset_problems(dataset: datasets.Dataset, max_problems: int = 50) -> list[str]:
    """Every problem that can be seen without decoding the images: unreadable image or label files, label maps
    that are not single-channel, and labels whose size differs from their image's. One message per problem,
    naming the file; empty if none. Stops after `max_problems` (the last message then says so).

    The dataset has columns "image" and "label" (paths, `{"bytes"/"path"}` dicts, PIL images or arrays);
    `datasets.Image` columns are read without decoding.
    """
    for column in ("image", "label"):
        if column not in dataset.column_names:
            return [f"The dataset has no {column!r} column; its columns are {dataset.column_names}."]
        if isinstance(dataset.features.get(column), datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    problems: list[str] = []
    for index, row in enumerate(dataset):
        sizes = {}
        for column in ("image", "label"):
            where = describe_cell(row[column], f"{column} of row {index}")
            try:
                sizes[column], mode = _header(row[column])
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                problems.append(f"{where}: the {column} cannot be read ({error}); replace or remove it.")
                continue
            if column == "label" and mode is not None and mode not in _LABEL_MODES:
                problems.append(
                    f"{where}: the label map has mode {mode!r}; label maps must be single-channel PNGs of class ids "
                    "(grayscale or palette). Convert colour-coded maps to class ids first."
                )
        if len(sizes) == 2 and sizes["image"] != sizes["label"]:
            (ih, iw), (lh, lw) = sizes["image"], sizes["label"]
            problems.append(
                f"{describe_cell(row['label'], f'label of row {index}')}: label map size {lh}x{lw} (HxW) differs "
                f"from its image {describe_cell(row['image'], f'image of row {index}')} ({ih}x{iw}); each label "
                "map must be pixel-aligned with its image."
            )
        if len(problems) >= max_problems:
            problems.append(f"(stopped after {max_problems} problems; {len(dataset) - index - 1} rows not checked)")
            break
    return problems


def coco_stuff_to_coco_object(label: np.ndarray) -> np.ndarray:
    """COCO-Stuff train ids (0..79 things, 80..170 stuff, 255 ignore) to COCO-Object ids.

    COCO-Object: 0 = background (every stuff class), 1..80 = the things (train id + 1), 255 stays 255.
    """
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"COCO-Stuff label map has dtype {label.dtype}; expected integer train ids.")
    values = np.unique(label)
    bad = [int(v) for v in values if (v < 0 or v >= COCO_STUFF_NUM_CLASSES) and v != IGNORE_INDEX]
    if bad:
        raise ValueError(
            f"COCO-Stuff label map has values {bad[:10]} outside 0..{COCO_STUFF_NUM_CLASSES - 1} and not "
            f"{IGNORE_INDEX}; expected '*_labelTrainIds.png' maps (train ids), not the raw COCO-Stuff ids."
        )
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[:COCO_STUFF_NUM_THINGS] = np.arange(1, COCO_STUFF_NUM_THINGS + 1, dtype=np.uint8)
    lookup[IGNORE_INDEX] = IGNORE_INDEX
    return lookup[label.astype(np.int64)]


LAYOUTS: tuple[str, ...] = tuple(_LAYOUTS)

__all__ = [
    "LAYOUTS",
    "check_label_map",
    "coco_stuff_to_coco_object",
    "find_dataset_problems",
    "load_benchmark_dataset",
    "load_hub_dataset",
    "read_label_map",
]
