"""`naclip label`: a dataset in, the same dataset with a `segmentation` column out (save_to_disk), equal to
`naclip segment`'s label maps; shards per process, resumed by shard."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from naclip_hf.cli import main

LABELS = ["grass, lawn", "road", "sky"]
SIZES = [(40, 56), (48, 36), (37, 45), (50, 50), (33, 61)]  # all different: rows are matched to files by size


@pytest.fixture(scope="module")
def fast_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fast") / "tiny-2-templates"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["prompt_templates"] = ["a photo of a {}.", "itap of a {}."]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, (height, width) in enumerate(SIZES):
        pixels = np.random.default_rng(index).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        pixels[: height // 2] //= 3
        Image.fromarray(pixels).save(folder / f"p{index}.png")
    return folder


def options(checkpoint: Path) -> list[str]:
    return ["--labels", *LABELS, "--model", str(checkpoint), "--set", "short_side=64", "--set", "pamr_steps=3"]


def segment_label_maps(photos: Path, checkpoint: Path, out: Path) -> dict[tuple[int, int], np.ndarray]:
    """`naclip segment`'s label maps, keyed by image size (height, width)."""
    assert main(["segment", str(photos), *options(checkpoint), "--out", str(out)]) == 0
    maps = {}
    for path in out.glob("*_labels.png"):
        with Image.open(path) as image:
            array = np.asarray(image)
        maps[array.shape] = array
    return maps


def labelled_maps(folder: Path) -> tuple[object, dict[tuple[int, int], np.ndarray]]:
    import datasets

    dataset = datasets.load_from_disk(str(folder))
    maps = {}
    for row in dataset:
        array = np.asarray(row["segmentation"])
        assert row["image"].size == (array.shape[1], array.shape[0])
        maps[array.shape] = array
    return dataset, maps


def test_label_an_image_folder_like_segment(fast_checkpoint, photos, tmp_path, capsys):
    import datasets

    out = tmp_path / "labelled"
    assert main(["label", str(photos), *options(fast_checkpoint), "--out", str(out)]) == 0
    assert "Wrote" in capsys.readouterr().out
    dataset, maps = labelled_maps(out)
    assert len(dataset) == len(SIZES)
    assert isinstance(dataset.features["segmentation"], datasets.Image)
    info = json.loads(dataset.info.description)
    assert info["class_labels"] == ["grass", "road", "sky"] and info["classes"][0] == ["grass", "lawn"]
    assert info["settings"]["pamr_steps"] == 3 and info["source"]["split"] == "train"
    expected = segment_label_maps(photos, fast_checkpoint, tmp_path / "segment")
    assert maps.keys() == expected.keys()
    for size, array in maps.items():
        assert np.array_equal(array, expected[size])
    assert any(len(np.unique(array)) > 1 for array in maps.values())
    assert not (tmp_path / "labelled.parts").exists()
    # a second run finds the dataset done; a wrong column is named with the fix
    assert main(["label", str(photos), *options(fast_checkpoint), "--out", str(out)]) == 0
    assert "already holds a labelled dataset" in capsys.readouterr().out
    code = main(["label", str(out), *options(fast_checkpoint), "--out", str(tmp_path / "x"), "--image-column", "img"])
    assert code == 2 and "has no column 'img'" in capsys.readouterr().err


def test_label_on_an_export_like_segment_on_it(tiny_export, photos, tmp_path):
    """The same command on an ONNX export (onnxruntime and NumPy; the names not stored at export go through its
    text graph) writes `naclip segment`'s label maps on that export."""
    out = tmp_path / "labelled"
    assert main(["label", str(photos), *options(tiny_export), "--out", str(out)]) == 0
    dataset, maps = labelled_maps(out)
    info = json.loads(dataset.info.description)
    assert info["model"] == str(tiny_export) and info["dtype"] == "float32" and info["settings"]["pamr_steps"] == 3
    expected = segment_label_maps(photos, tiny_export, tmp_path / "segment")
    assert maps.keys() == expected.keys()
    for size, array in maps.items():
        assert np.array_equal(array, expected[size])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_label(photos: Path, checkpoint: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "naclip_hf.cli", "label", str(photos), *options(checkpoint),
               "--out", str(out)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_two_processes_label_by_shard_and_resume(fast_checkpoint, photos, tmp_path, capsys):
    single = tmp_path / "single"
    assert main(["label", str(photos), *options(fast_checkpoint), "--out", str(single)]) == 0
    capsys.readouterr()
    _, expected = labelled_maps(single)
    # p4 (last row: shard 2 of 2) is broken: shard 1 is saved, the run fails and names the row
    good = (photos / "p4.png").read_bytes()
    (photos / "p4.png").write_bytes(b"not an image")
    out = tmp_path / "two"
    failed = torchrun_label(photos, fast_checkpoint, out)
    assert failed.returncode != 0
    assert "row 4 of" in failed.stderr and "1 shard(s) failed" in failed.stderr
    assert (tmp_path / "two.parts" / "shard-00000-of-00002" / "dataset_info.json").is_file()
    assert not out.exists()
    (photos / "p4.png").write_bytes(good)
    resumed = torchrun_label(photos, fast_checkpoint, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "shard 1 of 2 already done" in resumed.stderr
    dataset, maps = labelled_maps(out)
    assert len(dataset) == len(SIZES) and maps.keys() == expected.keys()
    for size, array in maps.items():
        assert np.array_equal(array, expected[size])
