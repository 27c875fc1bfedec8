"""The OpenAI-layout converter: file formats, the `naclip convert` command and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from naclip_hf import NACLIPForSemanticSegmentation
from naclip_hf.conversion import convert_openai_checkpoint, load_openai_state_dict


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
    with pytest.raises(ValueError, match="corrupt or not a weights file"):
        load_openai_state_dict(path)


def test_truncated_weights_file(tmp_path, golden_dir):
    data = (golden_dir / "openai_clip_tiny.safetensors").read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt"):
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
    import shutil

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
