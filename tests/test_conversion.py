"""The OpenAI-layout converter: file formats, the `naclip convert` command and its errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from naclip_hf import NACLIPForSemanticSegmentation
from naclip_hf.conversion import convert_openai_checkpoint, load_openai_state_dict
from naclip_hf.fileio import staged_directory, write_atomic


class _Holder(nn.Module):
    """A module that only holds parameters, to write a TorchScript archive with OpenAI's parameter names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _torchscript_archive(state: dict[str, torch.Tensor], path) -> None:
    root = _Holder()
    for name, tensor in state.items():
        *parents, leaf = name.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, _Holder())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(tensor.float(), requires_grad=False))
    torch.jit.save(torch.jit.script(root), str(path))


@pytest.fixture(scope="module")
def openai_state(golden_dir) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "openai_clip_tiny.safetensors"))


def test_pt_formats_give_the_safetensors_weights(tmp_path, openai_state, golden_dir):
    reference = load_openai_state_dict(golden_dir / "openai_clip_tiny.safetensors")
    torch.save(openai_state, tmp_path / "plain.pt")
    _torchscript_archive(openai_state, tmp_path / "scripted.pt")
    for name in ("plain.pt", "scripted.pt"):
        loaded = load_openai_state_dict(tmp_path / name)
        assert set(loaded) == set(reference)
        for key, tensor in reference.items():
            torch.testing.assert_close(loaded[key].float(), tensor.float(), rtol=0, atol=0)


def test_convert_command_writes_a_complete_checkpoint(tmp_path, golden_dir):
    out = tmp_path / "converted"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "naclip_hf.cli",
            "convert",
            str(golden_dir / "openai_clip_tiny.safetensors"),
            str(out),
            "--tokenizer",
            str(golden_dir / "tokenizer"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "naclip"
    assert (
        config["vision_config"]["hidden_size"] == 128 and config["vision_config"]["num_attention_heads"] == 2
    )
    assert config["text_config"]["num_attention_heads"] == 1 and config["projection_dim"] == 64
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        assert (out / name).is_file(), name
    model, info = NACLIPForSemanticSegmentation.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    state = load_file(str(golden_dir / "openai_clip_tiny.safetensors"))
    torch.testing.assert_close(model.visual_projection.weight, state["visual.proj"].float().T)
    q, k, v = state["visual.transformer.resblocks.2.attn.in_proj_weight"].float().chunk(3)
    torch.testing.assert_close(model.vision_model.encoder.layers[2].self_attn.k_proj.weight, k)
    assert not list(tmp_path.glob(".converted.*")), "no staging folder is left behind"


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No weights file"):
        load_openai_state_dict(tmp_path / "nothing.pt")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_corrupt_weights_file(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00\x01 not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match="is not a CLIP weights file.*damaged or truncated"):
        load_openai_state_dict(path)


def test_truncated_weights_file(tmp_path, golden_dir):
    data = (golden_dir / "openai_clip_tiny.safetensors").read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_openai_state_dict(path)


def test_state_dict_that_is_not_openai_clip(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an OpenAI-layout ViT CLIP"):
        load_openai_state_dict(tmp_path / "other.pt")


def test_convert_refuses_a_non_empty_output_and_leaves_nothing_on_failure(tmp_path, golden_dir):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_openai_checkpoint(golden_dir / "openai_clip_tiny.safetensors", occupied)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"garbage")
    with pytest.raises(ValueError):
        convert_openai_checkpoint(broken, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_convert_command_reports_errors_cleanly(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "naclip_hf.cli",
            "convert",
            str(tmp_path / "missing.pt"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "No weights file" in completed.stderr and "Traceback" not in completed.stderr


def test_checkpoint_folder_with_missing_or_corrupt_weights(tmp_path, tiny_checkpoint):
    from naclip_hf.inference import load_model

    missing = tmp_path / "missing"
    shutil.copytree(tiny_checkpoint, missing)
    (missing / "model.safetensors").unlink()
    with pytest.raises(OSError, match="naclip convert"):
        load_model(missing)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_checkpoint, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[:1000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model(corrupt)


NOT_WEIGHTS = (
    "{} is not a CLIP weights file; formats read: OpenAI .pt (TorchScript archive), torch.save state dict "
    "(.pt/.pth/.bin), .safetensors"
)


def _write_not_weights(path, kind: str) -> None:
    if kind == "text":
        path.write_text("These are my notes, not weights.\n" * 20)
    elif kind == "random bytes":
        path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    elif kind == "pickle of strings":
        with open(path, "wb") as handle:
            pickle.dump({"visual.proj": "a string", "note": "not a tensor"}, handle)
    elif kind == "torch.save of strings":
        torch.save({"visual.proj": "a string", "note": "not a tensor"}, path)
    elif kind == "torch.save of a list":
        torch.save([torch.zeros(2)], path)


@pytest.mark.parametrize(
    "name,kind",
    [
        ("x.pt", "text"),
        ("x.pt", "random bytes"),
        ("x.bin", "random bytes"),
        ("x.safetensors", "random bytes"),
        ("x.pt", "pickle of strings"),
        ("x.pth", "torch.save of strings"),
        ("x.pt", "torch.save of a list"),
    ],
)
def test_file_that_is_not_weights_gets_one_clear_message(tmp_path, name, kind):
    path = tmp_path / name
    _write_not_weights(path, kind)
    with pytest.raises(ValueError) as caught:
        load_openai_state_dict(path)
    message = str(caught.value)
    assert message.startswith(NOT_WEIGHTS.format(path)), message
    assert "weights_only" not in message and caught.value.__cause__ is None


def test_convert_command_on_a_file_that_is_not_weights(tmp_path):
    path = tmp_path / "x.pt"
    _write_not_weights(path, "pickle of strings")
    completed = subprocess.run(
        [sys.executable, "-m", "naclip_hf.cli", "convert", str(path), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 2
    assert NOT_WEIGHTS.format(path) in completed.stderr
    assert "weights_only" not in completed.stderr and "Traceback" not in completed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"], "nothing is left behind"


def test_format_is_recognised_from_the_content(tmp_path, golden_dir, openai_state):
    shutil.copy(golden_dir / "openai_clip_tiny.safetensors", tmp_path / "named_like_torch.pt")
    loaded = load_openai_state_dict(tmp_path / "named_like_torch.pt")
    assert set(loaded) == set(openai_state)
    torch.testing.assert_close(loaded["visual.proj"], openai_state["visual.proj"], rtol=0, atol=0)


def _text_embeddings(folder) -> torch.Tensor:
    from naclip_hf.inference import encode_classes, load_processor

    model = NACLIPForSemanticSegmentation.from_pretrained(folder)
    processor = load_processor(folder)
    return encode_classes(model, processor, ["cat", "dog"]).text_embeds


def test_convert_without_tokenizer_writes_the_builtin_clip_bpe(tmp_path, golden_dir, tiny_checkpoint):
    out = tmp_path / "no-tokenizer"
    completed = subprocess.run(
        [sys.executable, "-m", "naclip_hf.cli", "convert", str(golden_dir / "openai_clip_tiny.safetensors"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        assert (out / name).is_file(), name
    embeddings = _text_embeddings(out)
    reference = _text_embeddings(tiny_checkpoint)  # converted with --tokenizer tests/fixtures/golden/tokenizer
    assert embeddings.shape == (2, 64)
    assert (embeddings[0] - embeddings[1]).abs().max() > 1e-3, "two class names must give two embeddings"
    torch.testing.assert_close(embeddings, reference, rtol=0, atol=1e-6)


def test_builtin_bpe_tokenizes_like_openai(golden):
    from naclip_hf.models.naclip.tokenization import builtin_bpe_dir, load_clip_tokenizer

    assert sorted(p.name for p in builtin_bpe_dir().iterdir()) == ["merges.txt", "vocab.json"]
    tokenizer = load_clip_tokenizer(None)
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    sentences = ["a photo of a cat.", "the embroidered television monitor.", "a tattoo of a person in shirt."]
    for row, sentence in zip(golden["text/token_ids"], sentences):
        ids = tokenizer(sentence)["input_ids"]
        assert ids == row[: len(ids)].tolist() and not row[len(ids) :].any()


def test_folder_without_vocab_files(tmp_path, tiny_checkpoint, caplog):
    from transformers import CLIPTextConfig, CLIPTokenizer

    from naclip_hf.models.naclip.tokenization import load_clip_tokenizer

    folder = tmp_path / "weights-only"
    folder.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", folder / "config.json")
    # transformers does not fail here: it builds a tokenizer that knows only its special tokens.
    assert len(CLIPTokenizer.from_pretrained(str(folder))) <= 2

    with caplog.at_level("WARNING", logger="naclip_hf.models.naclip.tokenization"):
        tokenizer = load_clip_tokenizer(folder, CLIPTextConfig(vocab_size=49408))
    assert len(tokenizer) == 49408 and tokenizer("a photo of a cat.")["input_ids"][:3] == [49406, 320, 1125]
    assert "built-in OpenAI CLIP BPE" in caplog.text and str(folder) in caplog.text

    with pytest.raises(ValueError) as caught:
        load_clip_tokenizer(folder, CLIPTextConfig(vocab_size=32000))
    message = str(caught.value)
    assert str(folder) in message and "32000 tokens" in message
    assert "Add vocab.json and merges.txt" in message and "--tokenizer" in message
    with pytest.raises(ValueError, match="No usable tokenizer"):
        load_clip_tokenizer(folder, CLIPTextConfig(vocab_size=49408), fallback=False)


def test_tokenizer_whose_vocabulary_does_not_fit_the_text_model(golden_dir, tmp_path):
    from transformers import CLIPTextConfig

    from naclip_hf.models.naclip.tokenization import load_clip_tokenizer

    tokenizer_dir = golden_dir / "tokenizer"
    with pytest.raises(ValueError, match=r"has 49408 tokens but the text model has 1000.*Add vocab.json"):
        load_clip_tokenizer(tokenizer_dir, CLIPTextConfig(vocab_size=1000))
    assert len(load_clip_tokenizer(tokenizer_dir, CLIPTextConfig(vocab_size=49408))) == 49408
    with pytest.raises(FileNotFoundError, match="vocab.json and merges.txt"):
        convert_openai_checkpoint(golden_dir / "openai_clip_tiny.safetensors", tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_and_folders_get_the_usual_modes(tmp_path, golden_dir, umask):
    def private_file(temporary):  # created as tempfile.mkstemp does: 0o600
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(descriptor, b"data")
        os.close(descriptor)

    def private_folder(temporary):  # created as tempfile.mkdtemp does: 0o700
        os.mkdir(temporary, 0o700)
        (temporary / "inside.txt").write_text("data")

    previous = os.umask(umask)
    try:
        out = convert_openai_checkpoint(golden_dir / "openai_clip_tiny.safetensors", tmp_path / "converted")
        atomic_file = write_atomic(tmp_path / "file.bin", private_file)
        atomic_folder = write_atomic(tmp_path / "folder", private_folder)
        with staged_directory(tmp_path / "staged") as staging:
            (staging / "inside.txt").write_text("data")
    finally:
        os.umask(previous)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    assert os.stat(out).st_mode & 0o777 == dir_mode
    modes = {p.name: os.stat(p).st_mode & 0o777 for p in out.iterdir()}
    assert "tokenizer.json" in modes and set(modes.values()) == {file_mode}, modes
    assert os.stat(atomic_file).st_mode & 0o777 == file_mode and atomic_file.read_bytes() == b"data"
    assert os.stat(atomic_folder).st_mode & 0o777 == dir_mode
    assert os.stat(tmp_path / "staged").st_mode & 0o777 == dir_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "file.bin", "folder", "staged"]


def test_staged_directory_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError, match="stop"):
        with staged_directory(tmp_path / "never") as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        with staged_directory(tmp_path / "a_file"):
            pass
