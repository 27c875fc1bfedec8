"""`naclip_hf.distributed`: splitting items across processes, the single-process group, and `naclip evaluate` on two
CPU processes giving exactly the single-process confusion matrix."""

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
import torch
from PIL import Image

from naclip_hf import cli
from naclip_hf.distributed import ProcessGroup, shard_for_process
from synthetic_data import make_benchmark_dataset, save_gray_png

PRESET = "cityscapes"  # sliding window, nested folders; PAMR stays on (the model's setting)
TIMEOUT = 240


def test_every_item_goes_to_exactly_one_process():
    items = [f"image{i}" for i in range(11)]
    for world_size in (1, 2, 3, 5, 16):
        shards = [shard_for_process(items, rank, world_size) for rank in range(world_size)]
        assert sorted(sum(shards, [])) == sorted(items)
        assert max(map(len, shards)) == ProcessGroup(0, world_size).rounds(len(items))
        # by position: the same split whatever happens at run time
        assert shards[0][0] == items[0] and (world_size == 1 or shards[1][0] == items[1])
    assert shard_for_process(items, 1, 2) == items[1::2]
    with pytest.raises(ValueError, match="rank=2"):
        shard_for_process(items, 2, 2)


def test_single_process_group_needs_no_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    group = ProcessGroup.start()
    assert (group.rank, group.world_size, group.is_main, group.model_device) == (0, 1, True, None)
    assert group.shard([1, 2, 3]) == [1, 2, 3]
    assert group.gather({"a": 1}) == [{"a": 1}] and group.sum([2, 3]) == [2, 3]
    counts = np.array([[1, 2], [3, 4]], dtype=np.int32)
    summed = group.sum_array(counts)
    assert summed.dtype == np.int64 and summed.shape == (2, 2) and summed.tolist() == counts.tolist()
    summed[0, 0] = 9
    assert counts[0, 0] == 1  # a copy: the caller's counts stay as they were
    group.barrier()
    code = (
        "import sys, numpy, naclip_hf.distributed as d; g = d.ProcessGroup.start(); g.gather(1); g.sum([1]); "
        "g.sum_array(numpy.ones(3)); "
        "print(any(m.startswith(('accelerate', 'torch.distributed')) or m == 'torch' for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "WORLD_SIZE": "1"})  # fmt: skip
    assert out.stdout.strip() == "False"


def test_model_device_is_the_accelerator_of_a_multi_process_run():
    assert ProcessGroup(1, 2, 1, "cuda:1").model_device == "cuda:1"
    assert ProcessGroup(1, 2, 1, "cpu").model_device is None  # gloo on CPU: the loader's default
    assert ProcessGroup(0, 1, 0, "cuda:0").model_device is None  # one process: wherever the caller loads it


@pytest.fixture(scope="module")
def fast_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint with two prompt templates, so that embedding the classes is quick."""
    folder = tmp_path_factory.mktemp("fast") / "tiny-naclip-2-templates"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["prompt_templates"] = ["a photo of a {}.", "itap of a {}."]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Three images: process 0 gets images 0 and 2, process 1 gets image 1."""
    return make_benchmark_dataset(PRESET, tmp_path_factory.mktemp("data") / PRESET, num_images=3, seed=3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def evaluate_argv(root: Path, checkpoint: Path, out: Path | None = None) -> list[str]:
    argv = ["evaluate", "--preset", PRESET, "--data-root", str(root), "--model", str(checkpoint),
            "--set", "short_side=64"]  # fmt: skip
    return argv + (["--out", str(out)] if out is not None else [])


def launch(launcher: list[str], argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["TQDM_DELAY"] = "0"  # the progress bar at once, however short the run
    command = [sys.executable, "-m", *launcher, "-m", "naclip_hf.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT)


def torchrun() -> list[str]:
    return ["torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]


def accelerate_launch() -> list[str]:
    # `--cpu` would make accelerate start a single process; `--multi_gpu` starts them with torchrun, and the
    # evaluation joins them in a gloo group on CPU when there is no GPU.
    return ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]  # fmt: skip


def single_process_result(root: Path, checkpoint: Path, out: Path, capsys) -> dict:
    """The same evaluation in this process, with one thread like each launched process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(evaluate_argv(root, checkpoint, out)) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    return json.loads(out.read_text())


def test_two_processes_match_one(fast_checkpoint, data_root, tmp_path, capsys):
    single = single_process_result(data_root, fast_checkpoint, tmp_path / "single.json", capsys)
    out = tmp_path / "distributed.json"
    completed = launch(accelerate_launch(), evaluate_argv(data_root, fast_checkpoint, out))
    assert completed.returncode == 0, completed.stderr[-3000:]
    distributed = json.loads(out.read_text())
    assert distributed["settings"]["num_processes"] == 2 and single["settings"]["num_processes"] == 1
    assert distributed["num_images"] == single["num_images"] == 3
    assert distributed["settings"]["pamr_steps"] == 10
    np.testing.assert_array_equal(
        np.array(distributed["confusion_matrix"], dtype=np.int64),
        np.array(single["confusion_matrix"], dtype=np.int64),
    )
    assert np.array(single["confusion_matrix"]).sum() > 0
    assert distributed["mean_iou"] == single["mean_iou"]
    assert distributed["per_class_iou"] == single["per_class_iou"]
    # only the main process prints the report and writes the file
    assert completed.stdout.count("NACLIP evaluation: cityscapes") == 1
    assert completed.stdout.count("Wrote ") == 1
    assert "cityscapes [2 processes]" in completed.stderr


@pytest.mark.slow
def test_error_on_one_process_stops_both_and_keeps_partial_results(fast_checkpoint, data_root, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(data_root, root)
    # image 1 (processed by process 1 only) gets a label outside the 19 classes
    label_path = sorted((root / "gtFine").rglob("*_gtFine_labelTrainIds.png"))[1]
    with Image.open(label_path) as image:
        label = np.array(image)
    label[4:8, 4:8] = 77
    save_gray_png(label, label_path)
    out = tmp_path / "r.json"
    completed = launch(torchrun(), evaluate_argv(root, fast_checkpoint, out))
    assert completed.returncode != 0
    assert f"naclip evaluate: error: {label_path}" in completed.stderr
    assert "values 77 outside [0, 19)" in completed.stderr
    assert "failed on 1 other process" in completed.stderr
    # Process 0 evaluated its two images; the main process writes them, marked partial.
    partial = json.loads(out.read_text())
    assert partial["partial"] is True and partial["num_images_done"] == 2 and partial["num_images"] == 3
    assert "failed on 1 other process" in partial["error"]
    assert f'partial results (2 of 3 images) written to {out}, marked "partial": true' in completed.stderr
