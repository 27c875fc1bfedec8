"""Hub folders: auto classes, `save_for_hub` / `save_pretrained` / `push_to_hub`, and remote code that loads
where naclip-hf is not installed."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor, pipeline
from transformers.dynamic_module_utils import get_imports

import naclip_hf
from naclip_hf import (
    NACLIPConfig,
    NACLIPForSemanticSegmentation,
    NACLIPImageProcessor,
    NACLIPProcessor,
    NACLIPSegmentationPipeline,
    save_for_hub,
)
from naclip_hf.inference import load_processor

LABELS = ["sky, wall, tree, grass", "cat", "dog", "person, person in shirt", "car"]
SHORT_SIDE = 96
# The model package is what a Hub folder ships: every module of it.
MODEL_PACKAGE = Path(naclip_hf.__file__).parent / "models" / "naclip"
CODE_FILES = {path.name for path in MODEL_PACKAGE.glob("*.py")} - {"__init__.py"}
# What a `trust_remote_code=True` user audits and runs: NACLIP and the methods that read intermediate blocks (SC-CLIP,
# SFP and ResCLIP, about 900 lines: they must ship for `method=...` to work from a Hub folder).
MAX_SHIPPED_LINES = 4500
# CLI, evaluation, conversion and card code stay in the installed package.
NOT_SHIPPED = {"cli", "conversion.py", "hub_card.py", "visualization.py", "figures.py", "evaluation", "demo", "export"}
# What the shipped code may import at module level (besides the standard library and its own siblings).
ALLOWED_IMPORTS = {"torch", "transformers", "numpy", "PIL", "huggingface_hub", "safetensors"}


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return pipeline("naclip-segmentation", model=str(tiny_checkpoint), pamr_steps=2)


@pytest.fixture(scope="module")
def hub_dir(pipe, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hub") / "naclip-tiny"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_path(golden, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "image.png"
    Image.fromarray(golden["img_d/raw"].numpy()).resize((190, 125)).save(path)
    return path


def assert_hub_folder_complete(folder: Path) -> None:
    names = {path.name for path in folder.iterdir()}
    assert CODE_FILES <= names, f"missing code files: {CODE_FILES - names}"
    assert not NOT_SHIPPED & names, f"shipped code that only the installed package needs: {NOT_SHIPPED & names}"
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer_config.json"} <= names
    assert "tokenizer.json" in names or {"vocab.json", "merges.txt"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "naclip"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_naclip.NACLIPConfig",
        "AutoModel": "modeling_naclip.NACLIPForSemanticSegmentation",
    }
    assert config["custom_pipelines"] == {
        "naclip-segmentation": {
            "impl": "pipeline_naclip.NACLIPSegmentationPipeline",
            "pt": ["AutoModel"],
            "type": "multimodal",
        }
    }
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_naclip.NACLIPProcessor"
    image_processor = processor_config["image_processor"]
    assert image_processor["auto_map"]["AutoImageProcessor"] == "image_processing_naclip.NACLIPImageProcessor"
    assert image_processor["image_processor_type"] == "NACLIPImageProcessor"


def test_auto_classes_know_naclip(tiny_checkpoint):
    assert isinstance(AutoConfig.from_pretrained(tiny_checkpoint), NACLIPConfig)
    assert isinstance(AutoModel.from_pretrained(tiny_checkpoint), NACLIPForSemanticSegmentation)
    assert isinstance(AutoImageProcessor.from_pretrained(tiny_checkpoint), NACLIPImageProcessor)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    assert isinstance(processor, NACLIPProcessor)
    assert isinstance(processor.image_processor, NACLIPImageProcessor)


def test_registration_is_idempotent():
    naclip_hf.register_naclip()
    naclip_hf.register_naclip()
    assert NACLIPForSemanticSegmentation._auto_class == "AutoModel"
    assert NACLIPConfig._auto_class == "AutoConfig"


def test_save_pretrained_writes_a_complete_hub_folder(hub_dir, pipe):
    assert_hub_folder_complete(hub_dir)
    assert not hasattr(pipe.model.config, "custom_pipelines"), "saving must not change the live config"


def test_shipped_code_is_the_package_code(hub_dir):
    for path in hub_dir.glob("*.py"):
        assert filecmp.cmp(path, MODEL_PACKAGE / path.name, shallow=False), path.name


def test_shipped_code_is_small_enough_to_audit(hub_dir):
    lines = sum(len(path.read_text().splitlines()) for path in hub_dir.glob("*.py"))
    assert 0 < lines <= MAX_SHIPPED_LINES, f"{lines} lines of Python in the Hub folder"


def test_shipped_code_imports_nothing_outside_transformers_stack(hub_dir):
    shipped = {path.stem for path in hub_dir.glob("*.py")}
    for path in hub_dir.glob("*.py"):
        imports = set(get_imports(path))  # every absolute import (also inside functions), e.g. naclip_hf
        outside = imports - ALLOWED_IMPORTS - set(sys.stdlib_module_names)
        assert not outside, f"{path.name} imports {sorted(outside)}"
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("from .") and " import " in stripped:
                module = stripped[len("from .") :].split()[0]
                assert module in shipped, f"{path.name} imports .{module}, which is not shipped"


def test_save_for_hub_from_model_and_processor(tiny_checkpoint, tmp_path):
    model = NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint)
    model.config.custom_pipelines = {"other-task": {"impl": "x.Y"}}
    folder = save_for_hub(model, load_processor(tiny_checkpoint), tmp_path / "out")
    assert folder == tmp_path / "out"
    assert_hub_folder_complete(folder)
    assert model.config.custom_pipelines == {"other-task": {"impl": "x.Y"}}, "the previous value is restored"
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        save_for_hub(model, load_processor(tiny_checkpoint), tmp_path / "file")


def test_plain_model_save_writes_auto_map_and_code(tiny_checkpoint, tmp_path):
    model = NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_naclip.NACLIPForSemanticSegmentation"
    assert config["auto_map"]["AutoConfig"] == "configuration_naclip.NACLIPConfig"
    assert {"configuration_naclip.py", "modeling_naclip.py", "options.py"} <= {p.name for p in tmp_path.iterdir()}
    assert "custom_pipelines" not in config  # only Hub folders carry the pipeline (see save_for_hub)


def test_push_to_hub_uploads_the_saved_folder(pipe, hub_dir, monkeypatch, tmp_path):
    """`push_to_hub` and `save_pretrained(push_to_hub=True)` upload what `save_pretrained` writes (no network)."""
    import transformers.utils.hub as transformers_hub
    from huggingface_hub import ModelCard

    uploads: list[dict] = []

    def fake_upload(self, working_dir, repo_id, files_timestamps, **kwargs):
        snapshot = tmp_path / f"upload-{len(uploads)}"
        shutil.copytree(working_dir, snapshot)
        uploads.append({"folder": snapshot, "repo_id": repo_id, **kwargs})

    created: list[str] = []

    def create_repo(repo_id, **kwargs):
        created.append(repo_id)
        return SimpleNamespace(repo_id=f"user/{repo_id}" if "/" not in repo_id else repo_id)

    monkeypatch.setattr(transformers_hub, "hf_api", lambda: SimpleNamespace(create_repo=create_repo))
    generic_card = ModelCard("---\nlibrary_name: transformers\n---\n")
    monkeypatch.setattr(transformers_hub, "create_and_tag_model_card", lambda *args, **kwargs: generic_card)
    monkeypatch.setattr(NACLIPSegmentationPipeline, "_upload_modified_files", fake_upload)

    pipe.push_to_hub("naclip-tiny", commit_message="Add NACLIP")
    pipe.save_pretrained(tmp_path / "local-copy", push_to_hub=True, repo_id="org/naclip-tiny")
    assert created == ["naclip-tiny", "org/naclip-tiny"]
    assert [upload["repo_id"] for upload in uploads] == ["user/naclip-tiny", "org/naclip-tiny"]
    assert uploads[0]["commit_message"] == "Add NACLIP"
    saved = {path.name for path in hub_dir.iterdir()}
    for upload in uploads:
        assert_hub_folder_complete(upload["folder"])
        assert {path.name for path in upload["folder"].iterdir()} - {"README.md"} == saved


def test_hub_folder_in_process_needs_trust_remote_code(hub_dir):
    """A Hub folder names its own pipeline code; transformers asks to trust it even with naclip-hf imported."""
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline("naclip-segmentation", model=str(hub_dir))


REMOTE_SCRIPT = r"""
import json, sys
sys.modules["naclip_hf"] = None  # as if naclip-hf were not installed
try:
    import naclip_hf  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("naclip_hf is importable: the test would prove nothing")

import numpy as np
from transformers import AutoModel, pipeline

folder, image, out = sys.argv[1:4]
labels = json.loads(sys.argv[4])
segmenter = pipeline(model=folder, trust_remote_code=True, pamr_steps=2)
result = segmenter(image, candidate_labels=labels, short_side=int(sys.argv[5]), return_label_map=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
np.save(out, result["label_map"])
print(json.dumps({
    "pipeline": type(segmenter).__module__ + "." + type(segmenter).__name__,
    "model": type(model).__module__ + "." + type(model).__name__,
    "pipeline_model": type(segmenter.model).__name__,
    "labels": [segment["label"] for segment in result["segments"]],
    "scores": [segment["score"] for segment in result["segments"]],
    "naclip_modules": sorted(name for name in sys.modules if name.startswith("naclip_hf.")),
}))
"""


def test_remote_code_works_without_naclip_hf(hub_dir, pipe, image_path, tmp_path):
    expected = pipe(str(image_path), candidate_labels=LABELS, short_side=SHORT_SIDE, return_label_map=True)
    assert len(expected["segments"]) >= 2, "the test image should show several classes"
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    out = tmp_path / "label_map.npy"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    completed = subprocess.run(
        [sys.executable, str(script), str(hub_dir), str(image_path), str(out), json.dumps(LABELS), str(SHORT_SIDE)],
        capture_output=True, text=True, env=env, cwd=workdir, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["pipeline"].startswith("transformers_modules.") and report["pipeline"].endswith(
        "pipeline_naclip.NACLIPSegmentationPipeline"
    )
    assert report["model"].startswith("transformers_modules.")
    assert report["model"].endswith("modeling_naclip.NACLIPForSemanticSegmentation")
    assert report["pipeline_model"] == "NACLIPForSemanticSegmentation"
    assert report["naclip_modules"] == []
    assert report["labels"] == [segment["label"] for segment in expected["segments"]]
    assert report["scores"] == pytest.approx([segment["score"] for segment in expected["segments"]], rel=1e-5)
    assert np.array_equal(np.load(out), expected["label_map"])
