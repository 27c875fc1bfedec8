"""A label set of one class is refused on every entry point, before any work, with the fix in its own terms.

With one class every pixel gets it, so `--labels cup,table` (commas join synonyms of one class) or `--labels cup`
would write a map of one label. The pipeline, the demo and `naclip segment` have their tests next to their other
input errors (test_pipeline.py, test_demo.py, test_cli_segment.py); here: the shared parser, `naclip label`,
`compare` and `export`, the export function and the ONNX runtime.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from naclip_hf.cli import main
from naclip_hf.label_files import read_labels_file
from naclip_hf.models.naclip.labels import parse_label_set

SYNONYMS_MESSAGE = "one class given ('cup, table': commas join synonyms of one class); name at least two classes, "


@pytest.mark.parametrize(
    ("entries", "argument", "message"),
    [
        (["cup, table"], "--labels", SYNONYMS_MESSAGE + "each its own argument: --labels cup table"),
        ([["coffee cup", "mug"]], "--labels", "each its own argument: --labels 'coffee cup' mug"),
        (["cup"], "--labels", "one class given ('cup', which every pixel would get); name at least two classes, each "
                              "its own argument: --labels cup background"),
        (["cup, table"], "candidate_labels", SYNONYMS_MESSAGE + "each its own list entry: "
                                                               "candidate_labels=['cup', 'table']"),
        ([["cup", "mug", "beaker"]], "classes", "each its own list entry: classes=['cup', 'mug', 'beaker']"),
        ([], "classes", "No class names given"),
    ],
)  # fmt: skip
def test_parse_label_set_refuses_fewer_than_two_classes(entries, argument, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_label_set(entries, argument)
    assert parse_label_set(["cup", "table, desk"], argument) == [["cup"], ["table", "desk"]]


def test_labels_file_of_one_class(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cup, table\n\n")
    fix = f"one per line of the file {path} (e.g. 'cup' and 'table' on separate lines)"
    with pytest.raises(ValueError, match=re.escape(fix)):
        read_labels_file(path)
    path.write_text("cup\ntable\n")
    assert read_labels_file(path) == [["cup"], ["table"]]


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def command_lines(photo, model, out):
    """Each command that takes class names, with one class, writing to `out`."""
    return {
        "segment": ["segment", str(photo), "--labels", "cup,table", "--model", str(model), "--out", str(out)],
        "label": ["label", str(photo), "--labels", "cup,table", "--model", str(model), "--out", str(out)],
        "compare": ["compare", str(photo), "--labels", "cup,table", "--model", str(model), "--out", str(out / "c.png")],
        "export": ["export", str(model), str(out), "--labels", "cup,table"],
    }


@pytest.mark.parametrize("command", ["segment", "label", "compare", "export"])
def test_commands_refuse_one_class_and_write_nothing(command, photo, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = command_lines(photo, tiny_checkpoint, out)[command]
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"naclip {command}: error: {SYNONYMS_MESSAGE}each its own argument: --labels cup table")
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_commands_refuse_a_labels_file_of_one_class(photo, tiny_checkpoint, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("cup\n")
    out = tmp_path / "out"
    assert main(["segment", str(photo), "--labels-file", str(labels), "--out", str(out)]) == 2
    message = "one class given ('cup', which every pixel would get); name at least two classes, " + (
        f"one per line of the file {labels} (e.g. 'cup' and 'background' on separate lines)"
    )
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_export_function_refuses_one_class_before_any_work(tiny_checkpoint, tmp_path):
    pytest.importorskip("onnxscript")
    from naclip_hf.export.onnx_export import export_onnx

    out = tmp_path / "export"
    with pytest.raises(ValueError, match=re.escape(SYNONYMS_MESSAGE + "each its own list entry: classes=['cup'")):
        export_onnx(str(tiny_checkpoint), out, classes=["cup, table"])
    assert not out.exists()


def test_runtime_refuses_one_class(tiny_export, photo, tmp_path):
    from naclip_hf.export.runtime import ExportedSegmenter

    segmenter = ExportedSegmenter(tiny_export)
    message = SYNONYMS_MESSAGE + "each its own list entry: classes=['cup', 'table']"
    with pytest.raises(ValueError, match=re.escape(message)):
        segmenter.segment(str(photo), classes=["cup, table"])
    with pytest.raises(ValueError, match=re.escape("one class given ('cat', which every pixel would get)")):
        segmenter.segment(str(photo), classes=["cat"])
    one = segmenter.encode_classes(["cat"])  # embedding one class is fine; segmenting into it is not
    with pytest.raises(ValueError, match=re.escape("one class given ('cat', which")):
        segmenter.segment(str(photo), classes=one)
    # An export that stores a single class (all its names as synonyms of one): refused when no classes are given.
    single = tmp_path / "single"
    shutil.copytree(tiny_export, single)
    description = json.loads((single / "classes.json").read_text())
    description["classes"] = [[name for names in description["classes"] for name in names]]
    (single / "classes.json").write_text(json.dumps(description))
    segmenter = ExportedSegmenter(single)
    with pytest.raises(ValueError, match="stores only one class.*name at least two classes"):
        segmenter.segment(str(photo))
    assert segmenter.segment(str(photo), classes=["cat", "sky"], pamr_steps=0).segmentation.shape == (40, 56)
