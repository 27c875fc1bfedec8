"""Tiny synthetic benchmark datasets written in the on-disk layouts the benchmark loaders read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from naclip_hf.benchmarks import get_benchmark
from naclip_hf.evaluation.datasets import coco_stuff_to_coco_object

CITIES = ("frankfurt", "lindau", "munster")


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triplets, flattened) used by palette label PNGs."""
    palette: list[int] = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette.extend((red, green, blue))
    return palette


def save_palette_png(label: np.ndarray, path: Path) -> None:
    """Save a uint8 HxW map as a palette ("P") PNG whose pixel indices are the label ids."""
    height, width = label.shape
    image = Image.new("P", (width, height))
    image.putpalette(voc_palette())
    image.frombytes(np.ascontiguousarray(label, dtype=np.uint8).tobytes())
    image.save(path)


def save_gray_png(label: np.ndarray, path: Path) -> None:
    """Save a uint8 HxW map as a grayscale ("L") PNG."""
    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8)).save(path)


def _raw_value_range(preset_name: str) -> tuple[int, int]:
    """Smallest and largest class id written on disk (before any reduce_zero_label) for a preset."""
    preset = get_benchmark(preset_name)
    if preset.layout == "coco_object":
        return 0, 170  # COCO-Stuff train ids, converted to COCO-Object when written
    if preset.reduce_zero_label:
        return 0, preset.num_classes  # 0 is ignored, 1..num_classes are the classes
    return 0, preset.num_classes - 1


def make_label(preset_name: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A blocky HxW uint8 label map valid for the preset (as stored on disk), with 0 and some 255 pixels."""
    height, width = size
    low, high = _raw_value_range(preset_name)
    classes = [low, int(rng.integers(low + 1, high + 1)), high]
    if get_benchmark(preset_name).layout == "coco_object":
        classes = [int(rng.integers(80, 171)), int(rng.integers(0, 80)), 0]  # stuff, things
    rows = np.linspace(0, height, 4, dtype=int)
    cols = np.linspace(0, width, 4, dtype=int)
    label = np.zeros((height, width), dtype=np.uint8)
    for r in range(3):
        for c in range(3):
            label[rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = classes[
                (r + c + int(rng.integers(0, 3))) % 3
            ]
    label[0, :] = classes[0]
    label[1, :] = classes[1]
    label[2, :] = classes[2]
    label[-2:, :] = 255
    return label


def make_image(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image whose colour follows the label regions, with noise."""
    colours = rng.integers(0, 256, size=(256, 3))
    noise = rng.integers(-20, 21, size=(*label.shape, 3))
    return np.clip(colours[label] + noise, 0, 255).astype(np.uint8)


def _ids(preset_name: str, num_images: int) -> list[str]:
    layout = get_benchmark(preset_name).layout
    if layout in ("voc", "context"):
        year = 2007 if layout == "voc" else 2008
        return [f"{year}_{index + 1:06d}" for index in range(num_images)]
    if layout in ("coco_object", "coco_stuff"):
        return [f"{index + 1:012d}" for index in range(num_images)]
    if layout == "ade20k":
        return [f"ADE_val_{index + 1:08d}" for index in range(num_images)]
    return [f"{CITIES[index % len(CITIES)]}_000000_{index:06d}" for index in range(num_images)]


def make_benchmark_dataset(
    preset_name: str,
    root: str | os.PathLike,
    num_images: int = 2,
    size: tuple[int, int] = (40, 56),
    seed: int = 0,
) -> Path:
    """Write `num_images` tiny image/label pairs of the val split in the preset's layout under `root`.

    `size` is (height, width). Returns the data root to give to `load_benchmark_dataset(preset_name, root)`.
    Labels are valid for the preset as stored on disk: ids in range, some 255 pixels, and id 0 present (which
    becomes ignore for reduce_zero_label presets).
    """
    preset = get_benchmark(preset_name)
    layout = preset.layout
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = _ids(preset_name, num_images)
    if layout in ("voc", "context"):
        image_dir = root / "JPEGImages"
        label_dir = root / ("SegmentationClass" if layout == "voc" else "SegmentationClassContext")
        list_dir = root / "ImageSets" / ("Segmentation" if layout == "voc" else "SegmentationContext")
        for folder in (image_dir, label_dir, list_dir):
            folder.mkdir(parents=True, exist_ok=True)
        (list_dir / "val.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    elif layout in ("coco_object", "coco_stuff"):
        image_dir, label_dir = root / "images" / "val2017", root / "annotations" / "val2017"
    elif layout == "ade20k":
        image_dir, label_dir = root / "images" / "validation", root / "annotations" / "validation"
    else:
        image_dir, label_dir = root / "leftImg8bit" / "val", root / "gtFine" / "val"
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)

    for image_id in ids:
        label = make_label(preset_name, size, rng)
        image = Image.fromarray(make_image(label, rng))
        if layout == "voc":
            image.save(image_dir / f"{image_id}.jpg", quality=95)
            save_palette_png(label, label_dir / f"{image_id}.png")
        elif layout in ("context", "ade20k"):
            image.save(image_dir / f"{image_id}.jpg", quality=95)
            save_gray_png(label, label_dir / f"{image_id}.png")
        elif layout in ("coco_object", "coco_stuff"):
            image.save(image_dir / f"{image_id}.jpg", quality=95)
            save_gray_png(label, label_dir / f"{image_id}_labelTrainIds.png")
            if layout == "coco_object":
                save_gray_png(
                    coco_stuff_to_coco_object(label), label_dir / f"{image_id}_instanceTrainIds.png"
                )
        else:
            city = image_id.split("_")[0]
            (image_dir / city).mkdir(exist_ok=True)
            (label_dir / city).mkdir(exist_ok=True)
            image.save(image_dir / city / f"{image_id}_leftImg8bit.png")
            save_gray_png(label, label_dir / city / f"{image_id}_gtFine_labelTrainIds.png")
            # another label kind next to the train ids, as in real Cityscapes; the loader must skip it
            save_gray_png(label, label_dir / city / f"{image_id}_gtFine_labelIds.png")
    return root
