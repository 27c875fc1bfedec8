"""`--dtype` and `load_model(dtype=...)`: the `auto` rule, float16 on the CPU, float32 where accuracy needs it,
the label-embedding cache per dtype, and bfloat16 through segment, label, evaluate, compare, export and the demo
backend, whose labels must equal float32's on at least `MIN_AGREEMENT` of the pixels (tiny golden checkpoint)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import naclip_hf.figures as figures
import naclip_hf.inference as inference
from naclip_hf.cli import build_parser, main
from naclip_hf.inference import (
    DTYPES,
    FAST_BFLOAT16_CPU_FLAGS,
    cpu_has_fast_bfloat16,
    encode_classes,
    load_model,
    load_processor,
    resolve_dtype,
    segment_image,
)
from naclip_hf.models.naclip import postprocessing_naclip
from naclip_hf.text_cache import TextEmbeddingCache
from synthetic_data import make_benchmark_dataset

# bfloat16 labels equal to float32's, measured on the golden images with two templates at a short side of 224:
# 99.98 % (img_a), 99.4 % (img_b), 99.99 % (img_c); on the 14 golden cases with 80 templates, 98.5 % on average.
MIN_AGREEMENT = 0.98
IMAGES = ("img_a",)
SHORT_SIDE = 224
COMMANDS_WITH_DTYPE = ("segment", "label", "evaluate", "compare", "demo", "export")
TWO_TEMPLATES = ["a photo of a {}.", "itap of a {}."]


def agreement(first: np.ndarray, second: np.ndarray) -> float:
    assert first.shape == second.shape
    return float((np.asarray(first) == np.asarray(second)).mean())


def read_label_map(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).astype(np.int64)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint with two prompt templates instead of 80, so that embedding the classes is quick."""
    folder = tmp_path_factory.mktemp("dtype-checkpoint") / "tiny-2-templates"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["prompt_templates"] = TWO_TEMPLATES
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def processor(checkpoint):
    return load_processor(checkpoint)


@pytest.fixture(scope="module")
def models(checkpoint) -> dict:
    """The checkpoint loaded in float32 and in bfloat16, by dtype name."""
    return {name: load_model(checkpoint, dtype=name) for name in ("float32", "bfloat16")}


@pytest.fixture(scope="module")
def image_folder(golden, tmp_path_factory) -> Path:
    """The golden test images of `IMAGES` as PNG files."""
    folder = tmp_path_factory.mktemp("dtype-images")
    for name in IMAGES:
        Image.fromarray(golden[f"{name}/raw"].numpy()).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def options(checkpoint, golden_labels_file) -> list[str]:
    """The model, classes and short side of every command run here."""
    return ["--model", str(checkpoint), "--labels-file", str(golden_labels_file), "--set", f"short_side={SHORT_SIDE}"]


@pytest.fixture(scope="module")
def float32_outputs(image_folder, options, tmp_path_factory) -> Path:
    """The output folder of `naclip segment` on the images in float32 (the default dtype)."""
    out = tmp_path_factory.mktemp("dtype-float32")
    assert main(["segment", str(image_folder), *options, "--out", str(out)]) == 0
    for name in IMAGES:
        assert json.loads((out / f"{name}.json").read_text())["dtype"] == "float32"
    return out


@pytest.fixture(scope="module")
def float32_label_maps(float32_outputs) -> dict[str, np.ndarray]:
    """`naclip segment`'s float32 label maps of the images, by image name."""
    return {name: read_label_map(float32_outputs / f"{name}_labels.png") for name in IMAGES}


# ------------------------------------------------------------------------------------------------ the rule
@pytest.mark.parametrize(
    "dtype,device,cpu_bfloat16,expected",
    [
        ("auto", "cpu", True, torch.bfloat16),
        ("auto", None, True, torch.bfloat16),
        ("auto", "cpu", False, torch.float32),
        ("auto", "cuda", False, torch.float16),
        ("auto", "cuda:1", True, torch.float16),
        ("auto", "mps", True, torch.float32),
        (None, "cpu", True, torch.float32),
        ("float32", "cuda", True, torch.float32),
        ("bfloat16", "cpu", True, torch.bfloat16),
        (torch.bfloat16, "cpu", True, torch.bfloat16),
        ("float16", "cuda", False, torch.float16),
    ],
)
def test_resolve_dtype_rule(dtype, device, cpu_bfloat16, expected):
    assert resolve_dtype(dtype, device, cpu_bfloat16=cpu_bfloat16) == expected


@pytest.mark.parametrize(
    "flags,fast",
    [({"avx2", "f16c"}, False), ({"avx512f", "avx512bw"}, False), ({"avx2", "avx512_bf16"}, True),
     ({"amx_tile", "amx_bf16"}, True)],
)  # fmt: skip
def test_fast_bfloat16_cpu_flags(flags, fast):
    assert cpu_has_fast_bfloat16(flags) is fast


def test_auto_on_this_machine_follows_its_cpu_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo")
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    expected = torch.bfloat16 if flags & set(FAST_BFLOAT16_CPU_FLAGS) else torch.float32
    assert resolve_dtype("auto") == expected == resolve_dtype("auto", "cpu")


def test_float16_on_the_cpu_is_refused_naming_bfloat16(tiny_checkpoint, image_folder, options, capsys, monkeypatch):
    with pytest.raises(ValueError, match="bfloat16"):
        resolve_dtype("float16", "cpu")
    with pytest.raises(ValueError, match="bfloat16"):
        resolve_dtype(torch.float16)
    monkeypatch.setattr(inference.NACLIPForSemanticSegmentation, "from_pretrained", pytest.fail)  # never loaded
    with pytest.raises(ValueError, match="float16 is for GPUs"):
        load_model(tiny_checkpoint, dtype="float16")
    argv = ["segment", str(image_folder / "img_a.png"), *options, "--out", str(image_folder / "never"), "--dtype",
            "float16"]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "naclip segment: error: float16 is for GPUs" in error and "--dtype bfloat16" in error


def test_unknown_dtype_is_refused(capsys):
    with pytest.raises(ValueError, match="float32, bfloat16, float16 or 'auto'"):
        resolve_dtype("fp16")
    with pytest.raises(ValueError, match="not supported"):
        resolve_dtype(torch.float64)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "x.png", "--labels", "a", "b", "--dtype", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_slow_bfloat16_cpu_gets_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="naclip_hf.inference"):
        assert resolve_dtype("bfloat16", "cpu", cpu_bfloat16=True) == torch.bfloat16
        assert not caplog.records
        assert resolve_dtype("bfloat16", "cpu", cpu_bfloat16=False) == torch.bfloat16
    assert "float32 (the default) is faster here" in caplog.text


def test_every_model_command_takes_the_same_dtype_option():
    parser = build_parser()
    commands = next(action for action in parser._actions if action.dest == "command").choices
    for name in COMMANDS_WITH_DTYPE:
        option = next(action for action in commands[name]._actions if action.dest == "dtype")
        assert option.choices == ("float32", "bfloat16", "float16", "auto") and option.default is None, name
        assert "float32" in option.help and "default" in option.help and "official code" in option.help, name
    assert parser.parse_args(["demo", "--dtype", "auto"]).dtype == "auto"


# ---------------------------------------------------------------------------------------- float32 inside
def test_bfloat16_logits_come_out_float32_from_a_float32_similarity(models, processor, golden):
    model = models["bfloat16"]
    assert model.dtype == torch.bfloat16
    pixel_values = processor.image_processor(golden["img_a/raw"].numpy(), short_side=SHORT_SIDE)["pixel_values"]
    pixel_values = pixel_values.to(torch.bfloat16)
    text_embeds = torch.nn.functional.normalize(torch.randn(5, model.config.projection_dim), dim=-1)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, text_embeds=text_embeds, slide_crop=0).logits
        hidden = model.encode_patches(pixel_values).last_hidden_state
        features = model.visual_projection(model.vision_model.post_layernorm(hidden))[:, 1:]
    assert logits.dtype == torch.float32
    # The similarity of the bfloat16 features with the text, computed in float32 and upsampled in float32.
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    grid = [side // model.config.vision_config.patch_size for side in pixel_values.shape[-2:]]
    patches = (features @ text_embeds.T).transpose(1, 2).reshape(1, -1, *grid)
    expected = torch.nn.functional.interpolate(patches, size=pixel_values.shape[-2:], mode="bilinear")
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    assert not torch.equal(logits, logits.to(torch.bfloat16).float())  # not bfloat16 values widened


def test_post_processing_of_a_bfloat16_model_runs_in_float32(models, processor, golden, manifest, monkeypatch):
    model = models["bfloat16"]
    classes = encode_classes(model, processor, manifest["classes"])
    assert classes.text_embeds.dtype == torch.bfloat16
    inputs: dict[str, set[torch.dtype]] = {}
    outputs: dict[str, set[torch.dtype]] = {}
    for name in ("upsample_region", "pamr_affinity", "_pamr_refine"):
        original = getattr(postprocessing_naclip, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            floats = {arg.dtype for arg in args if isinstance(arg, torch.Tensor) and arg.is_floating_point()}
            inputs.setdefault(_name, set()).update(floats)
            result = _original(*args, **kwargs)
            outputs.setdefault(_name, set()).add(result.dtype)
            return result

        monkeypatch.setattr(postprocessing_naclip, name, spy)
    result = segment_image(model, processor, golden["img_a/raw"].numpy(), classes, short_side=SHORT_SIDE,
                           pamr_steps=2)  # fmt: skip
    # The logits come in float32 and the PAMR guide (the model's input) in bfloat16; upsampling makes both
    # float32, and PAMR, the softmax and the labels work on that.
    assert inputs["upsample_region"] == {torch.float32, torch.bfloat16}
    assert inputs["pamr_affinity"] == inputs["_pamr_refine"] == {torch.float32}
    assert all(dtypes == {torch.float32} for dtypes in outputs.values()) and len(outputs) == 3
    assert result.probabilities.dtype == torch.float32 and result.logits.dtype == torch.float32
    torch.testing.assert_close(result.probabilities.sum(dim=0), torch.ones_like(result.probabilities[0]))


# ------------------------------------------------------------------------------------- the text cache
def test_the_text_cache_never_mixes_dtypes(models, processor, manifest, tmp_path, monkeypatch):
    fresh = {name: encode_classes(model, processor, manifest["classes"]).text_embeds for name, model in models.items()}
    assert not torch.equal(fresh["float32"], fresh["bfloat16"].float())
    loads: list[tuple[str, torch.dtype | None]] = []
    original_load = TextEmbeddingCache.load

    def load(self, description, expected_rows=None):
        embeddings = original_load(self, description, expected_rows)
        loads.append((json.loads(description)["dtype"], None if embeddings is None else embeddings.dtype))
        return embeddings

    monkeypatch.setattr(TextEmbeddingCache, "load", load)
    for order in (("float32", "bfloat16"), ("bfloat16", "float32")):
        cache = tmp_path / "-then-".join(order)
        for name in (*order, *order):  # each dtype twice: a miss, then a hit of its own entry
            embeds = encode_classes(models[name], processor, manifest["classes"], cache_dir=cache).text_embeds
            assert embeds.dtype == DTYPES[name] and torch.equal(embeds, fresh[name]), (order, name)
        assert len(list(cache.glob("*.safetensors"))) == 2
    # Every read asked for its own dtype's entry and got that dtype's embeddings (or nothing, the first time).
    assert loads == [
        ("torch.float32", None), ("torch.bfloat16", None),
        ("torch.float32", torch.float32), ("torch.bfloat16", torch.bfloat16),
        ("torch.bfloat16", None), ("torch.float32", None),
        ("torch.bfloat16", torch.bfloat16), ("torch.float32", torch.float32),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------- the commands
def test_segment_in_bfloat16(image_folder, float32_outputs, float32_label_maps, options, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(float32_outputs, out)
    for name in IMAGES:  # as written before summaries named the dtype: float32
        summary = json.loads((out / f"{name}.json").read_text())
        del summary["dtype"]
        (out / f"{name}.json").write_text(json.dumps(summary))
    argv = ["segment", str(image_folder), *options, "--out", str(out)]
    assert main(argv) == 0  # float32, the default: every image is done
    assert f"0 segmented, {len(IMAGES)} already done (skipped)" in capsys.readouterr().out
    assert main([*argv, "--dtype", "bfloat16"]) == 0  # the float32 outputs are not taken as done
    assert "already done" not in capsys.readouterr().out
    for name in IMAGES:
        assert json.loads((out / f"{name}.json").read_text())["dtype"] == "bfloat16"
        assert agreement(read_label_map(out / f"{name}_labels.png"), float32_label_maps[name]) >= MIN_AGREEMENT


def test_label_in_bfloat16(image_folder, float32_label_maps, options, tmp_path):
    import datasets

    out = tmp_path / "labelled"
    assert main(["label", str(image_folder), *options, "--out", str(out), "--dtype", "bfloat16"]) == 0
    dataset = datasets.load_from_disk(str(out))
    assert json.loads(dataset.info.description)["dtype"] == "bfloat16"
    by_size = {array.shape: array for array in float32_label_maps.values()}
    assert len(dataset) == len(IMAGES)
    for row in dataset:
        labels = np.asarray(row["segmentation"]).astype(np.int64)
        assert agreement(labels, by_size[labels.shape]) >= MIN_AGREEMENT


def test_evaluate_in_bfloat16(checkpoint, tmp_path, monkeypatch, capsys):
    root = make_benchmark_dataset("voc20", tmp_path / "voc", num_images=2, size=(96, 128))
    predictions: dict[str, list[np.ndarray]] = {}
    original = inference.segment_image

    def recording(model, *args, **kwargs):
        result = original(model, *args, **kwargs)
        predictions.setdefault(str(model.dtype), []).append(result.segmentation.numpy())
        return result

    monkeypatch.setattr(inference, "segment_image", recording)
    results = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"{dtype}.json"
        argv = ["evaluate", "--preset", "voc20", "--data-root", str(root), "--model", str(checkpoint), "--pamr",
                "off", "--set", "short_side=96", "--out", str(out), "--dtype", dtype]  # fmt: skip
        assert main(argv) == 0
        results[dtype] = json.loads(out.read_text())
    assert results["bfloat16"]["settings"]["dtype"] == "bfloat16"
    assert results["float32"]["settings"]["dtype"] == "float32"
    assert "bfloat16" in capsys.readouterr().out  # the report names the dtype
    assert len(predictions["torch.float32"]) == len(predictions["torch.bfloat16"]) == 2
    for full, half in zip(predictions["torch.float32"], predictions["torch.bfloat16"]):
        assert agreement(half, full) >= MIN_AGREEMENT


def test_compare_in_bfloat16(image_folder, float32_label_maps, options, tmp_path, monkeypatch):
    segmentations: dict[str, np.ndarray] = {}
    original = figures.segment_with_methods

    def recording(segmenter, *args, **kwargs):
        assert segmenter.dtype == "bfloat16"
        results = original(segmenter, *args, **kwargs)
        segmentations.update({name: result.segmentation.numpy() for name, result in results.items()})
        return results

    monkeypatch.setattr(figures, "segment_with_methods", recording)
    argv = ["compare", str(image_folder / "img_a.png"), *options, "--methods", "naclip", "--out",
            str(tmp_path / "compare.png"), "--dtype", "bfloat16"]  # fmt: skip
    assert main(argv) == 0
    assert agreement(segmentations["naclip"], float32_label_maps["img_a"]) >= MIN_AGREEMENT


def test_demo_backend_in_bfloat16(image_folder, float32_label_maps, checkpoint, manifest):
    pytest.importorskip("gradio")
    from naclip_hf.demo.backend import load_backend

    backend = load_backend(checkpoint, dtype="bfloat16")
    assert backend.segmenter.dtype == "bfloat16" and backend.segmenter.model.dtype == torch.bfloat16
    note, plain = (" ".join(model.segmenter.describe().note) for model in (backend, load_backend(checkpoint)))
    assert "runs in bfloat16" in note and "runs in" not in plain
    labels_text = "\n".join(", ".join(names) for names in manifest["classes"])
    segmentation = backend.segment(str(image_folder / "img_a.png"), labels_text, short_side=SHORT_SIDE)
    assert agreement(np.asarray(segmentation.label_map), float32_label_maps["img_a"]) >= MIN_AGREEMENT


# ------------------------------------------------------------------------------------------ exports
def test_export_refuses_bfloat16_and_float16_with_quantize(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["export", str(tiny_checkpoint), str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 2
    error = capsys.readouterr().err
    assert "onnxruntime's CPU provider has no bfloat16 kernels" in error and "float16" in error
    assert main(["export", str(tiny_checkpoint), str(tmp_path / "q"), "--dtype", "float16", "--quantize"]) == 2
    assert "drop --quantize or float16" in capsys.readouterr().err
    assert not (tmp_path / "bf16").exists() and not (tmp_path / "q").exists()


def test_an_export_keeps_its_precision(tiny_export, image_folder, golden_labels_file, tmp_path, capsys):
    assert json.loads((tiny_export / "config.json").read_text())["dtype"] == "float32"
    base = ["segment", str(image_folder / "img_a.png"), "--model", str(tiny_export), "--labels-file",
            str(golden_labels_file), "--set", f"short_side={SHORT_SIDE}", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main([*base, "--dtype", "bfloat16"]) == 2
    error = capsys.readouterr().err
    assert "runs in the precision it was exported in (float32); drop --dtype" in error
    assert main([*base, "--dtype", "auto"]) == 0
    assert json.loads((tmp_path / "out" / "img_a.json").read_text())["dtype"] == "float32"
    pytest.importorskip("gradio")
    from naclip_hf.demo.backend import load_backend

    with pytest.raises(ValueError, match="exported in \\(float32\\)"):
        load_backend(tiny_export, dtype="bfloat16")


@pytest.mark.slow
def test_float16_export_runs_on_onnxruntime(checkpoint, image_folder, golden_labels_file, float32_label_maps,
                                            tmp_path):  # fmt: skip
    pytest.importorskip("onnxruntime")
    out = tmp_path / "fp16"
    argv = ["export", str(checkpoint), str(out), "--labels-file", str(golden_labels_file), "--dtype", "float16"]
    assert main(argv) == 0
    import onnx

    graph = onnx.load(str(out / "onnx" / "model.onnx"))
    floating = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    weights = [initializer.data_type for initializer in graph.graph.initializer
               if initializer.data_type in floating and np.prod(initializer.dims) > 1]  # float32 scalars aside
    assert len(weights) > 10 and set(weights) == {onnx.TensorProto.FLOAT16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    segmented = tmp_path / "segmented"
    argv = ["segment", str(image_folder), "--model", str(out), "--labels-file", str(golden_labels_file), "--set",
            f"short_side={SHORT_SIDE}", "--out", str(segmented), "--dtype", "float16"]  # fmt: skip
    assert main(argv) == 0
    for name in IMAGES:
        assert json.loads((segmented / f"{name}.json").read_text())["dtype"] == "float16"
        assert agreement(read_label_map(segmented / f"{name}_labels.png"), float32_label_maps[name]) >= MIN_AGREEMENT
