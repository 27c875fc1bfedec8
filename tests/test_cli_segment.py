"""`naclip segment` end to end on the tiny checkpoint: outputs, batches, presets and error messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import without_own_progress_bars
from naclip_hf.benchmarks import BENCHMARKS, get_benchmark
from naclip_hf.cli import DEFAULT_OUT_DIR, main
from naclip_hf.inference import encode_classes, load_model, load_processor, segment_image
from naclip_hf.models.naclip.options import DEFAULT_CHECKPOINT, SETTINGS
from naclip_hf.visualization import class_palette, class_shares

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LABELS = ["sky, clouds", "cat", "dog, puppy"]
SHORT_SIDE = 32
MISSING_MODEL = "/nonexistent/naclip-model"  # errors must be found before any model is loaded


def write_image(path: Path, height: int, width: int, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "noise.png", 40, 56, seed=0)
    halves = np.zeros((48, 48, 3), dtype=np.uint8)
    halves[:, :24] = (30, 90, 200)
    halves[:, 24:] = (200, 160, 60)
    Image.fromarray(halves).save(folder / "halves.jpg")
    shutil.copy(EXAMPLES / "coffee.jpg", folder / "coffee.jpg")
    (folder / "notes.txt").write_text("not an image; skipped when the folder is scanned")
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["segment", *(str(arg) for arg in argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_outputs(out_dir: Path, stem: str, image_path: Path, labels: list[str]) -> dict:
    """The label map, overlay and JSON of one image agree with each other and with the image; returns the JSON."""
    with Image.open(image_path) as image:
        size = image.size
    with Image.open(out_dir / f"{stem}_labels.png") as label_map:
        assert label_map.format == "PNG" and label_map.mode == "P" and label_map.size == size
        segmentation = np.asarray(label_map).astype(np.int64)
        palette = np.asarray(label_map.getpalette()[: 3 * len(labels)], dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette, class_palette(len(labels)))
    with Image.open(out_dir / f"{stem}_overlay.png") as overlay:
        assert overlay.format == "PNG" and overlay.mode == "RGB" and overlay.size == size
    summary = json.loads((out_dir / f"{stem}.json").read_text())
    assert Path(summary["image"]) == image_path.resolve()
    assert summary["size"] == {"width": size[0], "height": size[1]}
    assert [entry["label"] for entry in summary["classes"]] == labels
    shares = summary["class_shares"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9)
    expected = class_shares(segmentation, labels)
    assert list(shares) == list(expected)
    assert shares == pytest.approx(expected)
    assert summary["outputs"]["label_map"] == f"{stem}_labels.png"
    assert not list(out_dir.glob(".*tmp*"))  # no temporary files left behind
    return summary


def test_single_image_matches_in_process_segmentation(tiny_checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    image_path = images / "noise.png"
    code, stdout, stderr = run(
        capsys, image_path, "--labels", *LABELS, "--model", tiny_checkpoint, "--set", f"short_side={SHORT_SIDE}",
        "--set", "gaussian_std=3", "--out", out,
    )  # fmt: skip
    assert code == 0, stderr
    assert "naclip segment:" not in stderr  # no progress bar for a single image
    assert str(out / "noise_overlay.png") in stdout
    summary = check_outputs(out, "noise", image_path, ["sky", "cat", "dog"])
    assert summary["classes"][2] == {"id": 2, "label": "dog", "names": ["dog", "puppy"]}
    assert summary["model"] == str(tiny_checkpoint)
    assert summary["preset"] is None
    assert summary["settings"]["short_side"] == SHORT_SIDE
    assert summary["settings"]["gaussian_std"] == 3.0
    assert summary["outputs"] == {"label_map": "noise_labels.png", "overlay": "noise_overlay.png"}
    assert sorted(path.name for path in out.iterdir()) == ["noise.json", "noise_labels.png", "noise_overlay.png"]

    model = load_model(tiny_checkpoint, {"gaussian_std": 3.0})
    processor = load_processor(tiny_checkpoint)
    embeddings = encode_classes(model=model, processor=processor, classes=LABELS)
    with Image.open(image_path) as image:
        expected = segment_image(model, processor, image, embeddings, short_side=SHORT_SIDE).segmentation
    with Image.open(out / "noise_labels.png") as label_map:
        np.testing.assert_array_equal(np.asarray(label_map), expected.numpy())


def test_console_script_on_a_folder(tiny_checkpoint, images, tmp_path):
    script = Path(sys.executable).parent / ("naclip.exe" if os.name == "nt" else "naclip")
    assert script.is_file(), f"console script {script} is not installed"
    out = tmp_path / "results"
    command = [str(script), "segment", str(images), "--labels", *LABELS, "--model", str(tiny_checkpoint),
               "--set", f"short_side={SHORT_SIDE}", "--out", str(out), "--scores"]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert without_own_progress_bars(completed.stderr) == ""  # a progress bar only if the work lasted long enough
    from safetensors.torch import load_file

    stems = ["coffee", "halves", "noise"]  # sorted by file name; notes.txt is not an image
    assert [line.split(" -> ")[0] for line in completed.stdout.splitlines()] == [
        str(images / f"{stem}{'.png' if stem == 'noise' else '.jpg'}") for stem in stems
    ]
    for stem in stems:
        image_path = next(images.glob(f"{stem}.*"))
        check_outputs(out, stem, image_path, ["sky", "cat", "dog"])
        scores = load_file(str(out / f"{stem}.scores.safetensors"))
        with Image.open(out / f"{stem}_labels.png") as label_map:
            np.testing.assert_array_equal(np.asarray(label_map), scores["segmentation"].numpy())
        assert (scores["probabilities"].argmax(0) == scores["segmentation"]).all()  # prob_thd = 0
    assert not (out / "notes.json").exists()


def test_bad_files_are_reported_and_the_rest_is_written(tiny_checkpoint, images, tmp_path):
    corrupt = images / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    truncated = images / "truncated.jpg"
    truncated.write_bytes((images / "coffee.jpg").read_bytes()[:3000])
    missing = images / "missing.png"
    text = images / "notes.txt"
    good = [images / "noise.png", images / "halves.jpg"]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "naclip_hf.cli", "segment", str(good[0]), str(corrupt), str(missing),
               str(truncated), str(text), str(good[1]), "--labels", *LABELS, "--model", str(tiny_checkpoint),
               "--set", f"short_side={SHORT_SIDE}", "--out", str(out)]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1, completed.stderr
    for bad in (corrupt, missing, truncated, text):
        assert f"naclip segment: error: {bad}: " in completed.stderr
        assert not (out / f"{bad.stem}.json").exists()
    assert f"{missing}: no such file or folder" in completed.stderr
    assert "4 of 6 inputs failed" in completed.stderr
    assert "Traceback" not in completed.stderr
    for path in good:
        check_outputs(out, path.stem, path, ["sky", "cat", "dog"])


def test_preset_classes_and_settings(tiny_checkpoint, images, tmp_path, capsys):
    preset = get_benchmark("voc21")
    out = tmp_path / "out"
    code, _, stderr = run(
        capsys, images / "halves.jpg", "--preset", "voc21", "--model", tiny_checkpoint,
        "--set", "short_side=32", "--set", "prob_thd=0.2", "--out", out,
    )  # fmt: skip
    assert code == 0, stderr
    labels = [names[0] for names in preset.class_names()]
    summary = check_outputs(out, "halves", images / "halves.jpg", labels)
    assert summary["preset"] == "voc21"
    assert [entry["names"] for entry in summary["classes"]] == preset.class_names()
    assert summary["settings"]["slide_crop"] == preset.slide_crop  # from the preset
    assert summary["settings"]["prob_thd"] == 0.2  # --set wins over the preset
    assert summary["settings"]["short_side"] == 32

    code, _, stderr = run(
        capsys, images / "halves.jpg", "--preset", "voc21", "--labels", "cat", "dog", "--model", tiny_checkpoint,
        "--set", "short_side=32", "--out", out,
    )  # fmt: skip
    assert code == 0, stderr
    summary = json.loads((out / "halves.json").read_text())
    assert [entry["label"] for entry in summary["classes"]] == ["cat", "dog"]  # --labels replace the classes
    assert summary["settings"]["prob_thd"] == preset.prob_thd


def test_labels_file_repeated_stems_and_rerun_in_out_folder(tiny_checkpoint, tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    write_image(first / "photo.png", 36, 40, seed=1)
    write_image(second / "Photo.jpg", 30, 44, seed=2)
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("grass, lawn\nroad\n")
    common = ["--labels-file", labels_file, "--model", tiny_checkpoint, "--set", f"short_side={SHORT_SIDE}"]
    code, _, stderr = run(capsys, first, second / "Photo.jpg", first / "photo.png", *common, "--out", first)
    assert code == 0, stderr
    check_outputs(first, "photo", first / "photo.png", ["grass", "road"])
    check_outputs(first, "Photo-2", second / "Photo.jpg", ["grass", "road"])  # a name used twice gets -2
    # Segmenting the output folder again skips the label maps and overlays written there.
    code, stdout, stderr = run(capsys, first, *common, "--out", first)
    assert code == 0, stderr
    assert len(stdout.splitlines()) == 1


def test_save_scores_alone_writes_only_the_scores(tiny_checkpoint, images, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scores = tmp_path / "scores" / "noise.safetensors"
    code, stdout, stderr = run(
        capsys, images / "noise.png", "--labels", *LABELS, "--model", tiny_checkpoint,
        "--set", f"short_side={SHORT_SIDE}", "--save-scores", scores,
    )  # fmt: skip
    assert code == 0, stderr
    assert stdout.strip() == f"Wrote {scores}"
    assert scores.is_file()
    assert not (tmp_path / DEFAULT_OUT_DIR).exists()

    code, _, stderr = run(
        capsys, images / "noise.png", "--labels", *LABELS, "--model", tiny_checkpoint,
        "--set", f"short_side={SHORT_SIDE}",
    )  # fmt: skip
    assert code == 0, stderr
    check_outputs(tmp_path / DEFAULT_OUT_DIR, "noise", images / "noise.png", ["sky", "cat", "dog"])


def test_exif_orientation_is_applied(tiny_checkpoint, tmp_path, capsys):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.fromarray(np.full((30, 50, 3), 90, dtype=np.uint8)).save(path, exif=exif)
    code, _, stderr = run(
        capsys, path, "--labels", "a", "b", "--model", tiny_checkpoint, "--set", f"short_side={SHORT_SIDE}",
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert code == 0, stderr
    summary = json.loads((tmp_path / "out" / "rotated.json").read_text())
    assert summary["size"] == {"width": 30, "height": 50}
    with Image.open(tmp_path / "out" / "rotated_labels.png") as label_map:
        assert label_map.size == (30, 50)


TWO_CLASSES = ["--labels", "cat", "dog"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--out", "{tmp}/out"], "No labels given"),
        ([*TWO_CLASSES, "cat"], "Class 'cat' is given twice"),
        (["--labels-file", "{tmp}/duplicates.txt"], "Class 'dog' is given twice"),
        (["--labels-file", "{tmp}/absent.txt"], "absent.txt does not exist"),
        (["--labels", "cat", " , dog"], "empty or blank name"),
        (["--labels", "cup,table", "--out", "{tmp}/out"],
         "one class given ('cup, table': commas join synonyms of one class); name at least two classes, each its own "
         "argument: --labels cup table"),
        (["--labels", "cup", "--out", "{tmp}/out"], "one class given ('cup', which every pixel would get)"),
        (["--labels-file", "{tmp}/one.txt", "--out", "{tmp}/out"], "one per line of the file {tmp}/one.txt"),
        (["--preset", "voc99"], "Unknown benchmark preset 'voc99'"),
        ([*TWO_CLASSES, "--set", "colour=red"], "Unknown setting 'colour'"),
        ([*TWO_CLASSES, "--set", "gaussian_std=wide"], "gaussian_std='wide' is invalid: it must be a number > 0"),
        ([*TWO_CLASSES, "--set", "short_side=-3"], "short_side=-3 is invalid: it must be an integer >= 0"),
        ([*TWO_CLASSES, "--set", "pamr_dilations=8,x"], "pamr_dilations='8,x' is invalid"),
        ([*TWO_CLASSES, "--set", "attn_strategy=csa"], "set arch='vanilla'"),
        ([*TWO_CLASSES, "--set", "prompt_templates=a {}"], "--templates-file FILE"),
        ([*TWO_CLASSES, "--templates-file", "{tmp}/none.txt"], "none.txt does not exist"),
        ([*TWO_CLASSES, "--templates-file", "{tmp}/duplicates.txt"], "instead of exactly one empty '{}'"),
        ([*TWO_CLASSES, "--set", "slide_stride=500"], "slide_stride=500"),
        ([*TWO_CLASSES, "--set", "prob_thd"], "not of the form KEY=VALUE"),
        ([*TWO_CLASSES, "--out", "{tmp}/file.txt"], "{tmp}/file.txt is an existing file"),
        ([*TWO_CLASSES, "--out", "{tmp}/file.txt/sub"], "Cannot write to the output folder {tmp}/file.txt/sub"),
        ([*TWO_CLASSES, "--save-scores", "{tmp}"], "is a folder"),
        ([*TWO_CLASSES, "--save-scores", "{tmp}/file.txt/s.safetensors"], "{tmp}/file.txt is an existing file"),
        ([*TWO_CLASSES, "--save-scores", "{tmp}/file.txt/a/s.safetensors"], "Cannot write to the folder"),
        ([*TWO_CLASSES, "--scores", "--save-scores", "{tmp}/s.safetensors"], "--scores writes"),
    ],
)
def test_setup_errors_before_loading_the_model(images, tmp_path, capsys, arguments, message):
    (tmp_path / "duplicates.txt").write_text("cat\ndog\ndog, puppy\n")
    (tmp_path / "one.txt").write_text("cup, table\n")
    (tmp_path / "file.txt").write_text("a file, not a folder")
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    code, stdout, stderr = run(capsys, images / "noise.png", "--model", MISSING_MODEL, *arguments)
    assert code == 2
    assert stderr.startswith("naclip segment: error: ")
    assert message.replace("{tmp}", str(tmp_path)) in stderr
    assert "Could not load" not in stderr and stdout == ""
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder_names_folder_and_fix(images, tmp_path, capsys):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("file permissions do not restrict root")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, _, stderr = run(capsys, images / "noise.png", "--labels", "cat", "dog", "--model", MISSING_MODEL,
                              "--out", locked / "sub")  # fmt: skip
    finally:
        locked.chmod(0o700)
    assert code == 2
    assert f"Cannot write to the output folder {locked / 'sub'}" in stderr and "--out DIR" in stderr


def test_input_errors(images, tmp_path, capsys):
    common = ["--labels", "cat", "dog", "--model", MISSING_MODEL, "--out", tmp_path / "out"]
    code, _, stderr = run(capsys, images / "noise.png", images / "halves.jpg", "--labels", "cat", "dog",
                          "--save-scores", tmp_path / "s.safetensors")  # fmt: skip
    assert code == 2 and "writes one file but 2 images were given" in stderr and "--scores" in stderr
    code, _, stderr = run(capsys, "--labels", "cat", images / "noise.png")
    assert code == 2 and "No images given" in stderr and "put the images before --labels" in stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, stderr = run(capsys, empty, tmp_path / "nothing.png", *common)
    assert code == 1
    assert f"{empty}: folder holds no images" in stderr
    assert f"{tmp_path / 'nothing.png'}: no such file or folder" in stderr
    assert "2 of 2 inputs failed" in stderr and "Could not load" not in stderr
    for argv in (["--labels", "a", "b", "--labels-file", "x.txt"], ["--labels", "a", "b", "--alpha", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["segment", str(images / "noise.png"), *argv])
        assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_help_lists_commands_and_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    top = capsys.readouterr().out
    for command in ("convert", "segment", "evaluate", "card"):
        assert command in top
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    options = ["--labels", "--labels-file", "--preset", "--model", "--set", "--out", "--alpha", "--save-scores",
               "--scores"]  # fmt: skip
    for option in options:
        assert option in text
    for name in BENCHMARKS:
        assert name in text
    for output in ("_labels.png", "_overlay.png", ".json", ".scores.safetensors", DEFAULT_OUT_DIR):
        assert output in text
    assert f"(default: {DEFAULT_CHECKPOINT})" in text
    # The settings' epilog is generated from naclip_hf.models.naclip.options: every key with its valid values.
    for setting in SETTINGS:
        if setting.name != "prompt_templates":
            assert f" {setting.name} " in text and " ".join(setting.valid_range().split()) in text
    assert "prompt_templates: set with --templates-file" in text


def test_example_files():
    photo = EXAMPLES / "coffee.jpg"
    assert photo.stat().st_size < 150_000
    with Image.open(photo) as image:
        assert image.format == "JPEG" and max(image.size) <= 500
    labels = (EXAMPLES / "labels.txt").read_text().splitlines()
    assert labels and all(line.strip() for line in labels)
    assert "coffee.jpg" in (EXAMPLES / "README.md").read_text()


def test_short_side_below_one_patch_is_an_error_naming_the_setting(tiny_checkpoint, images, tmp_path, capsys):
    """`--set short_side=8` passes the range check (>= 0) but leaves less than one 16-pixel patch: the error says
    so and names the fix, instead of failing inside the model."""
    out = tmp_path / "out"
    code, _, stderr = run(capsys, images / "halves.jpg", "--labels", "cat", "dog", "--model", tiny_checkpoint,
                          "--set", "short_side=8", "--out", out)  # fmt: skip
    assert code != 0
    assert "smaller than one 16×16 patch" in stderr and "larger short_side (at least 16)" in stderr
    assert "Input and output sizes" not in stderr
    assert not list(out.glob("halves*")), "no outputs for the image that failed"
