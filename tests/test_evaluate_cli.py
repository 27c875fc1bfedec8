"""`naclip evaluate` end to end on tiny synthetic copies of the eight benchmarks, its errors, and the script
that runs all benchmarks."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import naclip_hf.inference as inference
from naclip_hf import cli
from naclip_hf.benchmarks import BENCHMARKS, Benchmark, get_benchmark, register_benchmark
from naclip_hf.evaluation.datasets import load_benchmark_dataset
from naclip_hf.evaluation.runner import class_display_names
from synthetic_data import make_benchmark_dataset, save_gray_png, save_palette_png

REPO = Path(__file__).resolve().parents[1]
SHORT_SIDE = 64
RESULT_KEYS = {
    "preset",
    "model",
    "split",
    "num_images",
    "miou_percent",
    "mean_iou",
    "aacc_percent",
    "macc_percent",
    "per_class_iou",
    "per_class_accuracy",
    "class_names",
    "settings",
    "published",
    "comparison",
    "protocol_deviations",
    "confusion_matrix",
}
NACLIP_KEYS = {
    "arch", "attn_strategy", "gaussian_std", "logit_scale", "prob_thd", "slide_crop", "slide_stride",
    "slide_batch_size", "pamr_steps", "pamr_dilations", "pos_embed_interpolation", "text_batch_size",
    "prompt_templates",
}  # fmt: skip
# preset -> how it is run: through the installed `naclip` command or in-process, and its --pamr flag
RUNS = {
    "voc21": ("subprocess", None),  # the model's own setting: PAMR on
    "voc20": ("in-process", "off"),
    "context60": ("in-process", "off"),
    "context59": ("in-process", "off"),
    "coco_object": ("in-process", "off"),
    "coco_stuff": ("in-process", "off"),
    "ade20k": ("in-process", "off"),
    "cityscapes": ("in-process", "on"),
}
FAST_TEMPLATES = ["a photo of a {}.", "itap of a {}."]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.fixture(scope="module")
def fast_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint with two prompt templates instead of 80: embedding 171 classes takes a moment only."""
    folder = tmp_path_factory.mktemp("fast") / "tiny-naclip-2-templates"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["prompt_templates"] = FAST_TEMPLATES
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def evaluate_args(preset: str, root: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return [
        "evaluate", "--preset", preset, "--data-root", str(root), "--model", str(checkpoint), "--limit", "2",
        "--out", str(out), "--set", f"short_side={SHORT_SIDE}", *extra,
    ]  # fmt: skip


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_naclip(argv: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "naclip_hf.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300)


def independent_counts(checkpoint: Path, preset_name: str, root: Path, pamr: bool) -> np.ndarray:
    """Per class [true positives, reference pixels, predicted pixels] from `segment_image` and plain counting."""
    preset = get_benchmark(preset_name)
    settings = {key: value for key, value in preset.settings().items() if key != "short_side"}
    model = inference.load_model(checkpoint, {**settings, "pamr_steps": 10 if pamr else 0})
    processor = inference.load_processor(checkpoint)
    embeddings = inference.encode_classes(model=model, processor=processor, classes=preset.class_names())
    rows = load_benchmark_dataset(preset_name, root, limit=2)
    counts = np.zeros((preset.num_classes, 3), dtype=np.int64)
    for image_path, label_path in zip(rows["image"], rows["label"]):
        with Image.open(image_path) as image:
            prediction = inference.segment_image(
                model, processor, image.convert("RGB"), embeddings, short_side=SHORT_SIDE
            ).segmentation.numpy()
        with Image.open(label_path) as label_image:
            raw = np.array(label_image).astype(np.int64)  # palette PNGs give their indices
        label = raw
        if preset.reduce_zero_label:
            label = np.where((raw == 0) | (raw == 255), 255, raw - 1)
        assert prediction.shape == label.shape
        counted = label != 255
        for c in range(preset.num_classes):
            is_pred, is_ref = (prediction == c) & counted, (label == c) & counted
            counts[c] += [(is_pred & is_ref).sum(), is_ref.sum(), is_pred.sum()]
    return counts


def check_result(result: dict, preset_name: str, checkpoint: Path, root: Path, pamr: bool) -> None:
    preset = get_benchmark(preset_name)
    names = class_display_names(preset)
    assert RESULT_KEYS <= set(result)
    assert result["preset"] == preset_name and result["num_images"] == 2 and result["split"] == "val"
    assert result["partial"] is False and result["num_images_done"] == 2 and result["error"] is None
    assert list(result["per_class_iou"]) == names and len(names) == preset.num_classes
    assert result["published"] == preset.published
    settings = result["settings"]
    assert NACLIP_KEYS <= set(settings)
    assert settings["short_side"] == SHORT_SIDE and settings["model"] == str(checkpoint)
    assert (settings["slide_crop"], settings["prob_thd"]) == (preset.slide_crop, preset.prob_thd)
    assert settings["pamr_steps"] == (10 if pamr else 0)
    assert result["comparison"]["paper_key"] == ("paper_pamr" if pamr else "paper_no_pamr")
    matrix = np.array(result["confusion_matrix"], dtype=np.int64)
    assert matrix.shape == (preset.num_classes, preset.num_classes)

    counts = independent_counts(checkpoint, preset_name, root, pamr)
    true_positive, reference, predicted = counts.T
    np.testing.assert_array_equal(np.diag(matrix), true_positive)
    np.testing.assert_array_equal(matrix.sum(axis=1), reference)
    np.testing.assert_array_equal(matrix.sum(axis=0), predicted)
    union = reference + predicted - true_positive
    iou = [tp / u for tp, u in zip(true_positive, union) if u > 0]
    assert result["mean_iou"] == pytest.approx(float(np.mean(iou)), abs=1e-12)
    assert result["miou_percent"] == pytest.approx(100 * float(np.mean(iou)), abs=1e-10)
    for name, tp, u in zip(names, true_positive, union):
        expected = None if u == 0 else 100 * tp / u
        assert result["per_class_iou"][name] == (None if expected is None else pytest.approx(expected))


def check_report(stdout: str, preset_name: str, pamr: bool) -> None:
    preset = get_benchmark(preset_name)
    for name in class_display_names(preset):
        assert f"| {name} " in stdout
    assert "mIoU" in stdout and "aAcc" in stdout and "mAcc" in stdout
    paper = preset.published["paper_pamr" if pamr else "paper_no_pamr"]
    assert f"{paper:6.2f}  ours - published:" in stdout
    assert f"{preset.published['repo_pamr']:.2f}" in stdout
    assert f"short_side               {SHORT_SIDE}" in stdout


@pytest.mark.parametrize("preset_name", list(BENCHMARKS))
def test_evaluate_every_preset(preset_name, tiny_checkpoint, fast_checkpoint, tmp_path, capsys):
    mode, pamr_flag = RUNS[preset_name]
    checkpoint = tiny_checkpoint if mode == "subprocess" else fast_checkpoint
    root = make_benchmark_dataset(preset_name, tmp_path / "data", num_images=3)
    out = tmp_path / "results" / "results.json"
    argv = evaluate_args(preset_name, root, checkpoint, out, *(["--pamr", pamr_flag] if pamr_flag else []))
    if mode == "subprocess":
        completed = run_naclip(argv)
        assert completed.returncode == 0, completed.stderr
        stdout = completed.stdout
    else:
        code, stdout, err = run_in_process(argv, capsys)
        assert code == 0, err
    pamr = pamr_flag != "off"
    check_report(stdout, preset_name, pamr)
    assert f"Wrote {out}" in stdout
    result = json.loads(out.read_text())
    check_result(result, preset_name, checkpoint, root, pamr)
    templates = result["settings"]["prompt_templates"]
    assert templates == (None if checkpoint == tiny_checkpoint else FAST_TEMPLATES)
    assert not list(out.parent.glob(".*tmp*"))


def test_set_overrides_win_over_preset_and_pamr(fast_checkpoint, tmp_path, capsys):
    root = make_benchmark_dataset("cityscapes", tmp_path / "data")
    out = tmp_path / "r.json"
    argv = evaluate_args("cityscapes", root, fast_checkpoint, out, "--pamr", "on", "--set", "pamr_steps=3",
                         "--set", "slide_crop=32", "--set", "slide_stride=16", "--set", "prob_thd=0.5")  # fmt: skip
    code, stdout, err = run_in_process(argv, capsys)
    assert code == 0, err
    settings = json.loads(out.read_text())["settings"]
    assert (settings["pamr_steps"], settings["slide_crop"], settings["slide_stride"]) == (3, 32, 16)
    assert settings["prob_thd"] == 0.5
    assert "slide_crop=32 (official 224)" in stdout


def test_hub_style_dataset_matches_folder(fast_checkpoint, tmp_path, capsys):
    import datasets

    root = make_benchmark_dataset("voc21", tmp_path / "data", num_images=2)
    rows = load_benchmark_dataset("voc21", root)
    saved = tmp_path / "saved"
    table = datasets.Dataset.from_dict({"img": rows["image"], "seg": rows["label"]})
    table = table.cast_column("img", datasets.Image()).cast_column("seg", datasets.Image())
    datasets.DatasetDict({"validation": table}).save_to_disk(str(saved))

    folder_out, hub_out = tmp_path / "folder.json", tmp_path / "hub.json"
    assert run_in_process(evaluate_args("voc21", root, fast_checkpoint, folder_out, "--pamr", "off"), capsys)[0] == 0
    argv = ["evaluate", "--preset", "voc21", "--dataset", str(saved), "--image-column", "img", "--label-column",
            "seg", "--model", str(fast_checkpoint), "--out", str(hub_out), "--pamr", "off",
            "--set", f"short_side={SHORT_SIDE}"]  # fmt: skip
    code, _, err = run_in_process(argv, capsys)
    assert code == 0, err
    folder, hub = json.loads(folder_out.read_text()), json.loads(hub_out.read_text())
    assert hub["confusion_matrix"] == folder["confusion_matrix"]
    assert hub["num_images"] == 2


# --- errors: one clear line, non-zero exit, no traceback, no results file


def expect_error(capsys, argv: list[str], *fragments: str) -> str:
    code, _, err = run_in_process(argv, capsys)
    assert code != 0
    message = err.strip().splitlines()[-1]
    assert message.startswith("naclip evaluate: error: ")
    for fragment in fragments:
        assert fragment in message
    assert "Traceback" not in err
    return message


def test_missing_data_root_subprocess(fast_checkpoint, tmp_path):
    out = tmp_path / "r.json"
    completed = run_naclip(evaluate_args("voc21", tmp_path / "nowhere", fast_checkpoint, out))
    assert completed.returncode != 0
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("naclip evaluate: error: Data root")
    assert "nowhere" in lines[0] and not out.exists()


def test_missing_split_file(fast_checkpoint, tmp_path, capsys):
    root = make_benchmark_dataset("voc21", tmp_path / "data")
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    expect_error(capsys, evaluate_args("voc21", root, fast_checkpoint, tmp_path / "r.json"), "Split list", "val.txt")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("preset_name", ["voc21", "ade20k"])
def test_image_without_label(fast_checkpoint, tmp_path, capsys, preset_name):
    root = make_benchmark_dataset(preset_name, tmp_path / "data")
    label = sorted((root / ("SegmentationClass" if preset_name == "voc21" else "annotations")).rglob("*.png"))[0]
    label.unlink()
    argv = evaluate_args(preset_name, root, fast_checkpoint, tmp_path / "r.json")
    expect_error(capsys, argv, "no label file", label.name.split(".")[0])


def test_label_without_image(fast_checkpoint, tmp_path, capsys):
    root = make_benchmark_dataset("cityscapes", tmp_path / "data")
    image = sorted((root / "leftImg8bit").rglob("*.png"))[0]
    image.unlink()
    argv = evaluate_args("cityscapes", root, fast_checkpoint, tmp_path / "r.json")
    expect_error(capsys, argv, "have no image", image.name.replace("_leftImg8bit.png", ""))


@pytest.mark.parametrize(("preset_name", "value", "shown"), [("voc21", 99, "99"), ("ade20k", 200, "199")])
def test_failure_during_the_run_keeps_partial_results(fast_checkpoint, tmp_path, capsys, preset_name, value, shown):
    root = make_benchmark_dataset(preset_name, tmp_path / "data", num_images=3)
    label_path = sorted((root / ("SegmentationClass" if preset_name == "voc21" else "annotations")).rglob("*.png"))[1]
    with Image.open(label_path) as image:
        label, mode = np.array(image), image.mode
    label[3:6, 3:6] = value
    (save_palette_png if mode == "P" else save_gray_png)(label, label_path)
    num_classes = get_benchmark(preset_name).num_classes
    out = tmp_path / "r.json"
    argv = evaluate_args(preset_name, root, fast_checkpoint, out, "--limit", "3", "--pamr", "off")
    code, stdout, err = run_in_process(argv, capsys)
    assert code == 1 and "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"naclip evaluate: error: {label_path} (image ")
    assert f"values {shown} outside [0, {num_classes})" in message
    assert f'partial results (1 of 3 images) written to {out}, marked "partial": true' in message
    assert "PARTIAL RESULT: stopped after 1 of 3 images" in stdout
    partial = json.loads(out.read_text())
    assert partial["partial"] is True and partial["num_images_done"] == 1 and partial["num_images"] == 3
    assert str(label_path) in partial["error"]
    assert not list(out.parent.glob(".*tmp*"))
    # The partial scores are those of the first image alone.
    first = tmp_path / "first.json"
    assert run_in_process(evaluate_args(preset_name, root, fast_checkpoint, first, "--limit", "1", "--pamr", "off"),
                          capsys)[0] == 0  # fmt: skip
    assert partial["confusion_matrix"] == json.loads(first.read_text())["confusion_matrix"]


def test_label_size_differs_from_image(fast_checkpoint, tmp_path, capsys):
    root = make_benchmark_dataset("coco_stuff", tmp_path / "data")
    label_path = sorted((root / "annotations").rglob("*_labelTrainIds.png"))[0]
    with Image.open(label_path) as image:
        image.resize((30, 20), Image.NEAREST).save(label_path)
    argv = evaluate_args("coco_stuff", root, fast_checkpoint, tmp_path / "r.json")
    code, _, err = run_in_process(argv, capsys)
    assert code == 2 and str(label_path) in err and "20x30" in err and "(40x56)" in err


def test_every_data_problem_is_reported_before_loading_the_model(tmp_path, capsys):
    root = make_benchmark_dataset("ade20k", tmp_path / "data", num_images=4)
    images = sorted((root / "images" / "validation").glob("*.jpg"))
    labels = sorted((root / "annotations" / "validation").glob("*.png"))
    images[0].write_bytes(b"not a JPEG at all")
    with Image.open(labels[1]) as image:
        image.resize((30, 20), Image.NEAREST).save(labels[1])
    with Image.open(labels[2]) as image:
        image.convert("RGB").save(labels[2])
    out = tmp_path / "r.json"
    argv = ["evaluate", "--preset", "ade20k", "--data-root", str(root), "--model", str(tmp_path / "no-model"),
            "--out", str(out)]  # fmt: skip
    code, stdout, err = run_in_process(argv, capsys)
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert err.startswith(f"naclip evaluate: error: 3 problem(s) in the ade20k data at {root}")
    assert f"{images[0]}: the image cannot be read" in err
    assert f"{labels[1]}: label map size 20x30 (HxW) differs from its image {images[1]} (40x56)" in err
    assert f"{labels[2]}: the label map has mode 'RGB'" in err
    assert "no such folder" not in err and not out.exists()  # the data is checked first


def test_registered_benchmark_end_to_end(fast_checkpoint, tmp_path, capsys):
    """A new benchmark is one descriptor: its class file, an existing layout, settings, published numbers."""
    classes = tmp_path / "tiny_classes.txt"
    classes.write_text("sky\nroad, street\ncar\n")
    benchmark = Benchmark(
        name="tiny_street", display_name="Tiny street scenes (3 classes)", dataset_type="tiny_street",
        classes_file=str(classes), num_classes=3, reduce_zero_label=False, layout="ade20k", short_side=48,
        slide_crop=32, slide_stride=16, prob_thd=0.2, split_folders={"val": "validation"},
        published={"paper_no_pamr": 50.0},
    )  # fmt: skip
    register_benchmark(benchmark)
    try:
        root = tmp_path / "data"
        make_benchmark_dataset("tiny_street", root, num_images=2)
        out = tmp_path / "tiny.json"
        argv = ["evaluate", "--preset", "tiny_street", "--data-root", str(root), "--model", str(fast_checkpoint),
                "--pamr", "off", "--out", str(out)]  # fmt: skip
        code, stdout, err = run_in_process(argv, capsys)
        assert code == 0, err
        result = json.loads(out.read_text())
        assert result["class_names"] == ["background", "road", "car"]  # prob_thd > 0: class 0 is the background
        settings = result["settings"]
        assert (settings["short_side"], settings["slide_crop"], settings["slide_stride"]) == (48, 32, 16)
        assert settings["prob_thd"] == 0.2
        assert result["protocol_deviations"] == [  # the fast checkpoint's templates only
            "prompt_templates: 2 custom templates (official: the 80 ImageNet templates)"
        ]
        assert result["published"] == {"paper_no_pamr": 50.0}
        assert "50.00  ours - published:" in stdout
        with pytest.raises(SystemExit):
            cli.main(["evaluate", "--help"])
        assert "tiny_street" in capsys.readouterr().out
        from naclip_hf.hub_card import CardResult

        assert CardResult("tiny_street", 1.0).dataset_name_and_type == ("Tiny street scenes (3 classes)", "tiny_street")
    finally:
        BENCHMARKS.pop("tiny_street", None)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--dataset", "some/dataset"], "not both"),
        (["--set", "slide_stride=300"], "slide_stride=300"),
        (["--set", "bogus=1"], "Unknown setting 'bogus'"),
    ],
)
def test_invalid_arguments(fast_checkpoint, tmp_path, capsys, extra, fragment):
    root = make_benchmark_dataset("context60", tmp_path / "data")
    expect_error(capsys, evaluate_args("context60", root, fast_checkpoint, tmp_path / "r.json", *extra), fragment)


def test_no_data_and_unknown_preset(fast_checkpoint, capsys):
    expect_error(capsys, ["evaluate", "--preset", "voc21", "--model", str(fast_checkpoint)], "--data-root")
    expect_error(capsys, ["evaluate", "--preset", "voc99", "--data-root", "x"], "voc99", "voc21")


# --- an ONNX export


def test_an_export_is_evaluated_like_its_checkpoint(tiny_export, tiny_checkpoint, tmp_path, capsys):
    """`--model EXPORT` runs the same protocol on onnxruntime; its float32 graph gives the checkpoint's matrix."""
    root = make_benchmark_dataset("voc20", tmp_path / "data")
    templates = tmp_path / "templates.txt"  # two prompts per class instead of 80: quick to embed
    templates.write_text("\n".join(FAST_TEMPLATES) + "\n")
    results = {}
    for name, model in (("checkpoint", tiny_checkpoint), ("export", tiny_export)):
        out = tmp_path / f"{name}.json"
        argv = evaluate_args("voc20", root, model, out, "--pamr", "off", "--templates-file", str(templates))
        code, stdout, err = run_in_process(argv, capsys)
        assert code == 0, err
        assert "NACLIP evaluation: voc20" in stdout
        results[name] = json.loads(out.read_text())
    checkpoint, export = (np.array(results[name]["confusion_matrix"]) for name in ("checkpoint", "export"))
    assert export.sum() == checkpoint.sum() > 0
    # logits within about 1e-6 of PyTorch's: at most a few pixels may change class
    assert np.abs(export - checkpoint).sum() <= 0.002 * checkpoint.sum()
    settings = results["export"]["settings"]
    assert (settings["model"], settings["dtype"], settings["device"]) == (str(tiny_export), "float32", "cpu")
    assert settings["pamr_steps"] == 0 and settings["short_side"] == SHORT_SIDE
    assert settings["prompt_templates"] == FAST_TEMPLATES  # embedded by the export's text graph
    naclip = {key: results["checkpoint"]["settings"][key] for key in NACLIP_KEYS}
    assert {key: settings[key] for key in NACLIP_KEYS} == naclip


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--dtype", "bfloat16"], ["ONNX export", "runs in the precision it was exported in (float32)"]),
        (["--method", "sclip"], ["arch='vanilla' cannot be changed on an exported model", "--set arch="]),
    ],
)
def test_an_export_refuses_what_its_graph_fixed(tiny_export, tmp_path, capsys, extra, fragments):
    root = make_benchmark_dataset("voc20", tmp_path / "data")
    out = tmp_path / "r.json"
    expect_error(capsys, evaluate_args("voc20", root, tiny_export, out, *extra), *fragments)
    assert not out.exists()


# --- scripts/run_all_benchmarks.py


def load_script():
    spec = importlib.util.spec_from_file_location("run_all_benchmarks", REPO / "scripts" / "run_all_benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_all_benchmarks_table(fast_checkpoint, tmp_path, capsys):
    script = load_script()
    voc = make_benchmark_dataset("voc21", tmp_path / "voc")
    config = tmp_path / "roots.json"
    config.write_text(json.dumps({"voc20": "voc", "cityscapes": "missing"}))  # relative to the file
    out_dir = tmp_path / "out"
    argv = ["--roots", f"voc21={voc}", "--data-config", str(config), "--model", str(fast_checkpoint),
            "--out-dir", str(out_dir), "--limit", "1", "--set", f"short_side={SHORT_SIDE}", "--markdown",
            "--no-progress"]  # fmt: skip
    code = script.main(argv)
    captured = capsys.readouterr()
    assert code == 1  # cityscapes has no such folder
    assert "cityscapes" in captured.err and "missing" in captured.err
    lines = captured.out.splitlines()
    header = next(line for line in lines if line.startswith("|  | voc21"))
    assert (
        header == "|  | voc21 | context60 | coco_object | voc20 | cityscapes | context59 | ade20k | coco_stuff | avg |"
    )
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    assert list(rows)[1:] == ["ours, no PAMR", "paper, no PAMR", "ours, PAMR", "paper, PAMR", "repo, PAMR"]
    assert rows["paper, no PAMR"].endswith("| 22.9 | 39.0 |")
    assert rows["repo, PAMR"].startswith("| repo, PAMR | 64.07 | 34.99 |")
    ours = rows["ours, PAMR"].strip("| ").split(" | ")[1:]
    assert ours[1] == ours[2] == ours[4] == ours[5] == ours[6] == ours[7] == ours[8] == "—"
    for preset, column in (("voc21", 0), ("voc20", 3)):
        for pamr, row in ((False, "ours, no PAMR"), (True, "ours, PAMR")):
            result = json.loads((out_dir / f"{preset}_{'pamr' if pamr else 'no_pamr'}.json").read_text())
            assert result["num_images"] == 1 and result["settings"]["pamr_steps"] == (10 if pamr else 0)
            assert rows[row].strip("| ").split(" | ")[1 + column] == f"{result['miou_percent']:.2f}"
    assert (out_dir / "table.md").read_text().strip() in captured.out
    assert json.loads((out_dir / "summary.json").read_text())["errors"].keys() == {"cityscapes"}

    assert script.main(["--from-results", str(out_dir), "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == (out_dir / "table.md").read_text().strip()


def test_run_all_benchmarks_roots_and_plain_table():
    script = load_script()
    roots = script.parse_roots(["voc=/a", "context59=/c"], {"voc20": "/b", "coco": "/d"})
    assert {k: str(v) for k, v in roots.items()} == {
        "voc21": "/a", "voc20": "/a", "context59": "/c", "coco_object": "/d", "coco_stuff": "/d",
    }  # fmt: skip
    with pytest.raises(ValueError, match="Unknown benchmark 'pascal'"):
        script.parse_roots(["pascal=/x"])
    with pytest.raises(ValueError, match="NAME=DIR"):
        script.parse_roots(["voc"])
    full = {(p, m): 10.0 + i for i, p in enumerate(script.PAPER_ORDER) for m in (False, True)}
    table = script.format_table(full)
    lines = table.splitlines()
    assert lines[0].split() == [*script.PAPER_ORDER, "avg"]
    assert lines[2].split()[-1] == "13.50" and lines[3].split()[-1] == "39.0"  # avg of 10..17; paper avg
    assert "—" not in table and "average over" not in table
