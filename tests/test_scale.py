"""Resume bookkeeping and the memory check of `naclip_hf.scale`; the memory-lean writing of large images' label
maps and overlays; `naclip segment` resuming and on two processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import tracing_segment_one
from naclip_hf import scale, visualization
from naclip_hf.scale import (
    estimate_image_peak_bytes,
    is_complete,
    memory_problem,
    parse_bytes,
    run_summary,
)


def write_summary(folder, stem, outputs):
    (folder / f"{stem}.json").write_text(json.dumps({"image": "x", "outputs": outputs}))


def test_is_complete_needs_the_summary_and_every_listed_file(tmp_path):
    outputs = {"label_map": "a_labels.png", "overlay": "a_overlay.png"}
    assert not is_complete(tmp_path, "a")  # nothing yet
    (tmp_path / "a_labels.png").write_bytes(b"png")
    (tmp_path / "a_overlay.png").write_bytes(b"png")
    assert not is_complete(tmp_path, "a")  # outputs without their summary: interrupted before the end
    write_summary(tmp_path, "a", outputs)
    assert is_complete(tmp_path, "a")
    assert not is_complete(tmp_path, "a", expected=["scores"])  # asked for scores, which the earlier run skipped
    (tmp_path / "a_overlay.png").unlink()
    assert not is_complete(tmp_path, "a")
    (tmp_path / "b.json").write_text("{not json")
    assert not is_complete(tmp_path, "b")


def test_parse_bytes_and_summary_line():
    assert parse_bytes("3GiB") == 3 << 30 and parse_bytes("512 MB") == 512_000_000 and parse_bytes("100") == 100
    for bad in ("lots", "3 parsecs", "-1GB", "0"):
        with pytest.raises(ValueError, match="memory"):
            parse_bytes(bad)
    assert run_summary(3, 2, 1) == "3 segmented, 2 already done (skipped), 1 failed"
    assert run_summary(3, 0, 0, world_size=2).endswith("on 2 processes")


@pytest.mark.parametrize("pamr_steps", [0, 10])
def test_the_exported_models_estimate_covers_its_numpy_post_processing(pamr_steps):
    """The ONNX backend's estimate (whole images, probabilities always built) is at least what its post-processing
    allocates, and not far above it."""
    import tracemalloc

    from naclip_hf.export.runtime import estimate_post_processing_bytes, post_process_logits

    height, width, names, classes = 300, 450, 6, 4
    generator = np.random.default_rng(0)
    logits = generator.random((1, names, 21, 31), dtype=np.float32)
    pixels = generator.random((1, 3, 336, 504), dtype=np.float32)
    tracemalloc.start()
    try:
        post_process_logits(logits, pixels, (height, width), np.array([0, 0, 1, 2, 3, 3]), 40.0, 0.0, pamr_steps,
                            (8, 16))  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = estimate_post_processing_bytes(height, width, names, classes, pamr_steps, (8, 16))
    assert peak <= estimate <= 2 * peak


def test_memory_check_refuses_what_cannot_fit(monkeypatch):
    small = estimate_image_peak_bytes(375, 500, 21, 21, 10, [8, 16])
    huge = estimate_image_peak_bytes(40000, 30000, 21, 21, 10, [8, 16])
    assert small < huge
    # the estimate grows with the image, and with the probabilities when they are asked for
    with_probabilities = estimate_image_peak_bytes(375, 500, 21, 21, 10, [8, 16], return_probabilities=True)
    assert with_probabilities - small >= 375 * 500 * 21 * 4
    # writing the files needs less than post-processing does (the int64 label map is freed first), so on a
    # large image it adds nothing; on any image it never lowers the estimate
    large = dict(height=9000, width=12000, num_names=4, num_classes=4, pamr_steps=10, pamr_dilations=[8, 16])
    assert estimate_image_peak_bytes(**large) == estimate_image_peak_bytes(**large, write_outputs=False)
    assert small >= estimate_image_peak_bytes(375, 500, 21, 21, 10, [8, 16], write_outputs=False)
    assert memory_problem(small, available=64 << 30) is None
    message = memory_problem(huge, available=8 << 30)
    assert message is not None and "8.0 GiB is available" in message and "skipped" in message
    monkeypatch.setenv(scale.MEMORY_LIMIT_ENV, "1MiB")
    assert scale.available_memory_bytes() == 1 << 20
    assert "1.0 MiB is available" in memory_problem(small)
    monkeypatch.setenv(scale.MEMORY_LIMIT_ENV, "plenty")
    with pytest.raises(ValueError, match="NACLIP_MEMORY_LIMIT"):
        scale.available_memory_bytes()
    monkeypatch.delenv(scale.MEMORY_LIMIT_ENV)
    assert scale.available_memory_bytes() > 0  # MemAvailable of this machine


def test_narrow_label_maps_draw_the_same_pictures():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)
    for num_classes, dtype in ((3, np.uint8), (256, np.uint8), (300, np.uint16)):
        segmentation = rng.integers(0, num_classes, (90, 140))
        segmentation[:40] = 0  # one class large enough to be listed first in the legend
        narrow = visualization.narrow_segmentation(segmentation, num_classes)
        assert narrow.dtype == dtype
        np.testing.assert_array_equal(narrow, segmentation)
        labels = [f"class {index}" for index in range(num_classes)]
        palette = visualization.class_palette(num_classes)
        assert visualization.class_shares(narrow, labels) == visualization.class_shares(segmentation, labels)
        np.testing.assert_array_equal(np.asarray(visualization.label_map_image(narrow, palette)),
                                      np.asarray(visualization.label_map_image(segmentation, palette)))  # fmt: skip
        np.testing.assert_array_equal(np.asarray(visualization.overlay_image(image, narrow, labels, palette, 0.4)),
                                      np.asarray(visualization.overlay_image(image, segmentation, labels, palette,
                                                                             0.4)))  # fmt: skip
    with pytest.raises(ValueError, match="outside"):
        visualization.narrow_segmentation(np.array([[0, 3]]), 3)


def test_class_counts_and_blend_do_not_depend_on_the_band_height(monkeypatch):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (41, 29, 3), dtype=np.uint8)
    segmentation = rng.integers(0, 6, (41, 29)).astype(np.uint8)
    labels = list("abcdef")
    palette = visualization.class_palette(6)
    whole = (visualization.class_shares(segmentation, labels), np.asarray(visualization.blend(image, segmentation,
                                                                                              palette)))  # fmt: skip
    monkeypatch.setattr(visualization, "_BLEND_BAND_PIXELS", 29 * 3)  # bands of 3 rows, the last one shorter
    assert visualization.class_shares(segmentation, labels) == whole[0]
    np.testing.assert_array_equal(np.asarray(visualization.blend(image, segmentation, palette)), whole[1])


def test_legend_changes_only_its_corner_and_does_not_depend_on_the_image_width():
    rng = np.random.default_rng(2)
    entries = [("sky", "60%", (30, 30, 200)), ("a long name for a class", "40%", (200, 30, 30))]
    wide = Image.fromarray(rng.integers(0, 256, (150, 900, 3), dtype=np.uint8))
    narrow = wide.crop((0, 0, 400, 150))  # same height and short side: the same legend layout
    drawn_wide, drawn_narrow = np.asarray(visualization.draw_legend(wide, entries)), np.asarray(
        visualization.draw_legend(narrow, entries))  # fmt: skip
    np.testing.assert_array_equal(drawn_wide[:, :400], drawn_narrow)
    changed = (drawn_wide != np.asarray(wide)).any(axis=-1)
    rows, cols = np.nonzero(changed)
    assert changed.any() and rows.max() < 75 and cols.max() < 300  # the box in the top-left corner only
    rgba = Image.fromarray(np.dstack([np.asarray(narrow), np.full((150, 400), 128, dtype=np.uint8)]), "RGBA")
    outside = np.asarray(visualization.draw_legend(rgba, entries))[100:]
    np.testing.assert_array_equal(outside, np.asarray(rgba.convert("RGB"))[100:])


def test_pipeline_batches_images_of_equal_size(tiny_checkpoint, golden):
    """`batch_size=4`: equal processed sizes share one model call; outputs equal one image at a time."""
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    raw = Image.fromarray(golden["img_b/raw"].numpy())
    images = [np.array(raw.resize((120, 90))), np.array(raw.resize((80, 70))),
              np.array(raw.resize((120, 90)).rotate(180)), np.array(raw.resize((120, 90)).transpose(0))]  # fmt: skip
    pipe = pipeline("naclip-segmentation", model=str(tiny_checkpoint), pamr_steps=2, text_cache_dir=None)
    options = dict(candidate_labels=["sky, wall", "cat", "dog", "person"], short_side=64, return_label_map=True,
                   return_probabilities=True)  # fmt: skip
    calls = []
    forward = pipe.model.forward
    pipe.model.forward = lambda pixel_values, **kw: calls.append(pixel_values.shape[0]) or forward(pixel_values, **kw)
    try:
        batched = pipe(images, batch_size=4, **options)
        assert sorted(calls) == [1, 3]  # the 70 × 80 image is resized to another size: its own call
        calls.clear()
        alone = [pipe(image, **options) for image in images]
        assert calls == [1, 1, 1, 1]
    finally:
        pipe.model.forward = forward
    assert len(batched) == len(images)
    for one, many in zip(alone, batched):
        assert np.array_equal(one["label_map"], many["label_map"])
        np.testing.assert_allclose(one["probabilities"], many["probabilities"], rtol=0, atol=1e-5)
        assert [s["label"] for s in one["segments"]] == [s["label"] for s in many["segments"]]
        assert [s["score"] for s in one["segments"]] == pytest.approx([s["score"] for s in many["segments"]], abs=1e-5)
    generator = pipe((image for image in images[:3]), batch_size=2, **options)
    assert [np.array_equal(r["label_map"], a["label_map"]) for r, a in zip(generator, alone)] == [True] * 3


# ---------------------------------------------------------------------------------------------- naclip segment at scale
LABELS = ["grass, lawn", "road", "sky"]


@pytest.fixture(scope="module")
def fast_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with two prompt templates, so that embedding the classes is quick."""
    import shutil

    folder = tmp_path_factory.mktemp("fast") / "tiny-2-templates"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["prompt_templates"] = ["a photo of a {}.", "itap of a {}."]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture
def photos(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for index, (height, width) in enumerate([(40, 56), (48, 36), (37, 45), (50, 50), (33, 61)]):
        pixels = np.random.default_rng(index).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        pixels[: height // 2] //= 3  # some structure, so that several classes appear
        Image.fromarray(pixels).save(folder / f"p{index}.png")
    return folder


def segment_argv(photos, checkpoint, out, *extra):
    return ["segment", str(photos), "--labels", *LABELS, "--model", str(checkpoint), "--set", "short_side=64",
            "--set", "pamr_steps=3", "--out", str(out), *extra]  # fmt: skip


def segment_here(argv, capsys, monkeypatch, trace):
    from naclip_hf.cli import main, segment

    monkeypatch.setattr(segment, "_segment_one", tracing_segment_one(trace))
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def traced(trace) -> list[tuple[int, str]]:
    lines = trace.read_text().splitlines() if trace.exists() else []
    return [(int(rank), name.rsplit("/", 1)[-1]) for rank, name in (line.split("\t") for line in lines)]


def output_files(out) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if not path.name.startswith(".")}


def test_rerun_segments_only_the_missing_images(fast_checkpoint, photos, tmp_path, capsys, monkeypatch):
    out, trace = tmp_path / "out", tmp_path / "trace.txt"
    code, _, stderr = segment_here(segment_argv(photos, fast_checkpoint, out), capsys, monkeypatch, trace)
    assert code == 0, stderr
    first = output_files(out)
    assert len(first) == 15 and len(traced(trace)) == 5
    # an interrupted run: one image lost its summary (written last), another an overlay
    (out / "p1.json").unlink()
    (out / "p3_overlay.png").unlink()
    trace.unlink()
    code, stdout, stderr = segment_here(segment_argv(photos, fast_checkpoint, out), capsys, monkeypatch, trace)
    assert code == 0, stderr
    assert sorted(name for _, name in traced(trace)) == ["p1.png", "p3.png"]
    assert "2 segmented, 3 already done (skipped), 0 failed" in stdout
    assert output_files(out) == first
    # other settings are another run: everything is redone; so is everything with --overwrite
    trace.unlink()
    argv = segment_argv(photos, fast_checkpoint, out)
    code, stdout, _ = segment_here([*argv, "--overwrite"], capsys, monkeypatch, trace)
    assert code == 0 and len(traced(trace)) == 5 and output_files(out) == first
    trace.unlink()
    code, stdout, _ = segment_here([*argv, "--set", "pamr_steps=0"], capsys, monkeypatch, trace)
    assert code == 0 and len(traced(trace)) == 5


def test_an_image_too_large_for_memory_is_skipped_with_a_message(fast_checkpoint, photos, tmp_path, capsys,
                                                                  monkeypatch):  # fmt: skip
    monkeypatch.setenv(scale.MEMORY_LIMIT_ENV, "100MiB")
    out = tmp_path / "out"
    code, _, stderr = segment_here(segment_argv(photos / "p0.png", fast_checkpoint, out), capsys, monkeypatch,
                                   tmp_path / "trace.txt")  # fmt: skip
    assert code == 1
    assert "p0.png: too large for this machine: 56x40 pixels needs about" in stderr
    assert "100.0 MiB is available ($NACLIP_MEMORY_LIMIT or MemAvailable); skipped" in stderr
    assert not out.exists() or not any(out.glob("p0*"))


def test_two_processes_write_the_single_process_files(fast_checkpoint, photos, tmp_path, capsys, monkeypatch):
    """torchrun with 2 CPU processes: every image read by one process, the same files, failures gathered."""
    import os
    import socket

    import torch

    (photos / "p2.png").write_bytes(b"not a png")  # position 2: handled by process 0
    (photos / "p5.png").write_bytes(b"broken too")  # position 5: handled by process 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, _, _ = segment_here(segment_argv(photos, fast_checkpoint, tmp_path / "one"), capsys, monkeypatch,
                                  tmp_path / "one.txt")  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 1
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    trace = tmp_path / "two.txt"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               NACLIP_TEST_TRACE=str(trace))  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(Path(__file__).with_name("helpers.py")), *segment_argv(photos, fast_checkpoint, tmp_path / "two")]

    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert output_files(tmp_path / "two") == output_files(tmp_path / "one")
    assert len(output_files(tmp_path / "one")) == 12  # 4 readable images × 3 files
    reads = traced(trace)
    assert sorted(name for _, name in reads) == [f"p{i}.png" for i in range(6)]  # each image read once
    assert {name for rank, name in reads if rank == 1} == {"p1.png", "p3.png", "p5.png"}
    assert "4 segmented, 0 already done (skipped), 2 failed on 2 processes" in completed.stdout
    assert completed.stdout.count("segmented, ") == 1  # the summary comes from the main process only
    final = [line for line in completed.stderr.splitlines() if "inputs failed" in line]
    assert len(final) == 1 and "p2.png" in final[0] and "p5.png" in final[0]
