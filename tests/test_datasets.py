"""Benchmark presets, benchmark dataset loaders, label-map helpers and the COCO-Object conversion."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib import resources
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from naclip_hf.benchmarks import BENCHMARKS, Benchmark, get_benchmark, paper_benchmarks, register_benchmark
from naclip_hf.evaluation.datasets import (
    LAYOUTS,
    check_label_map,
    coco_stuff_to_coco_object,
    load_benchmark_dataset,
    load_hub_dataset,
    read_label_map,
)
from naclip_hf.models.naclip.options import check_settings
from synthetic_data import make_benchmark_dataset, save_gray_png, save_palette_png

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "convert_coco_object.py"
PRESET_NAMES = [  # the column order of Table 1 in the paper
    "voc21",
    "context60",
    "coco_object",
    "voc20",
    "cityscapes",
    "context59",
    "ade20k",
    "coco_stuff",
]

# preset: (classes file, #classes, reduce_zero_label, short side, slide crop, prob_thd, layout,
#          paper no PAMR, paper PAMR, repo PAMR), from the paper and the official repository
EXPECTED = {
    "voc21": ("cls_voc21.txt", 21, False, 336, 0, 0.1, "voc", 58.8, 62.4, 64.07),
    "voc20": ("cls_voc20.txt", 20, True, 336, 0, 0.0, "voc", 77.1, 80.6, 83.03),
    "context60": ("cls_context60.txt", 60, False, 336, 224, 0.1, "context", 32.2, 35.0, 34.99),
    "context59": ("cls_context59.txt", 59, True, 336, 224, 0.0, "context", 35.2, 38.4, 38.35),
    "coco_object": ("cls_coco_object.txt", 81, False, 336, 224, 0.1, "coco_object", 33.2, 36.2, 36.19),
    "coco_stuff": ("cls_coco_stuff.txt", 171, False, 336, 224, 0.0, "coco_stuff", 22.9, 25.2, 25.69),
    "ade20k": ("cls_ade20k.txt", 150, True, 336, 224, 0.0, "ade20k", 17.4, 19.1, 19.05),
    "cityscapes": ("cls_city_scapes.txt", 19, False, 560, 224, 0.0, "cityscapes", 35.5, 38.3, 38.27),
}


# --- presets


def test_presets_are_the_eight_benchmarks():
    assert list(BENCHMARKS) == PRESET_NAMES
    assert {preset.layout for preset in BENCHMARKS.values()} <= set(LAYOUTS)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_values_match_the_table(name):
    preset = get_benchmark(name)
    classes_file, num_classes, reduce, short_side, crop, thd, layout, no_pamr, pamr, repo = EXPECTED[name]
    assert isinstance(preset, Benchmark) and preset.name == name
    assert (preset.classes_file, preset.num_classes, preset.reduce_zero_label) == (
        classes_file,
        num_classes,
        reduce,
    )
    assert (preset.short_side, preset.slide_crop, preset.prob_thd, preset.layout) == (
        short_side,
        crop,
        thd,
        layout,
    )
    if crop:
        assert preset.slide_stride == 112
    assert preset.published == {"paper_no_pamr": no_pamr, "paper_pamr": pamr, "repo_pamr": repo}
    settings = preset.settings()
    expected = {"slide_crop": crop, "prob_thd": thd, "short_side": short_side}
    if crop:
        expected["slide_stride"] = 112
    assert settings == expected and check_settings(settings) == settings
    assert preset.inference_mode == ("slide" if crop else "whole")


def test_display_names_and_split_folders():
    assert get_benchmark("voc21").display_name == "PASCAL VOC 2012 (21 classes, with background)"
    assert get_benchmark("context59").dataset_type == "pascal_context"
    assert get_benchmark("coco_stuff").split_folder("val") == "val2017"
    assert get_benchmark("coco_object").split_folder("val2017") == "val2017"
    assert get_benchmark("ade20k").split_folder("train") == "training"
    assert get_benchmark("voc21").split_folder("val") == "val"
    assert [b.name for b in paper_benchmarks()] == PRESET_NAMES


def test_register_benchmark_checks_the_descriptor(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("sky\nroad, street\n")

    def make(**changes):
        fields = dict(name="tiny_bench", display_name="Tiny", dataset_type="tiny", classes_file=str(classes),
                      num_classes=2, reduce_zero_label=False, layout="ade20k", short_side=64, slide_crop=0)  # fmt: skip
        fields.update(changes)
        return Benchmark(**fields)

    benchmark = make()
    assert benchmark.class_names() == [["sky"], ["road", "street"]]
    with pytest.raises(ValueError, match="holds 2 classes but num_classes is 3"):
        make(num_classes=3).class_names()
    with pytest.raises(ValueError, match="prob_thd=2.0 is invalid"):
        make(prob_thd=2.0)
    with pytest.raises(ValueError, match="slide_stride=300 is larger than slide_crop=224"):
        make(slide_crop=224, slide_stride=300)
    with pytest.raises(ValueError, match="published keys"):
        make(published={"paper": 1.0})
    with pytest.raises(ValueError, match="name"):
        make(name="no spaces")
    with pytest.raises(ValueError, match="already registered"):
        register_benchmark(make(name="voc21"))
    with pytest.raises(ValueError, match="not a known dataset layout"):
        load_benchmark_dataset(make(layout="mystery"), tmp_path)
    assert "tiny_bench" not in BENCHMARKS


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_class_file_has_one_line_per_class(name):
    preset = get_benchmark(name)
    text = resources.files("naclip_hf").joinpath("benchmark_classes", preset.classes_file).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == preset.num_classes
    classes = preset.class_names()
    assert len(classes) == preset.num_classes
    assert all(names and all(names) for names in classes)


def test_published_averages_match_the_table():
    for key, average in (("paper_no_pamr", 39.0), ("paper_pamr", 41.9), ("repo_pamr", 42.46)):
        mean = sum(preset.published[key] for preset in BENCHMARKS.values()) / len(BENCHMARKS)
        assert mean == pytest.approx(average, abs=0.05)  # the table rounds the averages


def test_presets_are_frozen_and_hashable():
    preset = get_benchmark("voc21")
    with pytest.raises(AttributeError):
        preset.num_classes = 3  # type: ignore[misc]
    assert hash(preset) == hash(get_benchmark("voc21"))


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown benchmark preset 'voc'") as info:
        get_benchmark("voc")
    for name in PRESET_NAMES:
        assert name in str(info.value)


# --- loaders


def _expected_paths(name: str, root: Path, image_id: str) -> tuple[Path, Path]:
    layout = get_benchmark(name).layout
    if layout == "voc":
        return root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClass" / f"{image_id}.png"
    if layout == "context":
        return root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClassContext" / f"{image_id}.png"
    if layout == "coco_object":
        folder = "val2017"
        return (
            root / "images" / folder / f"{image_id}.jpg",
            root / "annotations" / folder / f"{image_id}_instanceTrainIds.png",
        )
    if layout == "coco_stuff":
        return (
            root / "images" / "val2017" / f"{image_id}.jpg",
            root / "annotations" / "val2017" / f"{image_id}_labelTrainIds.png",
        )
    if layout == "ade20k":
        return (
            root / "images" / "validation" / f"{image_id}.jpg",
            root / "annotations" / "validation" / f"{image_id}.png",
        )
    city = image_id.split("_")[0]
    return (
        root / "leftImg8bit" / "val" / city / f"{image_id}_leftImg8bit.png",
        root / "gtFine" / "val" / city / f"{image_id}_gtFine_labelTrainIds.png",
    )


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_loader_finds_the_pairs(name, tmp_path):
    root = make_benchmark_dataset(name, tmp_path / "data", num_images=3, size=(24, 32), seed=1)
    dataset = load_benchmark_dataset(name, root)
    assert isinstance(dataset, datasets.Dataset)
    assert set(dataset.column_names) == {"image", "label", "id"}
    assert len(dataset) == 3
    ids = dataset["id"]
    assert ids == sorted(ids) and len(set(ids)) == 3
    preset = get_benchmark(name)
    for row in dataset:
        image_path, label_path = _expected_paths(name, root.absolute(), row["id"])
        assert Path(row["image"]) == image_path and image_path.is_file()
        assert Path(row["label"]) == label_path and label_path.is_file()
        image = Image.open(row["image"])
        label = read_label_map(row["label"], preset.reduce_zero_label)
        check_label_map(label, preset.num_classes, image)
        assert label.shape == (24, 32)
        assert (label == 255).any()
        assert ((label != 255) & (label < preset.num_classes)).any()


@pytest.mark.parametrize("name", ["voc20", "context59", "ade20k"])
def test_synthetic_reduce_zero_label_presets_contain_zero(name, tmp_path):
    root = make_benchmark_dataset(name, tmp_path)
    row = load_benchmark_dataset(name, root)[0]
    raw = read_label_map(row["label"], reduce_zero_label=False)
    assert (raw == 0).any() and raw[raw != 255].max() <= get_benchmark(name).num_classes
    reduced = read_label_map(row["label"], reduce_zero_label=True)
    assert np.array_equal(reduced == 255, (raw == 0) | (raw == 255))


def _max_class(label: np.ndarray) -> int:
    return int(label[label != 255].max())


def test_synthetic_labels_fail_for_a_smaller_class_count(tmp_path):
    root = make_benchmark_dataset("coco_stuff", tmp_path, num_images=3)
    maxima = [
        _max_class(read_label_map(row["label"], False))
        for row in load_benchmark_dataset("coco_stuff", root)
    ]
    assert max(maxima) == 170
    with pytest.raises(ValueError, match="outside"):
        for row in load_benchmark_dataset("coco_stuff", root):
            check_label_map(read_label_map(row["label"], False), 150, Image.open(row["image"]))


def test_limit_and_split_aliases(tmp_path):
    root = make_benchmark_dataset("ade20k", tmp_path, num_images=3)
    assert (
        load_benchmark_dataset("ade20k", root, split="validation")["id"]
        == load_benchmark_dataset("ade20k", root, split="val")["id"]
    )
    limited = load_benchmark_dataset("ade20k", root, limit=2)
    assert limited["id"] == ["ADE_val_00000001", "ADE_val_00000002"]
    coco = make_benchmark_dataset("coco_stuff", tmp_path / "coco", num_images=2)
    assert len(load_benchmark_dataset("coco_stuff", coco, split="val2017")) == 2
    with pytest.raises(ValueError, match="limit"):
        load_benchmark_dataset("ade20k", root, limit=0)


def test_loader_ignores_files_of_other_layouts(tmp_path):
    root = make_benchmark_dataset("coco_object", tmp_path)
    stuff = load_benchmark_dataset("coco_stuff", root)
    objects = load_benchmark_dataset("coco_object", root)
    assert stuff["id"] == objects["id"]
    assert all(path.endswith("_labelTrainIds.png") for path in stuff["label"])
    assert all(path.endswith("_instanceTrainIds.png") for path in objects["label"])


def test_voc_lists_only_the_split_images(tmp_path):
    root = make_benchmark_dataset("voc21", tmp_path, num_images=3)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000003\n\n2007_000001\n")
    Image.new("RGB", (8, 8)).save(root / "JPEGImages" / "2007_999999.jpg")  # not in the list, no label
    assert load_benchmark_dataset("voc21", root)["id"] == ["2007_000001", "2007_000003"]


# --- loader errors


def test_missing_data_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="Data root .*missing.* does not exist"):
        load_benchmark_dataset("voc21", tmp_path / "missing")


def test_unknown_preset_in_loader(tmp_path):
    with pytest.raises(ValueError, match="choose one of: voc21"):
        load_benchmark_dataset("pascal", tmp_path)


def test_wrong_root_names_expected_folder(tmp_path):
    make_benchmark_dataset("voc21", tmp_path / "VOCdevkit" / "VOC2012")
    with pytest.raises(FileNotFoundError, match="directly contains 'JPEGImages'.*VOC2012"):
        load_benchmark_dataset("voc21", tmp_path / "VOCdevkit")


@pytest.mark.parametrize(
    "name, list_path",
    [("voc21", "ImageSets/Segmentation/val.txt"), ("context59", "ImageSets/SegmentationContext/val.txt")],
)
def test_missing_split_list(name, list_path, tmp_path):
    root = make_benchmark_dataset(name, tmp_path)
    (root / list_path).rename(root / list_path.replace("val.txt", "train.txt"))
    with pytest.raises(FileNotFoundError, match=r"Split list .*val\.txt does not exist.*\['train'\]"):
        load_benchmark_dataset(name, root)
    assert len(load_benchmark_dataset(name, root, split="train")) == 2


@pytest.mark.parametrize("name", ["voc21", "context60"])
def test_listed_image_without_label(name, tmp_path):
    root = make_benchmark_dataset(name, tmp_path, num_images=3)
    label_dir = "SegmentationClass" if name == "voc21" else "SegmentationClassContext"
    (
        root / label_dir / "2007_000002.png" if name == "voc21" else root / label_dir / "2008_000002.png"
    ).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) .* have no label file .*_000002\.png"):
        load_benchmark_dataset(name, root)


def test_listed_label_without_image(tmp_path):
    root = make_benchmark_dataset("voc20", tmp_path, num_images=3)
    (root / "JPEGImages" / "2007_000003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing from .*JPEGImages: 2007_000003\.jpg"):
        load_benchmark_dataset("voc20", root)


@pytest.mark.parametrize(
    "name, image, label",
    [
        (
            "coco_object",
            "images/val2017/000000000002.jpg",
            "annotations/val2017/000000000002_instanceTrainIds.png",
        ),
        (
            "coco_stuff",
            "images/val2017/000000000002.jpg",
            "annotations/val2017/000000000002_labelTrainIds.png",
        ),
        ("ade20k", "images/validation/ADE_val_00000002.jpg", "annotations/validation/ADE_val_00000002.png"),
        (
            "cityscapes",
            "leftImg8bit/val/lindau/lindau_000000_000001_leftImg8bit.png",
            "gtFine/val/lindau/lindau_000000_000001_gtFine_labelTrainIds.png",
        ),
    ],
)
def test_globbed_image_without_label_and_label_without_image(name, image, label, tmp_path):
    root = make_benchmark_dataset(name, tmp_path / "a", num_images=3)
    (root / label).unlink()
    with pytest.raises(FileNotFoundError, match=rf"1 image\(s\) .* have no label file .*{Path(image).name}"):
        load_benchmark_dataset(name, root)
    root = make_benchmark_dataset(name, tmp_path / "b", num_images=3)
    (root / image).unlink()
    with pytest.raises(FileNotFoundError, match=rf"1 label file\(s\) .* have no image .*{Path(label).name}"):
        load_benchmark_dataset(name, root)


def test_coco_object_without_converted_labels_points_to_the_script(tmp_path):
    root = make_benchmark_dataset("coco_stuff", tmp_path)
    with pytest.raises(FileNotFoundError, match="convert_coco_object.py"):
        load_benchmark_dataset("coco_object", root)


def test_many_missing_labels_are_summarised(tmp_path):
    root = make_benchmark_dataset("ade20k", tmp_path, num_images=7)
    for path in (root / "annotations" / "validation").glob("*.png"):
        path.unlink()
    with pytest.raises(FileNotFoundError, match=r"7 image\(s\).*\(and 2 more\)"):
        load_benchmark_dataset("ade20k", root)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_no_images_found(name, tmp_path):
    root = make_benchmark_dataset(name, tmp_path, num_images=2)
    layout = get_benchmark(name).layout
    if layout in ("voc", "context"):
        folder = "Segmentation" if layout == "voc" else "SegmentationContext"
        (root / "ImageSets" / folder / "val.txt").write_text("\n")
        with pytest.raises(ValueError, match="No images found"):
            load_benchmark_dataset(name, root)
        return
    for path in root.rglob("*"):
        if path.is_file():
            path.unlink()
    with pytest.raises(FileNotFoundError, match="No images found"):
        load_benchmark_dataset(name, root)


def test_missing_split_folder(tmp_path):
    root = make_benchmark_dataset("cityscapes", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/test does not exist"):
        load_benchmark_dataset("cityscapes", root, split="test")


# --- label maps


def test_palette_png_is_read_as_indices(tmp_path):
    label = np.array([[0, 1, 2], [15, 20, 255]], dtype=np.uint8)
    save_palette_png(label, tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    read = read_label_map(tmp_path / "p.png", reduce_zero_label=False)
    assert read.dtype == np.uint8 and np.array_equal(read, label)
    assert np.array_equal(read_label_map(Image.open(tmp_path / "p.png"), False), label)
    assert np.array_equal(read_label_map(str(tmp_path / "p.png"), False), label)


def test_reduce_zero_label():
    label = np.array([[0, 1, 2], [150, 254, 255]], dtype=np.uint8)
    reduced = read_label_map(label, reduce_zero_label=True)
    assert reduced.dtype == np.uint8
    assert reduced.tolist() == [[255, 0, 1], [149, 253, 255]]
    assert read_label_map(label, reduce_zero_label=False).tolist() == label.tolist()


def test_read_label_map_other_inputs(tmp_path):
    label = np.array([[0, 3], [255, 7]], dtype=np.uint8)
    save_gray_png(label, tmp_path / "g.png")
    data = (tmp_path / "g.png").read_bytes()
    assert np.array_equal(read_label_map({"bytes": data, "path": None}, False), label)
    assert np.array_equal(read_label_map({"bytes": None, "path": str(tmp_path / "g.png")}, False), label)
    wide = np.array([[0, 300], [255, 1]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    read = read_label_map(tmp_path / "w.png", reduce_zero_label=True)
    assert read.dtype == np.int64 and read.tolist() == [[255, 299], [255, 0]]


def test_read_label_map_errors(tmp_path):
    Image.new("RGB", (4, 4), (128, 0, 0)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="mode 'RGB'.*single-channel"):
        read_label_map(tmp_path / "rgb.png", False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_label_map(tmp_path / "none.png", False)
    with pytest.raises(ValueError, match="HxW"):
        read_label_map(np.zeros((2, 2, 3), dtype=np.uint8), False)


def test_check_label_map():
    label = np.array([[0, 1], [255, 2]], dtype=np.uint8)
    check_label_map(label, 3, (2, 2))
    check_label_map(label, 3, Image.new("RGB", (2, 2)))
    check_label_map(label, 3, np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"values 2 outside \[0, 2\)"):
        check_label_map(label, 2, (2, 2))
    with pytest.raises(ValueError, match=r"values 3, 200 outside"):
        check_label_map(np.array([[3, 200], [255, 0]], dtype=np.uint8), 3, (2, 2))
    with pytest.raises(ValueError, match=r"values 255 outside"):
        check_label_map(label, 3, (2, 2), ignore_index=-1)
    with pytest.raises(ValueError, match=r"size 2x2 \(HxW\) differs from the image size 3x2"):
        check_label_map(label, 3, (3, 2))
    with pytest.raises(ValueError, match=r"image size 4x6"):
        check_label_map(label, 3, Image.new("RGB", (6, 4)))
    wide = np.zeros((2, 3), dtype=np.uint8)
    check_label_map(wide, 3, Image.new("RGB", (3, 2)))
    with pytest.raises(ValueError, match=r"size 2x3 \(HxW\) differs from the image size 3x2"):
        check_label_map(wide, 3, Image.new("RGB", (2, 3)))


# --- COCO-Object


def test_coco_stuff_to_coco_object():
    stuff = np.array([[0, 1, 79, 80], [81, 170, 255, 42]], dtype=np.uint8)
    objects = coco_stuff_to_coco_object(stuff)
    assert objects.dtype == np.uint8 and objects.shape == stuff.shape
    assert objects.tolist() == [[1, 2, 80, 0], [0, 0, 255, 43]]
    every = np.arange(171)
    assert coco_stuff_to_coco_object(every).tolist() == list(range(1, 81)) + [0] * 91
    with pytest.raises(ValueError, match=r"values \[171, 200\]"):
        coco_stuff_to_coco_object(np.array([[171, 200]], dtype=np.uint8))


def test_coco_object_class_file_matches_the_mapping():
    objects = get_benchmark("coco_object").class_names()
    stuff = get_benchmark("coco_stuff").class_names()
    thing_names = {name.replace(" ", "") for names in stuff[:80] for name in names}
    assert len(objects) == 81
    # line 0 is background, named by stuff words; the official file also lists "bed" there (a COCO thing)
    assert objects[0][0] == "sky"
    assert {name.replace(" ", "") for name in objects[0]} & thing_names == {"bed"}
    converted = coco_stuff_to_coco_object(np.arange(80))
    for train_id, object_id in enumerate(converted.tolist()):
        assert objects[object_id][0].replace(" ", "") == stuff[train_id][0].replace(" ", "")
    stuff_names = {names[0].replace(" ", "") for names in stuff[80:]}
    assert not stuff_names & {names[0].replace(" ", "") for names in objects[1:]}


def _run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def _script_module():
    spec = importlib.util.spec_from_file_location("convert_coco_object", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_script_end_to_end(tmp_path, capsys):
    root = make_benchmark_dataset("coco_stuff", tmp_path, num_images=3)
    result = _run_script(str(root), "--split", "val2017")
    assert result.returncode == 0, result.stderr
    assert "Wrote 3" in result.stdout
    folder = root / "annotations" / "val2017"
    assert sorted(p.name for p in folder.iterdir() if "instance" in p.name) == [
        f"{i:012d}_instanceTrainIds.png" for i in (1, 2, 3)
    ]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    objects = load_benchmark_dataset("coco_object", root)
    for row in objects:
        stuff_path = row["label"].replace("_instanceTrainIds.png", "_labelTrainIds.png")
        converted = read_label_map(row["label"], False)
        assert np.array_equal(converted, coco_stuff_to_coco_object(read_label_map(stuff_path, False)))
        check_label_map(converted, 81, Image.open(row["image"]))
        assert (converted == 0).any() and ((converted > 0) & (converted < 255)).any()
    script = _script_module()
    assert script.main([str(root), "--split", "val", "--quiet"]) == 0
    assert "Wrote 0" in capsys.readouterr().out
    first = folder / "000000000001_instanceTrainIds.png"
    save_gray_png(np.zeros((2, 2), dtype=np.uint8), first)
    assert script.main([str(root), "--quiet", "--overwrite"]) == 0
    assert "Wrote 3" in capsys.readouterr().out
    assert read_label_map(first, False).shape == (40, 56)


def test_convert_script_errors(tmp_path, capsys):
    script = _script_module()
    assert script.main([str(tmp_path), "--quiet"]) == 2
    assert "annotations/val2017" in capsys.readouterr().err
    folder = tmp_path / "annotations" / "val2017"
    folder.mkdir(parents=True)
    assert script.main([str(tmp_path), "--quiet"]) == 1
    assert "_labelTrainIds.png" in capsys.readouterr().err
    save_gray_png(np.full((2, 2), 200, dtype=np.uint8), folder / "x_labelTrainIds.png")
    assert script.main([str(tmp_path), "--quiet"]) == 1
    assert "[200]" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["x_labelTrainIds.png"]


# --- Hub datasets


def _small_image_dataset(tmp_path: Path, n: int = 3) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)) for _ in range(n)]
    masks = [Image.fromarray(rng.integers(0, 5, (6, 8), dtype=np.uint8)) for _ in range(n)]
    features = datasets.Features(
        {"pixels": datasets.Image(), "annotation": datasets.Image(), "label": datasets.Value("int64")}
    )
    return datasets.Dataset.from_dict(
        {"pixels": images, "annotation": masks, "label": list(range(n))}, features=features
    )


def test_load_hub_dataset_from_saved_folder(tmp_path):
    _small_image_dataset(tmp_path).save_to_disk(str(tmp_path / "saved"))
    dataset = load_hub_dataset(tmp_path / "saved", "validation", "pixels", "annotation", limit=2)
    assert len(dataset) == 2
    assert {"image", "label", "id", "original_label"} <= set(dataset.column_names)
    assert "pixels" not in dataset.column_names and "annotation" not in dataset.column_names
    row = dataset[1]
    assert isinstance(row["image"], Image.Image) and isinstance(row["label"], Image.Image)
    assert row["id"] == "1" and row["original_label"] == 1
    assert read_label_map(row["label"], False).shape == (6, 8)


def test_load_hub_dataset_split_dict_and_alias(tmp_path):
    dataset_dict = datasets.DatasetDict(
        {"validation": _small_image_dataset(tmp_path), "train": _small_image_dataset(tmp_path, 1)}
    )
    dataset_dict.save_to_disk(str(tmp_path / "dict"))
    assert len(load_hub_dataset(str(tmp_path / "dict"), "val", "pixels", "annotation")) == 3
    assert len(load_hub_dataset(str(tmp_path / "dict"), "train", "pixels", "annotation")) == 1
    with pytest.raises(ValueError, match=r"Split 'test' not found.*\['train', 'validation'\]"):
        load_hub_dataset(str(tmp_path / "dict"), "test", "pixels", "annotation")


def test_load_hub_dataset_from_data_files_folder(tmp_path):
    folder = tmp_path / "parquet" / "data"
    folder.mkdir(parents=True)
    table = datasets.Dataset.from_dict(
        {"img": ["a.jpg", "b.jpg"], "seg": ["a.png", "b.png"], "id": ["x", "y"]}
    )
    table.to_parquet(str(folder / "validation-00000-of-00001.parquet"))
    dataset = load_hub_dataset(str(tmp_path / "parquet"), "validation", "img", "seg")
    assert dataset.column_names == ["image", "label", "id"]
    assert dataset["image"] == ["a.jpg", "b.jpg"] and dataset["id"] == ["x", "y"]
    assert load_hub_dataset(str(tmp_path / "parquet"), "val", "img", "seg")["label"] == ["a.png", "b.png"]


def test_load_hub_dataset_missing_column(tmp_path):
    _small_image_dataset(tmp_path).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(
        ValueError, match=r"'mask' \(given as label_column\).*\['pixels', 'annotation', 'label'\]"
    ):
        load_hub_dataset(tmp_path / "saved", "validation", "pixels", "mask")
    with pytest.raises(ValueError, match="two columns"):
        load_hub_dataset(tmp_path / "saved", "validation", "pixels", "pixels")
