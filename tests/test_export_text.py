"""Open-vocabulary exports: the text graph and the torch-free tokenizer against PyTorch and transformers, names
embedded by the runtime (cached on disk, stored ones read back), `naclip segment --model EXPORT` with names never
given at export and with `--quantized`, torch blocked, and a quiet `naclip export`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("tokenizers")

from helpers import BLOCK_TORCH, tiny_clip_config  # noqa: E402
from naclip_hf import NACLIPConfig, NACLIPForSemanticSegmentation, text_cache  # noqa: E402
from naclip_hf.cli import main  # noqa: E402
from naclip_hf.export import runtime, text  # noqa: E402
from naclip_hf.export.onnx_export import (  # noqa: E402
    TextGraph,
    export_text_graph,
    quiet_export_messages,
    verify_text_graph,
)
from naclip_hf.inference import encode_classes, load_model, load_processor, segment_image  # noqa: E402
from naclip_hf.models.naclip.processing_naclip import build_prompts  # noqa: E402

# Names never given at export: punctuation, upper case, runs of spaces, accents, CJK, an emoji, and one far longer
# than CLIP's 77-token context (truncated).
NEW_NAMES = ["bicycle", "sky, heaven", "Café-owner's  DOG!", "naïve résumé (1990)", "北京 城市", "🚲 e-bike",
             "very " * 90 + "long name"]  # fmt: skip
TEXT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def plain_export(tiny_checkpoint, tmp_path_factory) -> tuple[Path, str]:
    """`naclip export --quantize` of the tiny checkpoint without labels, in a new process: (folder, its stderr)."""
    out = tmp_path_factory.mktemp("plain-export") / "tiny-onnx"
    env = {**os.environ, "NACLIP_CACHE": str(tmp_path_factory.mktemp("export-cache"))}
    command = [sys.executable, "-m", "naclip_hf.cli", "export", str(tiny_checkpoint), str(out), "--quantize"]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr
    return out, completed.stderr


@pytest.fixture(scope="module")
def pytorch_model(tiny_checkpoint):
    return load_model(tiny_checkpoint), load_processor(tiny_checkpoint)


def _save_image(golden, key: str, path: Path) -> Path:
    from PIL import Image

    Image.fromarray(golden[f"{key}/raw"].numpy()).save(path)
    return path


# --------------------------------------------------------------------------------------------- tokenizer
def test_runtime_tokenizer_equals_transformers(plain_export, pytorch_model):
    folder, _ = plain_export
    tokenizer = pytorch_model[1].tokenizer
    names = NEW_NAMES + ["  leading and trailing  ", "TAB\tand\nnewline", "R&D lab #3", "Ünïcödé ÅNGSTRÖM"]
    prompts = build_prompts(names, ["a photo of a {}.", "{}", "the {} , again!"])
    expected = tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="np")
    ours = text.ExportedTokenizer(folder)
    result = ours(prompts)
    assert ours.model_max_length == 77
    assert result["input_ids"].shape[1] == 77  # the long name is truncated, not dropped
    assert np.array_equal(result["input_ids"], expected["input_ids"])
    assert np.array_equal(result["attention_mask"], expected["attention_mask"])


# -------------------------------------------------------------------------------------------- text graph
def test_text_graph_equals_pytorch(plain_export, pytorch_model):
    import onnxruntime

    folder, _ = plain_export
    model, processor = pytorch_model
    prompts = build_prompts(NEW_NAMES, ["a photo of a {}.", "{}"])
    encoded = processor.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        features = model.get_text_features(encoded["input_ids"], encoded["attention_mask"])
        expected = torch.nn.functional.normalize(features, dim=-1).numpy()
    session = onnxruntime.InferenceSession(str(folder / "onnx" / "text_model.onnx"), providers=["CPUExecutionProvider"])
    (result,) = session.run(["prompt_embeds"], {"input_ids": encoded["input_ids"].numpy()})
    assert result.shape == expected.shape
    assert np.abs(result - expected).max() <= TEXT_TOLERANCE


def test_text_graph_pools_the_largest_id_for_eos_token_id_2(tmp_path):
    config = tiny_clip_config()
    config["text_config"] = {**config["text_config"], "eos_token_id": 2}
    torch.manual_seed(0)
    model = NACLIPForSemanticSegmentation(NACLIPConfig(**config)).eval()
    path = export_text_graph(model, tmp_path / "text.onnx")
    assert verify_text_graph(model, path) <= TEXT_TOLERANCE
    import onnxruntime

    input_ids = torch.tensor([[0, 2, 97, 5, 2, 1], [0, 7, 2, 3, 98, 2]])  # the largest id is not the first 2
    with torch.no_grad():
        hidden = model.text_model(input_ids=input_ids).last_hidden_state
        pooled = hidden[torch.arange(2), model._pooled_token_positions(input_ids)]
        expected = torch.nn.functional.normalize(model.text_projection(pooled), dim=-1).numpy()
    assert model._pooled_token_positions(input_ids).tolist() == [2, 4]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (result,) = session.run(["prompt_embeds"], {"input_ids": input_ids.numpy()})
    assert np.abs(result - expected).max() <= TEXT_TOLERANCE
    with torch.no_grad():
        assert np.abs(TextGraph(model)(input_ids).numpy() - expected).max() <= TEXT_TOLERANCE


# ---------------------------------------------------------------------------------------- name embeddings
@pytest.mark.parametrize("templates", [None, ["a photo of a {}.", "a {} in the scene", "{}"]])
def test_runtime_name_embeddings_equal_pytorch(plain_export, pytorch_model, templates):
    folder, _ = plain_export
    model, processor = pytorch_model
    classes = NEW_NAMES
    expected = encode_classes(model, processor, classes, templates=templates)
    segmenter = runtime.ExportedSegmenter(folder, overrides={"text_batch_size": 7})  # several uneven batches
    result = segmenter.encode_classes(classes, templates)
    assert result.text_embeds.shape == tuple(expected.text_embeds.shape)
    assert np.abs(result.text_embeds - expected.text_embeds.numpy()).max() <= TEXT_TOLERANCE
    assert result.name_to_class.tolist() == expected.name_to_class.tolist()
    assert result.classes == expected.classes


def test_stored_names_are_read_back_and_others_computed(tiny_export, pytorch_model):
    model, processor = pytorch_model
    segmenter = runtime.ExportedSegmenter(tiny_export)
    stored = segmenter.encode_classes()
    assert segmenter._text_tower is None
    mixed = segmenter.encode_classes(["cat", "zebra, striped horse", "monitor"])
    names = [name for names in stored.classes for name in names]
    assert np.array_equal(mixed.text_embeds[0], stored.text_embeds[names.index("cat")])
    assert np.array_equal(mixed.text_embeds[3], stored.text_embeds[names.index("monitor")])
    assert segmenter._text_tower is not None
    expected = encode_classes(model, processor, ["zebra, striped horse"]).text_embeds.numpy()
    assert np.abs(mixed.text_embeds[1:3] - expected).max() <= TEXT_TOLERANCE
    # Other templates than the stored embeddings': every name runs through the text graph.
    other = segmenter.encode_classes(["cat"], templates=["a {}."])
    expected = encode_classes(model, processor, ["cat"], templates=["a {}."]).text_embeds.numpy()
    assert np.abs(other.text_embeds - expected).max() <= TEXT_TOLERANCE


def test_name_embeddings_are_cached_on_disk(plain_export, tmp_path, monkeypatch, caplog):
    from safetensors.numpy import load_file

    folder, _ = plain_export
    cache = tmp_path / "cache"
    first = runtime.ExportedSegmenter(folder).encode_classes(["zebra", "sky"], cache_dir=cache)
    files = sorted(cache.glob("*.safetensors"))
    assert len(files) == 1
    # A new segmenter (nothing in memory) reads the file instead of running the text graph.
    second = runtime.ExportedSegmenter(folder)

    def fail(*args, **kwargs):
        raise AssertionError("the text graph ran although the embeddings are cached")

    monkeypatch.setattr(second.text_tower, "compute_name_embeddings", fail)
    assert np.array_equal(second.encode_classes(["zebra", "sky"], cache_dir=cache).text_embeds, first.text_embeds)
    assert second.text_tower._session is None  # a cached label set does not even load the text graph
    monkeypatch.undo()
    # Other names or templates are other entries; a corrupt file is ignored (with a warning) and rewritten.
    runtime.ExportedSegmenter(folder).encode_classes(["zebra", "sky"], templates=["a {}."], cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 2
    files[0].write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING):
        again = runtime.ExportedSegmenter(folder).encode_classes(["zebra", "sky"], cache_dir=cache)
    assert "corrupt" in caplog.text
    assert np.abs(again.text_embeds - first.text_embeds).max() <= 1e-6
    assert np.array_equal(load_file(str(files[0]))["text_embeds"], again.text_embeds)


def test_runtime_cache_directory_is_the_pytorch_one(tiny_export, monkeypatch, tmp_path):
    """The default cache of the runtime is the PyTorch path's directory ($NACLIP_CACHE, else under
    $XDG_CACHE_HOME), and its entries do not collide with the PyTorch path's."""
    monkeypatch.delenv("NACLIP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert text_cache.default_cache_dir() == tmp_path / "xdg" / "naclip_hf" / "text"
    monkeypatch.setenv("NACLIP_CACHE", str(tmp_path / "mine"))
    runtime.ExportedSegmenter(tiny_export).encode_classes(["zebra", "sky"], cache_dir=True)
    assert len(list((tmp_path / "mine").glob("*.safetensors"))) == 1


def test_export_without_text_graph_explains_what_to_do(tiny_export, tmp_path):
    old = tmp_path / "old-export"
    shutil.copytree(tiny_export, old, ignore=shutil.ignore_patterns("text_model.onnx"))
    segmenter = runtime.ExportedSegmenter(old)
    assert not segmenter.has_text_model
    assert segmenter.encode_classes(["cat"]).text_embeds.shape == (1, 64)
    with pytest.raises(ValueError, match=r"no text embedding for 'zebra'.*no text model.*export the model again"):
        segmenter.encode_classes(["cat", "zebra"])
    with pytest.raises(ValueError, match=r"other prompt templates.*no text model"):
        segmenter.encode_classes(["cat"], templates=["a {}."])


# ------------------------------------------------------------------------------------ segmentation, no torch
def test_export_without_labels_segments_new_names_without_torch(plain_export, pytorch_model, golden, tmp_path):
    from safetensors.numpy import load_file

    folder, _ = plain_export
    model, processor = pytorch_model
    image = _save_image(golden, "img_d", tmp_path / "photo.png")  # default settings: sliding windows and PAMR
    labels = ["bicycle", "sky, heaven", "Café-owner's dog", "北京 城市"]
    argv = ["segment", str(image), "--labels", *labels, "--model", str(folder), "--out", str(tmp_path / "onnx"),
            "--scores"]  # fmt: skip
    code = BLOCK_TORCH + (
        f"from naclip_hf.cli import main\ncode = main({argv!r})\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\nsys.exit(code)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    result = load_file(str(tmp_path / "onnx" / "photo.scores.safetensors"))
    expected = segment_image(model, processor, golden["img_d/raw"].numpy(), encode_classes(model, processor, labels))
    assert (result["segmentation"] == expected.segmentation.numpy()).mean() >= 0.999
    assert np.abs(result["probabilities"] - expected.probabilities.numpy()).max() <= 1e-4
    summary = json.loads((tmp_path / "onnx" / "photo.json").read_text(encoding="utf-8"))
    assert set(summary["class_shares"]) <= {"bicycle", "sky", "Café-owner's dog", "北京 城市"}


def test_segment_command_runs_the_quantized_graph(plain_export, tiny_checkpoint, golden, tmp_path, capsys):
    from safetensors.numpy import load_file

    folder, _ = plain_export
    image = _save_image(golden, "img_b", tmp_path / "photo.png")
    common = [str(image), "--labels", "zebra", "sky", "--set", "pamr_steps=0", "--scores"]
    assert main(["segment", *common, "--model", str(folder), "--quantized", "--out", str(tmp_path / "int8")]) == 0
    int8 = load_file(str(tmp_path / "int8" / "photo.scores.safetensors"))
    expected = runtime.ExportedSegmenter(folder, quantized=True).segment(str(image), ["zebra", "sky"], pamr_steps=0)
    fp32 = runtime.ExportedSegmenter(folder).segment(str(image), ["zebra", "sky"], pamr_steps=0)
    assert np.array_equal(int8["logits"], expected.logits)
    assert not np.array_equal(int8["logits"], fp32.logits)  # the int8 graph ran, not the fp32 one
    # Without an int8 graph, or on a PyTorch checkpoint: a usage error naming the fix.
    no_int8 = tmp_path / "no-int8"
    shutil.copytree(folder, no_int8, ignore=shutil.ignore_patterns("model_quantized.onnx", "model_int8.onnx"))
    capsys.readouterr()
    assert main(["segment", *common, "--model", str(no_int8), "--quantized", "--out", str(tmp_path / "x")]) == 2
    assert "export it again with `naclip export MODEL OUT --quantize`" in capsys.readouterr().err
    assert main(["segment", *common, "--model", str(tiny_checkpoint), "--quantized", "--out", str(tmp_path / "y")]) == 2
    assert "--quantized runs the int8 graph of an exported model" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- quiet
def test_export_prints_no_third_party_messages(plain_export):
    folder, stderr = plain_export
    assert (folder / "onnx" / "model_quantized.onnx").is_file() and (folder / "onnx" / "text_model.onnx").is_file()
    assert "torchvision" not in stderr
    assert "pre-processing" not in stderr
    assert "warn" not in stderr.lower(), stderr


def test_quiet_export_messages_restores_logging_and_warnings():
    root = logging.getLogger()
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    before = (list(root.handlers), list(root.filters), list(registration.filters), list(warnings.filters))
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    keep = Keep()
    registration.addHandler(keep)
    try:
        with quiet_export_messages():
            registration.warning("torchvision is not installed. Skipping torchvision::nms")
            registration.warning("another message")
            warnings.warn("hidden", UserWarning, stacklevel=1)
        registration.warning("torchvision is not installed. Skipping torchvision::nms")
    finally:
        registration.removeHandler(keep)
    assert records == ["another message", "torchvision is not installed. Skipping torchvision::nms"]
    assert (list(root.handlers), list(root.filters), list(registration.filters), list(warnings.filters)) == before
