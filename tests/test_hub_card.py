"""Model cards: template, front matter (Hub metadata, model-index), results files, `naclip card`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from naclip_hf.hub_card import load_results, read_template, render_model_card, write_model_card

VOC21 = {
    "preset": "voc21",
    "split": "val",
    "num_images": 1449,
    "miou_percent": 62.4321,
    "mean_iou": 0.624321,
    "settings": {"pamr_steps": 10, "short_side": 336, "split": "val"},
    "protocol_deviations": [],
}
ADE_NO_PAMR = {"preset": "ade20k", "mean_iou": 0.1712, "settings": {"pamr_steps": 0}}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    _, header, body = card.split("---\n", 2)
    assert body.lstrip().startswith("# ")
    return yaml.safe_load(header)


@pytest.fixture()
def results_files(tmp_path) -> list[Path]:
    paths = []
    for name, data in (("voc21.json", VOC21), ("ade20k.json", ADE_NO_PAMR)):
        path = tmp_path / name
        path.write_text(json.dumps(data))
        paths.append(path)
    return paths


def test_template_is_packaged_and_documented():
    template = read_template()
    assert template.startswith("---\nlibrary_name: transformers\n")
    for placeholder in ("$model_index", "$settings_table", "$results_section", "$model_ref"):
        assert placeholder in template
    root = Path(__file__).parents[1]
    readme = root / "hub_card" / "README.md"
    assert "src/naclip_hf/card_templates/model_card.md" in readme.read_text()
    copies = [path for path in readme.parent.rglob("*") if path.is_file() and path.read_text().startswith("---")]
    assert copies == [], "the template has a single copy, in the package"
    assert "card_templates/*.md" in (root / "setup.cfg").read_text(), "the template is package data"


def test_card_without_results(tiny_checkpoint):
    card = render_model_card(tiny_checkpoint)
    meta = front_matter(card)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-segmentation"
    assert meta["base_model"] == "openai/clip-vit-base-patch16"
    assert meta["license"] == "mit"
    assert {"naclip", "open-vocabulary", "semantic-segmentation"} <= set(meta["tags"])
    assert "model-index" not in meta
    assert "$" not in card.replace("$ ", ""), "every placeholder is filled"
    for section in ("## Usage", "## Settings", "## Results", "## Method", "## Limitations", "## Citation"):
        assert section in card
    assert "No evaluation of this checkpoint is attached" in card
    assert "| `attn_strategy` | naclip |" in card and "| `pamr_dilations` | 8, 16 |" in card
    assert "| `short_side` (image processor) | 336 |" in card
    assert "Pay Attention to Your Neighbours" in card and "Hajimiri, Sina and Ben Ayed, Ismail and Dolz, Jose" in card
    assert "WACV" in card and "year      = {2025}" in card
    assert 'pipeline(model="your-name/' in card and "trust_remote_code=True" in card
    assert "saved without its pipeline code" in card  # the converted folder does not ship pipeline_naclip.py


def test_card_with_results(tiny_checkpoint, results_files):
    card = render_model_card(tiny_checkpoint, results=results_files, base_model="someone/clip-b16",
                             repo_id="me/naclip-b16", license="apache-2.0")  # fmt: skip
    meta = front_matter(card)
    assert meta["base_model"] == "someone/clip-b16" and meta["license"] == "apache-2.0"
    (index,) = meta["model-index"]
    assert index["name"] == "naclip-b16"
    voc, ade = index["results"]
    assert voc["task"]["type"] == "image-segmentation"
    assert voc["dataset"] == {"name": "PASCAL VOC 2012 (21 classes, with background)", "type": "pascal_voc",
                              "config": "voc21", "split": "val"}  # fmt: skip
    assert voc["metrics"] == [{"type": "mean_iou", "value": 62.43, "name": "mIoU"}]
    assert ade["dataset"]["config"] == "ade20k" and "split" not in ade["dataset"]
    assert ade["metrics"][0]["value"] == 17.12  # from the fraction
    assert "| PASCAL VOC 2012 (21 classes, with background) | val | 1449 | on | 62.43 | 62.4 |" in card
    assert "| ADE20K (150 classes) | - | - | off | 17.12 | 17.4 |" in card
    assert 'pipeline(model="me/naclip-b16"' in card
    # The Hub's own parser reads the same metadata.
    parsed = ModelCard(card).data
    assert parsed.base_model == "someone/clip-b16" and parsed.pipeline_tag == "image-segmentation"
    assert [(r.dataset_config, r.metric_type, r.metric_value) for r in parsed.eval_results] == [
        ("voc21", "mean_iou", 62.43),
        ("ade20k", "mean_iou", 17.12),
    ]


def test_hub_folder_card_has_no_missing_code_note(tiny_checkpoint, tmp_path):
    from naclip_hf import NACLIPForSemanticSegmentation, save_for_hub
    from naclip_hf.inference import load_processor

    folder = save_for_hub(NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint),
                          load_processor(tiny_checkpoint), tmp_path / "hub")  # fmt: skip
    assert "saved without its pipeline code" not in render_model_card(folder)


def test_settings_come_from_the_saved_config(tiny_checkpoint, tmp_path):
    from naclip_hf import NACLIPForSemanticSegmentation

    model = NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint, attn_strategy="csa", arch="vanilla",
                                                          prompt_templates=["a photo of a {}."])  # fmt: skip
    model.save_pretrained(tmp_path)
    card = render_model_card(tmp_path)
    assert "| `attn_strategy` | csa |" in card and "| `arch` | vanilla |" in card
    assert "| `prompt_templates` | 1 custom templates |" in card


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"miou_percent": 50.0}, "no 'preset'"),
        ({"preset": "voc21"}, "no mIoU"),
        ({"preset": "voc21", "mean_iou": 62.4}, "not a fraction"),
        ({"preset": "voc21", "miou_percent": 162.4}, "outside"),
        ({"preset": "voc21", "miou_percent": "high"}, "not a number"),
        ({"preset": "voc21", "miou_percent": float("nan")}, "not a finite number"),
        ({"preset": "voc21", "miou_percent": None, "mean_iou": None}, "no mIoU"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_invalid_results_are_reported(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as caught:
        load_results([path])
    assert "bad.json" in str(caught.value)


def test_missing_inputs(tmp_path, tiny_checkpoint):
    with pytest.raises(FileNotFoundError, match="config.json"):
        render_model_card(tmp_path)
    with pytest.raises(FileNotFoundError, match="naclip evaluate --out"):
        render_model_card(tiny_checkpoint, results=[tmp_path / "missing.json"])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results([tmp_path / "broken.json"])


def test_write_is_atomic_and_replaces(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "cards" / "README.md"
    assert write_model_card(tiny_checkpoint, out=out) == out
    first = out.read_text()
    assert first == render_model_card(tiny_checkpoint)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", fail)
    with pytest.raises(OSError, match="disk full"):
        write_model_card(tiny_checkpoint, results=[VOC21], out=out)
    monkeypatch.undo()
    assert out.read_text() == first, "a failed write leaves the previous card"
    assert sorted(p.name for p in out.parent.iterdir()) == ["README.md"], "no temporary file is left behind"


def test_naclip_card_command(tiny_checkpoint, results_files, tmp_path):
    out = tmp_path / "card.md"
    command = [sys.executable, "-m", "naclip_hf.cli", "card", str(tiny_checkpoint), "--results",
               *map(str, results_files), "--base-model", "openai/clip-vit-base-patch16", "--out", str(out)]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert str(out) in completed.stdout
    meta = front_matter(out.read_text())
    assert [r["dataset"]["config"] for r in meta["model-index"][0]["results"]] == ["voc21", "ade20k"]


def test_naclip_card_defaults_and_errors(tiny_checkpoint, tmp_path, capsys):
    from naclip_hf.cli import main

    folder = tmp_path / "model"
    folder.mkdir()
    for path in Path(tiny_checkpoint).iterdir():
        (folder / path.name).symlink_to(path)
    assert main(["card", str(folder)]) == 0
    assert "model-index" not in front_matter((folder / "README.md").read_text())  # default: MODEL_DIR/README.md
    assert str(folder / "README.md") in capsys.readouterr().out

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"preset": "voc21"}))
    assert main(["card", str(tiny_checkpoint), "--results", str(bad), "--out", str(tmp_path / "x.md")]) == 2
    error = capsys.readouterr().err
    assert "bad.json" in error and "no mIoU" in error
    assert not (tmp_path / "x.md").exists()
