"""Class names per benchmark and method: a method's official names where its code names a benchmark's classes
otherwise (ClearCLIP on voc20, voc21, coco_object), the preset's own names everywhere else or on request."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from naclip_hf.benchmarks import BENCHMARKS, get_benchmark
from naclip_hf.cli import main
from naclip_hf.methods import METHODS, Method, get_method, register_method

CLEARCLIP_NAMED = ("voc21", "coco_object", "voc20")
TWO_TEMPLATES = "a photo of a {}.\nitap of a {}.\n"


@pytest.fixture
def templates_file(tmp_path):
    """Two prompt templates instead of 80: embedding a benchmark's classes with the tiny model takes a moment."""
    path = tmp_path / "templates.txt"
    path.write_text(TWO_TEMPLATES, encoding="utf-8")
    return path


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------------- Python API
def test_clearclip_voc21_has_one_background_class_and_plain_person_and_tvmonitor():
    preset = get_benchmark("voc21")
    ours = preset.class_names()
    theirs = preset.class_names(method="clearclip")
    assert len(theirs) == len(ours) == preset.num_classes
    assert theirs[0] == ["background"] and len(ours[0]) > 1 and "background" not in ours[0]
    # label ids line up: class i is VOC label i in both lists
    assert theirs[15] == ["person"] and ours[15][0] == "person" and len(ours[15]) > 1
    assert theirs[20] == ["tvmonitor"] and ours[20][0] == "television monitor"
    assert [names[0] for names in theirs[1:20]] == [names[0] for names in ours[1:20]]
    assert all(len(names) == 1 for names in theirs)
    assert preset.classes_file_for("clearclip") == "clearclip/cls_voc21.txt"
    assert preset.class_names(method=get_method("clearclip")) == theirs  # a Method works as well as its name


def test_clearclip_voc20_and_coco_object():
    voc20 = get_benchmark("voc20").class_names(method="clearclip")
    assert voc20 == get_benchmark("voc21").class_names(method="clearclip")[1:]
    assert get_benchmark("voc20").class_names()[14][1:] != []  # ours keeps the person synonyms
    coco = get_benchmark("coco_object")
    theirs, ours = coco.class_names(method="clearclip"), coco.class_names()
    assert theirs[0] == ["background"] and len(ours[0]) > 1
    assert theirs[2:] == ours[2:]


def test_clearclip_coco_object_names_person_alone():
    """ClearCLIP's configs/cls_coco_object.txt names class 1 `person` alone (NACLIP's file lists its synonyms); like
    that file, every class has exactly one name."""
    coco = get_benchmark("coco_object")
    theirs, ours = coco.class_names(method="clearclip"), coco.class_names()
    assert theirs[1] == ["person"]
    assert ours[1][0] == "person" and len(ours[1]) > 1
    assert all(len(names) == 1 for names in theirs)
    assert len(theirs) == coco.num_classes == 81


@pytest.mark.parametrize("preset_name", list(BENCHMARKS))
def test_every_method_has_one_name_list_per_label_id(preset_name):
    preset = get_benchmark(preset_name)
    for name in METHODS:
        classes = preset.class_names(method=name)
        assert len(classes) == preset.num_classes, name
        assert all(names and all(names) for names in classes), name
        if name == "clearclip" and preset_name in CLEARCLIP_NAMED:
            assert classes != preset.class_names()
        elif preset_name in METHODS[name].benchmark_classes:  # e.g. SFP's "people" for "person"
            assert classes != preset.class_names(), name
        else:  # NACLIP's and SCLIP's names are the presets'; ClearCLIP's too on the other benchmarks
            assert classes == preset.class_names(), name
            assert preset.classes_file_for(name) == preset.classes_file


def test_method_class_files_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark"):
        register_method(Method("names_test", "T", "t", {}, benchmark_classes={"voc99": "x.txt"}))
    with pytest.raises(ValueError, match="must be a file name"):
        Method("names_test", "T", "t", {}, benchmark_classes={"voc21": ""})
    short = tmp_path / "two.txt"
    short.write_text("background\ncat\n", encoding="utf-8")
    register_method(Method("names_test", "T", "t", {}, benchmark_classes={"voc21": str(short)}))
    try:
        with pytest.raises(ValueError, match=r"class file of method 'names_test' .*two\.txt holds 2 classes"):
            get_benchmark("voc21").class_names(method="names_test")
        assert get_benchmark("voc20").class_names(method="names_test") == get_benchmark("voc20").class_names()
    finally:
        METHODS.pop("names_test", None)
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        get_benchmark("voc21").class_names(method="nope")


def test_evaluate_preset_checks_the_number_of_classes():
    import datasets

    from naclip_hf.evaluation.runner import evaluate_preset

    data = datasets.Dataset.from_dict({"image": ["a.jpg"], "label": ["a.png"]})
    with pytest.raises(ValueError, match="classes hold 2 classes but voc21 has 21"):
        evaluate_preset(None, None, "voc21", data, classes=[["cat"], ["dog"]])


def test_evaluate_preset_takes_a_segmenter_or_a_model_with_its_processor():
    import datasets

    from naclip_hf.evaluation.runner import evaluate_preset
    from naclip_hf.segmenter import TorchSegmenter

    data = datasets.Dataset.from_dict({"image": ["a.jpg"], "label": ["a.png"]})
    with pytest.raises(ValueError, match="A Segmenter brings its own processor"):
        evaluate_preset(TorchSegmenter(None, None), object(), "voc21", data)
    with pytest.raises(ValueError, match="or a NACLIP model with its processor"):
        evaluate_preset(object(), None, "voc21", data)


def test_per_call_options_are_the_settings_that_differ_and_a_call_can_take():
    from naclip_hf.evaluation.runner import split_call_options
    from naclip_hf.models.naclip.configuration_naclip import NACLIPConfig

    config = NACLIPConfig(pamr_steps=0)
    settings = {"pamr_steps": 10, "slide_crop": config.slide_crop, "prob_thd": 0.3, "short_side": 448}
    assert split_call_options(config, settings) == ({"pamr_steps": 10, "prob_thd": 0.3}, 448)
    assert split_call_options(config, {"prompt_templates": config.prompt_templates}) == ({}, None)
    for key, value in (("prompt_templates", ["a {}."]), ("pos_embed_interpolation", "transformers")):
        with pytest.raises(ValueError, match=f"{key} differs from the model's .* load the model with it"):
            split_call_options(config, {key: value})


# ------------------------------------------------------------------------------------------------ command line
def _segment(image_file, checkpoint, templates_file, out, *extra):
    return main(["segment", str(image_file), "--preset", "voc21", "--model", str(checkpoint), "--set",
                 "short_side=32", "--templates-file", str(templates_file), "--out", str(out), *extra])  # fmt: skip


def test_segment_uses_the_methods_names_unless_preset_classes(
    tiny_checkpoint, templates_file, image_file, tmp_path, capsys
):
    preset = get_benchmark("voc21")
    runs = {
        "clearclip": ("--method", "clearclip"),
        "clearclip_preset": ("--method", "clearclip", "--preset-classes"),
        "naclip": ("--method", "naclip"),
    }
    classes = {}
    for run, extra in runs.items():
        code = _segment(image_file, tiny_checkpoint, templates_file, tmp_path / run, *extra)
        assert code == 0, capsys.readouterr().err
        summary = json.loads((tmp_path / run / "noise.json").read_text())
        classes[run] = [entry["names"] for entry in summary["classes"]]
    assert classes["clearclip"] == preset.class_names(method="clearclip")
    assert classes["clearclip"][0] == ["background"] and classes["clearclip"][20] == ["tvmonitor"]
    assert classes["clearclip_preset"] == classes["naclip"] == preset.class_names()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--labels", "cat", "dog", "--preset-classes"), "add --preset NAME"),
        (("--preset", "voc21", "--labels", "cat", "dog", "--preset-classes"), "--labels / --labels-file replace"),
    ],
)
def test_preset_classes_needs_a_preset_and_no_labels(image_file, tmp_path, capsys, extra, fragment):
    code = main(["segment", str(image_file), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert "--preset-classes" in err and fragment in err and "Traceback" not in err


def test_evaluate_records_the_class_names_it_used(tiny_checkpoint, templates_file, tmp_path, capsys):
    from synthetic_data import make_benchmark_dataset

    root = make_benchmark_dataset("voc21", tmp_path / "data", num_images=1)
    results = {}
    for run, extra in {"clearclip": (), "preset": ("--preset-classes",)}.items():
        out = tmp_path / f"{run}.json"
        code = main(["evaluate", "--preset", "voc21", "--data-root", str(root), "--model", str(tiny_checkpoint),
                     "--method", "clearclip", "--set", "short_side=32", "--templates-file", str(templates_file),
                     "--out", str(out), *extra])  # fmt: skip
        captured = capsys.readouterr()
        assert code == 0, captured.err
        results[run] = json.loads(out.read_text())
    clearclip, preset = results["clearclip"], results["preset"]
    assert clearclip["settings"]["classes_file"] == "clearclip/cls_voc21.txt"
    assert preset["settings"]["classes_file"] == "cls_voc21.txt"
    assert list(clearclip["per_class_iou"])[-1] == "tvmonitor"
    assert list(preset["per_class_iou"])[-1] == "television monitor"
    assert "class names other than the benchmark's (cls_voc21.txt)" in clearclip["protocol_deviations"]
    assert not any("class names" in note for note in preset["protocol_deviations"])
