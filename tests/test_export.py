"""ONNX export and the torch-free runtime: the graph against PyTorch, the numpy steps against their PyTorch
references, the quantized graph, and `naclip export` / `naclip segment` on an export with torch blocked."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from helpers import BLOCK_TORCH  # noqa: E402
from naclip_hf.cli import main  # noqa: E402
from naclip_hf.export import runtime  # noqa: E402
from naclip_hf.export.onnx_export import export_graph, graph_position_embeddings  # noqa: E402
from naclip_hf.inference import encode_classes, load_model, load_processor, segment_image  # noqa: E402
from naclip_hf.models.naclip.image_processing_naclip import NACLIPImageProcessor  # noqa: E402
from naclip_hf.models.naclip.modeling_naclip import official_position_embeddings  # noqa: E402
from naclip_hf.models.naclip.postprocessing_naclip import pamr as torch_pamr  # noqa: E402
from naclip_hf.models.naclip.postprocessing_naclip import post_process_image  # noqa: E402

# (height, width, names): a non-square input that needs positional interpolation, the pretrained 224 grid (no
# interpolation), and one with pixels past the last full patch; one and five names.
GRAPH_CASES = [(48, 80, 1), (48, 80, 5), (224, 224, 1), (224, 224, 5), (83, 50, 1), (83, 50, 5)]


def _graph_logits(path: Path, pixel_values: torch.Tensor, text_embeds: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"pixel_values": pixel_values.numpy(), "text_embeds": text_embeds.numpy()})[0]


def _check_graph(model, path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    for height, width, names in GRAPH_CASES:
        pixel_values = torch.randn(1, 3, height, width, generator=generator)
        text_embeds = F.normalize(torch.randn(names, model.config.projection_dim, generator=generator), dim=-1)
        with torch.no_grad():
            expected = model(pixel_values, text_embeds=text_embeds, slide_crop=0).logits.numpy()
        logits = _graph_logits(path, pixel_values, text_embeds)
        assert logits.shape == expected.shape == (1, names, height, width)
        assert np.abs(logits - expected).max() <= 1e-4, (height, width, names)


@pytest.fixture(scope="module")
def exported(tiny_export) -> Path:
    """`naclip export` of the tiny checkpoint with the golden classes, quantized (see tests/conftest.py)."""
    return tiny_export


@pytest.fixture(scope="module")
def pytorch_side(tiny_checkpoint, manifest):
    """The tiny checkpoint's model, processor and the golden classes' embeddings, for the PyTorch reference."""
    model, processor = load_model(tiny_checkpoint), load_processor(tiny_checkpoint)
    return model, processor, encode_classes(model, processor, manifest["classes"])


# ------------------------------------------------------------------------------------------------ graph
@pytest.mark.parametrize("grid", [(3, 5), (14, 14), (14, 20), (20, 14), (1, 1), (13, 13), (40, 3)])
def test_graph_position_embeddings_match_the_official_resize(grid):
    table = torch.randn(1 + 14 * 14, 32, generator=torch.Generator().manual_seed(1))
    expected = official_position_embeddings(table, grid)
    resized = graph_position_embeddings(table, grid[0], grid[1], "official")
    assert resized.shape == expected.shape
    assert (resized - expected).abs().max() <= 1e-5 * table.abs().max()
    if grid == (14, 14):
        assert torch.equal(resized, table)  # the pretrained grid is not resized


@pytest.mark.parametrize("grid", [(3, 5), (14, 14), (20, 9)])
def test_graph_position_embeddings_match_transformers_resize(grid):
    table = torch.randn(1 + 14 * 14, 8, generator=torch.Generator().manual_seed(2))
    patches = table[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    expected = torch.cat([table[:1], expected.permute(0, 2, 3, 1).reshape(-1, 8)])
    resized = graph_position_embeddings(table, grid[0], grid[1], "transformers")
    assert (resized - expected).abs().max() <= 1e-5 * table.abs().max()


def test_exported_graph_equals_pytorch(exported, pytorch_side):
    _check_graph(pytorch_side[0], exported / "onnx" / "model.onnx")
    import onnx

    graph = onnx.load(str(exported / "onnx" / "model.onnx"))
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in graph.graph.initializer)
    dims = [[d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in (*graph.graph.input, *graph.graph.output)]  # fmt: skip
    assert dims == [["batch", 3, "height", "width"], ["num_names", 64], ["batch", "num_names", "height", "width"]]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "strategy"), [("vanilla", "csa"), ("reduced", "nonly")])
def test_exported_graph_of_other_strategies_equals_pytorch(tiny_checkpoint, tmp_path, arch, strategy):
    model = load_model(tiny_checkpoint, {"arch": arch, "attn_strategy": strategy})
    path = export_graph(model, tmp_path / "model.onnx")
    _check_graph(model, path)


def test_export_folder_layout(exported, manifest):
    files = {str(path.relative_to(exported)) for path in exported.rglob("*") if path.is_file()}
    expected = {"onnx/model.onnx", "onnx/model_quantized.onnx", "onnx/model_int8.onnx", "onnx/text_model.onnx",
                "config.json",
                "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "classes.json",
                "class_embeddings.safetensors"}  # fmt: skip
    assert expected <= files
    assert not [name for name in files if name.endswith(".py")]
    classes = json.loads((exported / "classes.json").read_text())
    assert classes["classes"] == manifest["classes"]
    assert classes["name_to_class"] == [i for i, names in enumerate(manifest["classes"]) for _ in names]
    assert json.loads((exported / "preprocessor_config.json").read_text())["short_side"] == 336


def test_export_refuses_a_folder_that_is_not_empty(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "taken.txt").write_text("x")
    assert main(["export", str(tiny_checkpoint), str(tmp_path)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def damage(path: Path, how: str) -> None:
    """Overwrite `path` with random bytes, cut it to half its size (an interrupted copy), or empty it."""
    data = path.read_bytes()
    if how == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"")


@pytest.mark.parametrize(
    ("how", "reason"),
    [("random", "Protobuf parsing failed"), ("truncated", "Protobuf parsing failed"),
     ("emptied", "No graph was found in the protobuf")],
)  # fmt: skip
def test_a_corrupt_graph_is_one_line_naming_the_file_and_the_fix(exported, golden, tmp_path, capsys, how, reason):
    from PIL import Image

    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    graph = folder / "onnx" / "model.onnx"
    damage(graph, how)
    message = f"The ONNX graph {graph} is corrupt or truncated (onnxruntime: {reason}); export the model again"
    with pytest.raises(ValueError, match=re.escape(message) + ".*`naclip export MODEL NEW_FOLDER`"):
        runtime.ExportedSegmenter(folder)
    image = tmp_path / "image.png"
    Image.fromarray(golden["img_b/raw"].numpy()).save(image)
    code = main(["segment", str(image), "--labels", "cat", "sky", "--model", str(folder), "--out", str(tmp_path / "o")])
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.startswith(f"naclip segment: error: {message}") and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not any((tmp_path / "o").glob("*"))


def test_a_corrupt_quantized_or_text_graph_names_its_file(exported, tmp_path, monkeypatch):
    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    monkeypatch.setattr(runtime, "native_int8_dot_products", lambda: False)
    damage(folder / "onnx" / "model_quantized.onnx", "truncated")
    quantized_message = r"model_quantized\.onnx is corrupt.*`naclip export MODEL NEW_FOLDER --quantize`"
    with pytest.raises(ValueError, match=quantized_message):
        runtime.ExportedSegmenter(folder, quantized=True)
    damage(folder / "onnx" / "text_model.onnx", "random")
    segmenter = runtime.ExportedSegmenter(folder)
    with pytest.raises(ValueError, match=r"text_model\.onnx is corrupt or truncated"):
        segmenter.encode_classes(["a name the export does not store"])


# -------------------------------------------------------------------------------------- numpy steps
@pytest.mark.parametrize(("size", "target"), [((7, 9), (30, 41)), ((40, 50), (13, 17)), ((12, 12), (12, 12)),
                                              ((21, 28), (375, 500))])  # fmt: skip
def test_numpy_bilinear_matches_torch(size, target):
    values = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3))
    expected = F.interpolate(values, size=target, mode="bilinear", align_corners=False).numpy()
    assert np.abs(runtime.resize_bilinear(values.numpy(), target) - expected).max() <= 1e-5


def test_numpy_pamr_matches_torch():
    generator = torch.Generator().manual_seed(4)
    image, scores = torch.randn(1, 3, 37, 45, generator=generator), torch.randn(1, 4, 37, 45, generator=generator)
    expected = torch_pamr(image, scores, 10, [8, 16]).numpy()
    refined = runtime.pamr(image.numpy(), scores.numpy(), 10, [8, 16])
    assert np.abs(refined - expected).max() <= 1e-5


@pytest.mark.parametrize(("pamr_steps", "prob_thd"), [(0, 0.0), (3, 0.0), (2, 0.4)])
def test_numpy_post_processing_matches_torch(pamr_steps, prob_thd):
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 5, 30, 40, generator=generator) * 0.1
    pixel_values = torch.randn(1, 3, 30, 40, generator=generator)
    name_to_class = torch.tensor([0, 1, 1, 2, 2])
    options = {"logit_scale": 40.0, "prob_thd": prob_thd, "pamr_steps": pamr_steps, "pamr_dilations": [8, 16]}
    expected = post_process_image(logits, pixel_values, (47, 61), name_to_class, **options, return_probabilities=True)
    probs, labels = runtime.post_process_logits(logits.numpy(), pixel_values.numpy(), (47, 61), name_to_class.numpy(),
                                                **options)  # fmt: skip
    assert np.abs(probs[0] - expected.probabilities.numpy()).max() <= 1e-4  # logit_scale 40 magnifies float rounding
    assert (labels[0] == expected.segmentation.numpy()).mean() >= 0.999
    if prob_thd:
        assert (labels == 0).any()


def test_numpy_normalisation_matches_the_image_processor(golden):
    image = golden["img_d/raw"].numpy()
    processor = NACLIPImageProcessor()
    expected = processor.normalize_image(image).numpy()
    mean, std = np.asarray(processor.image_mean, np.float32), np.asarray(processor.image_std, np.float32)
    assert np.array_equal(runtime.normalize_image(image, mean, std), expected)


# -------------------------------------------------------------------------------------------- runtime
@pytest.mark.parametrize(("image", "options"), [
    pytest.param("img_c", {}, marks=pytest.mark.slow),
    ("img_d", {"slide_crop": 0, "pamr_steps": 0}),
    pytest.param("img_e", {"slide_stride": 80, "prob_thd": 0.3}, marks=pytest.mark.slow),
])  # fmt: skip
def test_runtime_segments_as_pytorch(exported, pytorch_side, golden, image, options):
    model, processor, classes = pytorch_side
    picture = golden[f"{image}/raw"].numpy()
    expected = segment_image(model, processor, picture, classes, **options)
    result = runtime.ExportedSegmenter(exported).segment(picture, **options)
    assert np.abs(result.logits - expected.logits.numpy()).max() <= 1e-4
    assert np.abs(result.probabilities - expected.probabilities.numpy()).max() <= 1e-4
    assert (result.segmentation == expected.segmentation.numpy()).mean() >= 0.999


def test_runtime_reads_stored_names_in_any_grouping_without_the_text_graph(exported):
    segmenter = runtime.ExportedSegmenter(exported)
    subset = segmenter.encode_classes(["cat", "tv monitor, monitor"])
    stored = segmenter.encode_classes()
    names = [name for names in stored.classes for name in names]
    assert np.array_equal(subset.text_embeds[0], stored.text_embeds[names.index("cat")])
    assert subset.name_to_class.tolist() == [0, 1, 1]
    assert segmenter._text_tower is None  # stored names never load the text graph
    with pytest.raises(ValueError, match="attn_strategy='kk' cannot be changed.*--set attn_strategy"):
        runtime.ExportedSegmenter(exported, {"attn_strategy": "kk"})


@pytest.mark.parametrize("graph", ["model_quantized.onnx", "model_int8.onnx"])
def test_quantized_graph_agrees_with_fp32(exported, golden, graph, monkeypatch):
    if graph == "model_int8.onnx" and not runtime.native_int8_dot_products():
        pytest.skip("signed int8 weights can saturate on a CPU without int8 dot products; the runtime never runs "
                    "them there (tested below)")  # fmt: skip
    monkeypatch.setattr(runtime, "int8_graph_file", lambda folder: graph)
    image = golden["img_c/raw"].numpy()
    fp32 = runtime.ExportedSegmenter(exported).segment(image)
    int8 = runtime.ExportedSegmenter(exported, quantized=True)
    assert int8.graph_path.name == graph
    agreement = (fp32.segmentation == int8.segment(image).segmentation).mean()
    assert agreement >= 0.95, agreement


def test_the_signed_int8_graph_runs_only_where_int8_dot_products_are_native(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "native_int8_dot_products", lambda: True)
    assert runtime.ExportedSegmenter(exported, quantized=True).graph_path.name == "model_int8.onnx"
    monkeypatch.setattr(runtime, "native_int8_dot_products", lambda: False)
    assert runtime.ExportedSegmenter(exported, quantized=True).graph_path.name == "model_quantized.onnx"
    older = tmp_path / "older"  # an export made before the signed graph existed
    shutil.copytree(exported, older, ignore=shutil.ignore_patterns("model_int8.onnx"))
    monkeypatch.setattr(runtime, "native_int8_dot_products", lambda: True)
    assert runtime.ExportedSegmenter(older, quantized=True).graph_path.name == "model_quantized.onnx"


def test_runtime_imports_neither_torch_nor_transformers(exported, golden, tmp_path):
    image = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(golden["img_b/raw"].numpy()).save(image)
    code = BLOCK_TORCH + textwrap.dedent(
        f"""
        from naclip_hf.export.runtime import ExportedSegmenter
        result = ExportedSegmenter({str(exported)!r}).segment({str(image)!r}, pamr_steps=0)
        assert result.segmentation.shape == (300, 400), result.segmentation.shape
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        print("ok")
        """
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


def test_segment_command_on_an_export_runs_without_torch(exported, tiny_checkpoint, golden_labels_file, golden,
                                                         tmp_path):  # fmt: skip
    from PIL import Image
    from safetensors.numpy import load_file

    image = tmp_path / "photo.png"
    Image.fromarray(golden["img_d/raw"].numpy()).save(image)  # default settings: sliding windows and PAMR
    common = [str(image), "--labels-file", str(golden_labels_file), "--scores"]
    assert main(["segment", *common, "--model", str(tiny_checkpoint), "--out", str(tmp_path / "torch")]) == 0
    argv = ["segment", *common, "--model", str(exported), "--out", str(tmp_path / "onnx")]
    code = BLOCK_TORCH + f"from naclip_hf.cli import main\nsys.exit(main({argv!r}))\n"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    names = {path.name for path in (tmp_path / "torch").iterdir()}
    assert names == {path.name for path in (tmp_path / "onnx").iterdir()}
    expected = load_file(str(tmp_path / "torch" / "photo.scores.safetensors"))
    result = load_file(str(tmp_path / "onnx" / "photo.scores.safetensors"))
    assert (result["segmentation"] == expected["segmentation"]).mean() >= 0.999
    assert np.abs(result["probabilities"] - expected["probabilities"]).max() <= 1e-4
    torch_summary = json.loads((tmp_path / "torch" / "photo.json").read_text())
    onnx_summary = json.loads((tmp_path / "onnx" / "photo.json").read_text())
    assert onnx_summary["settings"] == torch_summary["settings"]
    assert onnx_summary["class_shares"].keys() == torch_summary["class_shares"].keys()


def test_compare_on_an_export(exported, golden, tmp_path, capsys):
    """`naclip compare` segments with the export's own block; attention maps and other blocks are refused with the
    fix, as the segmenter interface says."""
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.fromarray(golden["img_b/raw"].numpy()).save(image)
    common = [str(image), "--labels", "cat", "sky", "--model", str(exported)]
    assert main(["compare", *common, "--methods", "naclip", "--out", str(tmp_path / "figure.png")]) == 0
    with Image.open(tmp_path / "figure.png") as figure:
        assert figure.width > figure.height > 0
    capsys.readouterr()
    assert main(["compare", *common, "--methods", "sclip", "--out", str(tmp_path / "other.png")]) == 2
    error = capsys.readouterr().err
    assert "Method 'sclip': arch='vanilla' cannot be changed on an exported model" in error, error
    assert main(["compare", *common, "--attention-at", "5,5", "--out", str(tmp_path / "attention.png")]) == 2
    assert "cannot show attention maps" in capsys.readouterr().err
    assert not (tmp_path / "attention.png").exists() and not (tmp_path / "other.png").exists()
